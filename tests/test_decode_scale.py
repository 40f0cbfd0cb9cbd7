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
