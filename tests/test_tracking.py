"""Experiment tracking (issue 15): a training run, an evaluation and a CFT run logged to a
local MLflow store and to TensorBoard event files, read back with their own readers."""

import json

import pytest

from conftest import run_cli_inprocess, tiny_config
from cxrkit.errors import ConfigError
from cxrkit.tracking import TrackingConfig, make_tracker
from cxrkit.train.trainer import fit


def test_training_run_in_a_local_mlflow_store(demo_data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    cfg = tiny_config(demo_data, **{"tracking": {"backend": "mlflow", "uri": store, "experiment": "cxrkit-test"}})
    fit(cfg, tmp_path / "run", show_progress=False)
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("cxrkit-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["model.backbone"] == "tiny-cnn"
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())
    got = client.get_metric_history(run.info.run_id, "mAUC")
    assert [m.step for m in got] == [1, 2]
    assert [round(m.value, 6) for m in got] == [round(h["mAUC"], 6) for h in hist]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "model", "summary.json"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.json",
                                                                                  "model/model.safetensors"}


def test_training_evaluate_and_cft_in_tensorboard(demo_data, trained_model, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    cfg = tiny_config(demo_data, **{"tracking": {"backend": "tensorboard", "uri": str(logdir)}})
    fit(cfg, tmp_path / "run", show_progress=False)
    acc = EventAccumulator(str(logdir / "run"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "mAUC" in tags["scalars"] and "train_loss" in tags["scalars"]
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [round(e.value, 5) for e in acc.Scalars("mAUC")] == [round(h["mAUC"], 5) for h in hist]
    assert any(t.startswith("plots/") for t in tags["images"]) and "label_distribution" in tags["images"]
    assert "config/text_summary" in tags["tensors"]

    r = run_cli_inprocess(capsys, "evaluate", str(trained_model), str(demo_data / "valid.csv"), "--engine", "torch",
                          "--tracking", f"tensorboard:{logdir}")
    assert r.returncode == 0, r.stderr
    acc = EventAccumulator(str(logdir / f"evaluate-{trained_model.name}"))
    acc.Reload()
    assert "mAUC" in acc.Tags()["scalars"]

    r = run_cli_inprocess(capsys, "cft", str(trained_model), str(demo_data / "train.csv"), str(demo_data / "valid.csv"),
                          "--out", str(tmp_path / "cft"), "--method", "bp-asl", "--set", "bp.epochs=5",
                          "--tracking", f"tensorboard:{logdir}")
    assert r.returncode == 0, r.stderr
    acc = EventAccumulator(str(logdir / "cft-cft"))
    acc.Reload()
    assert "cft_report/text_summary" in acc.Tags()["tensors"]
    assert any(t.startswith("valid_after.") for t in acc.Tags()["scalars"]), acc.Tags()["scalars"]


def test_tracking_off_by_default_and_bad_backends_are_config_errors(demo_data, tmp_path):
    assert tiny_config(demo_data).tracking.backend == "none"
    t = make_tracker(None, "x", tmp_path)
    t.log_metrics({"a": 1.0})
    t.close()
    assert not any(tmp_path.iterdir())  # nothing written, nothing imported
    with pytest.raises(ConfigError, match="tracking.backend"):
        tiny_config(demo_data, **{"tracking": {"backend": "wandb"}}).validate()
    with pytest.raises(ConfigError, match="tracking.backend"):
        TrackingConfig.parse("neptune:xyz")
