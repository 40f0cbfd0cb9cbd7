"""``cxrkit calibrate``: fit a model's (or an ensemble's) calibration and operating points on
a labelled table and write the calibrated copy. The maps, metrics and operating points
themselves are :mod:`cxrkit.calibration` (numpy only, used by the runtime)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import (METHODS, apply_calibration, calibration_summary, fit_calibration, operating_points,
                          operating_points_at, parse_operating_point, plot_reliability, _f)
from ..errors import CxrkitError


# ---------------------------------------------------------------------------------------


def _holdout_masks(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= holdout < 1.0:
        raise CxrkitError(f"--holdout must be in [0, 1) (got {holdout})")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(holdout * n))
    test = np.zeros(n, bool)
    test[order[:k]] = True
    return ~test, test


def _report(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    from ..metrics import roc_auc

    s = calibration_summary(targets, probs, classes)
    auc = roc_auc(targets, probs)
    s["mAUC"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else None
    s["auc"] = [_f(v) for v in auc]
    return s


def run_calibrate(model: str | Any, table: str | Any, out: str | Any, method: str = "temperature",
                  operating_point: str | None = None, split: str | None = None, images_root: Any = None,
                  format: str | None = None, holdout: float = 0.3, seed: int = 0, uncertain: str = "ignore",
                  batch_size: int = 32, workers: int = 0, overwrite: bool = False,
                  show_progress: bool = True) -> dict[str, Any]:
    """Fit a calibration (``method``: temperature, platt, isotonic or none) and optionally an
    operating point on ``table``'s known labels, less a seeded ``holdout`` share of its
    images on which the before / after numbers are measured; write the model (or ensemble)
    with them to ``out``. A model calibrated before is fitted again from its raw outputs;
    an ensemble is calibrated as a whole, on the average of its (possibly calibrated) members."""
    import json
    import shutil

    from .ensemble import load_predictor
    from .evaluate import evaluate_table
    from .runtime import ENSEMBLE_FILE, MODEL_FILE, read_spec
    from ..utils import check_output_dir, mark_output, staged_dir, write_json

    if method not in (*METHODS, "none"):
        raise CxrkitError(f"--method must be one of {', '.join(METHODS)} or none (got {method!r})")
    if operating_point:
        parse_operating_point(operating_point)
    if not 0.0 <= holdout < 1.0:
        raise CxrkitError(f"--holdout must be in [0, 1) (got {holdout})")
    spec = read_spec(model)
    if method == "none" and not operating_point and not spec.meta.get("calibration"):
        raise CxrkitError("--method none without --operating-point changes nothing (the model is not calibrated)")
    out = check_output_dir(out, "calibrate", [spec.path], overwrite)
    pred = load_predictor(spec.path, engine="torch")
    pred.drop_own_calibration()
    ev = evaluate_table(pred, table, images_root=images_root, format=format, split=split, batch_size=batch_size,
                        workers=workers, uncertain=uncertain, show_progress=show_progress, return_scores=True)
    scores, targets = ev.pop("_scores"), ev.pop("_targets")
    classes = list(spec.classes)
    present = [c["name"] for c in ev["classes"]]
    probs = np.full((len(scores), len(classes)), 0.5)
    y = np.full((len(scores), len(classes)), np.nan)
    for j, c in enumerate(present):
        probs[:, classes.index(c)], y[:, classes.index(c)] = scores[:, j], targets[:, j]
    fit, test = _holdout_masks(len(probs), holdout, seed)
    cal = None
    if method != "none":
        cal = fit_calibration(probs[fit], y[fit], classes, method)
        cal["fitted_on"] = {"table": str(table), "split": split, "images": int(fit.sum()),
                            "holdout": holdout, "seed": seed}
    after = apply_calibration(probs, cal)
    op = None
    thresholds = list(spec.thresholds)
    old_cal = spec.meta.get("calibration")
    old_op = (spec.meta.get("operating_point") or {}).get("target")
    if not operating_point and old_cal:  # old thresholds live on the old probabilities: chosen again
        method0 = str(spec.meta.get("threshold_method") or "f1")
        operating_point = old_op or (method0 if method0 in ("f1", "youden") else "f1")
    if operating_point:
        op = operating_points(y[fit], after[fit], classes, operating_point)
        op["table"], op["split"], op["images"] = str(table), split, int(fit.sum())
        thresholds = [float(v["threshold"]) if v else thresholds[i] for i, v in enumerate(op["classes"].values())]
    elif cal is not None:  # the calls stay where they were: each threshold through the same map
        thresholds = [float(v) for v in apply_calibration(np.asarray([thresholds]), cal)[0]]
    check = test if test.any() else fit
    report: dict[str, Any] = {
        "method": method, "operating_point": operating_point, "table": str(table), "split": split,
        "images_fit": int(fit.sum()), "images_check": int(check.sum()),
        "check_is_holdout": bool(test.any()),
        "before": _report(y[check], probs[check], classes), "after": _report(y[check], after[check], classes)}
    if op is not None and test.any():  # what the chosen thresholds reach on films they were not chosen on
        report["operating_point_check"] = operating_points_at(y[test], after[test], classes, thresholds)
    with staged_dir(out) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(spec.path, tmp, ignore=shutil.ignore_patterns(".cxrkit-output*", "calibration"))
        mark_output(tmp, "calibrate")
        f = tmp / (ENSEMBLE_FILE if spec.kind == "ensemble" else MODEL_FILE)
        meta = json.loads(f.read_text())
        meta["calibration"], meta["thresholds"] = cal, thresholds
        if operating_point:
            meta["operating_point"], meta["threshold_method"] = op, op["target"] if op else operating_point
        elif cal is not None and meta.get("operating_point"):
            meta["operating_point"] = None  # chosen on the old probabilities; the thresholds were mapped
        if spec.kind == "model":
            meta["format_version"] = 2 if cal else 1
        f.write_text(json.dumps(meta, indent=2, default=float) + "\n")
        (tmp / "calibration").mkdir()
        write_json(tmp / "calibration" / "report.json", report)
        known = np.isfinite(y[check])
        if known.any():
            plot_reliability(y[check], {"before": probs[check], f"after ({method})": after[check]},
                             tmp / "calibration" / "reliability.png",
                             title=f"Reliability on {int(check.sum())} {'held-out ' if test.any() else ''}images")
    report["out"] = str(out)
    return report


