"""Seed 004, Table 8 on real films: BCE / ASL / RAL models from ``benchmarks/losses_real.py``
scored on the nih_hires validation films clean and under Gaussian blur, speckle and
salt-and-pepper noise (``cxrkit.data.corrupt``; seeded, so two runs give the same numbers),
mean and spread over the seeds that were trained. Also writes a contact sheet of one film
under each corruption (``--sheet``).

    python benchmarks/robustness.py --runs runs/losses [--sheet docs/robustness_corruptions.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPECS = ["blur", "speckle", "salt-pepper"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/losses"))
    ap.add_argument("--losses", default="bce,asl,ral")
    ap.add_argument("--corrupt", action="append", default=None, help=f"corruption specs (default {SPECS})")
    ap.add_argument("--seed", type=int, default=0, help="noise seed")
    ap.add_argument("--sheet", type=Path, default=None)
    args = ap.parse_args()
    from cxrkit.data.corrupt import parse_corruption
    from cxrkit.ensemble import load_predictor
    from cxrkit.evaluate import evaluate_table

    specs = [parse_corruption(s, args.seed) for s in (args.corrupt or SPECS)]
    table = REPO / ".." / "shared" / "data" / "nih_hires" / "labels.csv"
    print("command: python benchmarks/robustness.py " + " ".join(sys.argv[1:]))
    rows = {}
    for loss in args.losses.split(","):
        results = []
        for res_file in sorted(args.runs.glob(f"{loss}-s*/losses_real.json")):
            model = json.loads(res_file.read_text())["model"]
            ev = evaluate_table(load_predictor(model), table, split="valid", show_progress=False, corruptions=specs)
            results.append([ev["mAUC"]] + [ev["corruptions"][s.label]["mAUC"] for s in specs])
        if results:
            rows[loss] = np.array(results)
    labels = ["clean"] + [s.label for s in specs]
    print(f"\nvalid mAUC, nih_hires (179 films), mean +- sd over {len(next(iter(rows.values())))} seed(s)")
    print(f"{'loss':<7}" + "".join(f"{lab:>34}" for lab in labels))
    for loss, a in rows.items():
        print(f"{loss:<7}" + "".join(f"{a[:, k].mean():>25.4f} +- {a[:, k].std():.4f}" for k in range(a.shape[1])))
    if args.sheet:
        from cxrkit.data.preprocess import Preprocessing
        from cxrkit.data.tables import load_table, resolve_image_paths
        from cxrkit.report import plot_corruptions

        t = load_table(table).split("valid")
        first = resolve_image_paths(t)[0][0]
        plot_corruptions(Preprocessing(size=256, channels=1).read(first), specs, args.sheet, key=str(first),
                         title=f"{Path(first).name}: the corruptions of benchmarks/robustness.py")
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
