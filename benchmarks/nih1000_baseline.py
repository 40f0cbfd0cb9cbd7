"""Baseline for configs/nih1000.yaml: logistic regression on raw pixels.

Trains one L2-regularised logistic regression per finding on the flattened, standardised
pixels of the 600 NIH1000 training films and scores the 200 validation films, exactly the
split `cxrkit train configs/nih1000.yaml` uses; prints per-class AUC and the mAUC for
several image sizes and regularisation strengths, and optionally a trained cxrkit model's
validation mAUC beside it (--model RUN_DIR/model).

    python benchmarks/nih1000_baseline.py [--data ../shared/data/nih1000] [--model runs/nih1000/model]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/nih1000")
    ap.add_argument("--sizes", default="16,32,64")
    ap.add_argument("--C", default="0.0001,0.001,0.01")
    ap.add_argument("--model", default=None, help="a cxrkit model to score on the same validation films")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.data.tables import load_table, resolve_image_paths
    from cxrkit.metrics import mean_defined, roc_auc

    table = load_table(Path(args.data) / "labels.csv")
    tr, va = table.split("train"), table.split("valid")
    ptr, _ = resolve_image_paths(tr)
    pva, _ = resolve_image_paths(va)
    print(f"NIH1000: {len(tr)} train / {len(va)} valid films, {len(table.classes)} classes")
    print(f"{'size':>5} {'C':>8} {'valid mAUC':>11} {'seconds':>8}")
    best = (-1.0, None)
    for size in [int(s) for s in args.sizes.split(",")]:
        pre = Preprocessing(size=size, channels=1)
        xtr = np.stack([pre.load(p).ravel() for p in ptr])
        xva = np.stack([pre.load(p).ravel() for p in pva])
        sc = StandardScaler().fit(xtr)
        xtr, xva = sc.transform(xtr), sc.transform(xva)
        for c in [float(v) for v in args.C.split(",")]:
            t0 = time.perf_counter()
            scores = np.zeros(va.labels.shape, dtype=np.float64)
            for j in range(len(table.classes)):
                y = tr.labels[:, j]
                if y.min() == y.max():
                    scores[:, j] = y.mean()
                    continue
                lr = LogisticRegression(C=c, max_iter=5000)
                lr.fit(xtr, y)
                scores[:, j] = lr.decision_function(xva)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = mean_defined(roc_auc(va.labels, scores), list(table.classes))
            print(f"{size:>5} {c:>8g} {m:>11.4f} {time.perf_counter() - t0:>8.1f}")
            if m > best[0]:
                best = (m, (size, c))
    print(f"best pixel baseline: valid mAUC {best[0]:.4f} at size {best[1][0]}, C {best[1][1]:g} "
          "(chosen on the validation films themselves: an optimistic baseline)")
    if args.model:
        from cxrkit.artifact import load_model
        from cxrkit.evaluate import evaluate_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = evaluate_table(load_model(args.model), Path(args.data) / "labels.csv", split="valid",
                               show_progress=False)
        print(f"cxrkit model {args.model}: valid mAUC {s['mAUC']:.4f}")


if __name__ == "__main__":
    main()
