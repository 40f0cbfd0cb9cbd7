"""Ensembles: several saved models (each possibly CFT-tuned, with its own backbone and input
size) in one artifact that averages probabilities, usable everywhere a model is.

::

    ensemble/
      ensemble.json       labels, thresholds, members (relative path + weight), metrics
      members/00-<name>/  a full copy of each member model folder

Every input file is decoded once; each member gets its own resize / normalisation; TTA
views of a batch go through each member in one forward pass.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..artifact import LoadedModel, load_model
from ..data.augment import TTAView, apply_tta
from ..errors import ArtifactError, CxrkitError
from .runtime import ENSEMBLE_FILE, ModelSpec, OnnxPredictor, Predictor, openvino_preferred, read_spec
from ..utils import check_output_dir, mark_output, staged_dir

FORMAT = "cxrkit-ensemble"


class TorchPredictor(Predictor):
    """Members loaded as PyTorch models (CPU or GPU)."""

    def __init__(self, spec: ModelSpec, device: str | torch.device = "cpu", precision: str = "auto") -> None:
        super().__init__(spec)
        self.device = torch.device(device)
        self.models: list[LoadedModel] = [load_model(m.path, device=self.device) for m in spec.members]
        from .engines import resolve_precision

        if precision == "int8":
            raise CxrkitError("int8 runs on the ONNX engine: --engine onnx (after cxrkit export MODEL --onnx --int8)")
        # auto: fp16 / bf16 autocast on CUDA as before; fp32 on the CPU, even with bf16 units:
        # bf16 inference moved the nih_hires model's mean AUC by -0.009 (docs/results.md), and
        # unlike int8 (checked at export) nothing checks it per model. bf16 when asked for.
        if precision == "auto" and self.device.type == "cpu":
            precision = "fp32"
        self.precision = resolve_precision(precision, self.device)[0]

    @torch.no_grad()
    def member_probs(self, i: int, x: Any, views: Sequence[TTAView]) -> np.ndarray:
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        b = x.shape[0]
        if len(views) > 1:
            x = apply_tta(x, views)
        from .engines import autocast

        with autocast(self.device, self.precision):
            p = torch.sigmoid(self.models[i].model(x).float())
        if len(views) > 1:
            p = p.view(len(views), b, -1).mean(0)
        return p.cpu().numpy()


ENGINES = ("auto", "torch", "onnx", "openvino")


def choose_engine(spec: ModelSpec, device: str | torch.device = "cpu") -> str:
    """``auto``: onnxruntime on the CPU when every member has an up-to-date ONNX export (a
    deployment folder, or after ``cxrkit export --onnx``) and onnxruntime is installed
    (1.3x PyTorch eager here, docs/results.md), else PyTorch. Nothing is exported implicitly."""
    if torch.device(device).type != "cpu":
        return "torch"
    from .export import is_fresh

    fresh = all(is_fresh(m) for m in spec.members)
    if fresh and openvino_preferred():
        return "openvino"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx" if fresh else "torch"


def load_predictor(path: str | Path, engine: str = "torch", device: str | torch.device = "cpu",
                   threads: int | None = None, precision: str = "auto") -> Predictor:
    """A model or ensemble folder as a predictor: ``engine`` torch, onnx (exported on first
    use) or auto (:func:`choose_engine`); ``precision`` auto / fp32 / bf16 (torch, openvino) /
    int8 (onnx, openvino: after ``export --int8``); auto picks int8 / bf16 only where the CPU
    has the units (and int8 only where the export passed its accuracy check)."""
    if engine not in ENGINES:
        raise CxrkitError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in ("auto", "fp32", "int8", "bf16", "fp16"):
        raise CxrkitError(f"precision must be auto, fp32, int8 (onnx), bf16 (torch) or fp16 (torch on CUDA), "
                          f"got {precision!r}")
    spec = read_spec(path)
    if engine == "auto":
        engine = choose_engine(spec, device)
        if engine == "torch" and precision == "int8":
            raise CxrkitError("int8 needs the ONNX engine: run cxrkit export MODEL --onnx --int8 first")
    if engine == "torch":
        return TorchPredictor(spec, device, precision=precision)
    from .export import ensure_onnx

    if engine == "openvino":
        from .runtime import OpenVinoPredictor

        ensure_onnx(spec)
        return OpenVinoPredictor(read_spec(path), threads=threads, precision=precision)

    if precision == "bf16":
        raise CxrkitError("bf16 runs on the torch engine (--engine torch); ONNX runs fp32 or int8")
    ensure_onnx(spec)
    return OnnxPredictor(read_spec(path), threads=threads, precision=precision)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:40] or "model"


def build_ensemble(models: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                   name: str | None = None, classes: Sequence[str] | None = None,
                   valid_table: str | Path | None = None, images_root: str | Path | None = None,
                   valid_split: str | None = None, threshold_method: str = "f1", tta: str | None = None,
                   show_progress: bool = True, overwrite: bool = False) -> Path:
    """Copy the member models into one ensemble folder. With ``valid_table`` the ensemble's
    per-class thresholds are chosen on its averaged validation probabilities (and its
    validation metrics recorded); otherwise they are the weighted mean of the members'."""
    if len(models) < 1:
        raise CxrkitError("an ensemble needs at least one model")
    specs = []
    for m in models:
        s = read_spec(m)
        if s.kind != "model":
            raise CxrkitError(f"{m}: is an ensemble; give its member models instead")
        specs.append(s)
    w = [1.0] * len(specs) if weights is None else [float(x) for x in weights]
    if len(w) != len(specs):
        raise CxrkitError(f"{len(w)} weights for {len(specs)} models")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise CxrkitError("weights must be >= 0 and not all 0")
    if classes is None:
        first = specs[0].classes
        for s in specs[1:]:
            if set(s.classes) != set(first):
                raise CxrkitError(f"{s.path}: predicts other classes than {specs[0].path}; "
                                  "pass --classes with the classes all members share")
        classes = list(first)
    else:
        classes = list(classes)
        for s in specs:
            missing = [c for c in classes if c not in s.classes]
            if missing:
                raise CxrkitError(f"{s.path}: lacks classes {missing}")
    total = sum(w)
    thr = np.zeros(len(classes))
    for s, wi in zip(specs, w):
        thr += np.array([s.thresholds[s.classes.index(c)] for c in classes]) * wi / total
    out = check_output_dir(out, "ensemble", [s.path for s in specs], overwrite)
    with staged_dir(out) as tmp:
        mark_output(tmp, "ensemble")
        members = []
        for i, s in enumerate(specs):
            rel = f"members/{i:02d}-{_slug(s.name)}"
            shutil.copytree(s.path, tmp / rel, ignore=shutil.ignore_patterns("cft", ".*"))
            members.append({"path": rel, "weight": w[i], "name": s.name, "source": str(s.path),
                            "backbone": s.meta.get("model", {}).get("backbone"),
                            "input_size": s.members[0].preprocessing.size})
        meta: dict[str, Any] = {
            "format": FORMAT, "format_version": 1, "name": name or "ensemble", "classes": classes,
            "thresholds": [float(t) for t in thr], "threshold_method": "weighted mean of members",
            "label_space": specs[0].label_space, "members": members, "cxrkit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "metrics": {},
        }
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2))
        if valid_table is not None:
            from ..artifact import default_thresholds
            from .evaluate import evaluate_table
            from ..metrics import best_thresholds

            pred = TorchPredictor(read_spec(tmp))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ev = evaluate_table(pred, valid_table, images_root=images_root, split=valid_split, tta=tta,
                                    show_progress=show_progress, return_scores=True)
            probs, targets = ev.pop("_scores"), ev.pop("_targets")
            present = [c["name"] for c in ev["classes"]]
            new = default_thresholds(best_thresholds(targets, probs, method=threshold_method))
            thr_map = dict(zip(present, new))
            meta["thresholds"] = [float(thr_map.get(c, t)) for c, t in zip(classes, meta["thresholds"])]
            meta["threshold_method"] = threshold_method
            meta["metrics"] = {"valid": {k: ev.get(k) for k in ("mAUC", "mAP", "mF1", "subsets", "table")}}
            (tmp / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2, default=float))
    return out


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def load_ensemble_meta(path: str | Path) -> dict[str, Any]:
    f = Path(path) / ENSEMBLE_FILE
    if not f.is_file():
        raise ArtifactError(f"{path}: not an ensemble folder")
    return json.loads(f.read_text())
