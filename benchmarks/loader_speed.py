"""Does the data pipeline starve the model? Training steps/s, same model and batch size:

* pre-made tensors   - batches already in memory (the ceiling)
* cached loader      - cxrkit's pipeline: decoded/resized images cached once, augmented per
                       sample in DataLoader workers
* decode every step  - the obvious alternative: read + decode + resize each file each step

    python benchmarks/loader_speed.py [--images DIR_OR_TABLE] [--size 128] [--backbone resnet18]
                                      [--batch 32] [--steps 30] [--workers 2]

Without --images it generates the synthetic demo data into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


def _steps_per_s(model, batches, steps: int, warmup: int = 3) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    it = iter(batches)
    done = 0
    t0 = 0.0
    while done < steps + warmup:
        try:
            x = next(it)
        except StopIteration:
            it = iter(batches)
            continue
        if isinstance(x, (list, tuple)):
            x = x[0]
        loss = model(x).float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if done == warmup:
            t0 = time.perf_counter()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="a label table or a folder of images")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from cxrkit.data.augment import build_augmentation
    from cxrkit.data.dataset import EpochSampler, ImageDataset, load_images
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.data.tables import load_table, resolve_image_paths
    from cxrkit.models import ModelConfig, build_model
    from cxrkit.predict import FileDataset, collect_inputs

    torch.manual_seed(0)
    tmp = None
    if args.images is None:
        from cxrkit.data.demo import generate_demo

        tmp = tempfile.TemporaryDirectory()
        generate_demo(tmp.name, n_studies=300, seed=0, size=256, show_progress=False)
        args.images = str(Path(tmp.name) / "train.csv")
    src = Path(args.images)
    if src.is_dir():
        items, _ = collect_inputs([src])
        paths = [it.path for it in items]
    else:
        paths, ok = resolve_image_paths(load_table(src))
        paths = [p for p, o in zip(paths, ok) if o]
    pre = Preprocessing(size=args.size, channels=3)
    model = build_model(ModelConfig(backbone=args.backbone, in_chans=3), 14).train()
    aug = build_augmentation("chexpert")
    n = len(paths)
    print(f"{n} images, {args.size} px, {args.backbone}, batch {args.batch}, {args.steps} timed steps, "
          f"{torch.get_num_threads()} torch threads")

    rows = []
    premade = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(4)]
    base = _steps_per_s(model, premade, args.steps)
    rows.append(("pre-made tensors", base))

    t0 = time.perf_counter()
    images = load_images(paths, pre, cache="memory", workers=args.workers, show_progress=False)
    cache_s = time.perf_counter() - t0
    for w in sorted({0, args.workers}):
        ds = ImageDataset(images, np.flatnonzero(images.ok), pre, aug, seed=0)
        loader = DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(len(ds)), num_workers=w,
                            persistent_workers=w > 0, drop_last=True)
        rows.append((f"cached loader, {w} workers", _steps_per_s(model, loader, args.steps)))
    files = DataLoader(FileDataset(paths, pre), batch_size=args.batch, shuffle=True, num_workers=args.workers,
                       persistent_workers=args.workers > 0, drop_last=True)
    rows.append((f"decode every step, {args.workers} workers", _steps_per_s(model, files, args.steps)))

    print(f"(one-off decode + resize into the cache: {cache_s:.1f} s for {n} images, {n / cache_s:.0f} images/s)")
    print(f"{'pipeline':34} {'steps/s':>8} {'images/s':>9} {'vs pre-made':>12}")
    for name, sps in rows:
        print(f"{name:34} {sps:8.2f} {sps * args.batch:9.1f} {sps / base:11.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
