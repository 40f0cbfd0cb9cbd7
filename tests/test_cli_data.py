import json
import subprocess
import sys

import cv2
import numpy as np
from typer.testing import CliRunner

from conftest import shared
from cxrkit.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("demo", "data"):
        assert cmd in r.output
    r = runner.invoke(app, ["data", "--help"])
    for cmd in ("demo", "inspect", "render"):
        assert cmd in r.output


def test_data_demo_inspect_render(tmp_path):
    r = runner.invoke(app, ["data", "demo", str(tmp_path / "d"), "--n-studies", "20", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "train.csv").is_file() and (tmp_path / "d" / "valid.csv").is_file()
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "d" / "train.csv"), "--json", str(tmp_path / "s.json"),
                            "--plot", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["format"] == "chexpert" and s["n_images"] > 10 and len(s["classes"]) == 14
    assert {"name", "positive", "negative", "uncertain", "unknown"} <= set(s["classes"][0])
    png = cv2.imread(str(tmp_path / "s.png"))
    assert png is not None and png.shape[1] > 300
    img = next((tmp_path / "d").rglob("*.png"))
    r = runner.invoke(app, ["data", "render", str(img), str(tmp_path / "r.png"), "--size", "32"])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "r.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_inspect_real_tables(tmp_path):
    r = runner.invoke(app, ["data", "inspect", str(shared("nih1000", "labels.csv")), "--json", str(tmp_path / "n.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "n.json").read_text())
    assert s["format"] == "nih" and s["n_images"] == 800
    r = runner.invoke(app, ["data", "inspect", str(shared("coco_tiny", "annotations", "instances_val2017.json")),
                            "--format", "coco", "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0 and json.loads((tmp_path / "c.json").read_text())["n_classes"] == 80


def test_render_dicom_keeps_orientation(tmp_path):
    r = runner.invoke(app, ["data", "render", str(shared("dicom", "siim_cr_chest_pa_jpeg_baseline.dcm")),
                            str(tmp_path / "r.png"), "--size", "64"])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "r.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (64, 64)
    assert out[20:32, 10:22].mean() < out[20:32, 28:36].mean()  # lung darker than mediastinum


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True)


def test_bad_inputs_give_one_line_errors(tmp_path):
    r = _cli("data", "inspect", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.csv").write_text("Image Index,Finding Labels\na.png,Cardiomegaly|Flu\n")
    r = _cli("data", "inspect", str(tmp_path / "bad.csv"))
    assert r.returncode == 2 and "Flu" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "x.png").write_text("not an image")
    r = _cli("data", "render", str(tmp_path / "x.png"), str(tmp_path / "o.png"))
    assert r.returncode == 2 and "x.png" in r.stderr and not (tmp_path / "o.png").exists()
    r = _cli("data", "render", str(tmp_path / "x.png"), str(tmp_path / "o.jpg"))
    assert r.returncode == 2
