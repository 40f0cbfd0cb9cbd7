"""int8 export (static quantisation calibrated on validation films), engine / precision choice."""

import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from cxrkit import runtime  # noqa: E402
from cxrkit.ensemble import choose_engine, load_predictor  # noqa: E402
from cxrkit.errors import CxrkitError  # noqa: E402
from cxrkit.export import INT8_TOLERANCE, export_int8, export_model  # noqa: E402
from cxrkit.predict import predict_paths  # noqa: E402
from cxrkit.runtime import read_spec  # noqa: E402


@pytest.fixture(scope="module")
def int8_model(trained_model, tmp_path_factory):
    m = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(trained_model, m)
    res = export_int8(m, n=32)
    return m, res


def test_int8_export_is_calibrated_on_the_models_validation_table(int8_model, demo_data):
    m, res = int8_model
    assert (m / "model.onnx").is_file() and (m / "model.int8.onnx").is_file()
    side = json.loads((m / "model.int8.onnx.json").read_text())
    cal = side["calibration"]
    assert cal["source"] == "the model's validation table" and cal["table"] == str(demo_data / "valid.csv")
    assert cal["images"] == 32 and cal["unreadable"] == 0 and len(cal["ids_sha256"]) == 64
    assert side["weights_sha256"] == json.loads((m / "model.json").read_text())["weights_sha256"]
    assert side["max_prob_diff_calibration"] == res["max_prob_diff"][0]
    assert side["accurate"] == (res["max_prob_diff"][0] <= INT8_TOLERANCE)
    assert (m / "model.int8.onnx").stat().st_size < (m / "model.onnx").stat().st_size


def test_int8_predictions_follow_fp32(int8_model, demo_data):
    m, res = int8_model
    paths = sorted(demo_data.rglob("*.png"))[:24]
    assert len(paths) == 24
    fp32, i32, _ = predict_paths(load_predictor(m, engine="onnx", precision="fp32"), paths, show_progress=False)
    q, iq, _ = predict_paths(load_predictor(m, engine="onnx", precision="int8"), paths, show_progress=False)
    assert list(i32) == list(iq)
    diff = float(np.abs(fp32 - q).max())
    assert 0 < diff < 0.1  # quantised (not the fp32 file), and close to it on the tiny CNN
    # the ranking per class hardly moves: Spearman-like check on the pooled scores
    assert np.corrcoef(fp32.ravel(), q.ravel())[0, 1] > 0.99


def test_auto_precision_uses_int8_only_with_int8_units_and_an_accurate_export(int8_model, monkeypatch, caplog):
    m, res = int8_model
    spec = read_spec(m)
    monkeypatch.setattr(runtime, "cpu_int8_units", lambda: False)
    with caplog.at_level(logging.INFO, logger="cxrkit.runtime"):
        assert runtime.choose_onnx_precision(spec, "auto") == "fp32"
    assert sum("no VNNI / AMX int8 units" in r.message for r in caplog.records) == 1
    monkeypatch.setattr(runtime, "cpu_int8_units", lambda: True)
    monkeypatch.setattr(runtime, "int8_is_faster", lambda spec, engine: True)
    expected = "int8" if res["max_prob_diff"][0] <= INT8_TOLERANCE else "fp32"
    assert runtime.choose_onnx_precision(spec, "auto") == expected
    side = m / "model.int8.onnx.json"
    saved = side.read_text()
    try:
        side.write_text(json.dumps(dict(json.loads(saved), accurate=False)))
        assert runtime.choose_onnx_precision(spec, "auto") == "fp32"  # an inaccurate export is never picked
        assert runtime.choose_onnx_precision(spec, "int8") == "int8"  # unless asked for
    finally:
        side.write_text(saved)
    monkeypatch.setenv("CXRKIT_PRECISION", "fp32")
    assert runtime.choose_onnx_precision(spec, "auto") == "fp32"
    with pytest.raises(CxrkitError, match="precision"):
        runtime.choose_onnx_precision(spec, "int4")


def test_auto_engine_is_onnx_only_when_an_export_is_there(trained_model, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(trained_model, m)
    for f in m.glob("model.*onnx*"):
        f.unlink()
    assert choose_engine(read_spec(m)) == "torch"
    assert not (m / "model.onnx").exists()  # auto never exports on its own
    export_model(m)
    assert choose_engine(read_spec(m)) == "onnx"
    assert type(load_predictor(m, engine="auto")).__name__ == "OnnxPredictor"
    with pytest.raises(CxrkitError, match="int8"):
        load_predictor(m, engine="torch", precision="int8")
    with pytest.raises(CxrkitError, match="export"):
        load_predictor(m, engine="onnx", precision="int8")  # no int8 file yet
    with pytest.raises(CxrkitError, match="engine"):
        load_predictor(m, engine="tensorrt")


def test_int8_needs_a_calibration_table_it_can_find(trained_model, tmp_path, capsys):
    from conftest import run_cli_inprocess

    m = tmp_path / "m"
    shutil.copytree(trained_model, m)
    meta = json.loads((m / "model.json").read_text())
    meta["train_config"]["data"]["valid"]["table"] = str(tmp_path / "gone.csv")
    (m / "model.json").write_text(json.dumps(meta))
    r = run_cli_inprocess(capsys, "export", str(m), "--onnx", "--int8")
    assert r.returncode != 0 and "--calibration" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert not (m / "model.int8.onnx").exists()


def test_deployment_copy_carries_the_int8_export(int8_model, tmp_path):
    from cxrkit.export import deployment_copy

    m, _ = int8_model
    out = deployment_copy(m, tmp_path / "deploy")
    assert (out / "model.int8.onnx").is_file() and (out / "model.int8.onnx.json").is_file()
    assert not (out / "model.safetensors").exists()
    p = load_predictor(out, engine="onnx", precision="int8")
    assert p.precision == "int8"


def test_openvino_runs_the_calibrated_int8_export(int8_model, demo_data, monkeypatch):
    """OpenVINO compiles the same calibrated QDQ export the ONNX engine runs: its int8
    probabilities follow onnxruntime's int8 ones and fp32 within the export's tolerance."""
    pytest.importorskip("openvino")
    m, res = int8_model
    paths = sorted(demo_data.rglob("*.png"))[:24]
    fp32, _, _ = predict_paths(load_predictor(m, engine="onnx", precision="fp32"), paths, show_progress=False)
    ort_q, _, _ = predict_paths(load_predictor(m, engine="onnx", precision="int8"), paths, show_progress=False)
    ov = load_predictor(m, engine="openvino", precision="int8")
    assert ov.precision == "int8"
    ov_q, _, _ = predict_paths(ov, paths, show_progress=False)
    assert float(np.abs(ov_q - fp32).max()) <= max(INT8_TOLERANCE, res["max_prob_diff"][0] + 0.02)
    assert float(np.abs(ov_q - ort_q).max()) < 0.05
    assert np.corrcoef(fp32.ravel(), ov_q.ravel())[0, 1] > 0.99
    assert float(np.abs(ov_q - fp32).max()) > 0  # the int8 file, not the fp32 one


def test_openvino_precision_auto_takes_int8_only_when_accurate_and_the_cpu_has_the_units(int8_model, monkeypatch,
                                                                                          tmp_path):
    m, _ = int8_model
    spec = read_spec(m)
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    side = m / "model.int8.onnx.json"
    accurate = json.loads(side.read_text())["accurate"]
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx512_vnni", "amx_int8", "amx_bf16", "avx512_bf16"})
    monkeypatch.setattr(runtime, "cpu_int8_units", lambda: True)
    monkeypatch.setattr(runtime, "int8_is_faster", lambda spec, engine: True)
    assert runtime.choose_openvino_precision("auto", spec) == ("int8" if accurate else "bf16")
    monkeypatch.setattr(runtime, "int8_usable", lambda member: False)  # the export failed its check
    assert runtime.choose_openvino_precision("auto", spec) == "bf16"
    monkeypatch.setattr(runtime, "int8_usable", lambda member: True)
    monkeypatch.setattr(runtime, "cpu_int8_units", lambda: False)  # no VNNI / AMX
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    assert runtime.choose_openvino_precision("auto", spec) == "fp32"
    bare = tmp_path / "bare"
    shutil.copytree(m, bare, ignore=shutil.ignore_patterns("*.int8.onnx*"))
    with pytest.raises(CxrkitError, match="export .* --onnx --int8"):
        runtime.choose_openvino_precision("int8", read_spec(bare))


@pytest.fixture(scope="module")
def nncf_model(trained_model, tmp_path_factory):
    pytest.importorskip("nncf")
    m = tmp_path_factory.mktemp("nncf") / "model"
    shutil.copytree(trained_model, m)
    return m


def test_nncf_accuracy_control_holds_the_validation_auc(nncf_model, demo_data, capsys):
    """`--quantizer nncf`: the int8 copy's mean AUC on the model's validation films, as the
    sidecar records it, is what `evaluate` measures with the ONNX engine; with no drop allowed
    NNCF puts layers back to fp32 until there is none, with a generous one it keeps more int8."""
    from conftest import run_cli_inprocess
    from cxrkit.evaluate import evaluate_table
    from cxrkit.export import _quantised_layers
    from cxrkit.data.tables import load_table

    onnx = pytest.importorskip("onnx")
    m = nncf_model
    r = run_cli_inprocess(capsys, "export", str(m), "--onnx", "--int8", "--quantizer", "nncf", "--max-auc-drop", "0")
    assert r.returncode == 0, r.stderr
    assert "NNCF" in r.stdout and "drop" in r.stdout
    side = json.loads((m / "model.int8.onnx.json").read_text())
    ac = side["accuracy_control"]
    assert side["quantizer"] == "nncf" and ac["metric"] == "mean AUC" and ac["max_drop"] == 0
    assert ac["validation"]["table"] == str(demo_data / "valid.csv") and ac["validation"]["images"] == len(load_table(demo_data / "valid.csv"))
    assert ac["drop"] <= 1e-12 and side["accurate"] is True
    fp32 = evaluate_table(load_predictor(m, engine="onnx", precision="fp32"), demo_data / "valid.csv",
                          show_progress=False)
    q = evaluate_table(load_predictor(m, engine="onnx", precision="int8"), demo_data / "valid.csv",
                       show_progress=False)
    assert fp32["mAUC"] == pytest.approx(ac["fp32"], abs=1e-6)
    assert q["mAUC"] == pytest.approx(ac["int8"], abs=1e-6)
    strict = _quantised_layers(onnx.load(str(m / "model.int8.onnx")))
    assert strict == (side["int8_layers"], side["layers"])

    from cxrkit.export import export_member_int8_nncf

    f = export_member_int8_nncf(read_spec(m).members[0], max_drop=0.5)  # any drop accepted: nothing reverted
    loose = json.loads((m / "model.int8.onnx.json").read_text())
    assert loose["int8_layers"] >= side["int8_layers"] and loose["int8_layers"] > 0
    assert loose["accurate"] is True and f == m / "model.int8.onnx"


def test_nncf_quantizer_refuses_bad_options_before_any_work(trained_model, tmp_path, capsys):
    from conftest import run_cli_inprocess

    m = tmp_path / "m"
    shutil.copytree(trained_model, m, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.json"))
    for args, msg in ((["--quantizer", "tflite"], "--quantizer must be onnxruntime or nncf"),
                      (["--quantizer", "nncf", "--max-auc-drop", "1.5"], "--max-auc-drop must be in")):
        r = run_cli_inprocess(capsys, "export", str(m), "--onnx", "--int8", *args)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (m / "model.onnx").exists()


def test_auto_takes_int8_only_where_it_measured_faster_on_this_cpu(int8_model, monkeypatch, tmp_path, caplog):
    """int8 units do not make every network faster (onnxruntime's int8 EfficientNet ran 2.6x
    slower than fp32 on a VNNI CPU): auto measures once per model files and CPU, caches it,
    and keeps fp32 where int8 lost."""
    m, _ = int8_model
    spec = read_spec(m)
    monkeypatch.setenv("CXRKIT_CACHE_DIR", str(tmp_path / "cache" / "images"))
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    monkeypatch.setattr(runtime, "cpu_int8_units", lambda: True)
    monkeypatch.setattr(runtime, "int8_usable", lambda member: True)
    fp32_s, int8_s = runtime._time_batches(spec, "onnx", batch=4, reps=1)  # the real measurement runs
    assert fp32_s > 0 and int8_s > 0
    calls = []

    def timed(int8_faster):
        def f(spec, engine, batch=8, reps=3):
            calls.append(engine)
            return (0.2, 0.1) if int8_faster else (0.1, 0.3)
        return f

    monkeypatch.setattr(runtime, "_time_batches", timed(False))
    with caplog.at_level(logging.INFO, logger="cxrkit.runtime"):
        assert runtime.choose_onnx_precision(spec, "auto") == "fp32"
        assert runtime.choose_onnx_precision(spec, "auto") == "fp32"
    assert calls == ["onnx"]  # measured once, then read from the cache
    assert any("slower than fp32 on this CPU" in r.message for r in caplog.records)
    table = json.loads((tmp_path / "cache" / "int8_speed.json").read_text())
    assert [(e["engine"], e["int8_s"], e["other_s"]) for e in table.values()] == [("onnx", 0.3, 0.1)]
    assert runtime.choose_onnx_precision(spec, "int8") == "int8"  # asked for: no measurement decides
    monkeypatch.setattr(runtime, "_time_batches", timed(True))
    assert runtime.choose_openvino_precision("auto", spec) == "int8"  # its own measurement, per engine
    assert calls == ["onnx", "openvino"]
    (m / "model.int8.onnx").touch()  # a new export: measured again
    assert runtime.choose_onnx_precision(spec, "auto") == "int8"
    assert calls == ["onnx", "openvino", "onnx"]


def test_a_replaced_export_is_not_vouched_for_by_its_old_sidecar(int8_model, tmp_path):
    """Export and sidecar are two renames: before a new file replaces an export, its old
    sidecar is marked so that a process killed in between leaves nothing auto trusts."""
    from cxrkit.export import _invalidate_sidecar, int8_is_fresh, is_fresh

    m, _ = int8_model
    copy = tmp_path / "m"
    shutil.copytree(m, copy)
    member = read_spec(copy).members[0]
    f = runtime.int8_location(member)
    assert int8_is_fresh(member) and is_fresh(member)
    _invalidate_sidecar(f)
    assert not runtime.int8_usable(member) and not int8_is_fresh(member)
    _invalidate_sidecar(runtime.onnx_location(member))
    assert not is_fresh(member)  # the fp32 export is made again on next use
