"""What a new hospital user hit (issue 20): optional packages and output folders checked before
the first image, install hints that work, -v after the command, colour pictures refused by
grey models, the NIH subset rebuilt from the official release, the config's data folder."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, run_cli_inprocess, shared


def _film(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96]
    img = np.clip(100 + 50 * np.sin(xx / 9) + rng.normal(0, 20, (96, 96)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture()
def films(tmp_path):
    d = tmp_path / "films"
    d.mkdir()
    for i in range(3):
        _film(d / f"f{i}.png", i)
    return d


def test_explain_without_grad_cam_fails_before_the_first_image(trained_model, films, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if grad-cam were not installed
    out = tmp_path / "p.csv"
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(out), "--explain",
                          str(tmp_path / "maps"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "grad-cam" in lines[0] and 'pip install -e ".[explain]"' in lines[0], r.stderr
    assert not out.exists()  # nothing was predicted first


def test_sr_into_a_folder_that_cannot_be_written_fails_before_the_first_image(trained_model, films, tmp_path,
                                                                              capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "p.csv"
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(out), "--sr",
                          str(blocker / "sr"))
    assert r.returncode == 2 and "cannot write there" in r.stderr and "is a file" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_sr_into_a_read_only_file_system_fails_before_the_first_image(trained_model, films, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here")
    try:
        out = tmp_path / "p.csv"
        r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(out), "--sr", str(ro))
        assert r.returncode == 2 and "Read-only file system" in r.stderr, r.stderr
        assert not out.exists()
        r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(ro / "p.csv"))
        assert r.returncode == 2 and "--out" in r.stderr and "Read-only" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_no_message_says_pip_install_cxrkit_extras():
    """cxrkit is not on the package index: `pip install cxrkit[sr]` fails for every user today."""
    bad = re.compile(r"pip install [\"']?cxrkit\[")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in [*(REPO / "cxrkit").rglob("*.py"), REPO / "README.md",
                                                   *(REPO / "docs").glob("*.md")]
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if bad.search(line) and "once published" not in line]
    assert hits == []


def test_install_hints_name_the_packages_and_the_checkout_command():
    from cxrkit.errors import CxrkitError
    from cxrkit.extras import EXTRAS, install_hint, require

    assert install_hint("sr") == 'pip install highdicom (in a cxrkit checkout: pip install -e ".[sr]")'
    with pytest.raises(CxrkitError, match=r"needs not-a-real-package: pip install not-a-real-package"):
        EXTRAS["_test"] = [("cxrkit_no_such_module", "not-a-real-package")]
        try:
            require("_test", "this")
        finally:
            del EXTRAS["_test"]


def test_verbose_flag_after_the_command(trained_model, films, tmp_path, capsys):
    from cxrkit.cli import hoist_global_flags

    assert hoist_global_flags(["predict", "m", "d", "-v"]) == ["-v", "predict", "m", "d"]
    assert hoist_global_flags(["predict", "m", "--", "-v"]) == ["predict", "m", "--", "-v"]
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(tmp_path / "p.csv"), "-v")
    assert r.returncode == 0, r.stderr
    assert "predicted 3 image(s)" in r.stdout


def test_colour_photographs_are_refused_by_a_grey_model(trained_model, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    grey = _film(d / "grey.png")
    g = cv2.imread(str(grey), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(d / "grey_as_rgb.jpg"), cv2.cvtColor(g, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])
    coco = sorted(shared("coco_tiny").rglob("*.jpg"))[:3]  # real colour photographs
    photos = [Path(p) for p in coco]
    for p in photos:
        (d / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "p.csv"
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as f:
        used = sorted(Path(row["path"]).name for row in csv.DictReader(f))
    with open(tmp_path / "p.failures.csv", newline="") as f:
        refused = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(f)}
    assert used == ["grey.png", "grey_as_rgb.jpg"]  # a grey film stored as colour JPEG is still a film
    assert refused == {p.name: "colour" for p in photos}


def test_an_rgb_model_for_natural_images_keeps_colour(tmp_path):
    from cxrkit.data.preprocess import Preprocessing

    photo = sorted(shared("coco_tiny").rglob("*.jpg"))[0]
    img = Preprocessing(size=32, channels=3, colour="rgb").read(photo)
    assert img.shape[2] == 3 and float(np.abs(img[..., 0] - img[..., 2]).mean()) > 0.01


def test_nih_subset_is_rebuilt_from_the_official_release(tmp_path, capsys):
    """The config's films made from the official release: the official table (the real one)
    and the films in the release's folder layout give exactly the labels of the subset."""
    hires = shared("nih_hires")
    official = shared("nih", "Data_Entry_2017_v2020.csv.gz")
    ref = {r["Image Index"]: r for r in csv.DictReader(open(hires / "labels.csv", newline=""))}
    listed = [line.split(",")[0] for line in (REPO / "configs" / "nih_hires.files.csv").read_text().splitlines()
              if line and not line.startswith(("#", "Image Index"))]
    assert sorted(listed) == sorted(ref)  # the shipped list is the subset the config trains on
    release = tmp_path / "ChestX-ray14"
    imgs = release / "images_001" / "images"
    imgs.mkdir(parents=True)
    (release / "Data_Entry_2017_v2020.csv.gz").write_bytes(official.read_bytes())
    pick = listed[:12]
    for name in pick[:-1]:  # the last one is missing from this "release"
        big = cv2.resize(cv2.imread(str(hires / "images" / name), cv2.IMREAD_GRAYSCALE), (512, 512))
        cv2.imwrite(str(imgs / name), big)
    lst = tmp_path / "list.csv"
    lst.write_text("# a comment\nImage Index,split\n" + "".join(f"{n},{ref[n]['split']}\n" for n in pick))
    out = tmp_path / "data" / "nih_hires"
    r = run_cli_inprocess(capsys, "data", "nih-subset", str(lst), str(release), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "1 listed film(s) are not in" in r.stderr
    rows = list(csv.DictReader(open(out / "labels.csv", newline="")))
    assert [x["Image Index"] for x in rows] == pick[:-1]
    for x in rows:
        assert x == {k: ref[x["Image Index"]][k] for k in x}
        assert cv2.imread(str(out / "images" / x["Image Index"]), cv2.IMREAD_UNCHANGED).shape == (256, 256)
    assert (out / "missing.csv").read_text().split() == ["Image", "Index", pick[-1]]
    # the config finds it through CXRKIT_DATA
    from cxrkit.train.config import load_config

    os.environ["CXRKIT_DATA"] = str(tmp_path / "data")
    try:
        cfg = load_config(REPO / "configs" / "nih_hires.yaml")
    finally:
        del os.environ["CXRKIT_DATA"]
    assert Path(cfg.data.train.table) == out / "labels.csv"


def test_a_config_whose_data_is_missing_says_how_to_point_at_it(tmp_path):
    env = dict(os.environ, CXRKIT_DATA=str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "-m", "cxrkit.cli", "train", str(REPO / "configs" / "nih_hires.yaml"),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "nowhere/nih_hires/labels.csv: file not found" in line and "CXRKIT_DATA" in line
    assert not (tmp_path / "run").exists()


def test_demo_dicom_writes_valid_cr_studies_with_stable_uids(demo_data, tmp_path, capsys):
    import shutil

    import pydicom

    r = run_cli_inprocess(capsys, "data", "demo-dicom", str(demo_data), str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(demo_data / "test.csv", newline="")))
    files = sorted((tmp_path / "a").rglob("*.dcm"))
    assert len(files) == len(rows)
    ds = [pydicom.dcmread(f) for f in files]
    assert {d.Modality for d in ds} == {"CR"} and all(d.PatientID.startswith("DEMO-") for d in ds)
    assert len({d.StudyInstanceUID for d in ds}) == len({Path(r["Path"]).parent for r in rows})
    run_cli_inprocess(capsys, "data", "demo-dicom", str(demo_data), str(tmp_path / "b"))
    again = {f.relative_to(tmp_path / "b"): pydicom.dcmread(f).SOPInstanceUID for f in (tmp_path / "b").rglob("*.dcm")}
    assert again == {f.relative_to(tmp_path / "a"): d.SOPInstanceUID for f, d in zip(files, ds)}  # the same every run
    if shutil.which("dciodvfy"):  # dicom3tools' validator: no errors (warnings about DICOMDIR keys only)
        out = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True)
        assert "Error" not in out.stdout + out.stderr, out.stdout + out.stderr
