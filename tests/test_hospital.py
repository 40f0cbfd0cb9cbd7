"""Hospital batch inference: a mixed DICOM / PNG tree, every file accounted for."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from conftest import shared
from dicom_helpers import make_dicom

EXPECTED_REASONS = {
    "ct.dcm": "not_chest_radiograph",        # CT, not CR / DX
    "mr.dcm": "not_chest_radiograph",
    "rtplan.dcm": "not_chest_radiograph",     # RT plan, no pixels
    "colour_us.dcm": "not_chest_radiograph",  # ultrasound, RGB
    "rtdose.dcm": "not_chest_radiograph",
    "knee.dcm": "not_chest_radiograph",       # DX of a knee
    "oblique.dcm": "view_excluded",
    "colour_dx.dcm": "colour",                # a DX that is RGB
    "multiframe_dx.dcm": "multi_frame",
    "sr.dcm": "non_image",                    # no Modality filter hit: DX SR without pixel data
    "truncated.dcm": "truncated",
    "random.dcm": "not_dicom",
    "notes.txt": "unsupported_file",
    "broken.png": "truncated",
}


def _mixed_tree(root: Path, demo_data: Path) -> dict[str, str]:
    """Returns {file name: 'ok' | reason} for every file written."""
    ok = {}
    a = root / "PACS" / "study1"
    a.mkdir(parents=True)
    for name in ("siim_cr_chest_pa_jpeg_baseline.dcm", "nih_dx_chest_uncompressed.dcm"):
        shutil.copy(shared("dicom", name), a / name)
        ok[name] = "ok"
    img = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    make_dicom(a / "lateral_mono1.dcm", img, photometric="MONOCHROME1", view="LL", bits_stored=12,
               WindowCenter=2000, WindowWidth=4000)
    ok["lateral_mono1.dcm"] = "ok"
    make_dicom(a / "no_suffix_dx", img, modality="DX", body_part="", view="", bits_stored=12)
    ok["no_suffix_dx"] = "ok"
    b = root / "PACS" / "other"
    b.mkdir(parents=True)
    for src, dst in (("CT_small.dcm", "ct.dcm"), ("MR_small.dcm", "mr.dcm"), ("rtplan.dcm", "rtplan.dcm"),
                     ("US1_UNCR.dcm" if False else "examples_rgb_color.dcm", "colour_us.dcm"),
                     ("rtdose.dcm", "rtdose.dcm")):
        shutil.copy(get_testdata_file(src), b / dst)
    make_dicom(b / "knee.dcm", img, modality="DX", body_part="KNEE", bits_stored=12)
    make_dicom(b / "oblique.dcm", img, modality="CR", view="RAO", bits_stored=12)
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    rgb.Modality, rgb.BodyPartExamined = "DX", "CHEST"
    rgb.save_as(b / "colour_dx.dcm")
    mf = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    mf.Modality = "DX"
    mf.save_as(b / "multiframe_dx.dcm")
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.Modality = "DX"
    sr.save_as(b / "sr.dcm")
    data = shared("dicom", "nih_dx_chest_uncompressed.dcm").read_bytes()
    (b / "truncated.dcm").write_bytes(data[: len(data) // 3])
    (b / "random.dcm").write_bytes(np.random.default_rng(1).bytes(3000))
    (b / "notes.txt").write_text("not an image")
    (b / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 50)
    png = next((demo_data / "synthetic-cxr-demo" / "valid").rglob("*.png"))
    shutil.copy(png, root / "photo.png")
    ok["photo.png"] = "ok"
    return {**ok, **EXPECTED_REASONS}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_file_is_accounted_for(trained_model, demo_data, tmp_path):
    expected = _mixed_tree(tmp_path / "in", demo_data)
    out = tmp_path / "results.csv"
    r = _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out), "--study", "max",
             "--workers", "2", "--sr", str(tmp_path / "sr"))
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    fails = _rows(tmp_path / "results.failures.csv")
    seen = [Path(x["path"]).name for x in rows] + [Path(x["path"]).name for x in fails]
    assert sorted(seen) == sorted(expected), "each file exactly once"
    got = {Path(x["path"]).name: x["reason"] for x in fails}
    assert got == {k: v for k, v in expected.items() if v != "ok"}
    by = {Path(x["path"]).name: x for x in rows}
    siim = by["siim_cr_chest_pa_jpeg_baseline.dcm"]
    assert siim["sop_instance_uid"] and siim["study_instance_uid"] and siim["view"] == "PA"
    assert by["lateral_mono1.dcm"]["view"] == "LL"
    assert siim["model"] == "tiny" and siim["model_version"]
    for c in ("Cardiomegaly", "threshold:Cardiomegaly", "call:Cardiomegaly"):
        assert c in siim
    assert int(siim["call:Cardiomegaly"]) == int(float(siim["Cardiomegaly"]) >= float(siim["threshold:Cardiomegaly"]))
    studies = _rows(tmp_path / "results.studies.csv")
    assert len(studies) == len({x["study"] for x in rows})
    # patient identity never reaches the outputs or the console
    text = out.read_text() + (tmp_path / "results.failures.csv").read_text() + r.stdout + r.stderr
    assert "SECRET" not in text and "SECRET^PATIENT" not in text
    srs = list((tmp_path / "sr").glob("*.dcm"))
    assert srs and pydicom.dcmread(srs[0]).Modality == "SR"


def test_resume_after_an_interruption_and_no_duplicates(trained_model, demo_data, tmp_path):
    _mixed_tree(tmp_path / "in", demo_data)
    out = tmp_path / "r.csv"
    assert _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out)).returncode == 0
    full = _rows(out)
    # simulate a kill: keep the header, two rows and half of the third
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (tmp_path / "r.failures.csv").write_text("path,reason,detail\n")
    r = _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr  # never silently overwritten
    r = _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    again = _rows(out)
    assert sorted(x["path"] for x in again) == sorted(x["path"] for x in full)
    r = _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out), "--resume")
    assert r.returncode == 0 and len(_rows(out)) == len(full) and "0 image(s)" in r.stdout
    by = {x["path"]: x["Cardiomegaly"] for x in full}
    assert all(by[x["path"]] == x["Cardiomegaly"] for x in again)


def test_shards_split_the_work(trained_model, demo_data, tmp_path):
    _mixed_tree(tmp_path / "in", demo_data)
    parts = []
    for i in range(2):
        out = tmp_path / f"s{i}.csv"
        r = _run("predict", str(trained_model), str(tmp_path / "in"), "--out", str(out), "--shard", f"{i}/2")
        assert r.returncode == 0 or "nothing could be predicted" in r.stderr
        parts.append({x["path"] for x in _rows(out)} | {x["path"] for x in _rows(tmp_path / f"s{i}.failures.csv")})
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 19


def test_filters_can_be_relaxed(trained_model, demo_data, tmp_path):
    make_dicom(tmp_path / "knee.dcm", np.full((32, 32), 7, np.uint16) + np.eye(32, dtype=np.uint16) * 100,
               modality="DX", body_part="KNEE", bits_stored=12)
    r = _run("predict", str(trained_model), str(tmp_path / "knee.dcm"), "--out", str(tmp_path / "a.csv"))
    assert r.returncode != 0 and "nothing could be predicted" in r.stderr
    r = _run("predict", str(trained_model), str(tmp_path / "knee.dcm"), "--out", str(tmp_path / "b.csv"), "--no-filter")
    assert r.returncode == 0, r.stderr
    r = _run("predict", str(trained_model), str(tmp_path / "knee.dcm"), "--out", str(tmp_path / "c.csv"),
             "--body-parts", "KNEE,CHEST")
    assert r.returncode == 0, r.stderr
