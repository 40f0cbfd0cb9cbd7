"""Regenerate challenge/test/: a tiny model, the inputs of the three entry modes and the
expected outputs. Everything is SYNTHETIC (cxrkit's demo generator) and deterministic.

    .venv/bin/python challenge/make_test_assets.py

The model predicts the 26 CXR-LT labels (which include CheXpert's 5 competition labels), so
one model serves all three modes. It is trained for a few epochs on synthetic data: the 14
labels the synthetic data has are learned, the other 12 have no training labels at all -
it is a plumbing test, not a clinical model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
TEST = HERE / "test"


def main() -> None:
    from cxrkit.data.demo import generate_demo
    from cxrkit.data.images import write_metaimage
    from cxrkit.export import deployment_copy
    from cxrkit.labels import CXR_LT_26
    from cxrkit.train.config import load_config
    from cxrkit.train.trainer import fit

    if TEST.exists():
        shutil.rmtree(TEST)
    TEST.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_demo(tmp / "data", n_studies=120, seed=7, size=64, show_progress=False)
        for split in ("train", "valid"):  # the synthetic labels in CXR-LT's layout (12 labels unknown)
            df = pd.read_csv(tmp / "data" / f"{split}.csv")
            out = pd.DataFrame({"dicom_id": [Path(p).stem + f"-{i}" for i, p in enumerate(df["Path"])],
                                "path": df["Path"]})
            for c in CXR_LT_26:
                out[c] = df[c] if c in df.columns else np.nan
            out.to_csv(tmp / "data" / f"{split}-cxrlt.csv", index=False)
        cfg = load_config(raw={
            "name": "challenge-test-model", "label_space": "cxr-lt",
            "data": {"train": {"table": str(tmp / "data" / "train-cxrlt.csv")},
                     "valid": {"table": str(tmp / "data" / "valid-cxrlt.csv")},
                     "label_policy": {"uncertain": "ones", "unknown": "ignore"}, "cache": "memory", "workers": 0},
            "preprocessing": {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]},
            "augmentation": {"name": "chexpert"},
            "model": {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [8, 16, 32]}},
            "loss": {"name": "bce", "params": {"reduction": "mean"}},
            "optim": {"name": "adam", "lr": 0.003}, "schedule": {"name": "onecycle"},
            "train": {"epochs": 12, "batch_size": 32, "seed": 0}})
        fit(cfg, tmp / "run", show_progress=False)
        deployment_copy(tmp / "run" / "model", TEST / "model")

        frontal = sorted((tmp / "data" / "synthetic-cxr-demo" / "valid").rglob("*.png"))
        # 1. CheXpert CodaLab: Path column, several views per study
        chx = TEST / "chexpert"
        rows = []
        for p in frontal[:8]:
            rel = Path("CheXpert-v1.0") / "valid" / p.relative_to(tmp / "data" / "synthetic-cxr-demo" / "valid")
            (chx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, chx / rel)
            rows.append({"Path": rel.as_posix()})
        pd.DataFrame(rows).to_csv(chx / "input.csv", index=False)
        # 2. CXR-LT: dicom_id + path, one of them a DICOM file
        lt = TEST / "cxrlt"
        (lt / "images").mkdir(parents=True)
        rows = []
        for i, p in enumerate(frontal[8:12]):
            dst = lt / "images" / f"img{i}.png"
            shutil.copy(p, dst)
            rows.append({"dicom_id": f"synthetic-{i}", "path": f"images/{dst.name}"})
        _write_dicom(frontal[12], lt / "images" / "img4.dcm")
        rows.append({"dicom_id": "synthetic-4", "path": "images/img4.dcm"})
        pd.DataFrame(rows).to_csv(lt / "input.csv", index=False)
        # 3. grand-challenge: /input with inputs.json and an .mha image
        gc = TEST / "gc" / "input"
        (gc / "images" / "chest-x-ray").mkdir(parents=True)
        write_metaimage(gc / "images" / "chest-x-ray" / "case.mha", cv2.imread(str(frontal[13]), cv2.IMREAD_GRAYSCALE))
        (gc / "inputs.json").write_text(json.dumps([{"interface": {"slug": "chest-x-ray", "kind": "Image",
                                                                  "relative_path": "images/chest-x-ray"},
                                                    "image": {"name": "case.mha"}}], indent=2))

    # expected outputs, made by the same entry point the container runs
    exe = [sys.executable, "-m", "cxrkit.submit", "--model", str(TEST / "model")]
    _run(exe + ["chexpert", "input.csv", str(TEST / "chexpert" / "expected.csv")], cwd=TEST / "chexpert")
    _run(exe + ["cxr-lt", "input.csv", str(TEST / "cxrlt" / "expected")], cwd=TEST / "cxrlt")
    _run(exe + ["gc", "--input", str(gc), "--output", str(TEST / "gc" / "expected")], cwd=TEST / "gc")
    (TEST / "cxrlt" / "expected" / "submission.zip").unlink()  # compared by content, not bytes
    print(f"wrote {TEST}")


def _write_dicom(png: Path, dst: Path) -> None:
    """The synthetic PNG as an 8-bit CR chest DICOM (no patient data; MONOCHROME2)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1180.1.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(dst), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1180.2.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1180.3.1"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID = "SYNTHETIC^DEMO", "SYNTHETIC-0"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = img.tobytes()
    ds.save_as(dst, enforce_file_format=True)


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr}")


if __name__ == "__main__":
    main()
