"""``cxrkit evaluate``: a saved model on a labelled table -> per-class AUC / AP / F1 and means."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .data.tables import load_table
from .errors import CxrkitError
from .labels import subsets_for
from .metrics import summarize
from .predict import Failure, predict_paths, table_items

log = logging.getLogger(__name__)


def evaluate_table(model: Any, table_path: str | Path, images_root: str | Path | None = None,
                   format: str | None = None, split: str | None = None, batch_size: int = 32, workers: int = 0,
                   tta: str | bool | None = None, uncertain: str = "ignore",
                   show_progress: bool = True) -> dict[str, Any]:
    """Predict every readable image of the table and score the model's classes that the table
    has. Uncertain labels are scored by ``uncertain`` (default: ignored)."""
    from .train.trainer import eval_targets

    table = load_table(table_path, format=format)
    if split:
        table = table.split(split)
    present = [c for c in model.classes if c in table.classes]
    missing = [c for c in model.classes if c not in table.classes]
    if not present:
        raise CxrkitError(f"{table_path}: has none of the model's classes ({', '.join(model.classes[:5])}...)")
    if missing:
        log.warning("%s: the table has no labels for %d model class(es): %s", table_path, len(missing),
                    ", ".join(missing))
    failures: list[Failure] = []
    items = table_items(table, images_root, failures)
    if not items:
        raise CxrkitError(f"{table_path}: none of its {len(table)} images were found "
                          "(use --images-root to say where they are)")
    probs, idx, fails = predict_paths(model, [it.path for it in items], batch_size, workers, tta, show_progress,
                                      description="evaluating")
    failures += fails
    if len(idx) == 0:
        raise CxrkitError(f"{table_path}: none of the images could be read ({failures[0].detail})")
    id_to_row = {str(t): i for i, t in enumerate(table.ids)}
    rows = np.array([id_to_row[items[i].id] for i in idx])
    cols_model = [model.classes.index(c) for c in present]
    cols_table = [table.classes.index(c) for c in present]
    targets = eval_targets(table.labels[rows][:, cols_table].astype(np.float32), uncertain)
    scores = probs[:, cols_model]
    thresholds = model.thresholds[cols_model]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = summarize(targets, scores, present, thresholds=thresholds,
                            subsets=subsets_for(present, getattr(model.meta, "label_space", None)))
    summary["warnings"] = sorted({str(w.message) for w in caught})
    summary["table"] = str(table_path)
    summary["model"] = str(model.path)
    summary["n_failed"] = len(failures)
    summary["failures"] = [f.to_dict() for f in failures[:100]]
    summary["tta"] = tta if isinstance(tta, str) else ("seed000+flip" if tta else "none")
    return summary
