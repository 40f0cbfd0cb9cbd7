"""Calibrated probabilities and operating points: the calibration error equals MONAI's metric,
monotone calibrations keep AUC, the calibration travels with the model through every engine,
the ensemble, the MONAI bundle and CFT, and operating points reach their target."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli_inprocess


def _synthetic(n: int = 4000, c: int = 4, seed: int = 0, scale: float = 2.5, shift: float = -0.8):
    """Labels drawn from a known calibrated probability sigmoid(z); the model reports
    sigmoid(scale z + shift): over-confident and shifted, as a CNN trained with BCE often is."""
    rng = np.random.default_rng(seed)
    z = rng.normal(np.linspace(-2.5, -0.5, c), 1.5, (n, c))
    y = (rng.random((n, c)) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(scale * z + shift)))
    return y, p.astype(np.float32)


def _monai(y: np.ndarray, p: np.ndarray, reduction: str) -> np.ndarray:
    from monai.metrics import CalibrationErrorMetric

    m = CalibrationErrorMetric(calibration_reduction=reduction, metric_reduction="none")
    m(y_pred=torch.tensor(np.ascontiguousarray(p.T))[None], y=torch.tensor(np.ascontiguousarray(y.T), dtype=torch.float32)[None])
    return m.aggregate().numpy()[0]


@pytest.mark.parametrize("reduction,key", [("expected", "ece"), ("average", "ace"), ("maximum", "mce")])
def test_calibration_error_equals_monai(reduction: str, key: str) -> None:
    from cxrkit.calibration import calibration_errors

    y, p = _synthetic(3000, 5, seed=1)
    p[:200, 0] = np.round(p[:200, 0] * 20) / 20  # on the bin edges: MONAI's bucketize rule decides
    p[:50, 1] = 0.0
    p[50:100, 1] = 1.0
    ours = calibration_errors(y, p)[key]
    np.testing.assert_allclose(ours, _monai(y, p, reduction), atol=1e-6)
    # unknown labels are left out: equal to MONAI on each class's known entries
    yk = y.copy()
    yk[np.random.default_rng(2).random(y.shape) < 0.2] = np.nan
    ours = calibration_errors(yk, p)[key]
    for j in range(y.shape[1]):
        known = np.isfinite(yk[:, j])
        ref = _monai(yk[known, j][:, None], p[known, j][:, None], reduction)[0]
        assert abs(ours[j] - ref) <= 1e-6


def test_brier_and_an_empty_class() -> None:
    from cxrkit.calibration import calibration_errors

    y = np.array([[1, np.nan], [0, np.nan], [1, np.nan]])
    p = np.array([[0.9, 0.5], [0.2, 0.5], [0.6, 0.5]])
    e = calibration_errors(y, p)
    assert e["brier"][0] == pytest.approx((0.01 + 0.04 + 0.16) / 3)
    assert np.isnan(e["ece"][1]) and np.isnan(e["brier"][1])


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_lowers_held_out_ece_and_keeps_order(method: str) -> None:
    from cxrkit.calibration import apply_calibration, apply_calibration_torch, calibration_errors, fit_calibration
    from cxrkit.metrics import roc_auc

    y, p = _synthetic(6000, 4, seed=3, shift=0.0 if method == "temperature" else -0.8)
    fit, test = slice(0, 3000), slice(3000, None)
    cal = fit_calibration(p[fit], y[fit], list("abcd"), method)
    q = apply_calibration(p[test], cal)
    before, after = calibration_errors(y[test], p[test])["ece"], calibration_errors(y[test], q)["ece"]
    assert after.mean() < 0.5 * before.mean(), (before, after)
    auc0, auc1 = roc_auc(y[test], p[test]), roc_auc(y[test], q)
    if method in ("temperature", "platt"):  # strictly increasing maps: AUC unchanged exactly
        np.testing.assert_array_equal(auc0, auc1)
    else:  # a step function never reverses an order; it may tie scores
        assert np.all(np.diff(q[np.argsort(p[test][:, 0]), 0]) >= -1e-12)
        assert np.abs(auc0 - auc1).max() < 0.02
    # the torch map (MONAI bundle) is the same map
    qt = apply_calibration_torch(torch.tensor(p[test], dtype=torch.float64), cal).numpy()
    np.testing.assert_allclose(qt, q, atol=1e-9)


def test_a_class_without_both_labels_is_left_as_it_is() -> None:
    from cxrkit.calibration import apply_calibration, fit_calibration

    y, p = _synthetic(500, 3)
    y[:, 2] = 0
    cal = fit_calibration(p, y, ["a", "b", "c"], "platt")
    assert cal["identity"] == ["c"]
    np.testing.assert_allclose(apply_calibration(p, cal)[:, 2], p[:, 2], atol=1e-6)


def test_operating_points_reach_their_targets() -> None:
    from cxrkit.calibration import operating_points, parse_operating_point, wilson

    y, p = _synthetic(3000, 3, seed=4)
    op = operating_points(y, p, ["a", "b", "c"], "sensitivity=0.90")
    for j, c in enumerate("abc"):
        v = op["classes"][c]
        pos = p[y[:, j] == 1, j]
        assert v["sensitivity"] >= 0.90 and (pos >= v["threshold"]).mean() == pytest.approx(v["sensitivity"])
        # the highest such threshold: one step up loses the target
        higher = np.sort(pos[pos > v["threshold"]])
        if len(higher):
            assert (pos >= higher[0]).mean() < 0.90
        lo, hi = v["sensitivity_ci95"]
        assert lo < v["sensitivity"] < hi
    op = operating_points(y, p, ["a", "b", "c"], "specificity=95%")
    for j, c in enumerate("abc"):
        v = op["classes"][c]
        neg = p[y[:, j] == 0, j]
        assert v["specificity"] >= 0.95 and (neg < v["threshold"]).mean() == pytest.approx(v["specificity"])
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8 / 10 interval
    assert parse_operating_point("f1") == ("f1", None)
    from cxrkit.errors import CxrkitError

    for bad in ("sensitivity=1.5", "recall=0.9", "sens"):
        with pytest.raises(CxrkitError):
            parse_operating_point(bad)


@pytest.fixture(scope="module")
def calibrated(trained_model: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrkit.calibrate import run_calibrate

    out = tmp_path_factory.mktemp("cal") / "model-cal"
    r = run_calibrate(trained_model, demo_data / "valid.csv", out, method="platt",
                      operating_point="sensitivity=0.8", holdout=0.3, show_progress=False)
    assert r["check_is_holdout"] and r["images_fit"] + r["images_check"] > 30
    return out


def _probs(model: Path, films: Path, engine: str) -> np.ndarray:
    """In-memory probabilities (no CSV rounding), files in sorted order."""
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    paths = sorted(films.rglob("*.png"))
    probs, idx, _ = predict_paths(load_predictor(model, engine=engine), paths, show_progress=False)
    assert list(idx) == list(range(len(paths)))
    return np.asarray(probs, dtype=np.float64)


def _predict(model: Path, films: Path, out: Path, engine: str) -> dict[str, np.ndarray]:
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import run_predict

    pred = load_predictor(model, engine=engine)
    run_predict(pred, [films], out, show_progress=False)
    with open(out) as f:
        return {r["path"]: np.array([float(r[c]) for c in pred.classes]) for r in csv.DictReader(f)}


def test_calibrated_model_carries_it_and_every_engine_applies_it(calibrated: Path, trained_model: Path,
                                                                  demo_data: Path, tmp_path: Path) -> None:
    meta = json.loads((calibrated / "model.json").read_text())
    assert meta["calibration"]["method"] == "platt" and meta["format_version"] == 2
    assert meta["operating_point"]["target"] == "sensitivity=0.8"
    assert meta["threshold_method"] == "sensitivity=0.8"
    defined = [c for c, v in meta["operating_point"]["classes"].items() if v]
    assert defined and all(meta["operating_point"]["classes"][c]["sensitivity"] >= 0.8 for c in defined)
    assert (calibrated / "calibration" / "reliability.png").stat().st_size > 1000
    rep = json.loads((calibrated / "calibration" / "report.json").read_text())
    assert rep["before"]["mean_ece"] is not None and rep["after"]["mean_ece"] is not None
    films = demo_data / "synthetic-cxr-demo" / "test"
    raw = _predict(trained_model, films, tmp_path / "raw.csv", "torch")
    t = _predict(calibrated, films, tmp_path / "t.csv", "torch")
    o = _predict(calibrated, films, tmp_path / "o.csv", "onnx")
    assert max(np.abs(t[k] - raw[k]).max() for k in raw) > 0.01  # calibrated: other numbers
    assert max(np.abs(t[k] - o[k]).max() for k in t) <= 1e-5  # the same numbers on both engines
    from cxrkit.calibration import apply_calibration

    expected = apply_calibration(_probs(trained_model, films, "torch"), meta["calibration"])
    np.testing.assert_allclose(_probs(calibrated, films, "torch"), expected, atol=1e-9)
    np.testing.assert_allclose(_probs(calibrated, films, "onnx"), expected, atol=1e-5)
    # the calls use the operating point's thresholds
    with open(tmp_path / "t.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["threshold:Cardiomegaly"]) == pytest.approx(
        meta["thresholds"][meta["classes"].index("Cardiomegaly")], abs=1e-6)


def test_monotone_calibration_leaves_evaluate_auc_unchanged(trained_model: Path, demo_data: Path,
                                                            tmp_path: Path) -> None:
    from cxrkit.calibrate import run_calibrate
    from cxrkit.ensemble import load_predictor
    from cxrkit.evaluate import evaluate_table

    out = tmp_path / "t"
    run_calibrate(trained_model, demo_data / "valid.csv", out, method="temperature", holdout=0.0, show_progress=False)
    e0 = evaluate_table(load_predictor(trained_model), demo_data / "test.csv", show_progress=False)
    e1 = evaluate_table(load_predictor(out), demo_data / "test.csv", show_progress=False)
    assert [c["auc"] for c in e0["classes"]] == pytest.approx([c["auc"] for c in e1["classes"]], abs=1e-6)
    assert e1["calibrated"] == "temperature" and e0["calibrated"] is None
    assert e0["calibration"]["mean_ece"] != e1["calibration"]["mean_ece"]
    assert {"ece", "ace", "mce", "brier"} <= set(e1["classes"][0])


def test_calibrated_bundle_equals_predict(calibrated: Path, demo_data: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow

    from cxrkit.bundle import export_bundle, read_predictions

    films = tmp_path / "films"
    films.mkdir()
    import shutil

    for p in sorted((demo_data / "synthetic-cxr-demo" / "test").rglob("*.png"))[:6]:
        shutil.copy(p, films / p.name)
    res = export_bundle(calibrated, tmp_path / "b")
    assert res["max_abs_logit_diff"] <= 1e-5
    wf = ConfigWorkflow(config_file=str(tmp_path / "b" / "configs" / "inference.json"),
                        meta_file=str(tmp_path / "b" / "configs" / "metadata.json"), workflow_type="infer",
                        bundle_root=str(tmp_path / "b"), dataset_dir=str(films))
    wf.initialize()
    wf.run()
    wf.finalize()
    _, got = read_predictions(tmp_path / "b" / "eval" / "predictions.csv")
    want = _predict(calibrated, films, tmp_path / "p.csv", "torch")
    assert max(float(np.abs(got[str(Path(k).resolve())] - v).max()) for k, v in want.items()) <= 1e-4


def test_ensemble_calibrated_as_a_whole(calibrated: Path, trained_model: Path, demo_data: Path,
                                        tmp_path: Path) -> None:
    """Members' own calibrations apply before the average; `calibrate ENSEMBLE` fits one on
    the average, applied after it."""
    from cxrkit.calibrate import run_calibrate
    from cxrkit.calibration import apply_calibration
    from cxrkit.ensemble import build_ensemble

    ens = build_ensemble([calibrated, trained_model], tmp_path / "ens", show_progress=False)
    films = demo_data / "synthetic-cxr-demo" / "test"
    a, b = _probs(calibrated, films, "torch"), _probs(trained_model, films, "torch")
    e = _probs(ens, films, "torch")
    np.testing.assert_allclose(e, (a + b) / 2, atol=1e-6)
    run_calibrate(ens, demo_data / "valid.csv", tmp_path / "ens-cal", method="isotonic", holdout=0.0,
                  show_progress=False)
    meta = json.loads((tmp_path / "ens-cal" / "ensemble.json").read_text())
    assert meta["calibration"]["method"] == "isotonic"
    for engine in ("torch", "onnx"):  # each engine: the calibration of its own average
        got = _probs(tmp_path / "ens-cal", films, engine)
        raw = e if engine == "torch" else _probs(ens, films, "onnx")
        np.testing.assert_allclose(got, apply_calibration(raw, meta["calibration"]), atol=1e-9)
        assert np.abs(got - raw).max() > 0.01
    # across engines: isotonic's steepest steps can turn the engines' 1e-7 into 1e-3
    np.testing.assert_allclose(_probs(tmp_path / "ens-cal", films, "torch"), got, atol=2e-3)


def test_cli_calibrate_and_evaluate_write_their_pictures(trained_model: Path, demo_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    r = run_cli_inprocess(capsys, "calibrate", str(trained_model), str(demo_data / "valid.csv"), "--method", "isotonic",
                          "--operating-point", "specificity=0.9", "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert "held-out images" in r.stdout and "mean ECE" in r.stdout and "specificity" in r.stdout
    r = run_cli_inprocess(capsys, "evaluate", str(tmp_path / "m"), str(demo_data / "test.csv"), "--json",
                          str(tmp_path / "ev.json"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ev.reliability.png").stat().st_size > 1000
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["calibrated"] == "isotonic" and 0 <= ev["calibration"]["mean_ece"] <= 1
    for bad, msg in ((["--method", "beta"], "--method must be"), (["--operating-point", "recall=2"], "operating-point")):
        r = run_cli_inprocess(capsys, "calibrate", str(trained_model), str(demo_data / "valid.csv"), *bad,
                              "--out", str(tmp_path / "x"))
        assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cft_refits_the_calibration(calibrated: Path, demo_data: Path, tmp_path: Path) -> None:
    """CFT changes the head, so a calibrated model's calibration is fitted again (same method)
    on the validation films, and its operating point chosen again on the new probabilities."""
    from cxrkit.cft import CFTConfig
    from cxrkit.cft.pipeline import run_cft

    cfg = CFTConfig(method="bp-asl", bp={"epochs": 2}, min_val_positives=1, seed=0)
    run_cft(calibrated, demo_data / "train.csv", demo_data / "valid.csv", tmp_path / "cft", cfg)
    old = json.loads((calibrated / "model.json").read_text())
    new = json.loads((tmp_path / "cft" / "model.json").read_text())
    assert new["calibration"]["method"] == "platt"
    assert new["calibration"]["fitted_on"]["refit_by"].startswith("cft")
    assert new["calibration"]["a"] != old["calibration"]["a"]
    assert new["operating_point"]["target"] == "sensitivity=0.8" and new["operating_point"]["refit_by"] == "cft"


def test_submission_container_applies_it(calibrated: Path, demo_data: Path) -> None:
    """cxrkit-submit (the torch-free leaderboard container) loads the same calibration."""
    from cxrkit.predict import predict_paths
    from cxrkit.submit import _predictor

    from cxrkit.export import ensure_onnx
    from cxrkit.runtime import read_spec

    ensure_onnx(read_spec(calibrated))  # a submission folder holds its ONNX export
    pred = _predictor(str(calibrated), 1)
    assert pred.calibration_method == "platt"
    films = demo_data / "synthetic-cxr-demo" / "test"
    probs, _, _ = predict_paths(pred, sorted(films.rglob("*.png")), show_progress=False)
    np.testing.assert_allclose(probs, _probs(calibrated, films, "onnx"), atol=1e-12)
    np.testing.assert_allclose(probs, _probs(calibrated, films, "torch"), atol=1e-5)
