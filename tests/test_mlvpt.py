"""ML-VPT (seed 001): label grouping, group prompts with a cross-group mask, group-aware MoE,
two heads mapped onto one PerClassLinear head, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkit.errors import ConfigError
from cxrkit.models import ModelConfig, build_model
from cxrkit.models.classifier import count_parameters, prepare_model_config
from cxrkit.models.heads import PerClassLinear
from cxrkit.models.mlvpt import (
    MLVPT,
    affinities,
    cooccurrence,
    group_attention_mask,
    group_labels,
    learnable_parameters,
)

CLASSES = ["a", "b", "c", "d", "e", "f"]


def _pair_labels(n: int = 60, seed: int = 0) -> np.ndarray:
    """6 classes; pairs {0,1}, {2,3}, {4,5} always together, never two pairs in one row."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 6))
    for r, p in enumerate(rng.integers(0, 4, size=n)):  # 3: an all-negative row
        if p < 3:
            y[r, 2 * p:2 * p + 2] = 1
    return y


@pytest.fixture(scope="module")
def cfg() -> dict:
    raw = {"arch": "mlvpt", "backbone": "vit_tiny_patch16_224",
           "arch_kwargs": {"img_size": 32, "n_experts": 2, "n_groups": 3}}
    return prepare_model_config(raw, _pair_labels(), CLASSES)


@pytest.fixture(scope="module")
def model(cfg: dict) -> MLVPT:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_dict(cfg), len(CLASSES))


# --------------------------------------------------------------------------- grouping


def test_cooccurrence_hand_computed():
    nan = np.nan
    y = np.array([[1, 1, 0],
                  [1, 0, nan],
                  [1, -1, 1],
                  [0, 1, 1],
                  [nan, 1, 0]])
    s = cooccurrence(y)
    # S[0,1]: rows with 0=1 and 1 known: r0 (1), r1 (0) -> 1/2 (r2 has 1 uncertain)
    # S[0,2]: rows with 0=1 and 2 known: r0 (0), r2 (1) -> 1/2
    # S[1,0]: rows with 1=1 and 0 known: r0 (1), r3 (0) -> 1/2 (r4 has 0 unknown)
    # S[1,2]: rows with 1=1: r0 (0), r3 (1), r4 (0) -> 1/3
    # S[2,0]: rows with 2=1: r2 (1), r3 (0) -> 1/2;  S[2,1]: r3 (1) only (r2 uncertain) -> 1
    expect = np.array([[1, 1 / 2, 1 / 2],
                       [1 / 2, 1, 1 / 3],
                       [1 / 2, 1, 1]])
    np.testing.assert_allclose(s, expect)
    # a class never positive: 0 off the diagonal, 1 on it
    s2 = cooccurrence(np.array([[1, 0], [1, nan]]))
    np.testing.assert_allclose(s2, [[1, 0], [0, 1]])


def test_affinities_symmetric_and_bounded():
    rng = np.random.default_rng(1)
    y = (rng.random((100, 7)) < 0.3).astype(float)
    y[rng.random(y.shape) < 0.1] = np.nan
    s = cooccurrence(y)
    m_plus, m_minus = affinities(s, tau=2.0)
    for m in (m_plus, m_minus):
        np.testing.assert_allclose(m, m.T)
        assert m.min() >= 0 and m.max() <= 1
    np.testing.assert_allclose(np.diag(m_minus), 1.0)
    np.testing.assert_allclose(m_plus, (np.sqrt(s) + np.sqrt(s).T) / 2)
    off = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose(m_minus[off], 1 - m_plus[off])


def _is_partition(groups: list[list[int]], c: int) -> bool:
    return sorted(i for g in groups for i in g) == list(range(c)) and all(groups)


def test_group_labels_pairs_and_determinism():
    y = _pair_labels()
    co, dc = group_labels(y, n_groups=3, seed=0)
    assert _is_partition(co, 6) and _is_partition(dc, 6)
    assert co == [[0, 1], [2, 3], [4, 5]]
    assert group_labels(y, n_groups=3, seed=0) == (co, dc)
    # fewer classes than groups: every class on its own
    co2, dc2 = group_labels(y[:, :2], n_groups=5)
    assert co2 == [[0], [1]] and dc2 == [[0], [1]]
    # a realistic random matrix with unknowns: still partitions
    rng = np.random.default_rng(3)
    yr = (rng.random((200, 12)) < 0.25).astype(float)
    yr[rng.random(yr.shape) < 0.1] = -1
    co3, dc3 = group_labels(yr, n_groups=5, seed=4)
    assert _is_partition(co3, 12) and _is_partition(dc3, 12) and len(co3) <= 5 and len(dc3) <= 5


def test_prepare_hook_fills_and_keeps_groups(cfg: dict):
    kw = cfg["arch_kwargs"]
    assert kw["groups_co"] == [[0, 1], [2, 3], [4, 5]]
    assert _is_partition(kw["groups_dc"], 6)
    assert all(isinstance(i, int) for g in kw["groups_co"] + kw["groups_dc"] for i in g)
    # groups already present are kept
    again = prepare_model_config(cfg, np.zeros((4, 6)), CLASSES)
    assert again["arch_kwargs"]["groups_co"] == kw["groups_co"]
    with pytest.raises(ConfigError, match="do not match"):
        prepare_model_config(cfg, np.zeros((4, 5)), CLASSES)


def test_config_errors():
    base = {"arch": "mlvpt", "backbone": "vit_tiny_patch16_224", "arch_kwargs": {"img_size": 32}}
    with pytest.raises(ConfigError, match="missing"):
        build_model(base, 3, load_weights=False)
    groups = {"groups_co": [[0, 1, 2]], "groups_dc": [[0], [1, 2]]}
    with pytest.raises(ConfigError, match="Vision Transformer"):
        build_model(dict(base, backbone="tiny-cnn", arch_kwargs=dict(groups)), 3, load_weights=False)
    with pytest.raises(ConfigError, match="exactly"):
        build_model(dict(base, arch_kwargs={"img_size": 32, "groups_co": [[0, 1]], "groups_dc": [[0, 1, 2]]}), 3)
    with pytest.raises(ConfigError, match="unknown arch_kwargs"):
        build_model(dict(base, arch_kwargs=dict(groups, nope=1)), 3)


# --------------------------------------------------------------------------- attention mask


def test_mask_values():
    # prefix 1, groups of 2 / 2 / 1 prompt tokens, 3 patches: L = 9
    m = group_attention_mask(1, [2, 2, 1], 3)
    assert m.dtype == torch.bool and m.shape == (9, 9)
    p = m[1:6, 1:6]
    expect = torch.tensor([[1, 1, 0, 0, 0],
                           [1, 1, 0, 0, 0],
                           [0, 0, 1, 1, 0],
                           [0, 0, 1, 1, 0],
                           [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(p, expect)
    assert m[:, 0].all() and m[:, 6:].all()  # everyone sees cls and patches
    assert m[0].all() and m[6:].all()  # cls and patches see everything


def test_mask_blocks_cross_group_exchange(model: MLVPT):
    model.eval()
    n = model.n_experts
    n_pre, n_p = model.n_prefix, model.n_prompts
    grid = model.backbone.patch_embed.num_patches
    mask = model.attention_mask(grid)
    a, b = slice(n_pre, n_pre + n), slice(n_pre + n, n_pre + 2 * n)  # prompts of groups 0 and 1
    blk = model.backbone.blocks[1]
    torch.manual_seed(0)
    h = torch.randn(2, n_pre + n_p + grid, model.embed_dim)
    h2 = h.clone()
    h2[:, a] += torch.randn_like(h2[:, a])
    with torch.no_grad():
        o1, o2 = blk(h, attn_mask=mask), blk(h2, attn_mask=mask)
        u1, u2 = blk(h), blk(h2)  # no mask: the perturbation leaks
    torch.testing.assert_close(o1[:, b], o2[:, b])
    assert not torch.allclose(o1[:, a], o2[:, a])
    assert not torch.allclose(o1[:, n_pre + n_p:], o2[:, n_pre + n_p:])  # patches see group A
    assert not torch.allclose(u1[:, b], u2[:, b])

    # the same through the model: perturb group 0's prompts of block 0 only
    out = {}
    hook = model.backbone.blocks[0].register_forward_hook(lambda mod, i, o: out.__setitem__("o", o.detach()))
    x = torch.randn(2, 3, 32, 32)
    try:
        with torch.no_grad():
            model(x)
            first = out["o"]
            saved = model.prompts.detach().clone()
            model.prompts[0, :n] += 1.0
            model(x)
            second = out["o"]
            model.prompts.copy_(saved)
    finally:
        hook.remove()
    torch.testing.assert_close(first[:, b], second[:, b])
    torch.testing.assert_close(first[:, n_pre + 2 * n:n_pre + n_p], second[:, n_pre + 2 * n:n_pre + n_p])
    assert not torch.allclose(first[:, a], second[:, a])


# --------------------------------------------------------------------------- model


def test_forward_backward_and_frozen_backbone(model: MLVPT, capsys):
    c, d = len(CLASSES), model.embed_dim
    assert model.per_class_features and model.num_classes == c and model.feature_dim == 2 * d
    assert isinstance(model.head, PerClassLinear) and model.head.weight.shape == (c, 2 * d)
    assert model.n_prompts == (3 + len(model.groups_dc)) * 2
    assert model.prompts.shape == (len(model.backbone.blocks), model.n_prompts, d)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == (3, c)
    f_co, f_dc = model.last_logits
    assert f_co.shape == f_dc.shape == (3, c)
    torch.testing.assert_close((f_co + f_dc) / 2, out)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(f_co, torch.ones_like(f_co)) \
        + torch.nn.functional.binary_cross_entropy_with_logits(f_dc, torch.zeros_like(f_dc))
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        z = model.features(x)
        assert z.shape == (3, c, 2 * d)
        torch.testing.assert_close(model(x), model.head(z))
        torch.testing.assert_close(model.logits_from_features(z), model.head(z))
    assert model.last_logits is None
    learnable, total = learnable_parameters(model)
    assert (learnable, total) == count_parameters(model) and 0 < learnable < total
    n_m, h, n_groups = 2, 5, 3 + len(model.groups_dc)
    experts = n_groups * n_m * (d * h + h + h * d + d)
    gates = 2 * (c * d + c * n_m)
    expect = model.prompts.numel() + experts + gates + (c * 2 * d + c) + c  # + bias_delta
    assert learnable == expect


def test_per_class_gating_uses_own_group(model: MLVPT):
    """Class k's features depend only on its group's prompt outputs."""
    model.eval()
    torch.manual_seed(1)
    g_dc = len(model.groups_dc)
    z_co = torch.randn(2, 3, model.n_experts, model.embed_dim)
    z_dc = torch.randn(2, g_dc, model.n_experts, model.embed_dim)
    with torch.no_grad():
        c1 = model._label_aware(z_co, model.experts_co, model.gates_co, model.class_group_co)
        z2 = z_co.clone()
        z2[:, 0] += 1.0  # group 0 = classes {0, 1}
        c2 = model._label_aware(z2, model.experts_co, model.gates_co, model.class_group_co)
        # reference for one class by hand
        k, t = 3, 1
        e = model.experts_co(z_co)[:, t]
        w = torch.softmax(z_co[:, t] @ model.gates_co.weight[k] + model.gates_co.bias[k], dim=-1)
        ref = (w[..., None] * e).sum(1)
    torch.testing.assert_close(c1[:, k], ref)
    torch.testing.assert_close(c1[:, 2:], c2[:, 2:])
    assert not torch.allclose(c1[:, :2], c2[:, :2])
    assert c1.shape == (2, 6, model.embed_dim) and z_dc.shape[1] == g_dc


def test_save_load_round_trip(cfg: dict, model: MLVPT, tmp_path):
    from cxrkit.artifact import ModelMeta, load_model, save_model
    from cxrkit.data.preprocess import Preprocessing

    model.eval()
    meta = ModelMeta(classes=list(CLASSES), preprocessing=Preprocessing(size=32, channels=3).to_dict(),
                     model=ModelConfig.from_dict(cfg).to_dict(), thresholds=[0.5] * 6, name="mlvpt")
    save_model(tmp_path / "m", model, meta)
    loaded = load_model(tmp_path / "m")
    assert loaded.meta.model["arch_kwargs"]["groups_co"] == cfg["arch_kwargs"]["groups_co"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.predict(x), torch.sigmoid(model(x)).numpy(), atol=1e-6)
