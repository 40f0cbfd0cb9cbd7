"""Frozen features + linear heads against the fine-tuned recipe, judged on films from
another source (issue 26).

Two real NIH sets assembled differently: ``nih_hires`` (970 films at 256 px, a biased
500 No Finding + 500 Pneumonia subset; train 791 / valid 179, patient-disjoint) and
``nih1000`` (800 films at 64 px, train 600 / valid 200). For each direction (train on one
set's training split, judge on the other set's films and on the same set's validation
split) and each approach:

* ``probe``: ``cxrkit probe`` on the ImageNet EfficientNet-Lite0 of ``configs/nih_hires.yaml``
  (frozen; the weights ship in a pip package) at 192 px;
* ``probe + CFT``: ``cxrkit cft --method bp-asl`` on the probe's rows;
* ``recipe``: a model fine-tuned end to end by ``cxrkit train configs/nih_hires.yaml``
  (``--recipe``, trained on nih_hires: judged in that direction only);

print mean AUC over the findings with both labels present, and minutes on this machine's
cores (features + fitting; the recipe's training time from its run).

    python benchmarks/probe_real.py [--recipe runs/nih_hires/model]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


def mauc(model_dir: Path, table: Path, split: str | None) -> float:
    from cxrkit.ensemble import load_predictor
    from cxrkit.evaluate import evaluate_table

    s = evaluate_table(load_predictor(model_dir, engine="torch"), table, split=split, show_progress=False)
    return float(s["mAUC"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=None, help="a model trained with configs/nih_hires.yaml")
    ap.add_argument("--recipe-minutes", type=float, default=None, help="its training time (default: from its run)")
    args = ap.parse_args()

    from cxrkit.cft.pipeline import run_cft
    from cxrkit.cft.probe import run_probe
    from cxrkit.cft.runner import CFTConfig
    from cxrkit.inference.runtime import cpu_model_name

    hires, n1000 = DATA / "nih_hires" / "labels.csv", DATA / "nih1000" / "labels.csv"
    work = Path(tempfile.mkdtemp())
    os.environ.setdefault("CXRKIT_DATA", str(DATA))
    rows = []
    try:
        for name, train, other in (("nih_hires -> nih1000", hires, n1000), ("nih1000 -> nih_hires", n1000, hires)):
            out = work / name.split()[0]
            t0 = time.time()
            run_probe(ROOT / "configs" / "nih_hires.yaml", train, train, out / "probe", train_split="train",
                      valid_split="valid", show_progress=False)
            t_probe = (time.time() - t0) / 60
            t0 = time.time()
            run_cft(out / "probe", train, train, out / "cft", CFTConfig(method="bp-asl", preset="chexpert"),
                    train_split="train", valid_split="valid", show_progress=False)
            t_cft = (time.time() - t0) / 60
            other_split = None if other == n1000 else "valid"
            for approach, model, minutes in (("probe (frozen ImageNet EfficientNet-Lite0)", out / "probe", t_probe),
                                             ("probe + CFT (bp-asl)", out / "cft", t_probe + t_cft)):
                rows.append((name, approach, mauc(model, train, "valid"), mauc(model, other, other_split), minutes))
            if args.recipe and train == hires:
                minutes = args.recipe_minutes
                if minutes is None:
                    f = Path(args.recipe).parent / "metrics.json"  # per-epoch records of the run
                    try:
                        hist = json.loads(f.read_text())
                        minutes = sum(float(e.get("seconds", 0)) for e in hist) / 60
                    except (OSError, ValueError, TypeError, AttributeError):
                        minutes = float("nan")
                rows.append((name, "recipe (fine-tuned end to end, configs/nih_hires.yaml)",
                             mauc(Path(args.recipe), train, "valid"), mauc(Path(args.recipe), other, other_split),
                             minutes))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CPU: {cpu_model_name()}, {len(os.sched_getaffinity(0))} cores")
    print(f"\n{'train -> other source':22} {'approach':58} {'same-source valid':>17} {'other source':>13} "
          f"{'minutes':>8}")
    for name, approach, same, other, minutes in rows:
        print(f"{name:22} {approach:58} {same:17.4f} {other:13.4f} {minutes:8.1f}")
    print("\n(mean AUC over the findings with positives and negatives in the table judged; nih1000's films are "
          "64 px, upsampled to the model's 192)")


if __name__ == "__main__":
    main()
