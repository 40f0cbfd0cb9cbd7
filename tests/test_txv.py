"""torchxrayvision's chest-X-ray networks as cxrkit backbones (issue 15): the same features as
torchxrayvision on the same film, its input convention recorded in the saved model."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import shared
from cxrkit.data.preprocess import Preprocessing
from cxrkit.errors import ConfigError
from cxrkit.models import ModelConfig, build_model
from cxrkit.models.registry import TXV_PREPROCESSING

xrv = pytest.importorskip("torchxrayvision")


def _film(size):
    """A real NIH film through cxrkit's preprocessing for torchxrayvision, and the same film
    through torchxrayvision's own normalisation (after the same resize)."""
    png = sorted(shared("nih_hires", "images").glob("*.png"))[0]
    pre = Preprocessing.from_dict(dict(TXV_PREPROCESSING["txv-densenet121"], size=size))
    x = pre(png)[None]  # what predict feeds the network
    return x, pre, png


def test_cxrkit_preprocessing_is_torchxrayvisions_convention():
    x, pre, png = _film(224)
    assert x.shape == (1, 1, 224, 224)
    assert float(x.min()) >= -1024.001 and float(x.max()) <= 1024.001
    # torchxrayvision: normalize(img, 255) = img / 255 * 2048 - 1024, on the image cxrkit resized
    grey = pre.load(png)  # cxrkit's decode + resize, [0, 1]
    ref = xrv.datasets.normalize(np.asarray(grey, np.float64) * 255, 255)
    np.testing.assert_allclose(x[0, 0].numpy(), ref.squeeze(), atol=0.05)


def test_densenet_features_equal_torchxrayvision(tmp_path):
    torch.manual_seed(0)
    ref = xrv.models.DenseNet(weights=None).eval()
    f = tmp_path / "txv-densenet.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    net = build_model(ModelConfig(backbone="txv-densenet121", in_chans=1, weights=str(f)), 14,
                      load_weights=True).eval()
    x, _, _ = _film(224)
    with torch.no_grad():
        ours = net.backbone(x)
        theirs = ref.features2(x)
    assert ours.shape == (1, 1024)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_resnet50_features_equal_torchxrayvision(tmp_path):
    import torchvision

    torch.manual_seed(1)
    # torchxrayvision's ResNet class downloads its weights in __init__; its network is
    # torchvision's ResNet-50 with a one-channel stem, which the test builds the same way
    ref = xrv.models.ResNet.__new__(xrv.models.ResNet)
    torch.nn.Module.__init__(ref)
    ref.model = torchvision.models.resnet50(num_classes=18, weights=None)
    ref.model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    ref.eval()
    f = tmp_path / "txv-resnet50.pt"
    torch.save(ref.model.state_dict(), f)  # the form torchxrayvision's resnet download has
    net = build_model(ModelConfig(backbone="txv-resnet50", in_chans=1, weights=str(f)), 14,
                      load_weights=True).eval()
    x, _, _ = _film(512)
    with torch.no_grad():
        ours = net.backbone(x)
        theirs = ref.features(x)
    assert ours.shape == (1, 2048)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_txv_configs_and_the_saved_models_preprocessing(tmp_path, demo_data):
    from conftest import tiny_config

    with pytest.raises(ConfigError, match="one-channel"):
        build_model(ModelConfig(backbone="txv-densenet121", in_chans=3), 14, load_weights=False)
    with pytest.raises(ConfigError, match="local file"):
        build_model(ModelConfig(backbone="txv-densenet121", in_chans=1, pretrained=True), 14, load_weights=True)
    bad = tmp_path / "pickle.pt"
    torch.save(torch.nn.Linear(2, 2), bad)  # a whole pickled model, as torchxrayvision's DenseNet downloads are
    with pytest.raises(ConfigError, match="state dict"):
        build_model(ModelConfig(backbone="txv-densenet121", in_chans=1, weights=str(bad)), 14, load_weights=True)
    ov = {"model.backbone": "txv-densenet121", "model.in_chans": 1, "model.backbone_kwargs": {}}
    with pytest.raises(ConfigError, match="input convention"):
        tiny_config(demo_data, **ov, **{"preprocessing.channels": 1}).validate()
    cfg = tiny_config(demo_data, **ov, **{"preprocessing": dict(TXV_PREPROCESSING["txv-densenet121"], size=64)})
    cfg.validate()
    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    save_model(tmp_path / "m", build_model(cfg.model_config, 3, load_weights=False),
               ModelMeta(classes=["a", "b", "c"], preprocessing=cfg.preprocessing, model=cfg.model_config.to_dict(),
                         thresholds=[0.5] * 3, name="txv"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["preprocessing"]["channels"] == 1 and meta["preprocessing"]["std"] == [1 / 2048]
    png = sorted(shared("nih_hires", "images").glob("*.png"))[0]
    probs, idx, fails = predict_paths(load_predictor(tmp_path / "m", engine="torch"), [png], show_progress=False)
    assert probs.shape == (1, 3) and not fails
