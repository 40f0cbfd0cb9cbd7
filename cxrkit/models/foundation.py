"""Chest X-ray foundation backbones from local weight folders.

``rad-dino``: Microsoft's RAD-DINO (a DINOv2 ViT-B/14 trained on chest radiographs, MIT
licence), published on Hugging Face as a ``transformers`` Dinov2 checkpoint: a folder with
``config.json`` (``model_type: dinov2``), ``model.safetensors`` and
``preprocessor_config.json``. cxrkit builds the same network as timm's
``VisionTransformer`` (no ``transformers`` needed at run time) and maps the published key
names onto it (:func:`hf_dinov2_to_timm`); its features equal ``transformers``'
``Dinov2Model`` on the same weights (tests/test_foundation.py). The architecture is named by
the backbone kwargs (RAD-DINO's: 518 px, patch 14, width 768, 12 layers, 12 heads), so a
saved model rebuilds without the folder; the folder's ``config.json`` must agree.

Features (``pool``): ``cls`` (the class token after the final layer norm: ``transformers``'
``pooler_output``, what RAD-DINO's authors use), ``mean`` (the mean of the patch tokens) or
``cls+mean`` (both, concatenated: DINOv2's linear-probe features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

#: RAD-DINO's published architecture (microsoft/rad-dino config.json)
RAD_DINO_ARCH = {"img_size": 518, "patch_size": 14, "embed_dim": 768, "depth": 12, "num_heads": 12,
                 "mlp_ratio": 4.0, "layer_norm_eps": 1e-6, "layerscale_value": 1.0}
#: and its preprocessing (preprocessor_config.json: resize the shorter side to 518, centre
#: crop 518, mean / std of its training films); the folder's own file wins when present
RAD_DINO_PREPROCESSING = {"size": 518, "channels": 3, "mean": [0.5307, 0.5307, 0.5307],
                          "std": [0.2583, 0.2583, 0.2583], "resize": "center-crop"}
POOLS = ("cls", "mean", "cls+mean")
_CONFIG_KEYS = {"image_size": "img_size", "patch_size": "patch_size", "hidden_size": "embed_dim",
                "num_hidden_layers": "depth", "num_attention_heads": "num_heads", "mlp_ratio": "mlp_ratio",
                "layer_norm_eps": "layer_norm_eps", "layerscale_value": "layerscale_value"}


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``config.json`` as cxrkit's architecture keys; a clear error for anything
    but a plain Dinov2 checkpoint."""
    f = Path(folder)
    cfg_file = f / "config.json"
    if not f.is_dir() or not cfg_file.is_file() or not (f / "model.safetensors").is_file():
        raise ConfigError(f"{folder}: expected a Hugging Face Dinov2 folder (config.json and model.safetensors, "
                          "as published for microsoft/rad-dino)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg_file}: not readable JSON ({e})") from None
    if cfg.get("model_type") != "dinov2":
        raise ConfigError(f"{cfg_file}: model_type {cfg.get('model_type')!r}; expected 'dinov2' (RAD-DINO)")
    if cfg.get("use_swiglu_ffn") or cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("qkv_bias", True):
        raise ConfigError(f"{cfg_file}: a Dinov2 variant cxrkit does not build (SwiGLU, {cfg.get('hidden_act')} or "
                          "no qkv bias); expected a ViT-S/B/L with GELU, as RAD-DINO")
    return {ours: cfg[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in cfg}


def read_hf_preprocessing(folder: str | Path) -> dict[str, Any]:
    """cxrkit preprocessing from the folder's ``preprocessor_config.json`` (size, mean, std),
    else RAD-DINO's published one."""
    pre = dict(RAD_DINO_PREPROCESSING)
    f = Path(folder) / "preprocessor_config.json"
    if f.is_file():
        try:
            p = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{f}: not readable JSON ({e})") from None
        crop = p.get("crop_size") or {}
        size = crop.get("height") if isinstance(crop, dict) else crop
        if size:
            pre["size"] = int(size)
        if p.get("image_mean"):
            pre["mean"] = [float(v) for v in p["image_mean"]]
        if p.get("image_std"):
            pre["std"] = [float(v) for v in p["image_std"]]
    return pre


def hf_dinov2_to_timm(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """``transformers`` Dinov2 key names -> timm ``VisionTransformer`` (q / k / v fused into
    qkv; layer scale ``lambda1`` -> ``gamma``); the mask token and any pooler are dropped."""
    sd = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in sd.items()}
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(depth):
        h, t = f"encoder.layer.{i}.", f"blocks.{i}."
        att = h + "attention.attention."
        out[t + "attn.qkv.weight"] = torch.cat([sd[att + n + ".weight"] for n in ("query", "key", "value")])
        out[t + "attn.qkv.bias"] = torch.cat([sd[att + n + ".bias"] for n in ("query", "key", "value")])
        pairs = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1",
                 "mlp.fc2": "mlp.fc2"}
        for theirs, ours in pairs.items():
            for p in ("weight", "bias"):
                out[f"{t}{ours}.{p}"] = sd[f"{h}{theirs}.{p}"]
        out[t + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[t + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    return out


class DinoV2Features(nn.Module):
    """A DINOv2 ViT (timm) whose forward gives pooled features (``pool``)."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, layer_norm_eps: float = 1e-6, layerscale_value: float = 1.0,
                 pool: str = "cls", in_chans: int = 3) -> None:
        super().__init__()
        from functools import partial

        from timm.models.vision_transformer import VisionTransformer

        if pool not in POOLS:
            raise ConfigError(f"rad-dino pool must be one of {', '.join(POOLS)} (got {pool!r})")
        self.pool = pool
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                     embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                     qkv_bias=True, init_values=layerscale_value, global_pool="token",
                                     norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps))
        self.num_features = embed_dim * (2 if pool == "cls+mean" else 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final layer norm (``transformers``' last_hidden_state)."""
        return self.vit.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        cls, patches = t[:, 0], t[:, 1:]
        if self.pool == "cls":
            return cls
        if self.pool == "mean":
            return patches.mean(1)
        return torch.cat([cls, patches.mean(1)], dim=1)


def build_rad_dino(spec: Any) -> tuple[nn.Module, int]:
    """The ``rad-dino`` backbone: architecture from the kwargs (default RAD-DINO's), weights
    from a local Hugging Face folder (``model.weights``)."""
    kw = dict(spec.kwargs)
    pool = kw.pop("pool", "cls")
    unknown = set(kw) - set(RAD_DINO_ARCH)
    if unknown:
        raise ConfigError(f"rad-dino backbone_kwargs: unknown {sorted(unknown)}; allowed: pool, "
                          f"{', '.join(RAD_DINO_ARCH)}")
    arch = {**RAD_DINO_ARCH, **kw}
    if spec.pretrained and spec.weights is None:
        raise ConfigError("rad-dino: pretrained weights come from a local folder (model.weights: the folder "
                          "holding config.json and model.safetensors, downloaded from microsoft/rad-dino)")
    if spec.weights is not None:
        theirs = read_hf_config(spec.weights)
        diff = {k: (arch[k], v) for k, v in theirs.items() if k in arch and float(arch[k]) != float(v)}
        if diff:
            want = ", ".join(f"{k}: {v[1]}" for k, v in diff.items())
            raise ConfigError(f"{spec.weights}: its config.json differs from the backbone's architecture "
                              f"({', '.join(f'{k} {a} vs {b}' for k, (a, b) in diff.items())}); set "
                              f"model.backbone_kwargs: {{{want}}}")
    net = DinoV2Features(pool=pool, in_chans=spec.in_chans, **arch)
    if spec.weights is not None:
        from safetensors.torch import load_file

        try:
            sd = load_file(str(Path(spec.weights) / "model.safetensors"))
            mapped = hf_dinov2_to_timm(sd, int(arch["depth"]))
        except KeyError as e:
            raise ConfigError(f"{spec.weights}/model.safetensors: not Dinov2 weights (no {e.args[0]!r})") from None
        except Exception as e:  # noqa: BLE001 - a broken safetensors file
            raise ConfigError(f"{spec.weights}/model.safetensors: not readable ({str(e).splitlines()[0][:120]})") \
                from None
        if spec.in_chans == 1:  # one-channel films: the RGB filters summed, as timm adapts first convs
            w = mapped["patch_embed.proj.weight"]
            mapped["patch_embed.proj.weight"] = w.sum(dim=1, keepdim=True)
        try:
            net.vit.load_state_dict(mapped, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{spec.weights}: weights do not fit the architecture "
                              f"({str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()[:160]})") \
                from None
    return net, net.num_features
