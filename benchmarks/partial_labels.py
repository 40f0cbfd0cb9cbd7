"""Unknown-label strategies compared: Assume Negative vs LL-R vs ignore (partial BCE).

Fully labelled training data is made from the synthetic demo set's true findings
(``synthetic_truth.csv``: a finding is present when its severity is > 0), labels are
dropped at random so that 10 % and 50 % of each image's labels stay known (seeded, the same
split for every strategy), and the same tiny CNN is trained with each strategy. Test mAP is
scored on the fully labelled held-out test split, the valid mAP of the kept epoch beside it.

    python benchmarks/partial_labels.py [--studies 600] [--epochs 10] [--seeds 0,1]
    python benchmarks/partial_labels.py --coco ../shared/data/coco_tiny   # COCO-tiny as well

On COCO-tiny (a handful of images per class) the numbers are a smoke test, not a ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def truth_tables(demo: Path, out: Path) -> dict[str, Path]:
    """train/valid/test tables of the demo data labelled with the true findings."""
    import pandas as pd

    from cxrkit.data.partial import write_portable
    from cxrkit.data.tables import load_table

    truth = pd.read_csv(demo / "synthetic_truth.csv").set_index("Path")
    classes = [c for c in truth.columns if c != "split"]
    tables = {}
    for split in ("train", "valid", "test"):
        t = load_table(demo / f"{split}.csv")
        t = t.select(np.arange(len(t)))
        t.labels = (truth.loc[[str(p) for p in t.paths], classes].to_numpy(np.float32) > 0).astype(np.float32)
        t.classes = tuple(classes)
        t.format = "generic"
        t.source = demo / f"{split}.csv"
        tables[split] = write_portable(t, out / f"truth_{split}.csv", images_root=demo)
    return tables


def make_config(name: str, train: Path, valid: Path, strategy: str, known: float, seed: int, epochs: int, size: int,
                rgb: bool, batch_size: int):
    """The same tiny CNN and schedule for every strategy; only the unknown labels differ."""
    from cxrkit.train.config import load_config

    pre = {"size": size, "channels": 3, "colour": "rgb"} if rgb else \
        {"size": size, "channels": 1, "mean": [0.5], "std": [0.25]}
    raw = {
        "name": f"{name}-{strategy}-{known}",
        "data": {"train": {"table": str(train)}, "valid": {"table": str(valid)},
                 "partial_known": known, "partial_seed": 0, "cache": "memory", "workers": 0},
        "preprocessing": pre,
        "augmentation": {"name": "randaugment" if rgb else "chexpert"},
        "model": {"backbone": "tiny-cnn", "in_chans": pre["channels"], "backbone_kwargs": {"widths": [16, 32, 64]}},
        "loss": {"name": "bce", "params": {"reduction": "mean"}},
        "optim": {"name": "adam", "lr": 0.003},
        "schedule": {"name": "onecycle"},
        "partial": {"strategy": strategy},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed, "monitor": "mAP"},
    }
    return load_config(raw=raw)


def run_one(cfg, out: Path, test_table: Path | None) -> tuple[float, float, float]:
    from cxrkit.ensemble import load_predictor
    from cxrkit.evaluate import evaluate_table
    from cxrkit.train.trainer import fit

    t0 = time.perf_counter()
    res = fit(cfg, out, show_progress=False)
    seconds = time.perf_counter() - t0
    valid_map = float(res.best_metrics.get("mAP", float("nan")))
    test_map = float("nan")
    if test_table is not None:
        summary = evaluate_table(load_predictor(res.model_dir), test_table, show_progress=False)
        test_map = float(summary["mAP"])
    return valid_map, test_map, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None, help="an existing demo data folder (default: generate one)")
    ap.add_argument("--studies", type=int, default=600, help="studies in the generated demo data")
    ap.add_argument("--size", type=int, default=64, help="input size in pixels")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--known", default="0.1,0.5", help="proportions of known labels")
    ap.add_argument("--strategies", default="an,ll-r,ignore")
    ap.add_argument("--seeds", default="0", help="training seeds (the known-label split is fixed)")
    ap.add_argument("--coco", default=None, help="also run on this COCO folder (e.g. ../shared/data/coco_tiny)")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("CXRKIT_QUIET", "1")

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from cxrkit.data.demo import generate_demo

    tmp = tempfile.TemporaryDirectory(prefix="cxrkit-partial-")
    work = Path(args.out) if args.out else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if args.demo:
        demo = Path(args.demo)
    else:
        demo = work / "demo"
        if not (demo / "synthetic_truth.csv").is_file():
            print(f"generating {args.studies} demo studies at {args.size} px ...", flush=True)
            generate_demo(demo, n_studies=args.studies, seed=0, size=max(args.size, 64), show_progress=False)
    tables = truth_tables(demo, work)
    strategies = args.strategies.split(",")
    knowns = [float(k) for k in args.known.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    datasets = [("demo", tables["train"], tables["valid"], False, 32, tables["test"])]
    if args.coco:
        ann = Path(args.coco) / "annotations"
        datasets.append(("coco", ann / "instances_train2017.json", ann / "instances_val2017.json", True, 16, None))

    rows = []
    for name, train, valid, rgb, bs, test in datasets:
        for known in knowns:
            for strategy in strategies:
                vals = []
                for seed in seeds:
                    out = work / f"{name}-{strategy}-{known}-{seed}"
                    cfg = make_config(name, train, valid, strategy, known, seed, args.epochs, args.size, rgb, bs)
                    v, t, sec = run_one(cfg, out, test)
                    vals.append((v, t, sec))
                    print(f"  {name:5s} known {known:4.0%} {strategy:7s} seed {seed}: valid mAP {v:.3f} "
                          f"test mAP {t:.3f} ({sec:.0f} s)", flush=True)
                a = np.array(vals)
                rows.append((name, known, strategy, a[:, 0].mean(), a[:, 0].std(), a[:, 1].mean(), a[:, 1].std(),
                             a[:, 2].mean()))

    print()
    print(f"{'data':5s} {'known':>6s} {'strategy':8s} {'valid mAP':>14s} {'test mAP':>14s} "
          f"{'vs AN':>7s} {'s/run':>6s}")
    for name, known, strategy, vm, vs, tm, ts, sec in rows:
        ref = next((r for r in rows if r[0] == name and r[1] == known and r[2] == "an"), None)
        base = ref[5] if name == "demo" else ref[3] if ref else float("nan")
        cur = tm if name == "demo" else vm
        ratio = cur / base if ref and base > 0 else float("nan")
        print(f"{name:5s} {known:6.0%} {strategy:8s} {vm:7.3f} ±{vs:5.3f} {tm:7.3f} ±{ts:5.3f} "
              f"{ratio:6.3f}x {sec:6.0f}")
    print(f"\n(mAP in [0, 1]; ± is the std over {len(seeds)} training seed(s); 'vs AN' is the test mAP "
          "(COCO: valid mAP) relative to Assume Negative at the same proportion)")
    if args.out:
        (work / "partial_labels.json").write_text(json.dumps(
            [dict(zip(("data", "known", "strategy", "valid_map", "valid_std", "test_map", "test_std", "seconds"), r))
             for r in rows], indent=2))


if __name__ == "__main__":
    main()
