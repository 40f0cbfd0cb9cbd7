import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import shared, tiny_config
from cxrkit.cli import app
from cxrkit.demo_job import DEMO_RECIPE

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_demo_config_matches_the_demo_recipe():
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert cfg == DEMO_RECIPE


def test_train_command_with_overrides(demo_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    yaml.safe_dump(tiny_config(demo_data).to_dict(), cfg.open("w"))
    r = runner.invoke(app, ["train", str(cfg), "train.epochs=1", "name=cli", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["name"] == "cli" and meta["train_config"]["train"]["epochs"] == 1
    r = _cli("train", str(cfg), "train.nope=1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "train.nope" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_command(trained_model, demo_data, tmp_path):
    r = runner.invoke(app, ["evaluate", str(trained_model), str(demo_data / "valid.csv"), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert len(e["classes"]) == 14 and 0 <= e["mAUC"] <= 1 and e["n_samples"] > 10
    assert {"auc", "ap", "f1", "threshold"} <= set(e["classes"][0])
    assert "competition" in e["subsets"] and e["subsets"]["competition"]["mAUC"] is not None
    # train table with uncertain labels: scored with -1 ignored by default
    r = runner.invoke(app, ["evaluate", str(trained_model), str(demo_data / "train.csv"), "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output


def test_predict_files_folders_tables_and_failures(trained_model, demo_data, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(demo_data / "synthetic-cxr-demo" / "valid", folder)
    n_images = len(list(folder.rglob("*.png")))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "readme.txt").write_text("hello")
    dcm = shared("dicom", "nih_dx_chest_uncompressed.dcm")
    out = tmp_path / "preds.csv"
    r = _cli("predict", str(trained_model), str(folder), str(dcm), str(demo_data / "valid.csv"),
             str(tmp_path / "nope.png"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    n_valid = len(list(csv.DictReader((demo_data / "valid.csv").open())))
    assert len(rows) == n_images + 1 + n_valid
    assert "Cardiomegaly" in rows[0] and all(0 <= float(r["Cardiomegaly"]) <= 1 for r in rows)
    fails = {Path(r["path"]).name: r["reason"] for r in csv.DictReader((tmp_path / "preds.failures.csv").open())}
    assert fails == {"broken.png": "truncated", "readme.txt": "unsupported_file", "nope.png": "missing"}


def test_predict_nothing_readable_exits_nonzero(trained_model, tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    r = _cli("predict", str(trained_model), str(tmp_path / "bad.png"), "--out", str(tmp_path / "p.csv"))
    assert r.returncode != 0 and "nothing could be predicted" in r.stderr
    assert (tmp_path / "p.failures.csv").is_file()


def test_evaluate_and_predict_bad_model(tmp_path):
    r = _cli("evaluate", str(tmp_path / "none"), str(tmp_path / "t.csv"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "m").mkdir()
    r = _cli("predict", str(tmp_path / "m"), str(tmp_path), "--out", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "model.json" in r.stderr


def test_demo_command_end_to_end(tmp_path):
    from cxrkit.demo_job import run_demo

    s = run_demo(tmp_path / "demo", n_studies=120, seed=1, epochs=2,
                 cft={"ga": {"generations": 15}, "bp": {"epochs": 15}}, workers=1)
    for f in ("summary.json", "label_distribution.png", "examples.png", "evaluation.json", "predictions.csv",
              "train/model/model.json", "train/plots/roc.png", "model-cft/model.json", "model-cft/cft/gains.png",
              "model-cft/cft/report.csv"):
        assert (tmp_path / "demo" / f).is_file(), f
    assert set(s["stages"]) >= {"data", "inspect", "train", "evaluate", "cft", "predict"}
    assert 0 <= s["stages"]["evaluate"]["mAUC"] <= 1 and s["stages"]["evaluate"]["test_mAUC"] is not None
    cft = s["stages"]["cft"]
    assert cft["valid_after"]["mAUC"] >= cft["valid_before"]["mAUC"] and "test_after" in cft
    # a second run into the same folder reuses the finished stages and completes (issue 12)
    said = []

    class Console:
        def print(self, *a, **k):
            said.append(" ".join(str(x) for x in a))

    before = (tmp_path / "demo" / "model-cft" / "model.safetensors").stat().st_mtime_ns
    s2 = run_demo(tmp_path / "demo", n_studies=120, seed=1, epochs=2,
                  cft={"ga": {"generations": 15}, "bp": {"epochs": 15}}, workers=1, console=Console())
    text = "\n".join(said)
    assert "reusing its finished stages" in text and "reusing the fine-tuned model" in text
    assert "resuming from epoch" not in text and "already finished" in text
    assert (tmp_path / "demo" / "model-cft" / "model.safetensors").stat().st_mtime_ns == before
    assert s2["stages"]["predict"]["predicted"] == s["stages"]["predict"]["predicted"]
    assert "mAP" in text and "->" in text
    # --overwrite starts clean; a folder with someone else's files is refused
    said.clear()
    run_demo(tmp_path / "demo", n_studies=120, seed=1, epochs=2, cft={"ga": {"generations": 15}, "bp": {"epochs": 15}},
             workers=1, console=Console(), overwrite=True)
    assert any("starting clean" in t for t in said)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    import pytest

    from cxrkit.errors import CxrkitError

    with pytest.raises(CxrkitError, match="did not write"):
        run_demo(tmp_path / "mine", n_studies=120, seed=1, epochs=2)
