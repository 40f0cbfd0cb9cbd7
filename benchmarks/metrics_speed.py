"""Speed of cxrkit's vectorised ROC AUC / AP against a per-class scikit-learn loop.

Run from the repository root::

    python benchmarks/metrics_speed.py                      # 50,000 x 1,000, sklearn on all classes
    python benchmarks/metrics_speed.py --sklearn-classes 100  # sklearn on 100 classes, scaled

Random float32 scores, targets with ~5% positives and ~10% unknown (NaN). scikit-learn's
``roc_auc_score`` / ``average_precision_score`` run on the known entries of each class; when
``--sklearn-classes`` is smaller than ``--classes`` its time is scaled linearly to all classes
(the output says so) and the agreement is checked on those classes only.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    import cxrkit  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit.metrics import average_precision, roc_auc


def make_data(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c), dtype=np.float32) < 0.05).astype(np.float32)
    targets[rng.random((n, c), dtype=np.float32) < 0.10] = np.nan
    # weakly informative scores so AUCs are not all 0.5
    scores = rng.random((n, c), dtype=np.float32) + np.float32(0.3) * np.nan_to_num(targets)
    return targets, scores


def sklearn_loop(fn, targets: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.full(len(classes), np.nan)
    for i, j in enumerate(classes):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j]
        if (y == 1).any() and (fn is average_precision_score or (y == 0).any()):
            out[i] = fn(y, scores[known, j])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sklearn-classes", type=int, default=None,
        help="run scikit-learn on this many (evenly spaced) classes and scale its time linearly (default: all)",
    )
    args = ap.parse_args(argv)
    n, c = args.samples, args.classes
    k = c if args.sklearn_classes is None else max(1, min(args.sklearn_classes, c))
    sk_cols = np.unique(np.linspace(0, c - 1, k).round().astype(int))
    scale = c / len(sk_cols)

    t0 = time.perf_counter()
    targets, scores = make_data(n, c, args.seed)
    print(f"data: {n} samples x {c} classes, float32 scores, ~5% positive, ~10% unknown "
          f"(made in {time.perf_counter() - t0:.1f} s); numpy {np.__version__}, python {platform.python_version()}")

    rows = []
    for name, ours_fn, sk_fn in (("ROC AUC", roc_auc, roc_auc_score), ("AP", average_precision, average_precision_score)):
        t0 = time.perf_counter()
        ours = ours_fn(targets, scores)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = sklearn_loop(sk_fn, targets, scores, sk_cols)
        t_sk = (time.perf_counter() - t0) * scale
        sub = ours[sk_cols]
        assert np.array_equal(np.isnan(sub), np.isnan(ref)), f"{name}: undefined classes differ"
        diff = float(np.nanmax(np.abs(sub - ref))) if np.isfinite(ref).any() else 0.0
        mean = float(np.nanmean(ours))
        rows.append((f"{name} (mean {mean:.4f})", t_ours, t_sk, t_sk / t_ours, diff))

    if len(sk_cols) < c:
        print(f"scikit-learn ran on {len(sk_cols)} of {c} classes; its time is scaled linearly x{scale:.2f}")
    header = ("metric", "ours (s)", "scikit-learn (s)", "ratio (x faster)", "max |diff|")
    widths = [max(len(header[0]), *(len(r[0]) for r in rows)), 9, 17, 17, 11]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        cells = [r[0], f"{r[1]:.2f}", f"{r[2]:.2f}", f"{r[3]:.1f}", f"{r[4]:.1e}"]
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
