"""Seed 004's loss claims on real films: BCE, focal, ASL, APL, RAL and Hill on the nih_hires
recipe, several seeds each, and the hyper-parameter sensitivity of ASL and RAL.

Every run is ``configs/nih_hires.yaml`` with only the loss changed (all with ``reduction:
mean``, so the recipe's learning rate applies to all; AdamW is insensitive to a constant
loss scale anyway), trained by ``cxrkit.train`` and scored on the 179 validation films:
mAUC, mAP and the head / medium / tail means (groups by training positives, terciles).
``--size`` / ``--epochs`` shrink the recipe when 2 CPU cores must run all of it (the
command used is printed above the table). The models stay in ``--out`` for
``benchmarks/robustness.py``.

    python benchmarks/losses_real.py --out runs/losses [--seeds 0,1,2] [--size 128] [--epochs 6]
    python benchmarks/losses_real.py --out runs/losses --grid        # ASL / RAL sensitivity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

LOSSES = {
    "bce": {},
    "focal": {"gamma": 2.0},
    "asl": {},
    "apl": {},
    "ral": {},
    "hill": {},
}
GRID = {  # {} is the loss's default (gamma_neg 4; RAL lamb 1.5): the same run as the loss table's first seed
    "asl": [{"gamma_neg": 2.0}, {}, {"gamma_neg": 6.0}],
    "ral": [{"gamma_neg": 2.0}, {}, {"gamma_neg": 6.0}, {"lamb": 3.0}],
}


def run_one(out: Path, loss: str, params: dict, seed: int, size: int | None, epochs: int | None,
            sets: list[str] | None = None) -> dict:
    from cxrkit.evaluate import evaluate_table
    from cxrkit.ensemble import load_predictor
    from cxrkit.train.config import load_config
    from cxrkit.train.trainer import fit

    tag = loss + "".join(f"-{k}{v:g}" for k, v in sorted(params.items())) + f"-s{seed}"
    run = out / tag
    result_file = run / "losses_real.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    ov = [f"loss.name={loss}", f"loss.params={json.dumps(dict(params, reduction='mean'))}", f"train.seed={seed}",
          f"name=nih_hires-{tag}"]
    if size:
        ov.append(f"preprocessing.size={size}")
    if epochs:
        ov.append(f"train.epochs={epochs}")
    ov += list(sets or [])
    cfg = load_config(REPO / "configs" / "nih_hires.yaml", ov)
    t0 = time.perf_counter()
    fit(cfg, run, resume=(run / "checkpoint").exists(), show_progress=False)
    secs = time.perf_counter() - t0
    ev = evaluate_table(load_predictor(run / "model"), cfg.data.valid.table, split="valid", show_progress=False)
    groups = ev.get("groups") or {}
    res = {"loss": loss, "params": params, "seed": seed, "mAUC": ev["mAUC"], "mAP": ev["mAP"],
           **{f"{g}_mAUC": (groups.get(g) or {}).get("mAUC") for g in ("head", "medium", "tail")},
           "seconds": round(secs, 1), "model": str(run / "model")}
    result_file.write_text(json.dumps(res, indent=2))
    return res


def _ms(v: list[float]) -> str:
    a = np.array([x for x in v if x is not None], dtype=float)
    if a.size == 0:
        return "-"
    return f"{a.mean():.4f} +- {a.std():.4f}" if a.size > 1 else f"{a.mean():.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/losses"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--size", type=int, default=None, help="input size (default: the recipe's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    ap.add_argument("--grid", action="store_true", help="ASL / RAL hyper-parameter grid (first seed)")
    ap.add_argument("--set", action="append", default=[], help="another recipe override, e.g. train.ema=null")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("command: python benchmarks/losses_real.py " + " ".join(sys.argv[1:]))
    if args.grid:
        print(f"\n{'loss':<6}{'setting':<28}{'valid mAUC':>12}{'valid mAP':>12}")
        for loss, grid in GRID.items():
            aucs = []
            for params in grid:
                r = run_one(args.out, loss, params, seeds[0], args.size, args.epochs, args.set)
                aucs.append(r["mAUC"])
                print(f"{loss:<6}{(json.dumps(params) if params else 'default'):<28}{r['mAUC']:>12.4f}{r['mAP']:>12.4f}", flush=True)
            a = np.array(aucs)
            print(f"{loss:<6}{'spread over the grid':<28}{'range ' + format(a.max() - a.min(), '.4f'):>12}"
                  f"{'sd ' + format(a.std(), '.4f'):>12}")
        return
    rows = {}
    for loss in args.losses.split(","):
        rows[loss] = [run_one(args.out, loss, LOSSES[loss], s, args.size, args.epochs, args.set) for s in seeds]
        print(f"done {loss}: mAUC {_ms([r['mAUC'] for r in rows[loss]])}", flush=True)
    print(f"\n{'loss':<7}{'valid mAUC':>18}{'valid mAP':>18}{'head mAUC':>18}{'medium mAUC':>18}{'tail mAUC':>18}"
          f"{'min / run':>10}")
    for loss, rs in rows.items():
        print(f"{loss:<7}" + "".join(f"{_ms([r[k] for r in rs]):>18}" for k in ("mAUC", "mAP", "head_mAUC",
                                                                               "medium_mAUC", "tail_mAUC"))
              + f"{np.mean([r['seconds'] for r in rs]) / 60:>10.1f}")
    print(f"(mean +- sd over seeds {args.seeds}; nih_hires valid, 179 films)")


if __name__ == "__main__":
    main()
