"""``cxrkit evaluate``: a saved model or ensemble on a labelled table -> per-class AUC / AP / F1
and means, per image or per study."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..data.tables import load_table
from ..errors import CxrkitError
from ..labels import subsets_for
from ..metrics import summarize
from .predict import Failure, predict_paths, table_items
from .runtime import aggregate_studies

log = logging.getLogger(__name__)


def evaluate_table(model: Any, table_path: str | Path, images_root: str | Path | None = None,
                   format: str | None = None, split: str | None = None, batch_size: int = 32, workers: int = 0,
                   tta: str | bool | None = None, uncertain: str = "ignore", study: str | None = None,
                   lateral_weight: float = 0.5, show_progress: bool = True, return_scores: bool = False,
                   corruptions: list[Any] | None = None) -> dict[str, Any]:
    """Predict every readable image of the table and score the model's classes that the table
    has. Uncertain labels are scored by ``uncertain`` (default: ignored). With ``study``
    (max / mean / view-weighted) images are aggregated per study first (labels: the maximum
    over the study's images, unknown only if unknown everywhere)."""
    from ..train.trainer import eval_targets, select_split

    table = load_table(table_path, format=format)
    if split:
        table = select_split(table, split)
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
    corrupted: dict[str, dict[str, Any]] = {}
    for c in corruptions or []:  # the same images, each corrupted after decoding (seed 004, Table 8)
        cp, cidx, _ = predict_paths(model, [it.path for it in items], batch_size, workers, tta, show_progress,
                                    description=f"evaluating ({c.label})", corrupt=c)
        keep = np.isin(idx, cidx)
        cpos = {int(k): j for j, k in enumerate(cidx)}
        corrupted[c.label] = {"corruption": c.to_dict(), "_probs": cp[[cpos[int(k)] for k in idx[keep]]],
                              "_keep": keep}
    if len(idx) == 0:
        raise CxrkitError(f"{table_path}: none of the images could be read ({failures[0].detail})")
    id_to_row = {str(t): i for i, t in enumerate(table.ids)}
    rows = np.array([id_to_row[items[i].id] for i in idx])
    cols_model = [model.classes.index(c) for c in present]
    cols_table = [table.classes.index(c) for c in present]
    targets = eval_targets(table.labels[rows][:, cols_table].astype(np.float32), uncertain)
    scores = probs[:, cols_model]
    unit = "image"
    if study:
        studies = table.meta["study"].to_numpy()[rows] if "study" in table.meta.columns else table.ids[rows]
        views = table.meta["view"].to_numpy()[rows] if "view" in table.meta.columns else None
        ids, scores, _ = aggregate_studies(scores, list(studies), views, study, lateral_weight)
        t = np.full((len(ids), len(present)), np.nan, dtype=np.float32)
        pos = {s: k for k, s in enumerate(ids)}
        for r, s in enumerate(studies):
            k = pos[str(s)]
            t[k] = np.fmax(t[k], targets[r])  # NaN-aware maximum
        targets = t
        unit = f"study ({study})"
    thresholds = np.asarray(model.thresholds)[cols_model]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = summarize(targets, scores, present, thresholds=thresholds,
                            subsets=subsets_for(present, getattr(getattr(model, "spec", None), "label_space", None)))
    summary["warnings"] = sorted({str(w.message) for w in caught})
    from .calibration import calibration_summary

    cal = calibration_summary(targets, scores, present)  # MONAI's ECE / ACE / MCE binning, and Brier
    summary["calibration"] = {k: v for k, v in cal.items() if k != "classes"}
    for c in summary["classes"]:
        c.update(cal["classes"].get(c["name"]) or {})
    summary["calibrated"] = getattr(model, "calibration_method", None)
    if corrupted:
        summary["corruptions"] = _corrupted_scores(corrupted, summary, targets, rows, table, present, cols_model,
                                                   thresholds, study, lateral_weight, scores_clean=scores)
    zs: set[str] = set()
    for m in getattr(getattr(model, "spec", None), "members", []) or []:
        zs |= set(((m.meta.get("extra") or {}).get("zero_shot") or {}).get("classes") or {})
    if zs:  # classes scored from text prompts (cxrkit zeroshot / probe --zero-shot): marked, scored alike
        summary["zero_shot_classes"] = [c for c in present if c in zs]
        for c in summary["classes"]:
            c["zero_shot"] = c["name"] in zs
    summary["table"] = str(table_path)
    summary["model"] = str(getattr(getattr(model, "spec", None), "path", ""))
    summary["unit"] = unit
    summary["n_failed"] = len(failures)
    summary["failures"] = [f.to_dict() for f in failures[:100]]
    summary["tta"] = tta if isinstance(tta, str) else ("seed000+flip" if tta else "none")
    if return_scores:
        summary["_scores"], summary["_targets"] = scores, targets
    return summary


def _corrupted_scores(corrupted: dict[str, dict[str, Any]], clean: dict[str, Any], targets: np.ndarray,
                      rows: np.ndarray, table: Any, present: list[str], cols_model: list[int],
                      thresholds: np.ndarray, study: str | None, lateral_weight: float,
                      scores_clean: np.ndarray) -> dict[str, Any]:
    """Per corruption: mAUC / mAP / per-class AUC beside the clean scores of the same images."""
    out: dict[str, Any] = {}
    for label, c in corrupted.items():
        keep = c["_keep"]
        scores = c["_probs"][:, cols_model]
        t = targets
        if study:
            r = rows[keep]
            studies = table.meta["study"].to_numpy()[r] if "study" in table.meta.columns else table.ids[r]
            views = table.meta["view"].to_numpy()[r] if "view" in table.meta.columns else None
            _, scores, _ = aggregate_studies(scores, list(studies), views, study, lateral_weight)
        elif not keep.all():
            t = targets[keep]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = summarize(t, scores, present, thresholds=thresholds)
        out[label] = {"corruption": c["corruption"], "mAUC": s.get("mAUC"), "mAP": s.get("mAP"),
                      "clean_mAUC": clean.get("mAUC"), "clean_mAP": clean.get("mAP"),
                      "n_images": int(keep.sum()),
                      "classes": [{"name": k["name"], "auc": k["auc"], "ap": k["ap"],
                                   "clean_auc": ck["auc"], "clean_ap": ck["ap"]}
                                  for k, ck in zip(s["classes"], clean["classes"])]}
    return out

