"""Simulated partial labels for fully labelled sets (seed 000, sec. IV-B: "randomly drop
labels to simulate known label proportions of 10 %, ..., 90 %").

Each image keeps ``round(known * C)`` of its C labels (at least one), chosen uniformly at
random; the rest become unknown (NaN). Seeded: the same table, proportion and seed give the
same split, so every method of a comparison sees the same known labels (the split is also
saved into each run folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .tables import LabelTable, resolve_image_paths


def partial_mask(n: int, c: int, known: float, seed: int = 0) -> np.ndarray:
    """Boolean N x C mask of the labels kept (exactly round(known * C) per row, >= 1)."""
    if not 0 < known <= 1:
        raise ConfigError(f"known proportion must be in (0, 1], got {known}")
    k = max(1, int(round(known * c)))
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n, c)), axis=1)
    mask = np.zeros((n, c), dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask


def simulate_partial(labels: np.ndarray, known: float, seed: int = 0) -> np.ndarray:
    """A copy of ``labels`` with only the kept labels; the others NaN (already unknown labels
    stay unknown)."""
    labels = np.asarray(labels, dtype=np.float32)
    mask = partial_mask(labels.shape[0], labels.shape[1], known, seed)
    return np.where(mask, labels, np.float32(np.nan)).astype(np.float32)


def partial_table(table: LabelTable, known: float, seed: int = 0) -> LabelTable:
    t = table.select(np.arange(len(table)))
    t.labels = simulate_partial(table.labels, known, seed)
    t.extra = dict(table.extra, partial_known=known, partial_seed=seed)
    return t


def write_portable(table: LabelTable, out: str | Path, images_root: str | Path | None = None) -> Path:
    """Write ``table`` as a generic CSV whose image paths are relative to the output's folder,
    so the copy finds its images from wherever it is written."""
    out = Path(out)
    paths, ok = resolve_image_paths(table, images_root)
    t = table.select(np.arange(len(table)))
    t.paths = np.array([os.path.relpath(p.resolve(), out.resolve().parent) if e else str(orig)
                        for p, e, orig in zip(paths, ok, table.paths)], dtype=object)
    return t.to_csv(out)


def write_partial_table(table: LabelTable, out: str | Path, known: float, seed: int = 0,
                        images_root: str | Path | None = None) -> Path:
    """``cxrkit data partial``: the partially labelled copy (portable generic CSV)."""
    t = partial_table(table, known, seed)
    t.meta = t.meta.copy()
    t.meta["partial_known"] = known
    t.meta["partial_seed"] = seed
    return write_portable(t, out, images_root)
