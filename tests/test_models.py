import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrkit.errors import ConfigError
from cxrkit.models import Classifier, ModelConfig, build_model
from cxrkit.models.classifier import count_parameters


def test_tiny_cnn_split_backbone_features_head():
    m = build_model(ModelConfig(backbone="tiny-cnn", in_chans=1, backbone_kwargs={"widths": [8, 16]}), 5)
    assert isinstance(m, Classifier)
    x = torch.randn(3, 1, 32, 32)
    z = m.features(x)
    assert z.shape == (3, 16) and m.head.weight.shape == (5, 16) and m.head.bias.shape == (5,)
    torch.testing.assert_close(m(x), z @ m.head.weight.T + m.head.bias)
    loss = m(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_feature_dim_neck_changes_z():
    m = build_model(ModelConfig(backbone="tiny-cnn", feature_dim=12, backbone_kwargs={"widths": [8]}), 3)
    assert m.features(torch.randn(2, 3, 16, 16)).shape == (2, 12) and m.head.weight.shape == (3, 12)


def test_timm_backbone_by_name_one_and_three_channels():
    for c in (1, 3):
        m = build_model(ModelConfig(backbone="resnet10t", in_chans=c), 4)
        assert m.features(torch.randn(2, c, 32, 32)).shape == (2, m.feature_dim)
        assert m(torch.randn(2, c, 32, 32)).shape == (2, 4)
    m = build_model(ModelConfig(backbone="timm:mobilenetv3_small_050"), 2)
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_file(tmp_path, suffix):
    ref = timm.create_model("resnet10t", num_classes=1000)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    f = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(f))
    else:
        torch.save(sd, f)
    m3 = build_model(ModelConfig(backbone="resnet10t", pretrained=True, weights=str(f)), 2)
    torch.testing.assert_close(m3.backbone.conv1[0].weight, sd["conv1.0.weight"])
    m1 = build_model(ModelConfig(backbone="resnet10t", pretrained=True, weights=str(f), in_chans=1), 2)
    torch.testing.assert_close(m1.backbone.conv1[0].weight, sd["conv1.0.weight"].sum(1, keepdim=True))
    # weights are skipped when the model is rebuilt for a saved artifact
    m0 = build_model(ModelConfig(backbone="resnet10t", pretrained=True, weights=str(f)), 2, load_weights=False)
    assert not torch.equal(m0.backbone.conv1[0].weight, sd["conv1.0.weight"])


def test_monai_densenet121():
    m = build_model(ModelConfig(backbone="monai-densenet121", in_chans=1), 14)
    assert m.feature_dim == 1024 and m(torch.randn(2, 1, 32, 32)).shape == (2, 14)
    trainable, total = count_parameters(m)
    assert trainable == total > 6_000_000


def test_model_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model(ModelConfig(backbone="resnet_does_not_exist"), 2)
    with pytest.raises(ConfigError, match="weights file not found"):
        build_model(ModelConfig(backbone="resnet10t", weights=str(tmp_path / "nope.pth")), 2)
    with pytest.raises(ConfigError, match="unknown model keys"):
        ModelConfig.from_dict({"backbone": "x", "heads": 2})
    with pytest.raises(ConfigError, match="in_chans"):
        build_model(ModelConfig(backbone="tiny-cnn", in_chans=2), 2)
    with pytest.raises(ConfigError, match="architecture"):
        build_model(ModelConfig(arch="nope"), 2)
