"""cxrkit probe (issue 26): per-class logistic-regression heads on frozen features, from a
saved model or a training config; the result is an ordinary model predict uses."""

from __future__ import annotations

import json

import numpy as np
import yaml

from conftest import run_cli_inprocess


def test_probe_from_a_saved_model_fits_each_class_like_sklearn(trained_model, demo_data, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression

    from cxrkit.artifact import load_model
    from cxrkit.cft.features import extract_features, head_rows
    from cxrkit.cft.runner import train_targets
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    out = tmp_path / "probe"
    r = run_cli_inprocess(capsys, "probe", str(trained_model), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(out), "--c", "0.1,1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid mAUC" in r.stdout
    m = load_model(out)
    src = load_model(trained_model)
    assert m.classes == src.classes and m.meta.preprocessing == src.meta.preprocessing
    info = m.meta.extra["probe"]
    assert info["policy"] == "ignore" and info["c_grid"] == [0.1, 1.0]
    # one class refitted here on the same cached features: the same row
    train = extract_features(m, demo_data / "train.csv", show_progress=False)
    c = list(m.classes).index("Pleural Effusion")
    rec = info["classes"][c]
    y = train_targets(train.labels[:, c], "ignore")
    k = ~np.isnan(y)
    z = np.asarray(train.z, np.float64)
    mu, sd = z.mean(0), z.std(0)
    sd[sd < 1e-12] = 1
    lr = LogisticRegression(C=rec["C"], max_iter=2000, random_state=0).fit(((z - mu) / sd)[k], y[k].astype(int))
    w, b = head_rows(m.model)
    logits = z[k] @ w[c] + b[c]
    want = ((z - mu) / sd)[k] @ lr.coef_[0] + lr.intercept_[0]
    assert np.abs(logits - want).max() < 1e-3
    # an ordinary model: predict runs it and gives its probabilities
    films = sorted((demo_data / "synthetic-cxr-demo" / "test").rglob("*.png"))[:6]
    probs, _, _ = predict_paths(load_predictor(out, engine="torch"), films, show_progress=False)
    assert probs.shape == (6, len(m.classes)) and np.isfinite(probs).all()
    assert json.loads((out / "probe" / "summary.json").read_text())["valid"]["mAUC"] > 0.5


def test_probe_from_a_config_and_bad_inputs(demo_data, tmp_path, capsys):
    cfg = {"name": "tiny-probe", "label_space": "chexpert",
           "data": {"train": {"table": str(demo_data / "train.csv")}, "valid": {"table": str(demo_data / "valid.csv")}},
           "preprocessing": {"size": 32, "channels": 1, "mean": [0.5], "std": [0.25]},
           "model": {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [8, 16, 32]}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli_inprocess(capsys, "probe", str(tmp_path / "c.yaml"), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(tmp_path / "p"), "--policy", "zeros")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "p" / "model.safetensors").is_file()
    for args, msg in ((["--policy", "maybe"], "policy"), (["--c", "x"], "--c must be numbers"),
                      (["--c", "0,-1"], "positive")):
        r = run_cli_inprocess(capsys, "probe", str(tmp_path / "c.yaml"), str(demo_data / "train.csv"),
                              str(demo_data / "valid.csv"), "--out", str(tmp_path / "q"), *args)
        assert r.returncode == 2 and msg in (r.stdout + r.stderr), (args, r.stdout + r.stderr)
    r = run_cli_inprocess(capsys, "probe", str(tmp_path / "nothing.txt"), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(tmp_path / "q"))
    assert r.returncode == 2 and "saved model folder or a training config" in r.stdout + r.stderr


def test_probe_then_cft_in_one_command(trained_model, demo_data, tmp_path, capsys, monkeypatch):
    """`probe --cft bp-asl`: the model in --out is the probe's heads fine-tuned category by
    category (rows kept or changed as CFT's report says), with both reports."""
    from cxrkit.artifact import load_model
    from cxrkit.cft.features import head_rows

    plain = tmp_path / "plain"
    r = run_cli_inprocess(capsys, "probe", str(trained_model), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(plain), "--c", "0.1,1")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "probe-cft"
    monkeypatch.setenv("CXRKIT_CACHE_DIR", str(tmp_path / "cache" / "images"))
    r = run_cli_inprocess(capsys, "probe", str(trained_model), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(out), "--c", "0.1,1", "--cft", "bp-asl")
    assert r.returncode == 0, r.stdout + r.stderr
    # CFT read the features the probe extracted (the cache is keyed by the backbone, not the head):
    # one entry per split, not two
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2
    assert "CFT" in r.stdout and (out / "probe" / "summary.json").is_file() and (out / "cft" / "report.json").is_file()
    rep = json.loads((out / "cft" / "report.json").read_text())
    w0, b0 = head_rows(load_model(plain).model)
    w1, b1 = head_rows(load_model(out).model)
    for k, c in enumerate(rep["categories"]):  # a kept row is the probe's, a changed one differs
        same = np.abs(w1[k] - w0[k]).max() < 1e-6 and abs(b1[k] - b0[k]) < 1e-6
        assert same == c["chosen"].startswith("original"), (c["name"], c["chosen"])
    # CFT started from the probe's rows: its "before" scores are the probe's validation AUCs
    probe_auc = {c["class"]: c.get("valid_auc") for c in json.loads((out / "probe" / "summary.json").read_text())["classes"]}
    compared = [(c["val_before"], probe_auc[c["name"]]) for c in rep["categories"]
                if c["val_before"] is not None and probe_auc.get(c["name"]) is not None]
    assert compared and all(abs(a - b) < 1e-4 for a, b in compared), compared
    assert not list(tmp_path.glob(".probe-cft.probe-*"))  # the staged probe model is gone
    meta = json.loads((out / "model.json").read_text())
    assert "probe" in meta["extra"] and meta["cft"]["config"]["method"] == "bp-asl"
    r = run_cli_inprocess(capsys, "probe", str(trained_model), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(tmp_path / "x"), "--cft", "sgd")
    assert r.returncode != 0 and "unknown CFT method" in r.stderr and not (tmp_path / "x").exists()
