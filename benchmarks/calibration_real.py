"""Calibration on real films: ECE / ACE / MCE / Brier / mAUC before and after each method, on
validation films the calibration was not fitted on, and what an operating point chosen on the
fitted half reaches on the other half.

The model's validation films are predicted once; for each seed they are split in two halves
(fit / check, a seeded draw of images); each method is fitted on the fit half and measured on
the check half. The numbers are means over the seeds (and over classes with known labels of
both kinds in the check half).

    python benchmarks/calibration_real.py --model runs/nih_hires/model
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings

import numpy as np

from cxrkit.calibration import (apply_calibration, calibration_summary, fit_calibration, operating_points,
                                operating_points_at)
from cxrkit.ensemble import load_predictor
from cxrkit.evaluate import evaluate_table
from cxrkit.inference.runtime import cpu_model_name
from cxrkit.metrics import roc_auc


def main() -> None:
    data = os.environ.get("CXRKIT_DATA", "../shared/data")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--table", default=f"{data}/nih_hires/labels.csv")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--methods", default="temperature,platt,isotonic")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--holdout", type=float, default=0.5)
    ap.add_argument("--operating-point", default="sensitivity=0.90")
    ap.add_argument("--min-positives", type=int, default=10,
                    help="second table: only classes with at least this many positives among the films")
    a = ap.parse_args()

    pred = load_predictor(a.model, engine="torch")
    pred.drop_own_calibration()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_table(pred, a.table, split=a.split, return_scores=True, show_progress=False)
    p, y = ev.pop("_scores").astype(np.float64), ev.pop("_targets").astype(np.float64)
    classes = [c["name"] for c in ev["classes"]]
    print(f"{a.model} on {a.table} ({a.split}): {len(p)} films, {len(classes)} classes; CPU: {cpu_model_name() or platform.processor() or 'unknown CPU'}")
    print(f"halves: fit {1 - a.holdout:.0%} / check {a.holdout:.0%} of the films, seeds {a.seeds}\n")
    seeds = [int(s) for s in a.seeds.split(",")]
    n_pos = np.nansum(y == 1, axis=0)
    common = [c for c, n in zip(classes, n_pos) if n >= a.min_positives]
    for title, keep in ((f"all {len(classes)} classes", classes),
                        (f"the {len(common)} classes with >= {a.min_positives} positives ({', '.join(common)})", common)):
        if not keep:
            continue
        cols = [classes.index(c) for c in keep]
        print(f"### {title}\n")
        _table(p[:, cols], y[:, cols], keep, seeds, a)


def _table(p: np.ndarray, y: np.ndarray, classes: list[str], seeds: list[int], a: argparse.Namespace) -> None:
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(p))
        k = int(round(a.holdout * len(p)))
        check, fit = order[:k], order[k:]
        base = calibration_summary(y[check], p[check], classes)
        auc0 = np.nanmean(roc_auc(y[check], p[check]))
        rows.setdefault("none (raw sigmoid)", []).append(
            {"ece": base["mean_ece"], "ace": base["mean_ace"], "mce": base["mean_mce"], "brier": base["mean_brier"],
             "auc": auc0, **_op(y, p, fit, check, classes, a.operating_point)})
        for m in a.methods.split(","):
            cal = fit_calibration(p[fit], y[fit], classes, m)
            q = apply_calibration(p, cal)
            s = calibration_summary(y[check], q[check], classes)
            rows.setdefault(m, []).append(
                {"ece": s["mean_ece"], "ace": s["mean_ace"], "mce": s["mean_mce"], "brier": s["mean_brier"],
                 "auc": np.nanmean(roc_auc(y[check], q[check])), **_op(y, q, fit, check, classes, a.operating_point)})
    head = ("method", "mean ECE", "mean ACE", "mean MCE", "mean Brier", "mAUC",
            f"{a.operating_point}: sens. reached", "spec. reached")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m, rs in rows.items():
        mean = {k: float(np.nanmean([r[k] for r in rs])) for k in rs[0]}
        print(f"| {m} | {mean['ece']:.4f} | {mean['ace']:.4f} | {mean['mce']:.4f} | {mean['brier']:.4f} | "
              f"{mean['auc']:.4f} | {mean['sens']:.3f} | {mean['spec']:.3f} |")
    print("\n(ECE / ACE / MCE: MONAI's 20-bin CalibrationErrorMetric, expected / average / maximum; means over "
          "classes, then seeds; sensitivity / specificity on the check half at the thresholds chosen on the fit "
          "half, means over classes with check positives)\n")


def _op(y: np.ndarray, q: np.ndarray, fit: np.ndarray, check: np.ndarray, classes: list[str],
        target: str) -> dict[str, float]:
    op = operating_points(y[fit], q[fit], classes, target)
    thr = [v["threshold"] if v else np.inf for v in op["classes"].values()]
    at = operating_points_at(y[check], q[check], classes, thr)
    sens = [v["sensitivity"] for c, v in at.items() if v["sensitivity"] is not None and op["classes"][c]]
    spec = [v["specificity"] for c, v in at.items() if v["specificity"] is not None and op["classes"][c]]
    return {"sens": float(np.mean(sens)) if sens else np.nan, "spec": float(np.mean(spec)) if spec else np.nan}


if __name__ == "__main__":
    main()
