import json

import cv2
import numpy as np
import pytest
import torch

from conftest import shared
from cxrkit.data.augment import SEED000_VIEWS, TTAView, apply_tta, build_augmentation, tta_views
from cxrkit.data.preprocess import Preprocessing, to_uint8
from cxrkit.errors import ConfigError


def test_resize_modes():
    img = np.zeros((100, 200), np.float32)
    img[:, :100] = 1.0
    assert Preprocessing(size=50, resize="stretch").resize_image(img).shape == (50, 50)
    lb = Preprocessing(size=50, resize="letterbox").resize_image(img)
    assert lb.shape == (50, 50) and lb[:12].max() == 0 and lb[-12:].max() == 0  # padded top/bottom
    assert abs(lb[25, :25].mean() - 1.0) < 1e-5 and lb[25, 26:].max() == 0
    cc = Preprocessing(size=(40, 40), resize="center-crop").resize_image(img)
    assert cc.shape == (40, 40) and abs(cc[:, :18].mean() - 1) < 1e-5 and cc[:, 22:].max() == 0


@pytest.mark.usefixtures("no_image_limits")
def test_normalize_and_tensor(tmp_path):
    g = np.full((30, 30), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), g)
    p3 = Preprocessing(size=16)
    x = p3(tmp_path / "a.png")
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0, 0].item(), (128 / 255 - 0.485) / 0.229, rtol=1e-5)
    np.testing.assert_allclose(x[2, 0, 0].item(), (128 / 255 - 0.406) / 0.225, rtol=1e-5)
    p1 = Preprocessing(size=16, channels=1, mean=[0.0], std=[1.0])
    assert p1(tmp_path / "a.png").shape == (1, 16, 16)
    batch = p3.normalize(np.zeros((4, 16, 16), np.float32))
    assert batch.shape == (4, 3, 16, 16)
    np.testing.assert_allclose(p3.denormalize(torch.from_numpy(batch)).numpy(), 0, atol=1e-6)


def test_roundtrip_through_json():
    p = Preprocessing(size=(64, 48), channels=1, resize="letterbox", intensity="minmax")
    q = Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and q.hw == (64, 48)
    with pytest.raises(ConfigError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"size": 3, "palette": 1})
    with pytest.raises(ConfigError):
        Preprocessing(channels=2)
    with pytest.raises(ConfigError):
        Preprocessing(resize="squash")


def test_render_is_the_model_view_of_a_dicom():
    pre = Preprocessing(size=128)
    path = shared("dicom", "nih_dx_chest_uncompressed.dcm")
    r = pre.render(path)
    assert r.dtype == np.uint8 and r.shape == (128, 128)
    np.testing.assert_array_equal(r, to_uint8(pre.load(path)))
    x = pre(path)
    np.testing.assert_allclose(pre.denormalize(x).numpy(), pre.load(path), atol=1e-5)


def test_training_augmentation_is_seeded():
    aug = build_augmentation("chexpert")
    img = np.zeros((64, 64), np.float32)
    img[20:40, 5:25] = 1
    a, b, c = aug(img, 7), aug(img, 7), aug(img, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    # over many seeds: about half flipped, rotation within 20 degrees keeps mass close
    flips = sum(aug(img, s)[:, 40:].sum() > aug(img, s)[:, :24].sum() for s in range(200))
    assert 60 < flips < 140
    assert build_augmentation("none") is None
    assert build_augmentation("cxr-robust")(img, 1).shape == img.shape
    with pytest.raises(ConfigError):
        build_augmentation("mixup")


def test_tta_views_geometry():
    assert len(tta_views("seed000")) == 9 and len(tta_views(True)) == 10 and len(tta_views(None)) == 1
    x = torch.zeros(2, 1, 40, 40)
    x[:, :, 10:20, 10:20] = 1.0
    out = apply_tta(x, SEED000_VIEWS)
    assert out.shape == (18, 1, 40, 40)
    torch.testing.assert_close(out[:2], x)  # identity first, view-major
    shifted = apply_tta(x, [TTAView("s", tx=0.1)])
    cols = shifted[0, 0].sum(0).nonzero().flatten()
    assert cols.min().item() >= 13 and cols.max().item() <= 24  # moved right by 4 px
    flipped = apply_tta(x, [TTAView("f", hflip=True)])
    torch.testing.assert_close(flipped, torch.flip(x, dims=[3]))
    rot = apply_tta(x, [TTAView("r", rotate=5)])
    assert abs(rot.sum().item() - x.sum().item()) / x.sum().item() < 0.05
    with pytest.raises(ConfigError):
        tta_views("lots")


@pytest.mark.usefixtures("no_image_limits")
def test_rgb_colour_images(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), rgb[..., ::-1])  # OpenCV writes BGR
    p = Preprocessing(size=(10, 15), colour="rgb")
    img = p.load(tmp_path / "red.png")
    assert img.shape == (10, 15, 3)
    np.testing.assert_allclose(img[..., 0], 200 / 255, atol=1e-6)
    assert img[..., 1:].max() == 0
    x = p(tmp_path / "red.png")
    assert x.shape == (3, 10, 15)
    np.testing.assert_allclose(x[0].numpy(), (200 / 255 - 0.485) / 0.229, rtol=1e-5)
    grey = p.load(shared("dicom", "nih_dx_chest_uncompressed.dcm"))  # grey sources repeat over channels
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ConfigError, match="needs channels: 3"):
        Preprocessing(colour="rgb", channels=1)


def test_full_resolution_films_are_preprocessed_as_the_saved_model_says(trained_model, tmp_path):
    """A 1024 px PNG given to predict goes through exactly the saved model's resize (area
    interpolation from full size), range and normalisation."""
    import cv2

    from cxrkit.artifact import load_preprocessing
    from cxrkit.runtime import prepare_file

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1024, 0:1024]
    big = np.clip(60 + 120 * x / 1024 + 20 * np.sin(y / 31.0) + rng.normal(0, 8, (1024, 1024)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "film.png"), big)
    pre = load_preprocessing(trained_model)
    got = prepare_file(0, tmp_path / "film.png", [pre]).arrays[0]
    h, w = pre.hw
    want = cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    want = (want - np.asarray(pre.mean, np.float32)[0]) / np.asarray(pre.std, np.float32)[0]
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    assert pre.interpolation == "area"
