"""Batch inference: inputs (files, folders, label tables) -> one row per image, failures ->
reasons.

Images are decoded in parallel workers through the model's own preprocessing; a file that
cannot be used becomes a row in the failures file (path, reason, detail) and never stops
the run.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.augment import tta_views
from .data.dataset import FileDataset, readable_batches
from .data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file
from .data.tables import LabelTable, load_table, resolve_image_paths
from .errors import CxrkitError, FailureReason
from .inference import run_batches
from .utils import atomic_write

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".json", ".gz", ".tsv"}


@dataclass
class InputItem:
    """One image to predict: its path, the id written in the output, and table metadata."""

    path: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    path: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def _is_image_candidate(p: Path) -> bool:
    suf = p.suffix.lower()
    return suf in IMAGE_SUFFIXES or suf in DICOM_SUFFIXES or (suf == "" and is_dicom_file(p))


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for fn in sorted(files):
            yield Path(dirpath) / fn


def collect_inputs(inputs: Sequence[str | Path], images_root: str | Path | None = None,
                   table_format: str | None = None) -> tuple[list[InputItem], list[Failure]]:
    """Expand inputs: an image file, a folder (recursive: PNG/JPEG/BMP/TIFF/DICOM, and files
    without a suffix that carry the DICOM preamble) or a label table (its image paths).
    Everything that is not used is returned as a :class:`Failure` with its reason."""
    items: list[InputItem] = []
    failures: list[Failure] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            failures.append(Failure(str(p), FailureReason.MISSING.value, "file or folder not found"))
            continue
        if p.is_dir():
            found = 0
            for f in _walk(p):
                if f.name.startswith(".") and f.suffix.lower() not in IMAGE_SUFFIXES | DICOM_SUFFIXES:
                    continue
                if _is_image_candidate(f):
                    items.append(InputItem(f, str(f)))
                    found += 1
                else:
                    failures.append(Failure(str(f), "unsupported_file", "not an image, DICOM or known suffix"))
            if not found:
                log.warning("%s: no image files found", p)
            continue
        if p.suffix.lower() in TABLE_SUFFIXES or p.name.lower().endswith(".csv.gz"):
            table = load_table(p, format=table_format)
            items += table_items(table, images_root, failures)
            continue
        items.append(InputItem(p, str(p)))
    return items, failures


def table_items(table: LabelTable, images_root: str | Path | None, failures: list[Failure]) -> list[InputItem]:
    paths, exists = resolve_image_paths(table, images_root)
    out = []
    meta_cols = [c for c in ("study", "view", "patient") if c in table.meta.columns]
    for i, (pth, ok) in enumerate(zip(paths, exists)):
        if not ok:
            failures.append(Failure(str(table.paths[i]), FailureReason.MISSING.value, f"image not found ({pth})"))
            continue
        out.append(InputItem(pth, str(table.ids[i]), {c: table.meta[c].iloc[i] for c in meta_cols}))
    return out


def predict_paths(model: Any, paths: Sequence[Path], batch_size: int = 16, workers: int = 0,
                  tta: str | bool | None = None, show_progress: bool = True, description: str = "predicting"
                  ) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Probabilities for every readable file. Returns (probs n_ok x C, indices of those files
    in ``paths``, failures). ``model`` is a loaded model (``predict`` / ``preprocessing``)."""
    paths = list(paths)
    failures: list[Failure] = []
    if not paths:
        return np.zeros((0, len(model.classes)), np.float32), np.zeros(0, np.int64), failures
    ds = FileDataset(paths, model.preprocessing)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    views = tta_views(tta)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model.logits(x))

    def fail(i: int, reason: str, detail: str) -> None:
        failures.append(Failure(str(paths[i]), reason, detail))

    probs, keys = run_batches(fn, readable_batches(loader, fail), model.device, views=views,
                              description=description, total=len(loader), show_progress=show_progress)
    idx = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    if probs.size == 0:
        probs = np.zeros((0, len(model.classes)), np.float32)
    return probs, idx.astype(np.int64), failures


def write_predictions(out: str | Path, items: Sequence[InputItem], probs: np.ndarray, classes: Sequence[str],
                      extra_columns: dict[str, Sequence[Any]] | None = None) -> Path:
    """CSV with ``path`` (the input's id), table metadata when present, and one probability
    column per class; written atomically."""
    meta_keys = sorted({k for it in items for k in it.meta})
    with atomic_write(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        extra = extra_columns or {}
        w.writerow(["path", *meta_keys, *extra.keys(), *classes])
        for r, it in enumerate(items):
            w.writerow([it.id, *(it.meta.get(k, "") for k in meta_keys), *(v[r] for v in extra.values()),
                        *(f"{p:.6f}" for p in probs[r])])
    return Path(out)


def write_failures(out: str | Path, failures: Sequence[Failure]) -> Path:
    with atomic_write(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "reason", "detail"])
        w.writeheader()
        for fl in failures:
            w.writerow(fl.to_dict())
    return Path(out)


def failures_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


def run_predict(model: Any, inputs: Sequence[str | Path], out: str | Path, batch_size: int = 16, workers: int = 0,
                tta: str | bool | None = None, images_root: str | Path | None = None,
                show_progress: bool = True) -> dict[str, Any]:
    """``cxrkit predict``: collect inputs, predict, write ``out`` and ``<out>.failures.csv``."""
    items, failures = collect_inputs(inputs, images_root)
    probs, idx, fails = predict_paths(model, [it.path for it in items], batch_size, workers, tta, show_progress)
    failures += fails
    done = [items[i] for i in idx]
    write_predictions(out, done, probs, model.classes)
    fpath = write_failures(failures_path(out), failures)
    if not done:
        raise CxrkitError(f"nothing could be predicted ({len(failures)} input(s) failed; see {fpath})")
    return {"predicted": len(done), "failed": len(failures), "out": str(out), "failures": str(fpath)}
