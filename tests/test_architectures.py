"""The seed architectures train through the normal trainer on COCO-tiny and the demo data,
and Category-wise Fine-Tuning works on their per-class features."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import shared, tiny_config
from cxrkit.models import ModelConfig, build_model
from cxrkit.models.classifier import count_parameters
from cxrkit.train.trainer import fit

ARCHS = {
    "resnet101": {"model.backbone": "resnet101", "model.arch": "classifier", "model.backbone_kwargs": {}},  # seed 003
    "q2l-irpe": {"model.arch": "q2l-irpe", "model.backbone": "resnet10t", "model.backbone_kwargs": {},
                 "model.arch_kwargs": {"d_model": 32, "heads": 2, "dec_layers": 1, "ffn_dim": 64, "pos_size": 2},
                 "loss.name": "apl", "loss.params": {"gamma_neg": 2, "reduction": "mean"},
                 "augmentation.name": "randaugment+cutout"},  # seed 002
    "mlvpt": {"model.arch": "mlvpt", "model.backbone": "vit_tiny_patch16_224", "model.backbone_kwargs": {},
              "model.arch_kwargs": {"img_size": 32, "n_experts": 2, "n_groups": 3},
              "loss.name": "asl", "loss.params": {"reduction": "mean"}, "optim.lr": 0.01},  # seed 001
}
RGB = {"preprocessing.channels": 3, "preprocessing.colour": "rgb", "model.in_chans": 3, "preprocessing.mean": None,
       "preprocessing.std": None}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_architecture_trains_on_coco_tiny(arch, demo_data, tmp_path):
    ov = {**RGB, **ARCHS[arch], "data.train.table": str(shared("coco_tiny", "annotations", "instances_train2017.json")),
          "data.valid.table": str(shared("coco_tiny", "annotations", "instances_val2017.json")), "label_space": "coco",
          "data.partial_known": 0.5, "partial": {"strategy": "an"}, "train.epochs": 1, "train.batch_size": 16}
    res = fit(tiny_config(demo_data, **ov), tmp_path / "run", show_progress=False)
    assert res.completed and np.isfinite(res.history[0]["train_loss"])
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert len(meta["classes"]) == 80 and meta["model"]["arch"] == ARCHS[arch]["model.arch"]
    from cxrkit.artifact import load_model

    counts = meta["metrics"]["parameters"]  # the run records learnable vs total parameters
    assert (counts["trainable"], counts["total"]) == count_parameters(load_model(tmp_path / "run" / "model").model)
    assert (counts["trainable"] < counts["total"]) == (arch == "mlvpt")  # only ML-VPT freezes its backbone
    if arch == "mlvpt":  # the label groups computed from the training labels travel with the model
        groups = meta["model"]["arch_kwargs"]["groups_co"]
        assert sorted(c for g in groups for c in g) == list(range(80))


@pytest.mark.parametrize("arch", ["q2l-irpe", "mlvpt"])
def test_cft_on_per_class_features(arch, demo_data, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import app

    ov = {**RGB, **ARCHS[arch], "train.epochs": 2}
    ov.pop("augmentation.name", None)
    fit(tiny_config(demo_data, **ov), tmp_path / "run", show_progress=False)
    model = tmp_path / "run" / "model"
    r = CliRunner().invoke(app, ["cft", str(model), str(demo_data / "train.csv"), str(demo_data / "valid.csv"),
                                 "--out", str(tmp_path / "cft"), "--method", "bp-asl", "--set", "bp.epochs=20",
                                 "--set", "bp.lr=0.05", "--min-val-positives", "1"])
    assert r.exit_code == 0, r.output
    before, after = load_file(str(model / "model.safetensors")), load_file(str(tmp_path / "cft" / "model.safetensors"))
    meta = json.loads((tmp_path / "cft" / "model.json").read_text())
    changed = [i for i, c in enumerate(meta["cft"]["categories"]) if not c["chosen"].startswith("original")]
    assert changed, "CFT changed no category"
    for k in before:
        same = np.array_equal(before[k].numpy(), after[k].numpy())
        assert same == (not k.startswith("head.weight") and not k.startswith("head.bias")) or same, k
    w0, w1 = before["head.weight"].numpy(), after["head.weight"].numpy()
    assert not np.array_equal(w0[changed], w1[changed])
    assert meta["metrics"]["cft"]["valid_after"]["mAUC"] >= meta["metrics"]["cft"]["valid_before"]["mAUC"]


def test_parameter_counts_of_the_seed_architectures():
    r101 = build_model(ModelConfig(backbone="resnet101"), 80, load_weights=False)
    expected = 44_549_160 - 2_049_000 + 2048 * 80 + 80  # torchvision ResNet-101 without its fc, 80-class head
    assert count_parameters(r101) == (expected, expected)
    q2l = build_model(ModelConfig(arch="q2l-irpe", backbone="resnet101"), 80, load_weights=False)
    assert count_parameters(q2l)[1] == 45_542_800
    groups = [list(range(i, 80, 5)) for i in range(5)]
    vpt = build_model(ModelConfig(arch="mlvpt", backbone="vit_base_patch16_224",
                                  arch_kwargs={"groups_co": groups, "groups_dc": groups}), 80, load_weights=False)
    learnable, total = count_parameters(vpt)
    assert learnable == 776_470 and total == 86_575_126


def test_unknown_architecture_fails_when_the_config_is_read(demo_data):
    from cxrkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown architecture 'nope'; use one of \['classifier', 'mlvpt', 'q2l-irpe'\]"):
        tiny_config(demo_data, **{"model.arch": "nope"})
