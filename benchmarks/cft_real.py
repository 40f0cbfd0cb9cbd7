"""Category-wise Fine-Tuning on real films: does the validation gain carry to held-out films?

Runs ``cxrkit cft`` on the nih_hires model for each method (choosing on valid, reporting on
a patient-disjoint held-out part of valid, ``--holdout``), for several holdout seeds, and
prints the mean validation and held-out mAUC change per method, then per category the
held-out change against the number of validation positives the choice was made on (the
``--min-val-positives`` question).

    python benchmarks/cft_real.py --model runs/nih_hires/model [--seeds 0,1,2] [--holdout 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "bp-asl": {},
    "bp-aucm (LibAUC PESG)": {"method": "bp-aucm"},
    "bp-aucm (cxrkit PESG)": {"method": "bp-aucm", "bp": {"pesg": "cxrkit"}},
    "ga-auc": {},
    "greedy": {},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--holdout", type=float, default=0.5)
    ap.add_argument("--min-val-positives", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from cxrkit.cft.pipeline import run_cft
    from cxrkit.cft.runner import CFTConfig

    table = REPO / ".." / "shared" / "data" / "nih_hires" / "labels.csv"
    print("command: python benchmarks/cft_real.py " + " ".join(sys.argv[1:]))
    out = args.out or Path(tempfile.mkdtemp(prefix="cft-real-"))
    res: dict[str, list[dict]] = {}
    per_cat: list[tuple[str, int, float, float]] = []
    for name in args.methods.split(","):
        spec = METHODS[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            method = spec.get("method", name)
            pols = ["ignore", "ones", "zeros"] if method == "greedy" else ["ignore"]
            cfg = CFTConfig(method=method, policies=pols, bp=dict(spec.get("bp", {})), seed=seed,
                            min_val_positives=args.min_val_positives)
            d = out / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-s{seed}"
            s = run_cft(args.model, table, table, d, cfg, train_split="train", valid_split="valid",
                        holdout=args.holdout, show_progress=False, overwrite=True)
            res.setdefault(name, []).append(s)
            rep = json.loads((d / "cft" / "report.json").read_text())
            for c in rep["categories"]:
                if not str(c["chosen"]).startswith("original") and c.get("test_before") is not None and c.get("test_after") is not None:
                    per_cat.append((name, int(c.get("n_val_pos", 0)),
                                    c["val_after"] - c["val_before"], c["test_after"] - c["test_before"]))
            print(f"{name} seed {seed}: valid {s['valid_before']['mAUC']:.4f} -> {s['valid_after']['mAUC']:.4f}, "
                  f"held-out {s['test_before']['mAUC']:.4f} -> {s['test_after']['mAUC']:.4f}", flush=True)

    def ms(v: list[float]) -> str:
        a = np.asarray(v)
        return f"{a.mean():+.4f} +- {a.std():.4f}"

    print(f"\nCFT on nih_hires (holdout {args.holdout} of valid by patient, seeds {args.seeds}); mAUC change")
    print(f"{'method':<24}{'valid change':>20}{'held-out change':>20}{'categories changed':>20}")
    for name, rs in res.items():
        dv = [r["valid_after"]["mAUC"] - r["valid_before"]["mAUC"] for r in rs]
        dt = [r["test_after"]["mAUC"] - r["test_before"]["mAUC"] for r in rs]
        print(f"{name:<24}{ms(dv):>20}{ms(dt):>20}{np.mean([r['changed'] for r in rs]):>20.1f}")
    if per_cat:
        print("\nchanged categories by validation positives (all methods and seeds)")
        print(f"{'valid positives':<18}{'n':>5}{'valid change':>16}{'held-out change':>18}{'held-out > 0':>14}")
        arr = np.array([(p, v, t) for _, p, v, t in per_cat], dtype=float)
        for lo, hi in ((0, 5), (5, 10), (10, 20), (20, 10**9)):
            m = (arr[:, 0] >= lo) & (arr[:, 0] < hi)
            if m.any():
                label = f"{lo}-{hi - 1}" if hi < 10**9 else f">= {lo}"
                print(f"{label:<18}{int(m.sum()):>5}{arr[m, 1].mean():>+16.4f}{arr[m, 2].mean():>+18.4f}"
                      f"{(arr[m, 2] > 0).mean():>14.2f}")


if __name__ == "__main__":
    main()
