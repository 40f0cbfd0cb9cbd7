import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.errors import ConfigError
from cxrkit.models import ModelConfig, build_model
from cxrkit.models.weights import remap_by_order


def _foreign_state_dict():
    """A resnet10t state dict under other names (as third-party packages ship them)."""
    sd = timm.create_model("resnet10t", num_classes=1000).state_dict()
    return {f"layer{i:03d}.{k.split('.')[-1]}": v.clone() for i, (k, v) in enumerate(sd.items())}, sd


def test_convert_by_order_and_use_as_pretrained(tmp_path):
    foreign, ref = _foreign_state_dict()
    torch.save(foreign, tmp_path / "foreign.pth")
    r = CliRunner().invoke(app, ["weights", "convert", str(tmp_path / "foreign.pth"), str(tmp_path / "w.safetensors"),
                                 "--arch", "resnet10t"])
    assert r.exit_code == 0, r.output
    out = load_file(str(tmp_path / "w.safetensors"))
    assert set(out) == {k for k in ref if not k.endswith("num_batches_tracked")}
    torch.testing.assert_close(out["fc.weight"], ref["fc.weight"])
    m = build_model(ModelConfig(backbone="resnet10t", pretrained=True, weights=str(tmp_path / "w.safetensors")), 3)
    torch.testing.assert_close(m.backbone.layer4[0].conv1.weight, ref["layer4.0.conv1.weight"])


def test_mismatch_is_refused():
    foreign, _ = _foreign_state_dict()
    with pytest.raises(ConfigError, match="do not correspond"):
        remap_by_order(foreign, "resnet18")
    bad = dict(foreign)
    k = next(iter(bad))
    bad[k] = torch.zeros(3)
    with pytest.raises(ConfigError, match="does not fit"):
        remap_by_order(bad, "resnet10t")
