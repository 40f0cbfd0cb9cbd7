"""Robustness corruptions (seed 004, Table 8): formulas, seeding, and `evaluate --corrupt`."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cxrkit.data.corrupt import parse_corruption
from cxrkit.errors import ConfigError
from hostile_files import film


def _img(size: int = 128) -> np.ndarray:
    return film(size).astype(np.float32) / 255.0


def test_same_seed_same_pixels_other_seed_other_pixels():
    x = _img()
    for name in ("salt-pepper", "speckle", "blur"):
        a, b = parse_corruption(name, seed=3), parse_corruption(name, seed=3)
        np.testing.assert_array_equal(a(x, "f.png"), b(x, "f.png"))
        if name != "blur":  # blur has no randomness
            assert not np.array_equal(a(x, "f.png"), parse_corruption(name, seed=4)(x, "f.png"))
            assert not np.array_equal(a(x, "f.png"), a(x, "g.png"))  # per image


def test_blur_is_a_gaussian_of_sigma_times_the_shorter_side():
    x = _img(200)
    out = parse_corruption("blur:sigma=0.02")(x)
    ref = cv2.GaussianBlur(x, (0, 0), sigmaX=4.0, sigmaY=4.0, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert out.std() < x.std() and abs(out.mean() - x.mean()) < 0.01
    np.testing.assert_allclose(parse_corruption("blur")(np.full((64, 64), 0.3, np.float32)), 0.3, atol=1e-6)


def test_salt_and_pepper_sets_the_given_fraction_to_zero_or_one():
    x = np.full((400, 400), 0.5, np.float32)
    out = parse_corruption("salt-pepper:amount=0.1")(x, "k")
    changed = out != 0.5
    assert abs(changed.mean() - 0.1) < 0.005
    assert set(np.unique(out[changed])) == {0.0, 1.0}
    assert abs((out[changed] == 1.0).mean() - 0.5) < 0.03
    assert (parse_corruption("salt-pepper:amount=0.1,salt_vs_pepper=1")(x, "k") != 0).all()


def test_speckle_is_multiplicative_gaussian_noise():
    x = np.full((300, 300), 0.4, np.float32)
    x[:50] = 0.0
    out = parse_corruption("speckle:sigma=0.25")(x, "k")
    np.testing.assert_array_equal(out[:50], 0.0)  # x + x * n: zero stays zero
    rel = (out[50:] - 0.4) / 0.4
    assert abs(rel.std() - 0.25) < 0.01 and abs(rel.mean()) < 0.01
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("bad", ["fog", "blur:radius=3", "blur:sigma=x", "salt-pepper:amount=2", "speckle:sigma=-1"])
def test_bad_corruption_specs_are_refused(bad):
    with pytest.raises(ConfigError):
        parse_corruption(bad)


def test_evaluate_reports_clean_and_corrupted_side_by_side(trained_model, demo_data, tmp_path):
    outs = []
    for k in range(2):
        j = tmp_path / f"e{k}.json"
        r = subprocess.run([sys.executable, "-m", "cxrkit.cli", "-q", "evaluate", str(trained_model),
                            str(demo_data / "valid.csv"), "--json", str(j), "--corrupt", "blur:sigma=0.03",
                            "--corrupt", "salt-pepper", "--corrupt", "speckle", "--corrupt-seed", "7"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(j.read_text()))
    a, b = outs
    assert set(a["corruptions"]) == {"blur:sigma=0.03", "salt-pepper:amount=0.05,salt_vs_pepper=0.5",
                                     "speckle:sigma=0.2"}
    for label, c in a["corruptions"].items():
        assert c["clean_mAUC"] == a["mAUC"] and c["mAUC"] == b["corruptions"][label]["mAUC"]
        assert c["mAUC"] != a["mAUC"] and len(c["classes"]) == len(a["classes"])
    assert (tmp_path / "e0.corruptions.png").stat().st_size > 1000
    assert "robustness" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cxrkit.cli", "evaluate", str(trained_model), str(demo_data / "valid.csv"),
                        "--corrupt", "fog"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown corruption" in r.stderr
