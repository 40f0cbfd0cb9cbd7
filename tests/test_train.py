import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from cxrkit.errors import ConfigError, CxrkitError
from cxrkit.train.config import ScheduleConfig, load_config
from cxrkit.train.schedule import lr_at
from cxrkit.train.trainer import eval_targets, fit, masked_bce

REPO = Path(__file__).resolve().parents[1]


def test_run_folder_contents(demo_data, tmp_path):
    res = fit(tiny_config(demo_data), tmp_path / "run", show_progress=False)
    out = tmp_path / "run"
    assert res.completed and res.best_epoch in (1, 2)
    for f in ("config.yaml", "metrics.json", "metrics.csv", "train.log", "label_distribution.png", "summary.json",
              "data_failures.csv", "model/model.json", "model/model.safetensors", "plots/loss.png",
              "plots/metrics.png", "plots/roc.png", "plots/pr.png", "checkpoint/state.safetensors"):
        assert (out / f).is_file(), f
    hist = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all(0 <= h["mAUC"] <= 1 for h in hist)
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["classes"][2] == "Cardiomegaly" and len(meta["thresholds"]) == 14
    assert meta["train_config"]["name"] == "tiny" and meta["metrics"]["valid"]["mAUC"] is not None
    assert meta["preprocessing"]["size"] == 32
    # a second run into the same folder must not clobber it
    with pytest.raises(CxrkitError, match="--resume"):
        fit(tiny_config(demo_data), out, show_progress=False)


def _final_state(out):
    return load_file(str(out / "checkpoint" / "state.safetensors"))


def test_resume_gives_the_same_result(demo_data, tmp_path):
    ov = {"train.epochs": 3, "train.ema": 0.9, "train.grad_clip": 1.0, "optim.name": "adamw",
          "optim.weight_decay": 0.01, "model.drop_rate": 0.2}
    fit(tiny_config(demo_data, **ov), tmp_path / "a", show_progress=False)
    r1 = fit(tiny_config(demo_data, **ov), tmp_path / "b", stop_after_epochs=1, show_progress=False)
    assert not r1.completed and len(r1.history) == 1
    r2 = fit(tiny_config(demo_data, **ov), tmp_path / "b", resume=True, show_progress=False)
    assert r2.completed and len(r2.history) == 3
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [h["mAUC"] for h in ha] == [h["mAUC"] for h in hb]


def test_worker_processes_do_not_change_the_batches(demo_data):
    from torch.utils.data import DataLoader

    from cxrkit.data.augment import build_augmentation
    from cxrkit.data.dataset import EpochSampler, ImageDataset, load_images
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.data.tables import load_table, resolve_image_paths

    t = load_table(demo_data / "valid.csv")
    paths, _ = resolve_image_paths(t)
    pre = Preprocessing(size=24, channels=1)
    imgs = load_images(paths[:40], pre, cache="memory", workers=2, show_progress=False)
    ds = ImageDataset(imgs, np.arange(40), pre, build_augmentation("chexpert"), seed=3)
    batches = {}
    for w in (0, 2):
        s = EpochSampler(40, seed=3)
        s.set_epoch(1)
        batches[w] = [x for x, _ in DataLoader(ds, batch_size=8, sampler=s, num_workers=w)]
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a, b)


def test_disk_cache_is_reused(demo_data, tmp_path):
    from cxrkit.data.dataset import load_images
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.data.tables import load_table, resolve_image_paths

    t = load_table(demo_data / "valid.csv")
    paths, _ = resolve_image_paths(t)
    paths = list(paths[:10]) + [tmp_path / "missing.png"]
    pre = Preprocessing(size=16, channels=1)
    a = load_images(paths, pre, cache="disk", cache_dir=tmp_path / "c", show_progress=False)
    b = load_images(paths, pre, cache="disk", cache_dir=tmp_path / "c", show_progress=False)
    assert a.cache_file == b.cache_file and len(list((tmp_path / "c").glob("*.npy"))) == 1
    assert a.ok.tolist() == b.ok.tolist() == [True] * 10 + [False]
    assert b.failures[0]["reason"] == "missing"
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    c = load_images(paths, Preprocessing(size=20, channels=1), cache="disk", cache_dir=tmp_path / "c",
                    show_progress=False)
    assert c.cache_file != a.cache_file  # another preprocessing, another cache entry


def test_ddp_two_processes_gloo(demo_data, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    import yaml

    yaml.safe_dump(tiny_config(demo_data).to_dict(), cfg.open("w"))
    env = dict(os.environ, OMP_NUM_THREADS="1", CXRKIT_QUIET="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cxrkit.cli", "train", str(cfg), "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(hist) == 2 and all(h["mAUC"] is not None for h in hist)
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_training_learns_the_demo_findings(tmp_path):
    from cxrkit.data.demo import generate_demo

    generate_demo(tmp_path / "d", n_studies=400, seed=11, size=48, show_progress=False, test_fraction=0.0)
    res = fit(tiny_config(tmp_path / "d", **{"train.epochs": 10, "preprocessing.size": 48,
                                              "model.backbone_kwargs.widths": [16, 32, 64]}),
              tmp_path / "r", show_progress=False)
    auc = res.best_metrics["per_class_auc"]
    assert auc["Support Devices"] > 0.9 and auc["Pleural Effusion"] > 0.8 and res.best_metrics["mAUC"] > 0.7, auc


def test_config_errors(tmp_path, demo_data):
    with pytest.raises(ConfigError, match="unknown config key.*optim.learning_rate"):
        tiny_config(demo_data, **{"optim.learning_rate": 1})
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        tiny_config(demo_data, **{"train.epochs": "many"})
    with pytest.raises(ConfigError, match="in_chans"):
        tiny_config(demo_data, **{"model.in_chans": 3})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not in the label space"):
        fit(tiny_config(demo_data, **{"data.label_policy.per_class": {"Nope": "ones"}}), tmp_path / "x",
            show_progress=False)


def test_seed_configs_parse():
    for f in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(f)
        assert cfg.name and cfg.train.epochs >= 1, f


def test_schedules():
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    lrs = [lr_at(s, 100, 1.0, cfg) for s in range(100)]
    assert abs(lrs[0] - 0.1) < 1e-9 and abs(max(lrs) - 1.0) < 1e-6 and np.argmax(lrs) == 25
    assert lrs[-1] < 0.01 and all(np.diff(lrs[25:]) <= 1e-12)
    cos = [lr_at(s, 10, 1.0, ScheduleConfig(name="cosine", warmup_epochs=1), steps_per_epoch=2) for s in range(10)]
    assert cos[0] == 0.5 and cos[1] == 1.0 and cos[-1] < 0.05
    assert lr_at(5, 10, 0.3, ScheduleConfig()) == 0.3


def test_eval_targets_and_bce():
    lab = np.array([[1, -1, np.nan, 0]], dtype=np.float32)
    assert np.isnan(eval_targets(lab)).tolist() == [[False, True, True, False]]
    assert eval_targets(lab, "ones")[0, 1] == 1
    with pytest.raises(ConfigError):
        eval_targets(lab, "ones-lsr")
    x = np.array([[0.0, 3.0, 1.0, -2.0]])
    assert abs(masked_bce(x, eval_targets(lab)) - np.mean([np.log(2), np.log1p(np.exp(-2.0))])) < 1e-12


def test_classes_without_validation_labels_do_not_break_training(demo_data, tmp_path):
    """A label space with classes the tables never label (all unknown) trains and plots."""
    import pandas as pd

    for split in ("train", "valid"):
        df = pd.read_csv(demo_data / f"{split}.csv")
        df["Never Labelled"] = np.nan
        df.to_csv(tmp_path / f"{split}.csv", index=False)
    cfg = tiny_config(demo_data, **{"data.train.table": str(tmp_path / "train.csv"),
                                    "data.valid.table": str(tmp_path / "valid.csv"), "data.train.format": "generic",
                                    "data.valid.format": "generic", "data.train.images_root": str(demo_data),
                                    "data.valid.images_root": str(demo_data), "train.epochs": 1, "label_space": "null"})
    res = fit(cfg, tmp_path / "run", show_progress=False)
    assert res.completed and (tmp_path / "run" / "plots" / "roc.png").is_file()
    assert res.best_metrics["per_class_auc"]["Never Labelled"] is None


def test_precision_resolution(monkeypatch):
    from cxrkit import inference, runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    assert inference.resolve_precision("auto", cpu)[0] == "fp32"
    assert "no AMX" in inference.resolve_precision("auto", cpu)[1]
    assert inference.resolve_precision(True, cpu)[0] == "fp32"
    assert inference.resolve_precision("bf16", cpu) == ("bf16", "asked for (this CPU has no bf16 units: emulated, slow)")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_int8", "amx_tile"})
    assert inference.resolve_precision("auto", cpu)[0] == "bf16" and runtime.cpu_int8_units()
    assert inference.resolve_precision(False, cpu)[0] == "fp32"
    with pytest.raises(ConfigError, match="CUDA"):
        inference.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision"):
        inference.resolve_precision("int4", cpu)


def test_bf16_channels_last_training_on_cpu(demo_data, tmp_path):
    """bf16 autocast + channels-last on the CPU trains, saves contiguous weights that load and
    predict in fp32 (the saved model does not depend on how it was trained)."""
    from cxrkit.artifact import load_model

    cfg = tiny_config(demo_data, **{"train.precision": "bf16", "train.channels_last": True, "train.epochs": 1})
    res = fit(cfg, tmp_path / "run", show_progress=False)
    assert res.completed
    log = (tmp_path / "run" / "train.log").read_text()
    assert "precision bf16 on cpu" in log and "channels_last=True" in log
    m = load_model(tmp_path / "run" / "model")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        p = torch.sigmoid(m.model(x))
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    assert json.loads((tmp_path / "run" / "model" / "model.json").read_text())["train_config"]["train"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        tiny_config(demo_data, **{"train.precision": "half"}).validate()
