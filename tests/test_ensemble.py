import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.data.augment import apply_tta, tta_views
from cxrkit.data.tables import load_table, resolve_image_paths
from cxrkit.ensemble import build_ensemble, load_predictor
from cxrkit.errors import CxrkitError
from cxrkit.predict import predict_paths
from cxrkit.runtime import aggregate_studies

runner = CliRunner()


def _paths(demo_data, n=12):
    paths, _ = resolve_image_paths(load_table(demo_data / "valid.csv"))
    return paths[:n]


def test_ensemble_is_the_weighted_mean_of_members_with_different_input_sizes(trained_model, trained_model_48,
                                                                               demo_data, tmp_path):
    out = build_ensemble([trained_model, trained_model_48], tmp_path / "ens", weights=[1, 3], name="two")
    meta = json.loads((out / "ensemble.json").read_text())
    assert [m["input_size"] for m in meta["members"]] == [32, 48] and meta["name"] == "two"
    paths = _paths(demo_data)
    ens, _, _ = predict_paths(load_predictor(out), paths, show_progress=False)
    a, _, _ = predict_paths(load_predictor(trained_model), paths, show_progress=False)
    b, _, _ = predict_paths(load_predictor(trained_model_48), paths, show_progress=False)
    np.testing.assert_allclose(ens, 0.25 * a + 0.75 * b, atol=1e-6)
    thr_a = json.loads((trained_model / "model.json").read_text())["thresholds"]
    thr_b = json.loads((trained_model_48 / "model.json").read_text())["thresholds"]
    np.testing.assert_allclose(meta["thresholds"], 0.25 * np.array(thr_a) + 0.75 * np.array(thr_b), atol=1e-9)
    with pytest.raises(CxrkitError, match="2 weights for 1 models"):
        build_ensemble([trained_model], tmp_path / "bad", weights=[1, 2])
    with pytest.raises(CxrkitError, match="is an ensemble"):
        build_ensemble([out], tmp_path / "nested")


def test_ensemble_command_with_validation_thresholds_and_evaluate(trained_model, trained_model_48, demo_data,
                                                                  tmp_path):
    r = runner.invoke(app, ["ensemble", str(trained_model), str(trained_model_48), "--out", str(tmp_path / "e"),
                            "--valid", str(demo_data / "valid.csv")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert meta["threshold_method"] == "f1" and meta["metrics"]["valid"]["mAUC"] is not None
    r = runner.invoke(app, ["evaluate", str(tmp_path / "e"), str(demo_data / "valid.csv"), "--json",
                            str(tmp_path / "ev.json"), "--study", "max"])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "ev.json").read_text())
    n_studies = load_table(demo_data / "valid.csv").meta["study"].nunique()
    assert ev["unit"] == "study (max)" and ev["n_samples"] == n_studies


def test_tta_is_batched_and_averages_the_views(trained_model, demo_data):
    pred = load_predictor(trained_model)
    from cxrkit.runtime import prepare_file

    x = np.stack([prepare_file(0, p, pred.preprocessings).arrays[0] for p in _paths(demo_data, 4)])
    views = tta_views("seed000+flip")
    got = pred.predict_inputs([x], tta="seed000+flip")
    manual = np.mean([pred.predict_inputs([apply_tta(torch.from_numpy(x), [v]).numpy()]) for v in views], axis=0)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    assert not np.allclose(got, pred.predict_inputs([x]))


def test_study_aggregation_rules():
    p = np.array([[0.2, 0.9], [0.6, 0.1], [0.4, 0.5]], dtype=np.float32)
    ids, mx, n = aggregate_studies(p, ["a", "a", "b"], mode="max")
    assert ids == ["a", "b"] and n == [2, 1]
    np.testing.assert_allclose(mx, [[0.6, 0.9], [0.4, 0.5]])
    _, mean, _ = aggregate_studies(p, ["a", "a", "b"], mode="mean")
    np.testing.assert_allclose(mean[0], [0.4, 0.5])
    _, vw, _ = aggregate_studies(p, ["a", "a", "b"], views=["PA", "LATERAL", "PA"], mode="view-weighted",
                                 lateral_weight=0.5)
    np.testing.assert_allclose(vw[0], (np.array([0.2, 0.9]) + 0.5 * np.array([0.6, 0.1])) / 1.5, rtol=1e-6)
    with pytest.raises(CxrkitError):
        aggregate_studies(p, ["a", "a", "b"], mode="median")


def test_onnx_engine_matches_torch_for_models_and_ensembles(trained_model, trained_model_48, demo_data, tmp_path):
    ens = build_ensemble([trained_model, trained_model_48], tmp_path / "ens")
    r = runner.invoke(app, ["export", str(ens), "--onnx", "--deploy", str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    assert "max |onnxruntime - torch|" in r.output
    paths = _paths(demo_data)
    for tta in (None, "seed000+flip"):
        t, _, _ = predict_paths(load_predictor(ens, engine="torch"), paths, tta=tta, show_progress=False)
        o, _, _ = predict_paths(load_predictor(ens, engine="onnx"), paths, tta=tta, show_progress=False)
        np.testing.assert_allclose(o, t, atol=1e-4)
    d, _, _ = predict_paths(load_predictor(tmp_path / "deploy", engine="onnx"), paths, show_progress=False)
    o, _, _ = predict_paths(load_predictor(ens, engine="onnx"), paths, show_progress=False)
    np.testing.assert_allclose(d, o, atol=1e-6)
    assert not list((tmp_path / "deploy").rglob("*.safetensors"))  # lean: no PyTorch weights


def test_runtime_and_submission_do_not_import_torch():
    code = ("import sys, cxrkit.submit, cxrkit.runtime, cxrkit.predict; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
