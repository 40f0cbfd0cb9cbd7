"""MONAI Bundle export: ``cxrkit export MODEL --bundle DIR``.

A bundle is the folder MONAI's model zoo, ``monai.bundle`` and MONAI Label / Deploy read::

    DIR/configs/metadata.json   MONAI's metadata schema: labels, input / output spec, versions
    DIR/configs/inference.json  a ConfigWorkflow built from MONAI components
    DIR/models/model.pt         the network's state dict (plain tensors, loads with weights_only)
    DIR/docs/README.md          what the bundle does, how to run it, how it differs from cxrkit
    DIR/LICENSE

``python -m monai.bundle run --config_file configs/inference.json --dataset_dir FILMS`` runs
MONAI's ``SupervisedEvaluator`` over the films and writes ``eval/predictions.csv`` (MONAI's
``ClassificationSaver``: file name, then one probability per label in ``channel_def`` order).

Preprocessing is MONAI's wherever MONAI gives the same pixels as cxrkit: channel repeat
(``RepeatChanneld``), normalisation (``NormalizeIntensityd``), sigmoid (``Activationsd``).
Two steps MONAI cannot do the way the model was trained are cxrkit transforms written to
MONAI's ``MapTransform`` interface, referenced from the config by their import path:

* :class:`LoadFilmd`: MONAI's ``PydicomReader`` applies only a linear modality rescale; it
  ignores a Modality LUT Sequence, the VOI LUT / window, and MONOCHROME1 (the film comes out
  inverted), and it has no chest-radiograph header filter. ``PILReader`` has no bit-depth
  scaling of 16-bit PNGs.
* :class:`ResizeFilmd`: MONAI's ``Resized(mode="area")`` is PyTorch's adaptive average
  pooling, which differs from OpenCV's ``INTER_AREA`` (what cxrkit trains with) whenever the
  scale factor is not a whole number; letterbox padding is not one MONAI transform either.

``tests/test_bundle.py`` measures what the pure-MONAI readers would do instead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.preprocess import Preprocessing
from ..errors import ArtifactError, CxrkitError, ImageReadError

log = logging.getLogger(__name__)

SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")
BUNDLE_COMMAND = "export --bundle"
REFERENCES = [
    "Category-wise Fine-Tuning for long-tailed multi-label chest X-ray classification (CFT)",
    "Robust Asymmetric Loss for multi-label long-tailed learning (RAL)",
]

try:  # the transforms are MONAI transforms when MONAI is there (it is a cxrkit dependency)
    from monai.data import CSVSaver
    from monai.transforms import MapTransform
except ImportError:  # pragma: no cover - MONAI is a hard dependency
    MapTransform = CSVSaver = object  # type: ignore[assignment,misc]


# ---------------------------------------------------------------------------------------
# transforms the bundle's inference.json uses
# ---------------------------------------------------------------------------------------


def _filter(spec: Mapping[str, Any] | None | str) -> Any:
    """``"default"``: predict's chest-radiograph filter; ``None``: off; a dict: DicomFilter fields."""
    from ..inference.runtime import DicomFilter

    if spec is None:
        return DicomFilter(enabled=False)
    if spec == "default":
        return DicomFilter()
    if not isinstance(spec, Mapping):
        raise CxrkitError(f"dicom_filter must be 'default', null or a mapping, got {spec!r}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(spec).items()}
    return DicomFilter(**kw)


class LoadFilmd(MapTransform):  # type: ignore[misc,valid-type]
    """Read a film the way the model was trained to see it: DICOM through the chest-radiograph
    header filter and the full pixel pipeline (modality LUT, VOI LUT / window, MONOCHROME1),
    PNG / JPEG / TIFF by bit depth, [0, 1] float32, channel first (1 x H x W, or 3 x H x W for
    ``colour: rgb`` models), as a MONAI ``MetaTensor`` whose ``filename_or_obj`` is the path.

    A film that cannot be used (unreadable, not a chest radiograph, too small) does not stop
    the run: its image is NaN, so its probabilities come out NaN, and the reason is logged
    and kept in the metadata (``cxrkit_failure``)."""

    def __init__(self, keys: Any, preprocessing: Mapping[str, Any],
                 dicom_filter: Mapping[str, Any] | None | str = "default", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pre = Preprocessing.from_dict(preprocessing)
        self.dicom_filter = _filter(dicom_filter)

    def read(self, path: str | Path) -> np.ndarray:
        from ..inference.runtime import read_films

        return read_films(path, [self.pre], self.dicom_filter)[0]  # what predict reads for this model

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            meta: dict[str, Any] = {"filename_or_obj": path, "cxrkit_failure": ""}
            try:
                img = self.read(path)
            except ImageReadError as e:
                meta["cxrkit_failure"] = f"{e.reason.value}: {e.detail}"
            except Exception as e:  # a decoder crash on one film is that film's failure, not the run's
                meta["cxrkit_failure"] = f"unreadable: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            if meta["cxrkit_failure"]:
                log.warning("%s: not used (%s); its probabilities are NaN", path, meta["cxrkit_failure"])
                h, w = self.pre.hw
                img = np.full((h, w, 3) if self.pre.colour == "rgb" else (h, w), np.nan, np.float32)
            arr = np.moveaxis(img, -1, 0) if img.ndim == 3 else img[None]
            meta["spatial_shape"] = np.asarray(arr.shape[1:])
            meta["original_channel_dim"] = 0 if img.ndim == 3 else "no_channel"
            d[key] = MetaTensor(np.ascontiguousarray(arr, dtype=np.float32), meta=meta)
        return d


class ResizeFilmd(MapTransform):  # type: ignore[misc,valid-type]
    """Resize a channel-first [0, 1] image exactly as cxrkit does (OpenCV ``INTER_AREA`` when
    shrinking, ``stretch`` / ``letterbox`` / ``center-crop``), keeping the MetaTensor's
    metadata. A failed film (NaN) is refilled at the target size."""

    def __init__(self, keys: Any, preprocessing: Mapping[str, Any], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pre = Preprocessing.from_dict(preprocessing)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            meta = dict(getattr(x, "meta", {}))
            arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if np.isnan(arr).all():
                h, w = self.pre.hw
                out = np.full((arr.shape[0], h, w), np.nan, np.float32)
            else:
                hwc = np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]
                r = self.pre.resize_image(hwc)
                out = np.moveaxis(r, -1, 0) if r.ndim == 3 else r[None]
            meta["spatial_shape"] = np.asarray(out.shape[1:])
            d[key] = MetaTensor(np.ascontiguousarray(out, dtype=np.float32), meta=meta)
        return d


class PredictionSaver(CSVSaver):  # type: ignore[misc,valid-type]
    """MONAI's ``CSVSaver`` for ``ClassificationSaver``, with a header (``image`` and the label
    names) and real CSV quoting, so that a path holding a comma, a quote or a newline stays
    one field (MONAI's own saver writes it raw and the row breaks), written to a temporary
    file and renamed: an interrupted run leaves the previous file whole."""

    def __init__(self, output_dir: str | Path = "./", filename: str = "predictions.csv",
                 labels: Sequence[str] = (), delimiter: str = ",") -> None:
        super().__init__(output_dir=output_dir, filename=filename, overwrite=False, flush=False, delimiter=delimiter)
        self.labels = [str(c) for c in labels]

    def finalize(self) -> None:
        import csv

        from ..utils import atomic_write

        with atomic_write(self._filepath) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter=self.delimiter)
            w.writerow(["image", *self.labels])
            for key, values in self._cache_dict.items():
                vals = np.asarray(values, np.float64).ravel()
                if self.labels and len(vals) != len(self.labels):
                    raise CxrkitError(f"{key}: {len(vals)} outputs for {len(self.labels)} labels")
                w.writerow([key, *(repr(float(v)) for v in vals)])
        self.reset_cache()


class EnsembleNet(nn.Module):
    """A cxrkit ensemble as one network for a bundle: each member's sigmoid, its columns in the
    ensemble's class order, the weighted mean (float64), returned as a float32 logit, so that
    the bundle's ``Activationsd(sigmoid=True)`` gives back the weighted mean probability that
    ``cxrkit predict`` computes. Built from config (``members``: ``{"cfg", "num_classes"}``
    each); the weights come from the bundle's checkpoint (``members.<i>.*``)."""

    def __init__(self, members: Sequence[Mapping[str, Any]], weights: Sequence[float],
                 columns: Sequence[Sequence[int]], calibrations: Sequence[Mapping[str, Any] | None] | None = None,
                 calibration: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from ..errors import ConfigError
        from ..models import build_model

        if not members or not len(members) == len(weights) == len(columns):
            raise ConfigError(f"EnsembleNet: {len(members)} members, {len(weights)} weights, {len(columns)} columns")
        total = float(sum(weights))
        if total <= 0 or min(weights) < 0:
            raise ConfigError("EnsembleNet: weights must be >= 0 and sum to more than 0")
        self.members = nn.ModuleList(build_model(m["cfg"], int(m["num_classes"]), load_weights=False) for m in members)
        self.weights = [float(w) / total for w in weights]
        for i, c in enumerate(columns):
            self.register_buffer(f"columns_{i}", torch.tensor([int(j) for j in c], dtype=torch.long), persistent=False)
        # each member's calibration before the average, the ensemble's after it (as predict)
        self.calibrations = [dict(c) if c else None for c in (calibrations or [None] * len(members))]
        self.calibration = dict(calibration) if calibration else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..inference.calibration import apply_calibration_torch

        p: torch.Tensor | None = None
        for i, (m, w) in enumerate(zip(self.members, self.weights)):
            q = apply_calibration_torch(torch.sigmoid(m(x).double()), self.calibrations[i])
            q = q.index_select(1, getattr(self, f"columns_{i}")) * w
            p = q if p is None else p + q
        assert p is not None
        p = apply_calibration_torch(p, self.calibration)
        return torch.logit(p.clamp(1e-12, 1.0 - 1e-12)).float()


def bundle_root(default: str = ".") -> str:
    """The bundle folder when ``python -m monai.bundle run`` was given ``--config_file
    DIR/configs/inference.json`` from anywhere (MONAI's own convention, ``"bundle_root": "."``,
    works only from inside the folder); ``default`` otherwise (in-process use, where callers
    set ``bundle_root`` themselves). ``--bundle_root X`` on the command line still wins."""
    import sys

    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--config_file=") else (
            argv[i + 1] if a == "--config_file" and i + 1 < len(argv) else None)
        if value:
            first = value.strip("[]").split(",")[0].strip().strip("'\"")
            cfg = Path(first).expanduser().resolve()
            if cfg.is_file():
                return str(cfg.parent.parent if cfg.parent.name == "configs" else cfg.parent)
    return default


def film_list(dataset_dir: str | Path, key: str = "image") -> list[dict[str, str]]:
    """The bundle's datalist: every film under ``dataset_dir`` (or the one file), found as
    ``cxrkit predict`` finds them (PNG / JPEG / BMP / TIFF / DICOM by suffix or preamble,
    recursive, links followed once), sorted by path."""
    from ..inference.predict import collect_inputs

    p = Path(str(dataset_dir))
    problem = "" if p.exists() else f"dataset_dir {p}: no such file or folder (run with --dataset_dir FOLDER)"
    items = []
    if not problem:
        items, failures = collect_inputs([p])
        for f in failures:
            log.info("%s: skipped (%s)", f.path, f.reason)
        if not items:
            problem = f"dataset_dir {p}: no PNG / JPEG / TIFF / DICOM films in it"
    if problem:
        log.error(problem)  # MONAI wraps the exception in its own traceback: say it plainly first
        raise CxrkitError(problem)
    return [{key: str(it.path)} for it in sorted(items, key=lambda it: str(it.path))]


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


def _value_range(pre: Preprocessing) -> list[float]:
    lo = min((0.0 - m) / s for m, s in zip(pre.mean, pre.std))  # type: ignore[arg-type]
    hi = max((1.0 - m) / s for m, s in zip(pre.mean, pre.std))  # type: ignore[arg-type]
    return [round(lo, 6), round(hi, 6)]


def _versions(model: Any = None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"cxrkit": __version__}
    names = ["pytorch-ignite", "fire", "timm", "pydicom", "opencv-python-headless", "opencv-python", "Pillow"]
    if "txv-" in json.dumps(model, default=str):
        names.append("torchxrayvision")  # its model classes build the txv-* backbones
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    if "opencv-python-headless" in out:
        out.pop("opencv-python", None)
    return out


def metadata(meta: Any, pre: Preprocessing, bundle_version: str = "0.1.0") -> dict[str, Any]:
    """``configs/metadata.json`` following MONAI's metadata schema (``SCHEMA_URL``)."""
    import monai
    import torch

    classes = list(meta.classes)
    cfg = meta.train_config or {}
    data = cfg.get("data") or {}
    tables = list(dict.fromkeys(str((data.get(s) or {}).get("table")) for s in ("train", "valid")
                                if (data.get(s) or {}).get("table")))
    raw = dict(meta.metrics or {})
    metrics = {f"valid_{k}": v for k, v in (raw.get("valid") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "n_samples"}
    if isinstance(raw.get("epoch"), int):
        metrics["best_epoch"] = raw["epoch"]
    h, w = pre.hw
    grey = pre.colour == "grey"
    channel_def = ({str(i): "grey (the film's one channel)" for i in range(pre.channels)} if grey
                   else {"0": "R", "1": "G", "2": "B"})
    thresholds = {c: float(t) for c, t in zip(classes, meta.thresholds)}
    return {
        "schema": SCHEMA_URL,
        "version": bundle_version,
        "changelog": {bundle_version: f"exported by cxrkit {__version__} from model {meta.name!r}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": _versions(meta.model),
        "name": f"cxrkit {meta.name}",
        "task": f"Multi-label chest radiograph classification ({len(classes)} findings)",
        "description": (f"cxrkit model {meta.name!r} ({(meta.model or {}).get('backbone', 'network')} backbone): one "
                        f"probability per finding for a chest radiograph (PNG, JPEG, TIFF or DICOM CR / DX). "
                        f"Preprocessing: {pre.resize} to {h} x {w}, {pre.channels} channel(s), "
                        f"(x - {list(pre.mean)}) / {list(pre.std)} on the [0, 1] film."),  # type: ignore[arg-type]
        "authors": "cxrkit users (model trained and exported with cxrkit)",
        "copyright": "Copyright (c) the model's authors; bundle code under the Apache License 2.0",
        "data_source": ", ".join(tables) if tables else "not recorded in the model",
        "data_type": "dicom, png, jpeg, tiff",
        "image_classes": (f"{'grey' if grey else 'RGB'} radiograph read to [0, 1] (DICOM VOI window / LUT, "
                          f"MONOCHROME1 inverted), resized to {h} x {w}, normalised"),
        "pred_classes": "; ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "eval_metrics": metrics,
        "intended_use": "Research only. Not a medical device; not for diagnosis or patient management.",
        "references": REFERENCES,
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "XR", "num_channels": pre.channels,
                "spatial_shape": [h, w], "dtype": "float32", "value_range": _value_range(pre),
                "is_patch_data": False, "channel_def": channel_def}},
            "outputs": {"pred": {
                "type": "logits", "format": "multilabel", "num_channels": len(classes), "spatial_shape": [1],
                "dtype": "float32", "value_range": [], "is_onehot": False,
                "channel_def": {str(i): c for i, c in enumerate(classes)}}},
            "post_processed_outputs": {"pred": {
                "type": "probabilities", "format": "multilabel", "num_channels": len(classes),
                "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1], "is_onehot": False,
                "channel_def": {str(i): c for i, c in enumerate(classes)}}},
        },
        "cxrkit": {"model": meta.name, "weights_sha256": meta.weights_sha256, "label_space": meta.label_space,
                   "preprocessing": pre.to_dict(), "thresholds": thresholds,
                   "threshold_method": meta.threshold_method, "cxrkit_version": __version__},
    }


def _model_cfg(model: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(model)
    cfg["weights"] = None  # the bundle's weights come from models/model.pt, never from a download
    return cfg


def network_def(meta: Any) -> dict[str, Any]:
    """The ``network_def`` of a single model: cxrkit's builder with the saved model config."""
    return {"_target_": "cxrkit.models.build_model", "cfg": _model_cfg(meta.model), "num_classes": len(meta.classes),
            "load_weights": False}


def inference_config(meta: Any, pre: Preprocessing, dicom_filter: Mapping[str, Any] | None,
                     dataset_dir: str = "$@bundle_root + '/data'", batch_size: int = 16,
                     net_def: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``configs/inference.json``: MONAI's ConfigWorkflow (SupervisedEvaluator, SimpleInferer,
    CheckpointLoader, ClassificationSaver) around cxrkit's network and film reader."""
    pre_d = pre.to_dict()
    transforms: list[dict[str, Any]] = [
        {"_target_": "cxrkit.bundle.LoadFilmd", "keys": "image", "preprocessing": pre_d,
         "dicom_filter": dicom_filter},
        {"_target_": "cxrkit.bundle.ResizeFilmd", "keys": "image", "preprocessing": pre_d},
    ]
    if pre.colour == "grey" and pre.channels == 3:
        transforms.append({"_target_": "RepeatChanneld", "keys": "image", "repeats": 3})
    mean = list(pre.mean) * (pre.channels if len(pre.mean) == 1 else 1)  # type: ignore[arg-type]
    std = list(pre.std) * (pre.channels if len(pre.std) == 1 else 1)  # type: ignore[arg-type]
    transforms += [
        {"_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": mean, "divisor": std, "channel_wise": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": True},
    ]
    return {
        "imports": ["$import torch", "$from cxrkit.bundle import film_list",
                    "$from cxrkit.bundle import bundle_root as find_bundle_root"],
        "bundle_root": "$find_bundle_root('.')",
        "model_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": dataset_dir,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "labels": list(meta.classes),
        "network_def": dict(net_def) if net_def is not None else network_def(meta),
        "network": "$@network_def.to(@device)",
        "datalist": "$film_list(@dataset_dir)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": batch_size, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@model_dir + '/model.pt'",
             "load_dict": {"model": "@network"}, "map_location": "@device", "strict": True},
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "ClassificationSaver", "batch_transform": "$lambda batch: [b['image'].meta for b in batch]",
             "output_transform": "$monai.handlers.from_engine(['pred'])",
             "saver": {"_target_": "cxrkit.bundle.PredictionSaver", "output_dir": "@output_dir",
                       "filename": "predictions.csv", "labels": "@labels"}},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def _readme(meta: Any, pre: Preprocessing, dicom_filter: Mapping[str, Any] | None) -> str:
    classes = list(meta.classes)
    h, w = pre.hw
    rows = "\n".join(f"| {i} | {c} | {t:.4f} |" for i, (c, t) in enumerate(zip(classes, meta.thresholds)))
    filt = ("off (every readable film is used)" if dicom_filter is None else
            f"modality {', '.join(dicom_filter.get('modalities') or ['any'])}; body part must be a chest when given; "
            f"view {', '.join(dicom_filter.get('views') or ['any'])} when given")
    return f"""# cxrkit {meta.name}: MONAI Bundle

Multi-label chest radiograph classification: one probability per finding ({len(classes)} findings),
exported from a cxrkit model by `cxrkit export MODEL --bundle DIR` (cxrkit {__version__}).
**Research use only: not a medical device, not for diagnosis.**

## Run

```
# cxrkit {__version__} itself (its transforms read the films) with the bundle extras; from a
# cxrkit checkout:  pip install -e ".[bundle]"   (once published:  pip install "cxrkit[bundle]")
cd THIS_FOLDER
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/films
```

`eval/predictions.csv` gets a header (`image`, then the finding names) and one row per film: the
path, then the probability of each finding in the order of the table below (MONAI's
`ClassificationSaver` with `cxrkit.bundle.PredictionSaver`, which quotes paths properly and writes the
file whole; `configs/metadata.json` lists the same order in `network_data_format.outputs.pred.channel_def`). A film that cannot be used (unreadable, not a
chest radiograph by its DICOM header, too small) is logged and gets NaN probabilities; the run goes on.
Override anything on the command line, e.g. `--output_dir out --dataloader#batch_size 4 --device cpu`;
from another folder, give `--config_file /path/to/this/folder/configs/inference.json` (the bundle
root is found from it) or `--bundle_root`.

Checks MONAI provides:

```
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath SCHEMA.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
```

(`verify_metadata` downloads MONAI's schema to `SCHEMA.json` unless that file is already there.)

## Input

- PNG / JPEG / TIFF / BMP (8-bit / 255, 16-bit by bit depth) or DICOM CR / DX. DICOM header filter: {filt}.
- Read to [0, 1]: DICOM modality LUT, VOI LUT or window, MONOCHROME1 inverted; colour files to grey.
- Resize: {pre.resize} to {h} x {w} ({pre.interpolation}, OpenCV), {pre.channels} channel(s),
  then `(x - {list(pre.mean)}) / {list(pre.std)}`.

## Output (thresholds: {meta.threshold_method}, chosen on the validation set; in metadata.json too)

| channel | finding | threshold |
|---|---|---|
{rows}

## How it differs from `cxrkit predict`

The probabilities equal `cxrkit predict MODEL FILMS` within 1e-4 (cxrkit's tests check this on PNG
and DICOM films). Two preprocessing steps are cxrkit transforms (`cxrkit.bundle.LoadFilmd`,
`cxrkit.bundle.ResizeFilmd`) because MONAI's own do something else:

- MONAI's `PydicomReader` applies only RescaleSlope / RescaleIntercept: no Modality LUT Sequence,
  no VOI LUT / window, no MONOCHROME1 inversion (such a film comes out negative), no header filter.
- MONAI's `Resized(mode="area")` is PyTorch's adaptive average pooling; OpenCV's `INTER_AREA`,
  which the model was trained with, weighs partial pixels and gives other values whenever the
  scale factor is not a whole number.

Channel repeat, normalisation, inference, sigmoid and the CSV are MONAI's (`RepeatChanneld`,
`NormalizeIntensityd`, `SupervisedEvaluator`, `SimpleInferer`, `Activationsd`, `ClassificationSaver`).
Not in the bundle: test-time augmentation, study-level aggregation, DICOM SR output
(use `cxrkit predict` for those).
"""


LICENSE_TEXT = """The configuration and code of this bundle are licensed under the Apache License,
Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0), as cxrkit is.

The model weights (models/model.pt) were trained on: {source}.
Their use is subject to the terms of those datasets (for example the NIH ChestX-ray14 and
Stanford CheXpert research use agreements); check them before sharing or using the weights.

THE BUNDLE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND. IT IS NOT A MEDICAL DEVICE AND
MUST NOT BE USED FOR DIAGNOSIS OR PATIENT MANAGEMENT.
"""


def export_bundle(path: str | Path, out: str | Path, overwrite: bool = False, dataset_dir: str | Path | None = None,
                  dicom_filter: Mapping[str, Any] | None | str = "default", license_file: str | Path | None = None,
                  bundle_version: str = "0.1.0", check: bool = True) -> dict[str, Any]:
    """Write a MONAI Bundle for the model at ``path`` into ``out`` (staged, then swapped in).

    ``dicom_filter``: ``"default"`` (predict's: CR / DX chest radiographs), ``None`` (off) or
    a dict of :class:`~cxrkit.runtime.DicomFilter` fields. ``check`` loads the written bundle's
    network through MONAI's ConfigParser and compares it with the model on a random batch."""
    import dataclasses

    import torch

    from ..artifact import load_model
    from ..inference.runtime import DicomFilter, read_spec
    from ..utils import check_output_dir, mark_output, staged_dir

    spec = read_spec(path)
    if len(spec.preprocessings) > 1:
        sizes = ", ".join(f"{p.hw[0]} x {p.hw[1]} {p.resize} {p.channels} ch" for p in spec.preprocessings)
        raise CxrkitError(f"{spec.path}: its members need different inputs ({sizes}); a MONAI Bundle has one "
                          "preprocessing chain: export a member, or an ensemble of members with one input")
    out = check_output_dir(out, BUNDLE_COMMAND, [spec.path, *(m.path for m in spec.members)], overwrite)
    if license_file is not None and not Path(license_file).is_file():
        raise CxrkitError(f"--license {license_file}: no such file")
    if spec.kind == "model" and not spec.meta.get("calibration"):
        model = load_model(spec.path)
        meta, pre, net, net_def = model.meta, model.preprocessing, model.model, None
    else:
        meta, pre, net, net_def = _ensemble_network(spec)
    if dicom_filter == "default":
        d = dataclasses.asdict(DicomFilter())
        d.pop("enabled")
        filt: dict[str, Any] | None = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    else:
        filt = dict(dicom_filter) if isinstance(dicom_filter, Mapping) else None
    ds_dir = str(Path(dataset_dir).resolve()) if dataset_dir is not None else "$@bundle_root + '/data'"
    cfg = inference_config(meta, pre, filt, ds_dir, net_def=net_def)
    md = metadata(meta, pre, bundle_version)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    with staged_dir(out) as tmp:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "metadata.json").write_text(json.dumps(md, indent=4) + "\n")
        (tmp / "configs" / "inference.json").write_text(json.dumps(cfg, indent=4) + "\n")
        torch.save(state, tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(_readme(meta, pre, filt))
        src = md["data_source"]
        (tmp / "LICENSE").write_text(Path(license_file).read_text() if license_file is not None
                                     else LICENSE_TEXT.format(source=src))
        diff = check_bundle_network(tmp, net, pre) if check else None
        mark_output(tmp, BUNDLE_COMMAND)
    return {"bundle": str(out), "classes": len(meta.classes), "members": len(spec.members),
            "max_abs_logit_diff": diff}


def _ensemble_network(spec: Any) -> tuple[Any, Preprocessing, EnsembleNet, dict[str, Any]]:
    """An ensemble's metadata stand-in, its one preprocessing, the loaded :class:`EnsembleNet`
    and the ``network_def`` that rebuilds it."""
    import hashlib
    from types import SimpleNamespace

    from ..artifact import load_model

    loaded = [load_model(m.path) for m in spec.members]
    members = [{"cfg": _model_cfg(lm.meta.model), "num_classes": len(lm.meta.classes)} for lm in loaded]
    columns = [[m.classes.index(c) for c in spec.classes] for m in spec.members]
    weights = [float(m.weight) for m in spec.members]
    cals = [m.meta.get("calibration") for m in spec.members]
    ens_cal = spec.meta.get("calibration") if spec.kind == "ensemble" else None
    net = EnsembleNet(members, weights, columns, cals, ens_cal)
    for sub, lm in zip(net.members, loaded):
        sub.load_state_dict(lm.model.state_dict())
    net.eval()
    backbones = ", ".join(str((lm.meta.model or {}).get("backbone")) for lm in loaded)
    digest = hashlib.sha256("".join(lm.meta.weights_sha256 for lm in loaded).encode()).hexdigest()
    meta = SimpleNamespace(classes=list(spec.classes), thresholds=list(spec.thresholds), name=spec.name,
                           model={"backbone": f"ensemble of {len(loaded)} ({backbones})" if spec.kind == "ensemble"
                                  else f"{backbones}, calibrated ({spec.meta['calibration']['method']})"},
                           train_config=loaded[0].meta.train_config, metrics=spec.meta.get("metrics") or {},
                           weights_sha256=digest, label_space=spec.label_space,
                           threshold_method=str(spec.meta.get("threshold_method") or "f1"))
    net_def = {"_target_": "cxrkit.bundle.EnsembleNet", "members": members, "weights": weights, "columns": columns,
               "calibrations": cals, "calibration": ens_cal}
    return meta, spec.members[0].preprocessing, net, net_def


def check_bundle_network(bundle: Path, net: Any, pre: Preprocessing) -> float:
    """Build the bundle's ``network`` with MONAI's ConfigParser, load ``models/model.pt`` with
    ``weights_only=True`` (as MONAI's CheckpointLoader does) and compare its logits with the
    model's on a random batch; raises when they differ by more than 1e-5."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    built = parser.get_parsed_content("network_def")
    built.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    built.eval()
    h, w = pre.hw
    x = torch.randn(2, pre.channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((built(x).float() - net.eval()(x).float()).abs().max())
    if not diff <= 1e-5:
        raise ArtifactError(f"{bundle}: the bundle's network differs from the model by {diff:.2e} logits")
    return diff


def read_predictions(csv_file: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """A bundle's ``eval/predictions.csv`` -> (label names, {image path: probabilities})."""
    import csv

    with open(csv_file, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:1] != ["image"]:
        raise CxrkitError(f"{csv_file}: not a bundle's predictions (no 'image' header)")
    labels, out = rows[0][1:], {}
    for r in rows[1:]:
        if len(r) != len(labels) + 1:
            raise CxrkitError(f"{csv_file}: a row with {len(r) - 1} values for {len(labels)} labels")
        out[r[0]] = np.asarray([float(v) for v in r[1:]], np.float64)
    return labels, out


__all__: Sequence[str] = ["LoadFilmd", "ResizeFilmd", "film_list", "export_bundle", "metadata", "inference_config",
                          "read_predictions", "SCHEMA_URL"]
