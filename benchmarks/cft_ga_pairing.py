"""CFT-GA coco preset: how the parents of each child are drawn.

``pairing=roulette`` (the reference code, now the preset): both parents of every child are
drawn independently by roulette wheel over the scored population. ``pairing=fixed`` (cxrkit
before): PyGAD's 25 roulette-selected parents mate in fixed pairs (k, k + 1), so each pair
makes two children. Synthetic features: a planted linear rule with label noise, the start
row a perturbed copy of the rule (as a trained head row is an imperfect one); AP gain of the
GA's chosen row on validation and on a test split, over seeds.

    python benchmarks/cft_ga_pairing.py [--runs 8] [--generations 600]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cxrkit.cft.fitness import BinaryScorer
from cxrkit.cft.ga import GA_PRESETS, fit_row_ga


def problem(seed: int, n: int = 6000, z: int = 64, prevalence: float = 0.08):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=z)
    x = rng.normal(size=(3 * n, z)).astype(np.float32)
    logit = x @ w / np.sqrt(z) * 3.0 + rng.normal(scale=1.5, size=3 * n)
    y = (logit > np.quantile(logit, 1 - prevalence)).astype(np.float32)
    w0 = (w / np.sqrt(z) * 3.0 + rng.normal(scale=0.25, size=z)).astype(np.float32)
    b0 = float(-np.quantile(x @ w0, 1 - prevalence))
    return (x[:n], y[:n]), (x[n:2 * n], y[n:2 * n]), (x[2 * n:], y[2 * n:]), w0, b0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--generations", type=int, default=600)
    args = ap.parse_args()
    rows = {"fixed": [], "roulette": []}
    secs = {"fixed": 0.0, "roulette": 0.0}
    for run in range(args.runs):
        (xt, yt), (xv, yv), (xs, ys), w0, b0 = problem(run)
        test = BinaryScorer(ys, "ap")
        before = float(test(xs @ w0 + b0)[0])
        for pairing in rows:
            cfg = GA_PRESETS["coco"].with_overrides(generations=args.generations, pairing=pairing, seed=run)
            t0 = time.perf_counter()
            fit = fit_row_ga(xt, yt, xv, yv, w0, b0, cfg)
            secs[pairing] += time.perf_counter() - t0
            after = float(test(xs @ fit.w + fit.b)[0])
            rows[pairing].append((fit.val_after - fit.val_before, after - before))
    print(f"\nCFT-GA coco preset, {args.runs} runs, {args.generations} generations, N = 6,000, Z = 64 (synthetic)")
    print(f"{'pairing':<12}{'valid AP gain':>22}{'test AP gain':>22}{'s / run':>10}")
    for pairing, r in rows.items():
        a = np.array(r)
        print(f"{pairing:<12}{a[:, 0].mean():>+14.4f} +- {a[:, 0].std():.4f}{a[:, 1].mean():>+14.4f} +- "
              f"{a[:, 1].std():.4f}{secs[pairing] / args.runs:>10.1f}")
    f, r = np.array(rows["fixed"]), np.array(rows["roulette"])
    for k, name in ((0, "valid"), (1, "test")):
        if abs(f[:, k].mean()) > 1e-12:
            print(f"roulette / fixed {name} gain: {r[:, k].mean() / f[:, k].mean():.2f}x")


if __name__ == "__main__":
    main()
