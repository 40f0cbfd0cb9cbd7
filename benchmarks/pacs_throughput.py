"""DICOM listener throughput: a 200-instance push (40 studies x 5 films) to ``cxrkit pacs
listen``, against ``cxrkit predict`` on a folder of the same files, same model, same run.

    python benchmarks/pacs_throughput.py [--instances 200] [--per-study 5] [--backbone resnet18] [--size 224]

Prints instances/s received (C-STORE over one association, each written to the spool and
recorded in SQLite before success is answered), studies/s processed (from the first
instance to the last study's rows and SR), and the folder predict's images/s and studies/s
on the same files. Films: real NIH films (../shared/data/nih_hires) as DICOM, or synthetic
ones when absent. The model has random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--per-study", type=int, default=5)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--idle", type=float, default=0.5)
    args = ap.parse_args()

    import pydicom
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.ensemble import load_predictor
    from cxrkit.models import ModelConfig, build_model
    from cxrkit.pacs import Listener, ListenerConfig, status
    from cxrkit.predict import run_predict

    tmp = Path(tempfile.mkdtemp())
    try:
        cfg = ModelConfig(backbone=args.backbone, in_chans=3)
        classes = [f"class{i}" for i in range(14)]
        save_model(tmp / "model", build_model(cfg, len(classes), load_weights=False),
                   ModelMeta(classes=classes, preprocessing=Preprocessing(size=args.size).to_dict(),
                             model=cfg.to_dict(), thresholds=[0.5] * len(classes), name="bench"))
        pngs = sorted((Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih_hires" / "images")
                      .glob("*.png"))
        rng = np.random.default_rng(0)
        files = []
        (tmp / "films").mkdir()
        study = generate_uid()
        for i in range(args.instances):
            if i % args.per_study == 0:
                study = generate_uid()
            arr = (np.asarray(Image.open(pngs[i % len(pngs)]).convert("L")) if pngs
                   else rng.integers(0, 255, (256, 256), dtype=np.uint8))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(tmp / "films" / f"{i:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
            ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
            ds.Rows, ds.Columns = arr.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = arr.astype(np.uint8).tobytes()
            ds.save_as(ds.filename, enforce_file_format=True)
            files.append(Path(ds.filename))
        n_studies = len({pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files})
        pred = load_predictor(tmp / "model", engine="auto")
        print(f"{len(files)} instances in {n_studies} studies ({'NIH films' if pngs else 'synthetic'}, "
              f"{arr.shape[0]} x {arr.shape[1]}), {args.backbone} at {args.size} px, engine {type(pred).__name__}")

        # the folder predict on the same files
        t0 = time.perf_counter()
        run_predict(pred, [tmp / "films"], tmp / "folder.csv", show_progress=False, study="max", sr_dir=tmp / "sr")
        folder_s = time.perf_counter() - t0

        # the listener
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spool = tmp / "spool"
        lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=args.idle, poll=0.1))
        lst.start()
        try:
            ae = AE(ae_title="BENCH")
            ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
            datasets = [pydicom.dcmread(f) for f in files]
            t0 = time.perf_counter()
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
            for ds in datasets:
                assoc.send_c_store(ds)
            assoc.release()
            received = time.perf_counter() - t0
            while status(spool)["studies"].get("done", 0) < n_studies:
                time.sleep(0.05)
            processed = time.perf_counter() - t0
        finally:
            lst.stop()
        print(f"\n{'':28} {'seconds':>8} {'instances/s':>12} {'studies/s':>10}")
        print(f"{'listener: received':28} {received:8.1f} {len(files) / received:12.1f} {'':>10}")
        print(f"{'listener: all processed':28} {processed:8.1f} {len(files) / processed:12.1f} "
              f"{n_studies / processed:10.2f}")
        print(f"{'predict --sr on the folder':28} {folder_s:8.1f} {len(files) / folder_s:12.1f} {n_studies / folder_s:10.2f}")
        print(f"\nlistener / folder predict: {folder_s / processed:.2f}x (studies are processed while others "
              f"arrive; each waits {args.idle} s without a new instance; batches are one study's films)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
