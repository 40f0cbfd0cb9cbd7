"""ML-VPT: multi-label visual prompt tuning with group-aware prompts and experts (seed 001).

A frozen timm Vision Transformer is adapted by learnable prompt tokens only::

    labels -> co-occurrence S -> affinities M+ / M- -> spectral clustering
           -> CO groups {C_t+} and DC groups {C_t-}                        (sec. 3.3)
    image  -> patch embedding -> [cls, P_i (group prompts), patches] in every block,
              prompts of different groups cannot attend to each other     (sec. 4.2, eq. 8)
           -> outputs of the prompt tokens Z+ (G+ x N_m x D), Z- (G- x N_m x D)
           -> per group/token residual experts, per-class softmax gates
           -> label-aware c_k+, c_k-                                       (sec. 4.3, eq. 11-15)
           -> two per-class heads, averaged                                 (sec. 4.4, eq. 16-17)

**Label groups** (:func:`cooccurrence`, :func:`affinities`, :func:`group_labels`) are
derived from the training labels by the ``prepare`` hook
(:func:`prepare_mlvpt_config`) and stored in the model config (``arch_kwargs.groups_co`` /
``groups_dc``), so a saved model rebuilds exactly the same network.

**Attention mask** (:func:`group_attention_mask`): in every block the sequence is
``[prefix (cls, register tokens), prompts, patch tokens]``. A prompt token may attend to the
prefix tokens, the patch tokens and the prompt tokens of its own group (all N_m tokens of
that group); it may not attend to the prompts of any other group (CO group t and DC group t
are different groups). Prefix and patch tokens attend to everything, prompts included, as in
VPT. The mask therefore blocks direct prompt-to-prompt exchange across groups inside a block;
information can still travel prompt -> patch -> prompt across blocks (but prompts are
replaced in every block, VPT-deep, so only the frozen stream carries it).

**Heads and the cxrkit interface**: cxrkit's per-class models end in one
:class:`~cxrkit.models.heads.PerClassLinear` ``head`` (row k = class k's logistic regression,
what Category-wise Fine-Tuning tunes). ML-VPT has two heads (eq. 16),
``f+_k = W+_k . c+_k + b+_k`` and ``f-_k = W-_k . c-_k + b-_k``, and predicts with their
average. Here::

    features(x)_k = z_k = [c+_k ; c-_k] / 2                  (B x C x 2D)
    head.weight[k] = [W+_k ; W-_k],  head.bias[k] = (b+_k + b-_k) / 2
    bias_delta[k]  = (b+_k - b-_k) / 2                        (separate parameter)
    head(z)_k      = (f+_k + f-_k) / 2                        (forward output)
    f+_k = 2 * z_k[:D] . head.weight[k, :D] + head.bias[k] + bias_delta[k]
    f-_k = 2 * z_k[D:] . head.weight[k, D:] + head.bias[k] - bias_delta[k]

In training mode ``forward`` also stores ``last_logits = (f+, f-)`` so the trainer can
minimise ``L(f+) + L(f-)`` (eq. 17); in eval mode ``last_logits`` is ``None``. The paper
averages the two heads' *probabilities* (``0.5 (y+ + y-)``); cxrkit needs one logit per
class, so the average is taken on the logits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .classifier import ModelConfig, register_arch
from .heads import PerClassLinear
from .registry import BackboneSpec, build_backbone

__all__ = [
    "MLVPT",
    "ClassGates",
    "GroupExperts",
    "affinities",
    "cooccurrence",
    "group_attention_mask",
    "group_labels",
    "learnable_parameters",
    "prepare_mlvpt_config",
]

#: keys ``arch_kwargs`` may hold for ``arch: mlvpt``
ARCH_KWARGS = {"groups_co", "groups_dc", "n_experts", "expert_hidden", "img_size", "n_groups", "tau", "group_seed"}
DEFAULT_N_GROUPS = 5
DEFAULT_N_EXPERTS = 3
DEFAULT_EXPERT_HIDDEN = 5
DEFAULT_TAU = 2.0


# --------------------------------------------------------------------------- label groups


def cooccurrence(labels: Any) -> np.ndarray:
    """Conditional co-occurrence ``S[i, j] = P(j present | i present)`` (C x C).

    ``labels`` is N x C in cxrkit's encoding (1 positive, 0 negative, -1 uncertain, NaN
    unknown); -1 and NaN count as unknown. ``S[i, j] = #(i = 1, j = 1) / #(i = 1, j known)``,
    counted over the rows where label i is positive and label j is known. Pairs without
    such rows get 0 off the diagonal; the diagonal is 1.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2:
        raise ConfigError(f"labels must be an N x C matrix, got shape {y.shape}")
    pos = (y == 1).astype(np.float64)
    known = ((y == 0) | (y == 1)).astype(np.float64)
    both = pos.T @ pos  # [i, j]: rows with i = 1 and j = 1
    denom = pos.T @ known  # [i, j]: rows with i = 1 and j known
    s = np.divide(both, denom, out=np.zeros_like(both), where=denom > 0)
    np.fill_diagonal(s, 1.0)
    return s


def affinities(s: np.ndarray, tau: float = DEFAULT_TAU) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence and discriminative affinities ``(M+, M-)`` from ``S`` (seed 001, eq. 5).

    ``M+ = (S^(1/tau) + (S^(1/tau))^T) / 2`` with the element-wise tau-th root; it is symmetric
    and in [0, 1]. The paper writes the discriminative graph as ``M- = I - M+``, which is
    negative off the diagonal and so not a valid affinity for spectral clustering (it needs
    non-negative weights). We use the complement ``M- = 1 - M+`` with the diagonal set to 1:
    classes that rarely co-occur get a high DC affinity, as the paper intends (DC groups
    gather labels that do not co-occur). The paper does not give tau; the default 2.0 (square
    root, which lifts small co-occurrence probabilities) is our choice.
    """
    if tau <= 0:
        raise ConfigError(f"tau must be positive, got {tau}")
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    r = s ** (1.0 / tau)
    m_plus = (r + r.T) / 2.0
    m_minus = 1.0 - m_plus
    np.fill_diagonal(m_minus, 1.0)
    return m_plus, m_minus


def _spectral_groups(affinity: np.ndarray, n_groups: int, seed: int) -> list[list[int]]:
    from sklearn.cluster import SpectralClustering

    c = affinity.shape[0]
    if n_groups >= c:
        return [[i] for i in range(c)]
    if n_groups <= 1:
        return [list(range(c))]
    # a tiny floor keeps the graph connected (no "not fully connected" warning) without
    # changing which classes belong together
    a = np.maximum(affinity, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assign = SpectralClustering(n_clusters=n_groups, affinity="precomputed", random_state=seed,
                                    assign_labels="kmeans", n_init=10).fit_predict(a)
    groups = [sorted(int(i) for i in np.flatnonzero(assign == g)) for g in np.unique(assign)]
    groups = [g for g in groups if g]
    return sorted(groups, key=lambda g: g[0])  # canonical order: by smallest class index


def group_labels(labels: Any, n_groups: int = DEFAULT_N_GROUPS, tau: float = DEFAULT_TAU,
                 seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Group the classes by spectral clustering of ``M+`` (CO groups) and ``M-`` (DC groups).

    Returns ``(groups_co, groups_dc)``, each a list of sorted class-index lists that covers
    every class exactly once (empty clusters dropped; groups ordered by their smallest class).
    With fewer classes than ``n_groups`` every class is its own group. Deterministic for a
    ``seed``.
    """
    s = cooccurrence(labels)
    if n_groups < 1:
        raise ConfigError(f"n_groups must be at least 1, got {n_groups}")
    m_plus, m_minus = affinities(s, tau)
    n = min(int(n_groups), s.shape[0])
    return _spectral_groups(m_plus, n, seed), _spectral_groups(m_minus, n, seed)


def _check_groups(groups: Any, num_classes: int, name: str) -> list[list[int]]:
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ConfigError(f"mlvpt: arch_kwargs.{name} must be a non-empty list of class-index lists")
    out = []
    for g in groups:
        if not isinstance(g, (list, tuple)) or not g:
            raise ConfigError(f"mlvpt: arch_kwargs.{name} has an empty or malformed group: {g!r}")
        out.append([int(i) for i in g])
    flat = sorted(i for g in out for i in g)
    if flat != list(range(num_classes)):
        raise ConfigError(f"mlvpt: arch_kwargs.{name} must contain every class index 0..{num_classes - 1} exactly "
                          f"once (the groups were made for a different class list?)")
    return out


def prepare_mlvpt_config(model_cfg: dict[str, Any], train_labels: Any, classes: list[str]) -> dict[str, Any]:
    """Fill ``arch_kwargs.groups_co`` / ``groups_dc`` from the training labels (N x C).

    Groups already present are kept (a fine-tuned or reloaded config). ``arch_kwargs``
    ``n_groups`` (default 5), ``tau`` (2.0) and ``group_seed`` (0) control the clustering.
    """
    cfg = dict(model_cfg)
    kw = dict(cfg.get("arch_kwargs") or {})
    y = np.asarray(train_labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(classes):
        raise ConfigError(f"mlvpt: training labels of shape {y.shape} do not match {len(classes)} classes")
    if "groups_co" in kw and "groups_dc" in kw:
        _check_groups(kw["groups_co"], len(classes), "groups_co")
        _check_groups(kw["groups_dc"], len(classes), "groups_dc")
    else:
        co, dc = group_labels(y, n_groups=int(kw.get("n_groups", DEFAULT_N_GROUPS)),
                              tau=float(kw.get("tau", DEFAULT_TAU)), seed=int(kw.get("group_seed", 0)))
        kw["groups_co"], kw["groups_dc"] = co, dc
    cfg["arch_kwargs"] = kw
    return cfg


# --------------------------------------------------------------------------- attention mask


def group_attention_mask(n_prefix: int, group_sizes: Sequence[int], n_patches: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean attention mask (L x L, ``True`` = may attend) for ``[prefix, prompts, patches]``.

    ``group_sizes`` are the numbers of prompt tokens of each group, in sequence order. Query
    rows of prompt tokens cannot see the key columns of prompts of other groups; everything
    else is allowed. A boolean mask (rather than an additive 0 / -inf float mask, which
    timm's non-fused path builds from it) works with fused attention under any autocast dtype.
    """
    n_prompts = int(sum(group_sizes))
    length = n_prefix + n_prompts + n_patches
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    gid = torch.repeat_interleave(torch.arange(len(group_sizes), device=device),
                                  torch.as_tensor(list(group_sizes), device=device))
    sl = slice(n_prefix, n_prefix + n_prompts)
    mask[sl, sl] = gid[:, None] == gid[None, :]
    return mask


# --------------------------------------------------------------------------- experts and gates


class GroupExperts(nn.Module):
    """One residual adapter per (group t, token e) (eq. 11), applied in one batched einsum:
    ``E(z) = z + relu(z W_dn + b_dn) W_up + b_up``; ``forward(z: B x G x N_m x D)``."""

    def __init__(self, n_groups: int, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_dn = nn.Parameter(torch.empty(n_groups, n_experts, dim, hidden))
        self.b_dn = nn.Parameter(torch.empty(n_groups, n_experts, hidden))
        self.w_up = nn.Parameter(torch.empty(n_groups, n_experts, hidden, dim))
        self.b_up = nn.Parameter(torch.empty(n_groups, n_experts, dim))
        # nn.Linear's default initialisation, per expert
        for w, b, fan_in in ((self.w_dn, self.b_dn, dim), (self.w_up, self.b_up, hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("bgnd,gndh->bgnh", z, self.w_dn) + self.b_dn)
        return z + torch.einsum("bgnh,gnhd->bgnd", h, self.w_up) + self.b_up


class ClassGates(nn.Module):
    """Per-class gating (strategy 2, eq. 12-13): for class k of group t,
    ``w_k = softmax_e(z_t^e . g_k + b_k^e)``. ``b_k`` has one entry per token e: a single
    scalar bias would cancel in the softmax."""

    def __init__(self, num_classes: int, n_experts: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes, n_experts))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: B x C x N_m x D (each class's group tokens) -> weights B x C x N_m."""
        return torch.softmax(torch.einsum("bcnd,cd->bcn", z, self.weight) + self.bias, dim=-1)


def _class_group_index(groups: list[list[int]], num_classes: int) -> torch.Tensor:
    idx = torch.empty(num_classes, dtype=torch.long)
    for t, g in enumerate(groups):
        idx[g] = t
    return idx


# --------------------------------------------------------------------------- model


class MLVPT(nn.Module):
    """Frozen timm ViT + group prompts in every block + group-aware MoE + two averaged heads.

    ``features(x)`` is B x C x 2D (``[c+_k ; c-_k] / 2``), ``head`` a
    :class:`PerClassLinear` (C x 2D), ``forward(x) = head(features(x))`` is the average of
    the CO and DC heads' logits; in training mode ``last_logits = (f+, f-)``. See the module
    docstring for the exact mapping.
    """

    per_class_features = True

    def __init__(self, vit: nn.Module, num_classes: int, groups_co: list[list[int]], groups_dc: list[list[int]],
                 n_experts: int = DEFAULT_N_EXPERTS, expert_hidden: int = DEFAULT_EXPERT_HIDDEN) -> None:
        super().__init__()
        if n_experts < 1 or expert_hidden < 1:
            raise ConfigError(f"mlvpt: n_experts and expert_hidden must be >= 1, got {n_experts}, {expert_hidden}")
        self.backbone = vit
        for p in vit.parameters():
            p.requires_grad_(False)
        self.num_classes = int(num_classes)
        self.groups_co = _check_groups(groups_co, num_classes, "groups_co")
        self.groups_dc = _check_groups(groups_dc, num_classes, "groups_dc")
        self.n_experts = int(n_experts)
        dim = int(vit.embed_dim)
        self.embed_dim = dim
        self.feature_dim = 2 * dim
        self.n_prefix = int(vit.num_prefix_tokens)
        g_co, g_dc = len(self.groups_co), len(self.groups_dc)
        self.n_prompts = (g_co + g_dc) * self.n_experts
        depth = len(vit.blocks)

        # VPT initialisation: uniform(-v, v), v = sqrt(6 / (3 * patch area + D))
        patch = vit.patch_embed.patch_size
        area = int(np.prod(patch)) if isinstance(patch, (tuple, list)) else int(patch) ** 2
        val = math.sqrt(6.0 / float(3 * area + dim))
        self.prompts = nn.Parameter(torch.empty(depth, self.n_prompts, dim).uniform_(-val, val))

        self.experts_co = GroupExperts(g_co, self.n_experts, dim, expert_hidden)
        self.experts_dc = GroupExperts(g_dc, self.n_experts, dim, expert_hidden)
        self.gates_co = ClassGates(num_classes, self.n_experts, dim)
        self.gates_dc = ClassGates(num_classes, self.n_experts, dim)
        self.head = PerClassLinear(num_classes, self.feature_dim)
        self.bias_delta = nn.Parameter(torch.zeros(num_classes))  # (b+ - b-) / 2
        self.register_buffer("class_group_co", _class_group_index(self.groups_co, num_classes), persistent=False)
        self.register_buffer("class_group_dc", _class_group_index(self.groups_dc, num_classes), persistent=False)
        self.group_sizes = [self.n_experts] * (g_co + g_dc)
        self.last_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def attention_mask(self, n_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The mask every block uses for a sequence with ``n_patches`` patch tokens."""
        return group_attention_mask(self.n_prefix, self.group_sizes, n_patches, device)

    def prompt_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z+, Z-)``: the last block's (normed) prompt outputs, B x G x N_m x D each."""
        vit = self.backbone
        # timm VisionTransformer.forward_features, with the prompts inserted in every block
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        b, n_pre, n_p = x.shape[0], self.n_prefix, self.n_prompts
        mask = self.attention_mask(x.shape[1] - n_pre, x.device)
        prefix, patches = x[:, :n_pre], x[:, n_pre:]
        for i, blk in enumerate(vit.blocks):
            prompts = self.prompts[i].to(x.dtype).unsqueeze(0).expand(b, -1, -1)
            x = blk(torch.cat([prefix, prompts, patches], dim=1), attn_mask=mask)
            prefix, patches = x[:, :n_pre], x[:, n_pre + n_p:]
        z = vit.norm(x)[:, n_pre:n_pre + n_p]
        g_co = len(self.groups_co)
        z = z.reshape(b, -1, self.n_experts, self.embed_dim)
        return z[:, :g_co], z[:, g_co:]

    @staticmethod
    def _label_aware(z: torch.Tensor, experts: GroupExperts, gates: ClassGates, index: torch.Tensor) -> torch.Tensor:
        """c_k = sum_e w_k^e E_t^e(z_t^e) for every class k (eq. 14-15): B x C x D."""
        e = experts(z)  # B x G x N_m x D
        w = gates(z[:, index])  # B x C x N_m
        return torch.einsum("bcn,bcnd->bcd", w, e[:, index])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class features ``z_k = [c+_k ; c-_k] / 2``: B x C x 2D."""
        z_co, z_dc = self.prompt_outputs(x)
        c_co = self._label_aware(z_co, self.experts_co, self.gates_co, self.class_group_co)
        c_dc = self._label_aware(z_dc, self.experts_dc, self.gates_dc, self.class_group_dc)
        return torch.cat([c_co, c_dc], dim=-1) * 0.5

    def logits_from_features(self, z: torch.Tensor) -> torch.Tensor:
        """Averaged logits ``(f+ + f-) / 2 = head(z)``."""
        return self.head(z)

    def head_logits(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two heads' logits ``(f+, f-)`` from per-class features (their mean is ``head(z)``)."""
        d = self.embed_dim
        w = self.head.weight
        bias = self.head.bias if self.head.bias is not None else torch.zeros_like(self.bias_delta)
        f_co = 2.0 * (z[..., :d] * w[:, :d]).sum(-1) + bias + self.bias_delta
        f_dc = 2.0 * (z[..., d:] * w[:, d:]).sum(-1) + bias - self.bias_delta
        return f_co, f_dc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        self.last_logits = self.head_logits(z) if self.training else None
        return self.logits_from_features(z)


def learnable_parameters(model: nn.Module) -> tuple[int, int]:
    """(learnable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


@register_arch("mlvpt", prepare=prepare_mlvpt_config)
def build_mlvpt(cfg: ModelConfig, num_classes: int, load_weights: bool) -> nn.Module:
    """Build ML-VPT from ``cfg``: ``backbone`` a timm ViT (``timm:`` prefix allowed);
    ``arch_kwargs``: ``groups_co`` / ``groups_dc`` (from :func:`prepare_mlvpt_config`),
    ``n_experts`` (N_m, 3), ``expert_hidden`` (5), ``img_size`` (224)."""
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(cfg.arch_kwargs)
    unknown = set(kw) - ARCH_KWARGS
    if unknown:
        raise ConfigError(f"mlvpt: unknown arch_kwargs {sorted(unknown)}; use {sorted(ARCH_KWARGS)}")
    if "groups_co" not in kw or "groups_dc" not in kw:
        raise ConfigError("mlvpt: arch_kwargs.groups_co / groups_dc are missing; they are derived from the training "
                          "labels by prepare_model_config (cxrkit train does this), or give them in the config")
    img_size = kw.get("img_size", 224)
    bkw = dict(cfg.backbone_kwargs)
    bkw["img_size"] = tuple(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
    spec = BackboneSpec(cfg.backbone, pretrained=cfg.pretrained and load_weights,
                        weights=cfg.weights if load_weights else None, in_chans=cfg.in_chans, kwargs=bkw,
                        weights_map=cfg.weights_map)
    try:
        vit, _ = build_backbone(spec)
    except (TypeError, ConfigError) as e:  # a non-ViT timm model refusing img_size, or a cxrkit backbone
        raise ConfigError(f"mlvpt needs a timm Vision Transformer backbone (e.g. vit_base_patch16_224), "
                          f"got {cfg.backbone!r} ({e})") from None
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"mlvpt needs a timm Vision Transformer backbone (e.g. vit_base_patch16_224), "
                          f"got {cfg.backbone!r} ({type(vit).__name__})")
    return MLVPT(vit, num_classes, kw["groups_co"], kw["groups_dc"],
                 n_experts=int(kw.get("n_experts", DEFAULT_N_EXPERTS)),
                 expert_hidden=int(kw.get("expert_hidden", DEFAULT_EXPERT_HIDDEN)))
