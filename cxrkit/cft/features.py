"""The feature cache of Category-wise Fine-Tuning (seed 000, sec. III-D, "Remark").

The frozen backbone runs once per split; its features ``z`` (N x Z, or N x C x Z for
models with per-class features) are stored with the split's labels and ids in a
memory-mapped ``.npy`` (float32 or float16), so millions of rows fit and every later CFT run
reuses them. The cache key covers the model weights, the preprocessing, the table file,
the split and every image file's size and mtime: a change to any of them gives a new entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..artifact import LoadedModel
from ..data.dataset import FileDataset, default_cache_dir, readable_batches
from ..data.tables import LabelTable, load_table, resolve_image_paths
from ..errors import CxrkitError
from ..inference.engines import run_batches
from ..utils import sha256_file, staged_dir, update_with_file_stats

log = logging.getLogger(__name__)

FEATURE_DTYPES = ("float32", "float16")


@dataclass
class FeatureSet:
    """Cached features of one split, aligned with the model's classes."""

    z: np.ndarray  # N x Z (or N x C x Z), memory-mapped
    labels: np.ndarray  # N x C raw labels (1 / 0 / -1 / NaN) in the model's class order
    ids: list[str]
    classes: list[str]
    meta: dict[str, Any]
    path: Path | None = None
    groups: list[str] | None = None  # patient (or study) of each row, for grouped splits

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def per_class(self) -> bool:
        return self.z.ndim == 3

    def class_features(self, c: int, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 features of class ``c`` (the shared z, or that class's own features)."""
        z = self.z[:, c, :] if self.per_class else self.z
        z = z if rows is None else z[rows]
        return np.ascontiguousarray(z, dtype=np.float32)

    def subset(self, rows: np.ndarray) -> FeatureSet:
        rows = np.asarray(rows)
        return FeatureSet(self.z[rows], self.labels[rows], [self.ids[i] for i in rows], self.classes,
                          dict(self.meta), None, [self.groups[i] for i in rows] if self.groups else None)

    def logits(self, w: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Logits of every row under head rows (w, b), chunked over rows."""
        out = np.empty((len(self), w.shape[0]), dtype=np.float32)
        for s in range(0, len(self), chunk):
            z = np.asarray(self.z[s:s + chunk], dtype=np.float32)
            out[s:s + chunk] = (np.einsum("ncz,cz->nc", z, w) if self.per_class else z @ w.T) + b
        return out


def default_feature_dir() -> Path:
    return default_cache_dir().parent / "features"


def feature_weights_sha(model: LoadedModel) -> str:
    """SHA-256 of the weights the features depend on: every tensor but the head's for a
    classifier (the head rows are what probe / CFT / calibration change, so their models share
    one cache entry), the whole model for per-class-feature architectures."""
    net = model.model
    if getattr(net, "per_class_features", False) or not isinstance(getattr(net, "head", None), torch.nn.Linear):
        return model.meta.weights_sha256
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        if k.startswith("head."):
            continue
        t = v.detach().cpu().reshape(-1).contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_key(model: LoadedModel, table: Path, split: str | None, images_root: str | Path | None,
                paths: list[Path], dtype: str) -> str:
    h = hashlib.sha256()
    h.update(feature_weights_sha(model).encode())
    h.update(json.dumps(list(model.classes)).encode())  # the cached labels are in the model's class order
    h.update(json.dumps(model.meta.preprocessing, sort_keys=True).encode())
    h.update(sha256_file(table).encode())
    h.update(f"{split}|{images_root}|{dtype}".encode())
    update_with_file_stats(h, paths)
    return h.hexdigest()[:24]


def _select(table: LabelTable, split: str | None) -> LabelTable:
    if not split:
        return table
    from ..train.trainer import select_split

    return select_split(table, split)


def extract_features(model: LoadedModel, table_path: str | Path, split: str | None = None,
                     images_root: str | Path | None = None, format: str | None = None,
                     cache_dir: str | Path | None = None, dtype: str = "float32", batch_size: int = 64,
                     workers: int = 0, show_progress: bool = True, role: str = "") -> FeatureSet:
    """Features of every readable image of a table (one split of it), cached on disk."""
    if dtype not in FEATURE_DTYPES:
        raise CxrkitError(f"feature dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    table_path = Path(table_path)
    table = _select(load_table(table_path, format=format), split)
    paths, exists = resolve_image_paths(table, images_root)
    root = Path(cache_dir) if cache_dir is not None else default_feature_dir()
    key = feature_key(model, table_path, split, images_root, list(paths), dtype)
    d = root / key
    if (d / "meta.json").is_file():
        try:
            meta = json.loads((d / "meta.json").read_text())
            z = np.load(d / "z.npy", mmap_mode="r")
            labels = np.load(d / "labels.npy")
            ids = json.loads((d / "ids.json").read_text())
            groups = json.loads((d / "groups.json").read_text())
            log.info("feature cache hit: %s (%d rows)", d, len(ids))
            return FeatureSet(z, labels, ids, list(meta["classes"]), meta, d, groups)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            log.warning("feature cache %s unreadable; recomputing", d)

    # labels in the model's class order; classes the table lacks are unknown
    labels_all = np.full((len(table), len(model.classes)), np.nan, dtype=np.float32)
    present = [(j, table.classes.index(c)) for j, c in enumerate(model.classes) if c in table.classes]
    if not present:
        raise CxrkitError(f"{table_path}: has none of the model's classes")
    for j, k in present:
        labels_all[:, j] = table.labels[:, k]
    pre = model.preprocessing
    good = np.flatnonzero(exists)
    ds = FileDataset([paths[i] for i in good], pre)  # exactly what predict feeds the model
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    failures: list[dict[str, str]] = [{"path": str(paths[i]), "reason": "missing", "detail": "file not found"}
                                      for i in np.flatnonzero(~exists)]

    def fail(i: int, reason: str, detail: str) -> None:
        failures.append({"path": str(ds.paths[i]), "reason": reason, "detail": detail})

    net = model.model

    def fn(x: torch.Tensor) -> torch.Tensor:
        return net.features(x)

    with staged_dir(d) as tmp:
        z_file = tmp / "z.npy"
        rows: list[np.ndarray] = []
        out = None
        filled = 0
        for x, idx in _progress_batches(readable_batches(loader, fail), show_progress, role, len(loader)):
            feats, _k = run_batches(fn, [(x, None)], model.device, show_progress=False)
            if out is None:
                out = np.lib.format.open_memmap(z_file, mode="w+", dtype=np.dtype(dtype),
                                                shape=(len(good), *feats.shape[1:]))
            out[filled:filled + len(feats)] = feats.astype(dtype)
            filled += len(feats)
            rows.append(good[idx])
        if out is None or filled == 0:
            raise CxrkitError(f"{table_path}: none of the images could be read"
                              + (f" ({failures[0]['detail']})" if failures else ""))
        out.flush()
        del out
        ok = np.concatenate(rows)
        if filled < len(good):  # drop the unused tail of the memory map
            z = np.load(z_file, mmap_mode="r")[:filled].copy()
            np.save(z_file, z)
            del z
        ids = [str(table.ids[i]) for i in ok]
        groups = _groups(table, ok)
        np.save(tmp / "labels.npy", labels_all[ok])
        (tmp / "ids.json").write_text(json.dumps(ids))
        (tmp / "groups.json").write_text(json.dumps(groups))
        meta = {"classes": list(model.classes), "table": str(table_path), "split": split, "dtype": dtype,
                "n": len(ok), "n_failed": int(len(table) - len(ok)), "model_sha256": model.meta.weights_sha256,
                "failures": failures[:1000]}
        (tmp / "meta.json").write_text(json.dumps(meta))
    return FeatureSet(np.load(d / "z.npy", mmap_mode="r"), np.load(d / "labels.npy"),
                      json.loads((d / "ids.json").read_text()), list(model.classes), meta, d,
                      json.loads((d / "groups.json").read_text()))


def _groups(table: LabelTable, rows: np.ndarray) -> list[str]:
    """Patient of each row (else study, else id): hold-out splits never split a patient."""
    for col in ("patient", "study"):
        if col in table.meta.columns:
            vals = table.meta[col].astype(str).to_numpy()
            if all(v and v != "nan" for v in vals[rows]):
                return [str(vals[i]) for i in rows]
    return [str(table.ids[i]) for i in rows]


def _progress_batches(batches: Any, show: bool, role: str, total: int) -> Any:
    from ..utils import progress

    return progress(batches, f"features ({role})" if role else "features", total=total, enabled=show)


def head_rows(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The C x Z weight and C bias of the model's per-class logistic regressions."""
    net = model.module if hasattr(model, "module") else model
    head = net.head
    return (head.weight.detach().cpu().numpy().astype(np.float32).copy(),
            head.bias.detach().cpu().numpy().astype(np.float32).copy())


def set_head_rows(model: torch.nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    net = model.module if hasattr(model, "module") else model
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
        net.head.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
