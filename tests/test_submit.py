"""The leaderboard entry modes, run in-process on the checked-in test inputs (the container
run of the same is challenge/do_test_run.sh)."""

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from cxrkit.submit import main

REPO = Path(__file__).resolve().parents[1]
T = REPO / "challenge" / "test"
MODEL = str(T / "model")


def _csv(p):
    with open(p, newline="") as f:
        return list(csv.reader(f))


def _same_csv(a, b):
    ra, rb = _csv(a), _csv(b)
    assert ra[0] == rb[0] and [r[0] for r in ra] == [r[0] for r in rb]
    np.testing.assert_allclose(np.array([r[1:] for r in ra[1:]], float), np.array([r[1:] for r in rb[1:]], float),
                               atol=1e-4)


def test_chexpert_codalab_form(tmp_path, monkeypatch):
    monkeypatch.chdir(T / "chexpert")
    assert main(["--model", MODEL, "input.csv", str(tmp_path / "out.csv")]) == 0  # <program> input output
    _same_csv(tmp_path / "out.csv", T / "chexpert" / "expected.csv")
    rows = _csv(tmp_path / "out.csv")
    assert rows[0] == ["Study", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    studies = {str(Path(r[0]).parent.parent) for r in _csv(T / "chexpert" / "input.csv")[1:]}
    assert len(rows) - 1 == len({r[0].rsplit("/", 1)[0] for r in _csv(T / "chexpert" / "input.csv")[1:]})
    assert studies


def test_cxr_lt(tmp_path, monkeypatch):
    monkeypatch.chdir(T / "cxrlt")
    assert main(["--model", MODEL, "cxr-lt", "input.csv", str(tmp_path)]) == 0
    _same_csv(tmp_path / "submission.csv", T / "cxrlt" / "expected" / "submission.csv")
    assert len(_csv(tmp_path / "submission.csv")[0]) == 27
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:
        assert z.namelist() == ["submission.csv"]


def test_grand_challenge(tmp_path):
    assert main(["--model", MODEL, "gc", "--input", str(T / "gc" / "input"), "--output", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "results.json").read_text())
    exp = json.loads((T / "gc" / "expected" / "results.json").read_text())
    assert [c["input"] for c in got["cases"]] == [c["input"] for c in exp["cases"]] == ["images/chest-x-ray/case.mha"]
    for a, b in zip(got["cases"], exp["cases"]):
        assert a["probabilities"].keys() == b["probabilities"].keys()
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
    assert len(json.loads((tmp_path / "probabilities.json").read_text())) == 26


def test_errors_exit_nonzero_with_a_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--model", MODEL, "chexpert", "missing.csv", "out.csv"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("Image\nx.png\n")
    assert main(["--model", MODEL, "chexpert", "in.csv", "out.csv"]) == 2
    assert "Path column" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("Path\nnope/study1/view1.png\n")
    assert main(["--model", MODEL, "chexpert", "in.csv", "out.csv"]) == 2
    assert "could not be used" in capsys.readouterr().err and not (tmp_path / "out.csv").exists()
    assert main(["--model", str(tmp_path / "nomodel"), "gc", "--input", str(tmp_path)]) == 2
    assert "model not found" in capsys.readouterr().err


def test_console_script_in_a_subprocess(tmp_path):
    shutil.copytree(T / "chexpert", tmp_path / "in")
    r = subprocess.run([sys.executable, "-m", "cxrkit.submit", "--model", MODEL, "input.csv", str(tmp_path / "o.csv")],
                       cwd=tmp_path / "in", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same_csv(tmp_path / "o.csv", T / "chexpert" / "expected.csv")
