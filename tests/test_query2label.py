"""Seed 002's two-stage Transformer (``q2l-irpe``): shapes, gradients, iRPE, save / load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrkit.artifact import ModelMeta, load_model, save_model
from cxrkit.data.preprocess import Preprocessing
from cxrkit.errors import ConfigError
from cxrkit.models import ModelConfig, build_model
from cxrkit.models.classifier import count_parameters, list_archs
from cxrkit.models.heads import PerClassLinear
from cxrkit.models.query2label import IRPEAttention, Query2Label, irpe_bucket_index

D = 32
TINY = {"d_model": D, "heads": 2, "ffn_dim": 64, "pos_size": 2, "irpe_k": 2}


def _cfg(in_chans: int = 3, **kw: object) -> ModelConfig:
    return ModelConfig(arch="q2l-irpe", backbone="resnet10t", in_chans=in_chans, arch_kwargs={**TINY, **kw})


@pytest.fixture(scope="module")
def model() -> Query2Label:
    torch.manual_seed(0)
    return build_model(_cfg(), num_classes=5)


def test_registered_and_shapes(model: Query2Label) -> None:
    assert "q2l-irpe" in list_archs()
    assert model.per_class_features is True and model.num_classes == 5 and model.feature_dim == D
    assert isinstance(model.head, PerClassLinear) and tuple(model.head.weight.shape) == (5, D)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z = model.features(x)
        logits = model(x)
    assert z.shape == (2, 5, D) and logits.shape == (2, 5)
    torch.testing.assert_close(logits, (z * model.head.weight).sum(-1) + model.head.bias)
    torch.testing.assert_close(model.logits_from_features(z), logits)


def test_all_parameters_get_gradients(model: Query2Label) -> None:
    model.train()
    model.zero_grad()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert not [n for n, p in params if p.grad is None]
    # timm zero-initialises each residual block's last BN scale, so inner backbone convs start
    # with zero gradients; everything after the backbone must get a non-zero one
    zero = [n for n, p in params if not n.startswith("backbone.") and not p.grad.abs().sum()]
    assert not zero, zero
    table = model.encoder[0].attn.table
    assert table.grad is not None and table.grad.abs().sum() > 0  # zero-initialised but still learns
    assert model.label_embed.grad.abs().sum() > 0 and model.pos_embed.grad.abs().sum() > 0


def test_one_channel_and_other_input_size() -> None:
    m = build_model(_cfg(in_chans=1), num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)   # 2 x 2 grid = pos_size
        assert m(torch.randn(1, 1, 96, 96)).shape == (1, 3)   # 3 x 3 grid: embedding resized
        assert m(torch.randn(1, 1, 96, 64)).shape == (1, 3)   # 3 x 2 grid
    attn = m.encoder[0].attn
    assert {k[:2] for k in attn._index} == {(2, 2), (3, 3), (3, 2)}
    assert m.position_embedding(3, 3).shape == (1, D, 3, 3)
    assert not any("_index" in k for k in m.state_dict())


def test_decoder_self_attention_ablation() -> None:
    base = count_parameters(build_model(_cfg(), num_classes=4))[1]
    m = build_model(_cfg(decoder_self_attn=True), num_classes=4).eval()
    last = count_parameters(build_model(_cfg(decoder_self_attn="last"), num_classes=4))[1]
    total = count_parameters(m)[1]
    assert base < last < total
    assert all(layer.self_attn is not None for layer in m.decoder)
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_parameter_count(model: Query2Label) -> None:
    """Tiny setting (resnet10t, d_model 32, 5 classes): 4,965,789 parameters, all trainable;
    the transformer part is checked layer by layer."""
    trainable, total = count_parameters(model)
    assert trainable == total > 0
    backbone = sum(p.numel() for p in model.backbone.parameters())
    enc = (3 * D * D + 3 * D) + (D * D + D) + 2 * (2 * 2 + 1) ** 2 * (D // 2) + (D * 64 + 64 + 64 * D + D) + 4 * D
    dec = (4 * D * D + 4 * D) + (D * 64 + 64 + 64 * D + D) + 4 * D
    expected = backbone + (512 * D + D) + D * 4 + enc + 2 * dec + 5 * D + 5 * D + 5
    assert total == expected, (total, expected)


def test_bucket_index() -> None:
    idx = irpe_bucket_index(2, 3, k=1)
    assert idx.shape == (6, 6) and idx.min() >= 0 and idx.max() < 9
    assert (idx.diagonal() == 4).all()  # (dy, dx) = (0, 0) -> centre bucket
    # token 0 at (0, 0), token 5 at (1, 2): pos_0 - pos_5 = (-1, -2) -> clipped (-1, -1) -> bucket 0
    assert idx[0, 5] == 0 and idx[5, 0] == 8


def test_irpe_zero_table_is_plain_attention() -> None:
    torch.manual_seed(1)
    attn = IRPEAttention(16, heads=2, k=2).eval()
    x = torch.randn(3, 12, 16)
    q, k, v = attn.qkv(x).reshape(3, 12, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    ref = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 12, 16))
    torch.testing.assert_close(attn(x, (3, 4)), ref)
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    torch.testing.assert_close(attn.proj(manual.transpose(1, 2).reshape(3, 12, 16)), ref)


def test_irpe_hand_computed_example() -> None:
    """2 x 2 grid, one head, d = 2, k = 1: e_ij = (q_i.k_j + q_i.r_b(i,j)) / sqrt(2)."""
    torch.manual_seed(2)
    attn = IRPEAttention(2, heads=1, k=1).eval()
    with torch.no_grad():
        attn.table.normal_()
    x = torch.randn(1, 4, 2)
    out = attn(x, (2, 2))
    q, k, v = attn.qkv(x)[0].split(2, dim=-1)
    pos = [(0, 0), (0, 1), (1, 0), (1, 1)]
    e = torch.empty(4, 4)
    for i in range(4):
        for j in range(4):
            dy = max(-1, min(1, pos[i][0] - pos[j][0]))
            dx = max(-1, min(1, pos[i][1] - pos[j][1]))
            r = attn.table[0, (dy + 1) * 3 + (dx + 1)]
            e[i, j] = (q[i] @ k[j] + q[i] @ r) / math.sqrt(2)
    expected = attn.proj(torch.softmax(e, -1) @ v)
    torch.testing.assert_close(out[0], expected)
    # the table changes the result (it is not silently ignored)
    with torch.no_grad():
        attn.table.zero_()
    assert not torch.allclose(attn(x, (2, 2)), out)


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model(ModelConfig(arch="q2l-irpe", backbone="no-such-net"), 3)
    with pytest.raises(ConfigError, match="unknown q2l-irpe arch_kwargs"):
        build_model(_cfg(layers=3), 3)
    with pytest.raises(ConfigError, match="divisible"):
        build_model(_cfg(heads=3), 3)
    with pytest.raises(ConfigError, match="decoder_self_attn"):
        build_model(_cfg(decoder_self_attn="first"), 3)


def test_save_load_roundtrip(tmp_path, model: Query2Label) -> None:
    cfg = _cfg()
    meta = ModelMeta(classes=list("abcde"), preprocessing=Preprocessing(size=64, channels=3).to_dict(),
                     model=cfg.to_dict(), thresholds=[0.5] * 5, name="q2l")
    model.eval()
    save_model(tmp_path / "model", model, meta)
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded.model, Query2Label)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = torch.sigmoid(model(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x), ref, atol=1e-6)


def test_local_backbone_weights(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = timm.create_model("resnet10t", pretrained=False)  # with its classifier, like a hub checkpoint
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "r10t.safetensors"))
    cfg = ModelConfig(arch="q2l-irpe", backbone="timm:resnet10t", weights=str(tmp_path / "r10t.safetensors"),
                      arch_kwargs=TINY)
    m = build_model(cfg, num_classes=2)
    torch.testing.assert_close(m.backbone.conv1[0].weight, src.conv1[0].weight)
    # loading a saved model never reads the backbone file
    m2 = build_model(cfg, num_classes=2, load_weights=False)
    assert not torch.equal(m2.backbone.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(ConfigError, match="not found"):
        build_model(ModelConfig(arch="q2l-irpe", backbone="resnet10t", weights=str(tmp_path / "none.pth")), 2)
