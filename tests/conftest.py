"""Shared fixtures. Real data comes from ../shared/data next to the checkout; tests that need
it skip cleanly when it is absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CXRKIT_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def real_film(size: int) -> "np.ndarray":  # noqa: F821
    """A real chest film (the first of ../shared/data/nih_hires, else a rendered one), grey,
    resized to size x size with area interpolation, values in [0, 1]: for feature checks
    against reference libraries."""
    import cv2
    import numpy as np

    files = sorted((SHARED_DATA / "nih_hires" / "images").glob("*.png"))[:1]
    if files:
        img = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    else:
        from cxrkit.data.demo import render_frontal

        img = (render_frontal({"Effusion": 0.7}, np.random.default_rng(0), size=256) * 255).astype(np.uint8)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic demo dataset shared by the whole session."""
    from cxrkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n_studies=160, seed=123, size=64, show_progress=False)
    return out


def tiny_config(data_dir: Path, **overrides: object) -> "TrainConfig":  # noqa: F821
    """A seconds-long training config on the demo data (tiny CNN, 32 px)."""
    from cxrkit.train.config import load_config

    raw = {
        "name": "tiny",
        "label_space": "chexpert",
        "data": {"train": {"table": str(data_dir / "train.csv")}, "valid": {"table": str(data_dir / "valid.csv")},
                 "label_policy": {"uncertain": "ones-lsr", "unknown": "negative"}, "cache": "memory", "workers": 0},
        "preprocessing": {"size": 32, "channels": 1, "mean": [0.5], "std": [0.25]},
        "augmentation": {"name": "chexpert"},
        "model": {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [8, 16, 32]}},
        "loss": {"name": "bce", "params": {"reduction": "mean"}},
        "optim": {"name": "adam", "lr": 0.003},
        "schedule": {"name": "onecycle"},
        "train": {"epochs": 2, "batch_size": 32, "seed": 0},
    }
    import json

    ovs = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]  # JSON is YAML: None -> null
    return load_config(raw=raw, overrides=ovs)


@pytest.fixture(scope="session")
def trained_model(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 3 epochs on the session's demo data: RUN_DIR/model."""
    from cxrkit.train.trainer import fit

    out = tmp_path_factory.mktemp("run")
    fit(tiny_config(demo_data, **{"train.epochs": 3}), out, show_progress=False)
    return out / "model"


@pytest.fixture(scope="session")
def trained_model_48(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with another input size (48 px) and seed: for ensembles."""
    from cxrkit.train.trainer import fit

    out = tmp_path_factory.mktemp("run48")
    fit(tiny_config(demo_data, **{"train.epochs": 2, "preprocessing.size": 48, "train.seed": 5}), out,
        show_progress=False)
    return out / "model"


@pytest.fixture()
def no_image_limits():
    """Accept tiny and flat images: for tests of the pixel pipeline itself on small arrays
    (the size and contrast limits are tested in test_hostile.py)."""
    from cxrkit.data import images

    old = (images.LIMITS.max_pixels, images.LIMITS.min_size, images.LIMITS.min_range)
    images.set_limits(min_size=1, min_range=0.0)
    yield
    images.set_limits(*old)


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli_inprocess(capsys: pytest.CaptureFixture, *args: str) -> CliResult:
    """``cxrkit ARGS`` through the console-script entry point (one-line errors, exit codes),
    in this process: the same code path as a subprocess without paying torch's import again."""
    import sys

    from cxrkit import cli

    old = sys.argv
    sys.argv = ["cxrkit", *args]
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        cli._ON_INTERRUPT.clear()
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)
