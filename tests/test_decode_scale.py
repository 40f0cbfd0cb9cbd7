"""Decoding JPEGs at the model's size: a large JPEG is decoded inside libjpeg-turbo at a
reduced M/8 scale, never below four times the model's input (REDUCED_MARGIN), and what the
model sees stays within a stated tolerance of the full decode + resize."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("simplejpeg")

PIXEL_TOL_MAX, PIXEL_TOL_MEAN = 0.08, 0.005  # [0, 1] pixels after the resize; synthetic hard edges: 0.05


def _jpeg(path: Path, size: int, colour: bool = False) -> Path:
    from cxrkit.data.demo import render_frontal

    film = (render_frontal({"Cardiomegaly": 0.8}, np.random.default_rng(size), size=size) * 255).astype(np.uint8)
    if colour:  # a photograph, not a film
        film = np.dstack([film, np.roll(film, 40, axis=1), 255 - film])
    assert cv2.imwrite(str(path), film, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def _prepared(path: Path, pres, monkeypatch, scaled: bool):
    from cxrkit.runtime import prepare_file

    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1" if scaled else "0")
    return prepare_file(0, path, pres)


def test_reduced_decode_stays_within_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit.data.preprocess import Preprocessing

    f = _jpeg(tmp_path / "film.jpg", 2048)
    pre = Preprocessing(size=224)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    assert pre.read_for_model(f).shape == (1024, 1024)  # 4/8 keeps >= 896 = 4 x 224
    assert Preprocessing(size=96).read_for_model(f).shape == (512, 512)  # 2/8 keeps >= 384
    assert pre.read(f).shape == (2048, 2048)  # read() stays full size
    a = _prepared(f, [pre], monkeypatch, True).arrays[0]
    b = _prepared(f, [pre], monkeypatch, False).arrays[0]
    d = np.abs(a - b) * pre.std[0]  # back to [0, 1] pixel units
    assert d.max() <= PIXEL_TOL_MAX and d.mean() <= PIXEL_TOL_MEAN and d.max() > 0


def test_when_it_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cxrkit.data.preprocess import Preprocessing

    small = _jpeg(tmp_path / "small.jpg", 1024)
    pre = Preprocessing(size=224)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    assert pre.read_for_model(small).shape == (1024, 1024)  # a 1024 film for a 224 model: full decode
    png = tmp_path / "film.png"
    cv2.imwrite(str(png), (np.random.default_rng(0).random((1024, 1024)) * 255).astype(np.uint8))
    assert pre.read_for_model(png).shape == (1024, 1024)  # PNG: full decode
    big = _jpeg(tmp_path / "big.jpg", 2048)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "0")
    assert pre.read_for_model(big).shape == (2048, 2048)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # not installed (the container): as before
    assert pre.read_for_model(big).shape == (2048, 2048)


def test_colour_photos_are_still_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit.data.preprocess import Preprocessing

    f = _jpeg(tmp_path / "photo.jpg", 2048, colour=True)
    p = _prepared(f, [Preprocessing(size=224)], monkeypatch, True)
    assert p.arrays is None and p.reason == "colour"


def test_ensemble_members_share_one_decode_at_the_largest_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.runtime import read_films

    f = _jpeg(tmp_path / "film.jpg", 2048)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    imgs = read_films(f, [Preprocessing(size=96), Preprocessing(size=224)])
    assert imgs[0] is imgs[1] and imgs[0].shape == (1024, 1024)  # 4 x 224 -> 4/8, not 96's 2/8


def test_predictions_match_full_decode(trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    films = [_jpeg(tmp_path / f"f{i}.jpg", 512 + 512 * i) for i in range(3)]
    pred = load_predictor(trained_model, engine="torch")
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    a, _, _ = predict_paths(pred, films, show_progress=False)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "0")
    b, _, _ = predict_paths(pred, films, show_progress=False)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 0.01


def _jpeg_dicom(path: Path, film: np.ndarray, window: bool = True, mono1: bool = False) -> Path:
    """A JPEG-baseline CR (one 8-bit grey frame, encapsulated), as modalities send them."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    ok, buf = cv2.imencode(".jpg", film, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = film.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 120, 200
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return path


def _real_film(size: int) -> np.ndarray:
    from conftest import SHARED_DATA

    files = sorted((SHARED_DATA / "nih_hires").rglob("*.png"))[:1] if SHARED_DATA.exists() else []
    if files:
        film = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
        return cv2.resize(film, (size, size), interpolation=cv2.INTER_CUBIC)
    from cxrkit.data.demo import render_frontal

    return (render_frontal({"Effusion": 0.8}, np.random.default_rng(1), size=size) * 255).astype(np.uint8)


@pytest.mark.parametrize("window,mono1", [(True, False), (False, True)])
def test_jpeg_baseline_dicom_is_decoded_at_the_model_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          window: bool, mono1: bool) -> None:
    """A 2048 px JPEG-baseline DICOM for a 224 px model: the frame is decoded at 4/8 inside
    libjpeg-turbo, the pixel pipeline (window, MONOCHROME1) applies as before, and what the
    model sees stays within the JPEG files' tolerance of the full decode."""
    from cxrkit.data.images import read_dicom
    from cxrkit.data.preprocess import Preprocessing

    f = _jpeg_dicom(tmp_path / "film.dcm", _real_film(2048), window=window, mono1=mono1)
    pre = Preprocessing(size=224)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    small, info = read_dicom(f, pre.decode_hw)
    assert small.shape == (1024, 1024) and info.rows == 2048
    assert pre.read_for_model(f).shape == (1024, 1024)
    assert read_dicom(f)[0].shape == (2048, 2048)  # no size given: full decode
    a = _prepared(f, [pre], monkeypatch, True).arrays[0]
    b = _prepared(f, [pre], monkeypatch, False).arrays[0]
    d = np.abs(a - b) * pre.std[0]
    assert d.max() <= PIXEL_TOL_MAX and d.mean() <= PIXEL_TOL_MEAN and d.max() > 0
    full = read_dicom(f)[0]
    assert abs(float(small.mean()) - float(full.mean())) < 0.01  # same window / inversion applied


def test_other_dicoms_are_decoded_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom

    from cxrkit.data.images import read_dicom

    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "1")
    f = _jpeg_dicom(tmp_path / "film.dcm", _real_film(2048))
    ds = pydicom.dcmread(f)
    ds.decompress()  # the same film, native (uncompressed)
    ds.save_as(tmp_path / "native.dcm")
    assert read_dicom(tmp_path / "native.dcm", (896, 896))[0].shape == (2048, 2048)
    small = _jpeg_dicom(tmp_path / "small.dcm", _real_film(1024))  # no reduction keeps 4 x 224
    assert read_dicom(small, (896, 896))[0].shape == (1024, 1024)
    monkeypatch.setenv("CXRKIT_JPEG_SCALED", "0")
    assert read_dicom(f, (896, 896))[0].shape == (2048, 2048)
