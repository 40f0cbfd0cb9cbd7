"""RAD-DINO from a local Hugging Face folder (issue 26): weights the test creates in the
published format (``transformers``' Dinov2 ``save_pretrained``: config.json +
model.safetensors with the published key names), features equal to ``transformers``'
``Dinov2Model`` on a real film, clear errors for what is not such a folder, and a saved
model that predicts without the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_film

transformers = pytest.importorskip("transformers")

from cxrkit.errors import ConfigError  # noqa: E402
from cxrkit.models.registry import BackboneSpec, build_backbone  # noqa: E402

ARCH = {"img_size": 56, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory) -> Path:
    """A tiny Dinov2 in RAD-DINO's published layout, every weight random (layer scales too,
    so a wrong mapping cannot hide behind an identity)."""
    d = tmp_path_factory.mktemp("rad-dino")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, mlp_ratio=4, layerscale_value=1.0)
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 56, "width": 56}, "image_mean": [0.5307, 0.5307, 0.5307],
        "image_std": [0.2583, 0.2583, 0.2583], "size": {"shortest_edge": 56}}))
    return d


def _film(size: int = 56) -> torch.Tensor:
    """A real chest film, normalised as RAD-DINO's preprocessor does, 3 channels."""
    x = (real_film(size) - 0.5307) / 0.2583
    return torch.from_numpy(np.repeat(x[None, None], 3, axis=1))


@pytest.mark.parametrize("pool", ["cls", "mean", "cls+mean"])
def test_rad_dino_features_equal_transformers(dino_folder, pool):
    net, dim = build_backbone(BackboneSpec("rad-dino", pretrained=True, weights=str(dino_folder), in_chans=3,
                                           kwargs={**ARCH, "pool": pool}))
    ref = transformers.Dinov2Model.from_pretrained(dino_folder).eval()
    x = _film()
    with torch.no_grad():
        ours = net.eval()(x)
        out = ref(pixel_values=x)
    cls, patches = out.pooler_output, out.last_hidden_state[:, 1:].mean(1)
    want = {"cls": cls, "mean": patches, "cls+mean": torch.cat([cls, patches], 1)}[pool]
    assert dim == want.shape[1] and ours.shape == want.shape
    assert float((ours - want).abs().max()) < 1e-5
    assert float(want.abs().max()) > 0.1  # real activations, not zeros


def test_not_a_dinov2_folder_is_one_clear_line(dino_folder, tmp_path):
    def build(folder, **kw):
        return build_backbone(BackboneSpec("rad-dino", pretrained=True, weights=str(folder), in_chans=3,
                                           kwargs={**ARCH, **kw}))

    with pytest.raises(ConfigError, match="expected a Hugging Face Dinov2 folder"):
        build(tmp_path)
    other = tmp_path / "vit"
    shutil.copytree(dino_folder, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "vit"}))
    with pytest.raises(ConfigError, match="model_type 'vit'; expected 'dinov2'"):
        build(other)
    with pytest.raises(ConfigError, match=r"set model.backbone_kwargs: \{depth: 2\}"):
        build(dino_folder, depth=3)
    broken = tmp_path / "broken"
    shutil.copytree(dino_folder, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="model.safetensors: not readable"):
        build(broken)
    with pytest.raises(ConfigError, match="pool must be one of"):
        build(dino_folder, pool="max")
    with pytest.raises(ConfigError, match="local folder"):
        build_backbone(BackboneSpec("rad-dino", pretrained=True, weights=None, in_chans=3, kwargs=ARCH))


def test_a_rad_dino_model_predicts_without_its_folder(dino_folder, tmp_path):
    """The saved model holds the architecture (backbone kwargs), the preprocessing read
    from the folder and all weights: predict needs nothing else."""
    from cxrkit.artifact import ModelMeta, load_model, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.models import ModelConfig, build_model
    from cxrkit.models.foundation import read_hf_preprocessing

    folder = tmp_path / "weights"
    shutil.copytree(dino_folder, folder)
    cfg = ModelConfig(backbone="rad-dino", pretrained=True, weights=str(folder), in_chans=3,
                      backbone_kwargs={**ARCH, "pool": "cls+mean"})
    model = build_model(cfg, 3).eval()
    pre = read_hf_preprocessing(folder)
    assert pre["size"] == 56 and pre["mean"][0] == pytest.approx(0.5307)
    save_model(tmp_path / "m", model, ModelMeta(classes=["a", "b", "c"], preprocessing=Preprocessing(**pre).to_dict(),
                                                model=cfg.to_dict(), thresholds=[0.5] * 3))
    x = _film()
    with torch.no_grad():
        want = torch.sigmoid(model(x))
    shutil.rmtree(folder)  # the hospital has only the saved model
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        got = torch.sigmoid(loaded.model(x))
    assert float((got - want).abs().max()) < 1e-6
    assert loaded.meta.preprocessing["size"] == 56 and loaded.meta.preprocessing["resize"] == "center-crop"


def test_a_training_config_must_use_the_checkpoints_preprocessing(dino_folder, demo_data):
    from conftest import tiny_config

    model = {"backbone": "rad-dino", "pretrained": True, "weights": str(dino_folder), "in_chans": 3,
             "backbone_kwargs": ARCH}
    with pytest.raises(ConfigError, match=r"set preprocessing: \{size: 56, channels: 3, mean: \[0.5307"):
        tiny_config(demo_data, model=model, preprocessing={"size": 32, "channels": 3})
    ok = tiny_config(demo_data, model=model, preprocessing={"size": 56, "channels": 3, "mean": [0.5307] * 3,
                                                             "std": [0.2583] * 3, "resize": "center-crop"})
    assert ok.model_config.backbone == "rad-dino"


def test_the_shipped_rad_dino_template_finds_its_folder_by_cxrkit_weights(dino_folder, tmp_path, monkeypatch):
    """configs/foundation/rad_dino_probe.yaml: the folder under $CXRKIT_WEIGHTS (default
    weights/); without it, one line naming the folder and what it must hold."""
    from cxrkit.train.config import load_config

    tpl = Path(__file__).resolve().parents[1] / "configs" / "foundation" / "rad_dino_probe.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CXRKIT_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match=r"weights/rad-dino: expected a Hugging Face Dinov2 folder"):
        load_config(tpl)
    shutil.copytree(dino_folder, tmp_path / "w" / "rad-dino")
    monkeypatch.setenv("CXRKIT_WEIGHTS", str(tmp_path / "w"))
    cfg = load_config(tpl, overrides=[f"model.backbone_kwargs={json.dumps({**ARCH, 'pool': 'cls'})}",
                                      "preprocessing.size=56"])  # the test's tiny ViT, not RAD-DINO's size
    assert cfg.model_config.weights == str(tmp_path / "w" / "rad-dino") and cfg.name == "rad_dino_probe"
