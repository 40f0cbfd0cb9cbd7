"""The model split every cxrkit model follows::

    image -> backbone -> features z (B x Z, or B x C x Z for per-class features) -> head -> logits

``head`` is a linear layer whose row ``(w_c, b_c)`` is category c's logistic regression
(seed 000, eq. 1). Category-wise Fine-Tuning caches ``z = model.features(x)`` once and
fine-tunes the rows; ``logits_from_features`` turns cached features back into logits.

Architectures are registered by name (``arch`` in the config); ``classifier`` is the plain
``backbone -> [optional FC neck] -> dropout -> Linear(Z, C)`` model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import BackboneSpec, build_backbone


@dataclass
class ModelConfig:
    """What to build. ``arch``: registered architecture (``classifier`` by default);
    ``backbone``: registered name or any timm model; ``pretrained`` / ``weights``: hub or
    local weights for the backbone (ignored when loading a saved model): a file or
    ``pkg:<module>/<path>`` inside an installed package, ``weights_map: order`` to rename a
    foreign state dict onto the timm model by position; ``in_chans``: 1 or 3;
    ``feature_dim``: optional FC layer changing Z (seed 000, Table VIII); ``drop_rate``:
    dropout on z before the head."""

    arch: str = "classifier"
    backbone: str = "resnet18"
    pretrained: bool = False
    weights: str | None = None
    weights_map: str | None = None
    in_chans: int = 3
    feature_dim: int | None = None
    drop_rate: float = 0.0
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model keys {sorted(unknown)}; use {sorted(known)}")
        return cls(**dict(d))


class Classifier(nn.Module):
    """``backbone -> [neck] -> z -> dropout -> head``; ``head.weight`` is C x Z."""

    per_class_features = False

    def __init__(self, backbone: nn.Module, backbone_dim: int, num_classes: int, feature_dim: int | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck: nn.Module = nn.Linear(backbone_dim, feature_dim) if feature_dim else nn.Identity()
        self.feature_dim = int(feature_dim or backbone_dim)
        self.dropout = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def logits_from_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


ArchBuilder = Callable[[ModelConfig, int, bool], nn.Module]
#: (model config dict, training labels N x C in the internal encoding, class names) -> config
#: dict with what the architecture derives from the training data (e.g. ML-VPT's label
#: groups); it is saved with the model, so loading rebuilds exactly the same network.
ArchPrepare = Callable[[dict[str, Any], Any, list[str]], dict[str, Any]]
_ARCHS: dict[str, ArchBuilder] = {}
_PREPARE: dict[str, ArchPrepare] = {}


def register_arch(name: str, prepare: ArchPrepare | None = None) -> Callable[[ArchBuilder], ArchBuilder]:
    def deco(fn: ArchBuilder) -> ArchBuilder:
        _ARCHS[name] = fn
        if prepare is not None:
            _PREPARE[name] = prepare
        return fn

    return deco


def prepare_model_config(model_cfg: dict[str, Any], train_labels: Any, classes: list[str]) -> dict[str, Any]:
    """Let the architecture derive settings from the training labels before it is built."""
    arch = model_cfg.get("arch", "classifier")
    lookup_arch(arch)
    fn = _PREPARE.get(arch)
    return fn(dict(model_cfg), train_labels, list(classes)) if fn is not None else dict(model_cfg)


def lookup_arch(name: str) -> ArchBuilder:
    """The builder registered as ``name`` (built-in architectures are imported on first use)."""
    if name not in _ARCHS:
        _load_builtin_archs()
    if name not in _ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; use one of {list_archs()}")
    return _ARCHS[name]


def list_archs() -> list[str]:
    _load_builtin_archs()
    return sorted(_ARCHS)


def _load_builtin_archs() -> None:
    """Import optional architecture modules so they register themselves."""
    import importlib

    for mod in ("cxrkit.models.query2label", "cxrkit.models.mlvpt"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


@register_arch("classifier")
def _classifier(cfg: ModelConfig, num_classes: int, load_weights: bool) -> nn.Module:
    spec = BackboneSpec(cfg.backbone, pretrained=cfg.pretrained and load_weights,
                        weights=cfg.weights if load_weights else None, in_chans=cfg.in_chans,
                        kwargs=dict(cfg.backbone_kwargs), weights_map=cfg.weights_map)
    backbone, dim = build_backbone(spec)
    return Classifier(backbone, dim, num_classes, feature_dim=cfg.feature_dim, drop_rate=cfg.drop_rate)


def build_model(cfg: ModelConfig | Mapping[str, Any], num_classes: int, load_weights: bool = True) -> nn.Module:
    """Build the configured model for ``num_classes`` classes. ``load_weights=False`` skips
    pretrained / local backbone weights (used when the weights come from a saved model)."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    if cfg.in_chans not in (1, 3):
        raise ConfigError(f"model in_chans must be 1 or 3, got {cfg.in_chans}")
    if num_classes < 1:
        raise ConfigError("a model needs at least one class")
    return lookup_arch(cfg.arch)(cfg, num_classes, load_weights)


def check_model_config(cfg: ModelConfig) -> None:
    """Build the configured backbone on PyTorch's ``meta`` device (no memory, no weights, no
    download): an unknown backbone or keyword argument fails with a ConfigError as soon as a
    config is read, before any image is decoded. Weight files are checked for existence."""
    from .registry import BackboneSpec, build_backbone, resolve_weights_path

    from .registry import FOLDER_WEIGHTS

    if cfg.weights is not None and cfg.backbone in FOLDER_WEIGHTS:  # a folder: the published checkpoint's files
        if cfg.backbone == "biomedclip":
            from .clip import read_clip_folder

            read_clip_folder(cfg.weights)
        else:
            from .foundation import read_hf_config

            read_hf_config(cfg.weights)
    elif cfg.weights is not None:
        resolve_weights_path(cfg.weights)
    ckpt = cfg.backbone_kwargs.get("checkpoint_path")
    if ckpt is not None and not Path(str(ckpt)).expanduser().is_file():
        raise ConfigError(f"model.backbone_kwargs.checkpoint_path: file not found: {ckpt}")
    if cfg.arch != "classifier":
        return  # other architectures derive parts of their config from the training labels
    kwargs = {k: v for k, v in cfg.backbone_kwargs.items() if k != "checkpoint_path"}
    with torch.device("meta"):
        build_backbone(BackboneSpec(cfg.backbone, pretrained=False, weights=None, in_chans=cfg.in_chans,
                                    kwargs=kwargs))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
