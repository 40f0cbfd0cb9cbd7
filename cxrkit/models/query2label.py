"""Two-stage Transformer with label queries (seed 002, sec. III-B to III-D), ``q2l-irpe``::

    image -> CNN backbone (B x d0 x H' x W') -> 1x1 conv to d_model -> + learned position
    embedding -> flatten to L = H'W' tokens -> encoder (self-attention with image relative
    position encoding, iRPE) -> decoder: C learnable label embeddings as queries,
    cross-attention to the encoder output (no self-attention by default) -> z: B x C x d_model
    -> per-class linear projection (:class:`~cxrkit.models.heads.PerClassLinear`) -> logits

iRPE is the contextual mode on keys of Wu et al. (ICCV 2021, "Rethinking and Improving
Relative Position Encoding for Vision Transformer"; seed 002 eq. 3-4 with the key term only)::

    e_ij = (q_i . k_j + q_i . r_b(i,j)) / sqrt(d_head)

where ``b(i, j)`` buckets the 2-D offset ``(dy, dx) = pos_i - pos_j`` on the H' x W' grid,
each clipped to ``[-k, k]`` (product method: ``(dy + k) * (2k + 1) + (dx + k)``, so
``(2k + 1)^2`` buckets) and ``r`` is a learnable table (heads x buckets x d_head), zero at
initialisation (the layer starts as plain attention). ``q @ table^T`` (B x h x L x buckets)
is computed once and gathered with the cached L x L bucket index, so the cost is
O(L * buckets) instead of O(L^2 * d_head).

Both the encoder and the decoder layers are **post-norm** (``x = norm(x + sublayer(x))``),
as in DETR / Query2Label, which seed 002 builds on.

``arch_kwargs`` (defaults): ``d_model=256``, ``heads=4``, ``enc_layers=1``, ``dec_layers=2``
(the paper's setting), ``ffn_dim=4*d_model`` (1024), ``dropout=0.1``,
``decoder_self_attn=False`` (``True``: self-attention among the label queries in every
decoder layer, ``"last"``: only in the last one, the ablation of seed 002 Table V),
``irpe_k=7``, ``pos_size=14`` (grid of the learned position embedding, an int or
``[h, w]``; 14 = 448 px / stride 32; resized bilinearly to other feature grids).

Parameter count with the defaults and a ResNet-101 backbone (42.50 M): 45,542,800 for 80
classes (MS-COCO), 45,508,942 for 14; the transformer part is 1x1 conv 524,544, position
embedding 50,176, encoder 847,360 (57,600 of it the iRPE table), decoder 2 x 789,760, label
embeddings C x 256, head C x 257. ``decoder_self_attn=True`` adds 263,680 per decoder layer.
The count does not depend on the input size (the position embedding is interpolated);
``count_parameters(model)`` gives (trainable, total).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .classifier import ModelConfig, count_parameters, register_arch
from .heads import PerClassLinear

__all__ = ["DEFAULTS", "DecoderLayer", "EncoderLayer", "IRPEAttention", "Query2Label", "count_parameters",
           "irpe_bucket_index"]

#: default ``arch_kwargs`` of ``q2l-irpe`` (``ffn_dim=None`` means 4 * d_model)
DEFAULTS: dict[str, Any] = {"d_model": 256, "heads": 4, "enc_layers": 1, "dec_layers": 2, "ffn_dim": None,
                            "dropout": 0.1, "decoder_self_attn": False, "irpe_k": 7, "pos_size": 14}


def irpe_bucket_index(height: int, width: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """L x L (L = height * width, row-major tokens) bucket of every token pair: the offset
    ``(dy, dx) = pos_i - pos_j`` clipped to ``[-k, k]`` per axis, ``(dy + k) * (2k + 1) + (dx + k)``."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys[:, None] - ys[None, :]).clamp(-k, k) + k
    dx = (xs[:, None] - xs[None, :]).clamp(-k, k) + k
    return dy * (2 * k + 1) + dx


class IRPEAttention(nn.Module):
    """Multi-head self-attention with contextual iRPE on keys (see the module docstring).

    ``forward(x: B x L x d, grid=(H', W')) -> B x L x d``; ``table``: heads x (2k+1)^2 x d_head."""

    def __init__(self, dim: int, heads: int, k: int = 7, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"d_model ({dim}) must be divisible by heads ({heads})")
        if k < 0:
            raise ConfigError(f"irpe_k must be >= 0, got {k}")
        self.heads = heads
        self.head_dim = dim // heads
        self.k = int(k)
        self.num_buckets = (2 * self.k + 1) ** 2
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(attn_drop)
        self.table = nn.Parameter(torch.zeros(heads, self.num_buckets, self.head_dim))
        self._index: dict[tuple[int, int, str], torch.Tensor] = {}  # cache, not in the state dict

    def bucket_index(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device))
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = irpe_bucket_index(height, width, self.k, device)
        return idx

    def rpe_bias(self, q: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``q_i . r_b(i,j)`` for q: B x h x L x d_head -> B x h x L x L (not yet scaled)."""
        b, h, n, _ = q.shape
        idx = self.bucket_index(grid[0], grid[1], q.device)
        if idx.shape[0] != n:
            raise ValueError(f"{n} tokens do not fit a {grid[0]} x {grid[1]} grid")
        per_bucket = q @ self.table.transpose(-1, -2).unsqueeze(0)  # B x h x L x buckets
        return per_bucket.gather(-1, idx.expand(b, h, n, n))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rpe_bias(q, grid) / math.sqrt(self.head_dim)  # SDPA adds the mask after scaling q.k
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _ffn(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: ``x = norm1(x + iRPE-attn(x)); x = norm2(x + FFN(x))``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, k: int) -> None:
        super().__init__()
        self.attn = IRPEAttention(dim, heads, k, attn_drop=dropout)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attn(x, grid)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer on the label queries: [self-attention], cross-attention to the
    encoder output (keys = values = image tokens), FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, self_attn: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attn else None
        self.norm_sa = nn.LayerNorm(dim) if self_attn else None
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop0, self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if self.self_attn is not None and self.norm_sa is not None:
            tgt = self.norm_sa(tgt + self.drop0(self.self_attn(tgt, tgt, tgt, need_weights=False)[0]))
        tgt = self.norm1(tgt + self.drop1(self.cross_attn(tgt, memory, memory, need_weights=False)[0]))
        return self.norm2(tgt + self.drop2(self.ffn(tgt)))


class Query2Label(nn.Module):
    """CNN feature map -> iRPE encoder -> label-query decoder -> per-class head.

    ``features(x)``: B x C x d_model (one decoder output per class); ``head``:
    :class:`PerClassLinear` (C x d_model), so Category-wise Fine-Tuning works on its rows."""

    per_class_features = True

    def __init__(self, backbone: nn.Module, backbone_dim: int, num_classes: int, d_model: int = 256, heads: int = 4,
                 enc_layers: int = 1, dec_layers: int = 2, ffn_dim: int | None = None, dropout: float = 0.1,
                 decoder_self_attn: bool | str = False, irpe_k: int = 7, pos_size: int | Sequence[int] = 14,
                 drop_rate: float = 0.0, nhwc: bool = False) -> None:
        super().__init__()
        if d_model < 1 or heads < 1 or enc_layers < 0 or dec_layers < 1:
            raise ConfigError(f"q2l-irpe needs d_model, heads, dec_layers >= 1 and enc_layers >= 0 (got d_model="
                              f"{d_model}, heads={heads}, enc_layers={enc_layers}, dec_layers={dec_layers})")
        if d_model % heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        if decoder_self_attn not in (True, False, "last"):
            raise ConfigError(f"decoder_self_attn must be true, false or 'last', got {decoder_self_attn!r}")
        sa_last = decoder_self_attn == "last"
        sa_all = not sa_last and bool(decoder_self_attn)
        ph, pw = (int(pos_size), int(pos_size)) if isinstance(pos_size, int) else (int(pos_size[0]), int(pos_size[1]))
        if ph < 1 or pw < 1:
            raise ConfigError(f"pos_size must be positive, got {pos_size!r}")
        ffn_dim = int(ffn_dim or 4 * d_model)
        self.backbone = backbone
        self.nhwc = nhwc
        self.num_classes = num_classes
        self.feature_dim = d_model
        self.input_proj = nn.Conv2d(backbone_dim, d_model, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, d_model, ph, pw))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, heads, ffn_dim, dropout, irpe_k) for _ in range(enc_layers))
        self.label_embed = nn.Parameter(torch.randn(num_classes, d_model))  # N(0, 1) like nn.Embedding
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, heads, ffn_dim, dropout,
                         self_attn=sa_all or (sa_last and i == dec_layers - 1))
            for i in range(dec_layers))
        self.dropout = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.head = PerClassLinear(num_classes, d_model)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output as B x d0 x H' x W'."""
        f = self.backbone(x)
        if f.ndim != 4:
            raise ConfigError(f"q2l-irpe needs a backbone that returns a feature map (B x C x H x W); this one "
                              f"returns shape {tuple(f.shape)}: use a CNN such as resnet101 or convnextv2_base")
        return f.permute(0, 3, 1, 2) if self.nhwc else f

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """1 x d_model x height x width (bilinear resize of the learned grid when it differs)."""
        if self.pos_embed.shape[-2:] == (height, width):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=(height, width), mode="bilinear", align_corners=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> encoder output tokens B x L x d_model (L = H'W', row-major)."""
        y = self.input_proj(self.feature_map(x))
        h, w = y.shape[-2:]
        y = y + self.position_embedding(h, w).to(y.dtype)
        tokens = y.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            tokens = layer(tokens, (h, w))
        return tokens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        memory = self.encode(x)
        tgt = self.label_embed.unsqueeze(0).expand(memory.shape[0], -1, -1).to(memory.dtype)
        for layer in self.decoder:
            tgt = layer(tgt, memory)
        return tgt

    def logits_from_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


def _timm_feature_backbone(cfg: ModelConfig, load_weights: bool) -> tuple[nn.Module, int, bool]:
    """(timm model returning its unpooled feature map, d0, whether the map is NHWC)."""
    import timm

    from .registry import _remapped_weights, list_backbones, resolve_weights_path

    name = cfg.backbone.removeprefix("timm:")
    if not timm.is_model(name):
        hint = f"; cxrkit's own backbones ({', '.join(list_backbones())}) pool their features and do not fit" \
            if name in list_backbones() else ""
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown backbone {cfg.backbone!r} for q2l-irpe: not a timm model{hint}"
                          f"{'; similar timm models: ' + ', '.join(close) if close else ''}")
    kwargs = dict(cfg.backbone_kwargs)
    pretrained = bool(cfg.pretrained and load_weights)
    weights = None
    if load_weights and cfg.weights is not None:
        path = resolve_weights_path(cfg.weights)
        if cfg.weights_map == "order":
            path = _remapped_weights(path, name)
        elif cfg.weights_map is not None:
            raise ConfigError(f"weights_map must be 'order' or empty, got {cfg.weights_map!r}")
        weights = str(path)
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": weights}
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=cfg.in_chans,
                                  **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if pretrained and weights is None:
            raise ConfigError(f"could not load pretrained weights for {name!r} from the hub ({msg}); offline, "
                              "give a local file with `weights:`") from None
        raise ConfigError(f"could not build backbone {name!r} for q2l-irpe ({msg})") from None
    nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
    return model, int(model.num_features), nhwc


@register_arch("q2l-irpe")
def _q2l_irpe(cfg: ModelConfig, num_classes: int, load_weights: bool) -> nn.Module:
    """Build seed 002's model from ``cfg`` (options in ``cfg.arch_kwargs``, see :data:`DEFAULTS`)."""
    unknown = set(cfg.arch_kwargs) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown q2l-irpe arch_kwargs {sorted(unknown)}; use {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **cfg.arch_kwargs}
    if cfg.feature_dim is not None and int(cfg.feature_dim) != int(opts["d_model"]):
        raise ConfigError(f"q2l-irpe: feature_dim ({cfg.feature_dim}) must be empty or equal to arch_kwargs.d_model "
                          f"({opts['d_model']}); set the feature size with d_model")
    pos = opts["pos_size"]
    if not isinstance(pos, int):
        if not isinstance(pos, Sequence) or len(pos) != 2:
            raise ConfigError(f"pos_size must be an int or [h, w], got {pos!r}")
        pos = (int(pos[0]), int(pos[1]))
    backbone, dim, nhwc = _timm_feature_backbone(cfg, load_weights)
    return Query2Label(backbone, dim, num_classes, d_model=int(opts["d_model"]), heads=int(opts["heads"]),
                       enc_layers=int(opts["enc_layers"]), dec_layers=int(opts["dec_layers"]),
                       ffn_dim=None if opts["ffn_dim"] is None else int(opts["ffn_dim"]),
                       dropout=float(opts["dropout"]), decoder_self_attn=opts["decoder_self_attn"],
                       irpe_k=int(opts["irpe_k"]), pos_size=pos, drop_rate=cfg.drop_rate, nhwc=nhwc)
