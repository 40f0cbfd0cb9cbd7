"""Inference throughput: end to end (read + DICOM decode + preprocess + model) against the
model alone on pre-made tensors, for the PyTorch and the onnxruntime engine, same model and
batch size, same run.

    python benchmarks/predict_speed.py [--backbone densenet121] [--size 224] [--batch 16]
                                       [--images 64] [--workers 1] [--model MODEL_DIR]

Without --model a DenseNet-121 with random weights is saved as a cxrkit model (the speed
does not depend on the weights). Inputs: the real chest DICOMs of ../shared/data/dicom
(1024 x 1024, JPEG baseline and uncompressed) repeated, or synthetic PNGs if they are absent.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dicom-dir", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom"))
    args = ap.parse_args()

    import torch

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.ensemble import load_predictor
    from cxrkit.export import ensure_onnx
    from cxrkit.models import ModelConfig, build_model
    from cxrkit.predict import predict_paths
    from cxrkit.runtime import read_spec

    tmp = Path(tempfile.mkdtemp())
    try:
        model_dir = Path(args.model) if args.model else tmp / "model"
        if args.model is None:
            cfg = ModelConfig(backbone=args.backbone, in_chans=3)
            classes = [f"class{i}" for i in range(14)]
            save_model(model_dir, build_model(cfg, len(classes), load_weights=False),
                       ModelMeta(classes=classes, preprocessing=Preprocessing(size=args.size).to_dict(),
                                 model=cfg.to_dict(), thresholds=[0.5] * len(classes), name="bench"))
        ensure_onnx(read_spec(model_dir))
        src = sorted(Path(args.dicom_dir).glob("*.dcm"))
        if not src:
            from cxrkit.data.demo import generate_demo

            generate_demo(tmp / "demo", n_studies=20, seed=0, size=512, show_progress=False)
            src = sorted((tmp / "demo").rglob("*.png"))
        inputs = tmp / "inputs"
        inputs.mkdir()
        files = []
        for i in range(args.images):
            f = inputs / f"{i:04d}{src[i % len(src)].suffix}"
            shutil.copy(src[i % len(src)], f)
            files.append(f)
        print(f"{args.images} inputs ({', '.join(p.name for p in src)}), model {args.backbone if not args.model else model_dir} "
              f"at {args.size} px, batch {args.batch}, {args.workers} decoding worker(s), {torch.get_num_threads()} threads")
        from cxrkit.predict import prepared_batches

        t0 = time.perf_counter()
        n = sum(len(b) for b in prepared_batches(files, load_predictor(model_dir).preprocessings, args.batch, 0))
        decode_ms = (time.perf_counter() - t0) / n * 1e3
        cores = len(__import__("os").sched_getaffinity(0))
        print(f"read + decode + preprocess alone: {decode_ms:.1f} ms per image on one core")
        rows = []
        for engine in ("torch", "onnx"):
            pred = load_predictor(model_dir, engine=engine)
            pre = pred.preprocessings[0]
            h, w = pre.hw
            x = np.random.default_rng(0).standard_normal((args.batch, pre.channels, h, w)).astype(np.float32)
            pred.predict_inputs([x])  # warm up
            n_batches = max(2, args.images // args.batch)
            t0 = time.perf_counter()
            for _ in range(n_batches):
                pred.predict_inputs([x])
            alone = n_batches * args.batch / (time.perf_counter() - t0)
            predict_paths(pred, files[: args.batch], batch_size=args.batch, workers=0, show_progress=False)  # warm
            t0 = time.perf_counter()
            probs, idx, failures = predict_paths(pred, files, batch_size=args.batch, workers=args.workers,
                                                 show_progress=False)
            e2e = len(idx) / (time.perf_counter() - t0)
            assert not failures, failures[:1]
            rows.append((engine, alone, e2e))
        print(f"\n{'engine':8} {'model alone (img/s)':>20} {'end to end (img/s)':>19} {'end to end / alone':>19} "
              f"{'CPU ceiling':>12}")
        for engine, alone, e2e in rows:
            # the model alone keeps all cores busy: decoding cannot hide, it adds its CPU time
            ceiling = (cores / alone) / (cores / alone + decode_ms / 1e3)
            print(f"{engine:8} {alone:20.1f} {e2e:19.1f} {e2e / alone:18.0%} {ceiling:11.0%}")
        print(f"(CPU ceiling: end to end / alone if decoding ran perfectly in parallel on {cores} cores that the "
              "model alone already saturates)")
        t, o = rows
        print(f"\nonnxruntime vs PyTorch eager: {o[1] / t[1]:.1f}x (model alone), {o[2] / t[2]:.1f}x (end to end)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
