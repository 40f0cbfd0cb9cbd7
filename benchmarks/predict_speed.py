"""Inference throughput: end to end (read + DICOM decode + preprocess + model) against the
model alone on pre-made tensors, for every engine and precision (PyTorch fp32 / bf16,
onnxruntime fp32 / int8), same model and batch size, same run; then, with --auc-model, the
mean AUC of a trained model on real films under each precision and the largest
probability difference to fp32.

    python benchmarks/predict_speed.py [--backbone densenet121] [--size 224] [--batch 16]
                                       [--images 64] [--workers 1] [--model MODEL_DIR]
                                       [--formats dicom,png,jpeg]
                                       [--auc-model runs/nih_hires/model]

The int8 model of the speed run is calibrated on the benchmark's own input films (its
weights are random); the --auc-model one on its own validation table (cxrkit export --int8).
bf16 / int8 rows are measured even on CPUs without bf16 / int8 units, where ``--precision
auto`` would not pick them: the table shows why.

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


def _engines() -> list[tuple[str, str]]:
    out = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8")]
    try:
        import openvino  # noqa: F401

        out += [("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    except ImportError:
        print("(openvino not installed: pip install -e \".[openvino]\" for its rows)")
    return out


ENGINES = _engines()


def _inputs(src: list[Path], fmt: str, n: int, folder: Path) -> list[Path]:
    """``n`` input files of one format: the source DICOMs repeated, or the same films decoded
    by cxrkit (windowing, MONOCHROME1 and all) and written as 8-bit PNG / JPEG (quality 95),
    shorter side 1024 px."""
    import cv2

    from cxrkit.data.images import read_image

    folder.mkdir(parents=True)
    made = []
    for k, p in enumerate(src):
        if fmt == "dicom" or p.suffix.lower() != ".dcm":
            made.append(p)
            continue
        img = (np.clip(read_image(p), 0, 1) * 255).round().astype(np.uint8)
        scale = 1024 / min(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        f = folder / f"src{k}.{'png' if fmt == 'png' else 'jpg'}"
        cv2.imwrite(str(f), img, [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpeg" else [])
        made.append(f)
    files = []
    for i in range(n):
        f = folder / f"{i:04d}{made[i % len(made)].suffix}"
        shutil.copy(made[i % len(made)], f)
        files.append(f)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", default="0,1,2", help="decoding worker processes to try, comma-separated")
    ap.add_argument("--formats", default="dicom",
                    help="input formats end to end, comma-separated: dicom (the real DICOMs), png and jpeg (the "
                         "same films decoded by cxrkit and written as 8-bit PNG / JPEG quality 95, 1024 px)")
    ap.add_argument("--auc-model", default=None, help="a trained model: mean AUC per precision on its valid split")
    ap.add_argument("--keep-int8", action="store_true",
                    help="use the --model's own up-to-date int8 export (e.g. cxrkit export --int8 --quantizer nncf) "
                         "instead of calibrating one on the benchmark's inputs")
    ap.add_argument("--auc-table", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                                               / "nih_hires" / "labels.csv"))
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
        formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
        if not formats or set(formats) - {"dicom", "png", "jpeg"}:
            raise SystemExit(f"--formats: dicom, png and / or jpeg (got {args.formats!r})")
        sets = {fmt: _inputs(src, fmt, args.images, tmp / f"inputs-{fmt}") for fmt in formats}
        files = sets[formats[0]]
        workers = [int(w) for w in str(args.workers).split(",")]
        from cxrkit.export import export_member_int8
        from cxrkit.inference import cpu_has_bf16
        from cxrkit.runtime import cpu_int8_units, cpu_model_name, cpu_vendor

        spec = read_spec(model_dir)
        from cxrkit.export import int8_is_fresh

        if args.keep_int8 and int8_is_fresh(spec.members[0]):
            import json

            side = json.loads((spec.members[0].path / "model.int8.onnx.json").read_text())
            print(f"int8: the model's own export ({side.get('quantizer', 'onnxruntime')}, "
                  f"{side.get('int8_layers', '?')} of {side.get('layers', '?')} layers int8)")
        else:
            export_member_int8(spec.members[0], files[:32], {"table": "benchmark inputs",
                                                              "images": min(32, len(files))})
        print(f"CPU: {cpu_model_name() or 'unknown CPU'} ({len(__import__('os').sched_getaffinity(0))} cores), vendor {cpu_vendor()}")
        print(f"{args.images} inputs ({', '.join(p.name for p in src)}), model {args.backbone if not args.model else model_dir} "
              f"at {spec.members[0].preprocessing.size} px, batch {args.batch}, {torch.get_num_threads()} threads; CPU bf16 units: "
              f"{cpu_has_bf16()}, int8 units (VNNI / AMX): {cpu_int8_units()}")
        from cxrkit.predict import prepared_batches

        decode = {}
        for fmt, fset in sets.items():
            t0 = time.perf_counter()
            n = sum(len(b) for b in prepared_batches(fset, load_predictor(model_dir).preprocessings, args.batch, 0))
            decode[fmt] = (time.perf_counter() - t0) / n * 1e3
            print(f"read + decode + preprocess alone, {fmt}: {decode[fmt]:.1f} ms per image on one core")
        decode_ms = decode[formats[0]]  # the CPU ceiling column is for the first format
        cores = len(__import__("os").sched_getaffinity(0))
        rows = []
        for engine, prec in ENGINES:
            pred = load_predictor(model_dir, engine=engine, precision=prec)
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
            e2e = {}
            for fmt, fset in sets.items():
                for wk in workers:
                    t0 = time.perf_counter()
                    probs, idx, failures = predict_paths(pred, fset, batch_size=args.batch, workers=wk,
                                                         show_progress=False)
                    e2e[(fmt, wk)] = len(idx) / (time.perf_counter() - t0)
                    assert not failures, failures[:1]
            rows.append((f"{engine} {prec}", alone, e2e))
        cols = [(fmt, wk) for fmt in sets for wk in workers]
        head = "".join(f"{f'{fmt}, {wk} worker(s)':>20}" for fmt, wk in cols)
        print(f"\n{'engine':12} {'model alone':>12}{head} {'best e2e / alone':>17} {'CPU ceiling':>12}   (images/s)")
        for name, alone, e2e in rows:
            # the model alone keeps all cores busy: decoding cannot hide, it adds its CPU time
            ceiling = (cores / alone) / (cores / alone + decode_ms / 1e3)
            best = max(e2e.values())
            print(f"{name:12} {alone:12.1f}" + "".join(f"{e2e[c]:20.1f}" for c in cols)
                  + f" {best / alone:16.0%} {ceiling:11.0%}")
        print(f"(CPU ceiling: end to end / alone if decoding ran perfectly in parallel on {cores} cores that the "
              "model alone already saturates)")
        base = next(alone for name, alone, _ in rows if name == "onnx fp32")
        print("model alone vs onnxruntime fp32: " + ", ".join(f"{name} {alone / base:.2f}x" for name, alone, _ in rows))
        from cxrkit.runtime import choose_onnx_precision, choose_openvino_precision

        picks = f"onnx {choose_onnx_precision(spec, 'auto')}"
        if any(e == "openvino" for e, _ in ENGINES):
            picks += f", openvino {choose_openvino_precision('auto', spec)}"
        print(f"--precision auto picks on this CPU: {picks} (int8 only where its export is accurate and measured faster)")
        if args.auc_model:
            from cxrkit.evaluate import evaluate_table
            from cxrkit.export import export_int8, int8_is_fresh

            aspec = read_spec(args.auc_model)
            if not all(int8_is_fresh(m) for m in aspec.members):
                export_int8(args.auc_model)
            res = {}
            for engine, prec in [e for e in ENGINES if e != ("torch", "fp32")]:
                s = evaluate_table(load_predictor(args.auc_model, engine=engine, precision=prec), args.auc_table,
                                   split="valid", show_progress=False, return_scores=True)
                res[f"{engine} {prec}"] = s
            ref = res["onnx fp32"]
            print(f"\n{args.auc_model} on {args.auc_table} (valid, {len(ref['_scores'])} films)")
            print(f"{'precision':12} {'mean AUC':>9} {'vs fp32':>8} {'largest |p - p_fp32|':>21}")
            for name, s in res.items():
                print(f"{name:12} {s['mAUC']:9.4f} {s['mAUC'] - ref['mAUC']:+8.4f} "
                      f"{float(np.abs(s['_scores'] - ref['_scores']).max()):21.4f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
