"""Decoding JPEG films at the model's size (libjpeg-turbo scaling through simplejpeg) against
full decode + resize: ms per film, the ratio, and what changes in the model's input and in a
trained model's probabilities, on real films.

Films: the real chest DICOMs in ../shared/data/dicom, their pixels written as JPEG (quality
95) at their own size, each also upsampled to 2048 px (a 2k film) and that 2k film also as a
JPEG-baseline DICOM; the real DICOMs that are JPEG baseline themselves as they are; the model: --model (e.g. the
nih_hires model), else a random DenseNet-121 at 224 px.

    python benchmarks/decode_scale.py --model runs/nih_hires/model
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def _jpeg_baseline_dicom(path: Path, film: np.ndarray) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    ok, buf = cv2.imencode(".jpg", film, [cv2.IMWRITE_JPEG_QUALITY, 95])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.Rows, ds.Columns = "CR", "CHEST", *film.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dicom-dir", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom"))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--margin", type=float, default=None, help="decode at least this many times the model's size "
                                                                  "(default: cxrkit's REDUCED_MARGIN)")
    a = ap.parse_args()
    if a.margin:
        import cxrkit.data.images as images

        images.REDUCED_MARGIN = a.margin

    import pydicom

    from cxrkit.data.images import read_dicom
    from cxrkit.inference.runtime import cpu_model_name
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    tmp = Path(tempfile.mkdtemp())
    films = []
    for src in sorted(Path(a.dicom_dir).glob("*.dcm")):
        img, _ = read_dicom(src)
        u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        for size in (u8.shape[0], 2048):
            f = tmp / f"{src.stem}-{size}.jpg"
            im = u8 if size == u8.shape[0] else cv2.resize(u8, (size, size), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(f), im, [cv2.IMWRITE_JPEG_QUALITY, 95])
            films.append(f)
            if size == 2048:  # the same 2k film as a JPEG-baseline DICOM (one encapsulated frame)
                films.append(_jpeg_baseline_dicom(tmp / f"{src.stem}-{size}-jpeg.dcm", im))
        if str(pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50":
            films.append(src)  # a real JPEG-baseline DICOM as its modality wrote it
    if a.model:
        pred = load_predictor(a.model, engine="torch")
    else:
        from cxrkit.artifact import ModelMeta, save_model
        from cxrkit.data.preprocess import Preprocessing
        from cxrkit.models import ModelConfig, build_model

        cfg = ModelConfig(backbone="densenet121", in_chans=3)
        save_model(tmp / "m", build_model(cfg, 14, load_weights=False),
                   ModelMeta(classes=[f"c{i}" for i in range(14)], preprocessing=Preprocessing(size=224).to_dict(),
                             model=cfg.to_dict(), thresholds=[0.5] * 14))
        pred = load_predictor(tmp / "m", engine="torch")
    pre = pred.preprocessings[0]
    print(f"CPU: {cpu_model_name() or 'unknown CPU'}; model input {pre.hw[0]} x {pre.hw[1]} ({a.model or 'random DenseNet-121'}); "
          f"decode margin {pre.decode_hw[0] / pre.hw[0]:.0f}x")
    print(f"\n{'film':48} {'full ms':>8} {'scaled ms':>10} {'ratio':>6} {'decoded at':>11} {'max |dx|':>9} "
          f"{'max |dp|':>9}")
    for f in films:
        out = {}
        for scaled in ("0", "1"):
            os.environ["CXRKIT_JPEG_SCALED"] = scaled
            t0 = time.perf_counter()
            for _ in range(a.repeat):
                x = pre.resize_image(pre.read_for_model(f))
            ms = (time.perf_counter() - t0) / a.repeat * 1e3
            probs, _, _ = predict_paths(pred, [f], show_progress=False)
            out[scaled] = (ms, x, np.asarray(probs)[0], pre.read_for_model(f).shape)
        (m0, x0, p0, _), (m1, x1, p1, shape) = out["0"], out["1"]
        print(f"{f.name:48} {m0:8.1f} {m1:10.1f} {m0 / m1:5.1f}x {f'{shape[0]}x{shape[1]}':>11} "
              f"{float(np.abs(x0 - x1).max()):9.4f} {float(np.abs(p0 - p1).max()):9.4f}")
    os.environ.pop("CXRKIT_JPEG_SCALED", None)
    print("\n(dx: the model's [0, 1] input after the resize; dp: the model's probabilities)")


if __name__ == "__main__":
    main()
