"""The saved model: one folder that carries everything ``predict`` needs.

::

    model/
      model.safetensors   weights (safetensors: loading never unpickles)
      model.json          labels, preprocessing, per-class thresholds, model config,
                          training config, metrics, what CFT did, cxrkit version

``save_model`` writes into a temporary folder and renames it into place, so an existing
model is never left half-written. ``load_model`` rebuilds the architecture from the JSON
(without downloading anything) and loads the weights strictly.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .data.preprocess import Preprocessing
from .errors import ArtifactError
from .utils import recover_dir, sha256_file, staged_dir, to_jsonable

FORMAT = "cxrkit-model"
FORMAT_VERSION = 2  # 2: a model with calibration (older cxrkit would ignore it)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ENSEMBLE_FILE = "ensemble.json"


@dataclass
class ModelMeta:
    """The JSON half of a saved model."""

    classes: list[str]
    preprocessing: dict[str, Any]
    model: dict[str, Any]
    thresholds: list[float]
    name: str = "model"
    threshold_method: str = "f1"
    label_space: str | None = None
    train_config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    cft: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # cxrkit.calibration.fit_calibration's output
    operating_point: dict[str, Any] | None = None  # cxrkit.calibration.operating_points' output
    extra: dict[str, Any] = field(default_factory=dict)
    cxrkit_version: str = __version__
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model.json") -> ModelMeta:
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not a cxrkit model (format {d.get('format')!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ArtifactError(f"{source}: written by a newer cxrkit (format {d['format_version']}); upgrade cxrkit")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("classes", "preprocessing", "model", "thresholds") if k not in d]
        if missing:
            raise ArtifactError(f"{source}: missing {missing}")
        meta = cls(**{k: v for k, v in d.items() if k in known})
        if len(meta.thresholds) != len(meta.classes):
            raise ArtifactError(f"{source}: {len(meta.thresholds)} thresholds for {len(meta.classes)} classes")
        if meta.calibration:
            from .inference.calibration import check_calibration

            try:
                check_calibration(meta.calibration, meta.classes, source)
            except Exception as e:
                raise ArtifactError(str(e)) from None
        return meta


def write_model_files(folder: str | Path, model: nn.Module, meta: ModelMeta) -> None:
    """Write the weights and ``model.json`` into an existing (staging) folder.

    The weights file is byte-for-byte reproducible: the same tensors give the same bytes and
    so the same ``weights_sha256`` (safetensors writes its metadata map in hash order, so it
    holds a single key; the cxrkit version is in ``model.json``)."""
    from safetensors.torch import save_model as st_save

    folder = Path(folder)
    model = model.module if hasattr(model, "module") else model  # DDP
    st_save(model, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})  # one key: a fixed order
    meta.weights_sha256 = sha256_file(folder / WEIGHTS_FILE)
    meta.created = meta.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta.cxrkit_version = __version__
    meta.format_version = 2 if meta.calibration else 1  # readable by older cxrkit when nothing new is in it
    (folder / META_FILE).write_text(json.dumps(to_jsonable(meta.to_dict()), indent=2) + "\n")


def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model`` + ``meta`` as a model folder at ``path`` (atomically replaced)."""
    path = Path(path)
    with staged_dir(path) as tmp:
        write_model_files(tmp, model, meta)
    return path


def _model_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (META_FILE, WEIGHTS_FILE, ENSEMBLE_FILE):
        p = p.parent
    if not p.exists():
        recover_dir(p)  # a swap killed between its two renames
    if not p.exists():
        raise ArtifactError(f"{p}: model not found")
    if not p.is_dir():
        raise ArtifactError(f"{p}: a model is a folder with {META_FILE} and {WEIGHTS_FILE}")
    return p


def load_meta(path: str | Path) -> ModelMeta:
    d = _model_dir(path)
    f = d / META_FILE
    if not f.is_file():
        if (d / ENSEMBLE_FILE).is_file():
            raise ArtifactError(f"{d}: is an ensemble, not a single model")
        raise ArtifactError(f"{d}: no {META_FILE}; not a cxrkit model folder")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f}: corrupt model metadata ({e})") from None
    return ModelMeta.from_dict(raw, str(f))


def load_preprocessing(path: str | Path) -> Preprocessing:
    d = _model_dir(path)
    if (d / ENSEMBLE_FILE).is_file():
        from .inference.runtime import read_spec

        return read_spec(d).members[0].preprocessing
    return Preprocessing.from_dict(load_meta(d).preprocessing)


class LoadedModel:
    """A model ready for inference: ``predict(batch) -> probabilities`` (N x C numpy)."""

    def __init__(self, model: nn.Module, meta: ModelMeta, path: Path, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.meta = meta
        self.path = path
        self.device = torch.device(device)
        self.model.to(self.device)
        self.preprocessing = Preprocessing.from_dict(meta.preprocessing)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.meta.thresholds, dtype=np.float64)

    @property
    def name(self) -> str:
        return self.meta.name

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device, non_blocking=True)).float()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Probabilities, through the model's calibration when it has one."""
        p = torch.sigmoid(self.logits(x)).cpu().numpy()
        if self.meta.calibration:
            from .inference.calibration import apply_calibration

            p = apply_calibration(p, self.meta.calibration).astype(np.float32)
        return p


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (weights + JSON); never unpickles, never downloads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as st_load

    from .models import build_model

    d = _model_dir(path)
    meta = load_meta(d)
    wf = d / WEIGHTS_FILE
    if not wf.is_file():
        raise ArtifactError(f"{d}: weights file {WEIGHTS_FILE} is missing")
    model = build_model(meta.model, len(meta.classes), load_weights=False)
    try:
        missing, unexpected = st_load(model, str(wf), strict=False, device="cpu")
    except RuntimeError as e:
        if "size mismatch" in str(e) or "state_dict" in str(e):
            raise ArtifactError(f"{wf}: weights do not match the model config in {META_FILE} "
                                f"({_size_mismatch(str(e))})") from None
        raise ArtifactError(f"{wf}: weights cannot be read ({str(e).splitlines()[0]})") from None
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{wf}: weights cannot be read ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise ArtifactError(f"{wf}: weights do not match the model config "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return LoadedModel(model, meta, d, device)


def _size_mismatch(msg: str) -> str:
    for line in msg.splitlines():
        if "size mismatch" in line:
            return line.strip()[:200]
    return msg.splitlines()[0][:200]


def default_thresholds(values: Sequence[float] | np.ndarray, default: float = 0.5) -> list[float]:
    """Per-class thresholds with undefined (NaN) entries replaced by ``default``."""
    arr = np.asarray(values, dtype=np.float64)
    return [float(v) if np.isfinite(v) else default for v in arr]
