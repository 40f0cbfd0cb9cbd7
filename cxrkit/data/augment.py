"""Training augmentation (albumentations) and test-time augmentation views (batched torch).

Training recipes are registered by name so a config string selects one:

* ``none``
* ``chexpert`` (seed 000): horizontal flip, rotate +-20 deg, scale +-3 %
* ``cxr-robust`` (seed 004's robustness study): the ``chexpert`` recipe plus occasional
  Gaussian blur, speckle and salt-and-pepper noise

Augmentations act on the resized [0, 1] grey image (H x W float32), before normalisation,
and are seeded per sample (``seed``, ``epoch``, ``index``) so a resumed run repeats them.

TTA views are deterministic affine transforms applied to a whole batch at once
(``apply_tta``): one ``grid_sample`` call for all views, so TTA costs about the number of
views. ``seed000`` is the CFT paper's set: scale +-5 %, rotate +-5 deg, translate +-5 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError

Augment = Callable[[np.ndarray, int], np.ndarray]
_AUGMENTATIONS: dict[str, Callable[..., Augment | None]] = {}


def register_augmentation(name: str) -> Callable[[Callable[..., Augment | None]], Callable[..., Augment | None]]:
    def deco(fn: Callable[..., Augment | None]) -> Callable[..., Augment | None]:
        _AUGMENTATIONS[name] = fn
        return fn

    return deco


def list_augmentations() -> list[str]:
    return sorted(_AUGMENTATIONS)


def build_augmentation(name: str | None, **kwargs: Any) -> Augment | None:
    """The named training augmentation: a callable ``(image, seed) -> image`` or ``None``."""
    key = (name or "none").lower()
    if key not in _AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; use one of {list_augmentations()}")
    return _AUGMENTATIONS[key](**kwargs)


class _Albu:
    """Wraps an albumentations Compose so each call is reproducible from an integer seed."""

    def __init__(self, transforms: list[Any]) -> None:
        import albumentations as A

        self.compose = A.Compose(transforms, seed=0)

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        self.compose.set_random_seed(int(seed) % (2**32))
        out = self.compose(image=np.ascontiguousarray(image, dtype=np.float32))["image"]
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


@register_augmentation("none")
def _none() -> None:
    return None


def _chexpert_transforms(rotate: float = 20.0, scale: float = 0.03, flip: float = 0.5) -> list[Any]:
    import albumentations as A

    return [
        A.HorizontalFlip(p=flip),
        A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale), border_mode=cv2.BORDER_CONSTANT,
                 fill=0, p=1.0),
    ]


@register_augmentation("chexpert")
def chexpert_augmentation(rotate: float = 20.0, scale: float = 0.03, flip: float = 0.5) -> Augment:
    """Seed 000's CheXpert recipe: horizontal flip, rotate +-20 deg, scale +-3 %."""
    return _Albu(_chexpert_transforms(rotate, scale, flip))


@register_augmentation("cxr-robust")
def robust_augmentation(p_noise: float = 0.3) -> Augment:
    """The ``chexpert`` recipe plus blur / speckle / salt-and-pepper (seed 004's corruptions)."""
    import albumentations as A

    return _Albu(_chexpert_transforms() + [
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=False, elementwise=True, p=1.0),
            A.SaltAndPepper(amount=(0.005, 0.02), p=1.0),
        ], p=p_noise),
    ])


class _RandAugment:
    """torchvision's RandAugment (Cubuk et al. 2020; seed 000's COCO recipe) on the [0, 1]
    image, seeded per call; grey images are augmented as grey."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9) -> None:
        from torchvision.transforms import v2

        self.t = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        import torch

        grey = image.ndim == 2
        x = torch.from_numpy(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
        x = x[None] if grey else x.permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) % (2**63))
            y = self.t(x)
        y = y[0] if grey else y.permute(1, 2, 0)
        return y.numpy().astype(np.float32) / 255.0


class _Chain:
    def __init__(self, *parts: Augment) -> None:
        self.parts = parts

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        for i, part in enumerate(self.parts):
            image = part(image, seed * 7919 + i)
        return image


def _cutout(factor: float = 0.5) -> _Albu:
    import albumentations as A

    return _Albu([A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, factor),
                                  hole_width_range=(0.1, factor), fill=0, p=1.0)])


@register_augmentation("randaugment")
def randaugment_augmentation(num_ops: int = 2, magnitude: int = 9, flip: float = 0.5) -> Augment:
    """Seed 000's COCO recipe: horizontal flip and RandAugment (2 ops, magnitude 9)."""
    import albumentations as A

    return _Chain(_Albu([A.HorizontalFlip(p=flip)]), _RandAugment(num_ops, magnitude))


@register_augmentation("cutout")
def cutout_augmentation(factor: float = 0.5, flip: float = 0.5) -> Augment:
    """Cutout (DeVries and Taylor 2017): one rectangle of up to ``factor`` of each side set to 0."""
    import albumentations as A

    return _Chain(_Albu([A.HorizontalFlip(p=flip)]), _cutout(factor))


@register_augmentation("randaugment+cutout")
def randaugment_cutout_augmentation(num_ops: int = 2, magnitude: int = 9, factor: float = 0.5,
                                    flip: float = 0.5) -> Augment:
    """Seed 002's recipe: horizontal flip, RandAugment and Cutout."""
    import albumentations as A

    return _Chain(_Albu([A.HorizontalFlip(p=flip)]), _RandAugment(num_ops, magnitude), _cutout(factor))


# ---------------------------------------------------------------------------------------
# Test-time augmentation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TTAView:
    """One deterministic view: zoom ``scale``, rotation ``rotate`` (degrees, counter-clockwise),
    translation ``tx`` / ``ty`` (fractions of width / height), optional horizontal flip."""

    name: str
    scale: float = 1.0
    rotate: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    hflip: bool = False

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.rotate == 0.0 and self.tx == 0.0 and self.ty == 0.0 and not self.hflip


IDENTITY = TTAView("identity")
SEED000_VIEWS: tuple[TTAView, ...] = (
    IDENTITY,
    TTAView("scale-0.95", scale=0.95), TTAView("scale+1.05", scale=1.05),
    TTAView("rotate-5", rotate=-5.0), TTAView("rotate+5", rotate=5.0),
    TTAView("shift-x-5%", tx=-0.05), TTAView("shift+x+5%", tx=0.05),
    TTAView("shift-y-5%", ty=-0.05), TTAView("shift+y+5%", ty=0.05),
)
TTA_SETS: dict[str, tuple[TTAView, ...]] = {
    "none": (IDENTITY,),
    "flip": (IDENTITY, TTAView("hflip", hflip=True)),
    "seed000": SEED000_VIEWS,
    "seed000+flip": SEED000_VIEWS + (TTAView("hflip", hflip=True),),
}


def tta_views(name: str | bool | None) -> tuple[TTAView, ...]:
    """Views of a named TTA set (``none``, ``flip``, ``seed000``, ``seed000+flip``); ``True``
    means ``seed000+flip``."""
    if name is None or name is False:
        return TTA_SETS["none"]
    if name is True:
        return TTA_SETS["seed000+flip"]
    key = str(name).lower()
    if key not in TTA_SETS:
        raise ConfigError(f"unknown TTA set {name!r}; use one of {sorted(TTA_SETS)}")
    return TTA_SETS[key]


def _theta(view: TTAView, aspect: float) -> np.ndarray:
    """affine_grid matrix (output -> input, normalised coordinates) for a view."""
    a = math.radians(view.rotate)
    # forward map in normalised coords: x' = T R S x (with flip first); grid needs its inverse
    s = view.scale
    flip = np.diag([-1.0 if view.hflip else 1.0, 1.0])
    rot = np.array([[math.cos(a), math.sin(a) * aspect], [-math.sin(a) / aspect, math.cos(a)]])
    fwd = rot @ (s * flip)
    inv = np.linalg.inv(fwd)
    t = np.array([2.0 * view.tx, 2.0 * view.ty])
    return np.concatenate([inv, (-inv @ t)[:, None]], axis=1)


def apply_tta(x: Any, views: tuple[TTAView, ...] | list[TTAView]) -> Any:
    """Batch ``x`` (B x C x H x W tensor) -> (V * B) x C x H x W, view-major, in one call.

    Borders are filled by replicating the edge (the input is already normalised, so a
    constant fill would not be black)."""
    import torch
    import torch.nn.functional as F

    views = list(views)
    if len(views) == 1 and views[0].is_identity:
        return x
    b, c, h, w = x.shape
    aspect = h / w
    thetas = torch.as_tensor(np.stack([_theta(v, aspect) for v in views]), dtype=x.dtype, device=x.device)
    thetas = thetas.repeat_interleave(b, dim=0)
    xb = x.repeat(len(views), 1, 1, 1)
    grid = F.affine_grid(thetas, list(xb.shape), align_corners=False)
    return F.grid_sample(xb, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_tta_numpy(x: np.ndarray, views: tuple[TTAView, ...] | list[TTAView]) -> np.ndarray:
    """:func:`apply_tta` without torch (for the ONNX runtime): the same affine maps, bilinear
    sampling with ``align_corners=False`` and border replication, on a B x C x H x W array."""
    views = list(views)
    if len(views) == 1 and views[0].is_identity:
        return x
    b, c, h, w = x.shape
    aspect = h / w
    # output pixel centres in normalised coordinates (align_corners=False)
    xs = (2.0 * np.arange(w) + 1.0) / w - 1.0
    ys = (2.0 * np.arange(h) + 1.0) / h - 1.0
    gx, gy = np.meshgrid(xs, ys)
    out = np.empty((len(views) * b, c, h, w), dtype=x.dtype)
    for k, v in enumerate(views):
        th = _theta(v, aspect)
        sx = th[0, 0] * gx + th[0, 1] * gy + th[0, 2]
        sy = th[1, 0] * gx + th[1, 1] * gy + th[1, 2]
        # back to pixel coordinates, border padding = clamp the sample position
        px = np.clip(((sx + 1.0) * w - 1.0) / 2.0, 0.0, w - 1.0)
        py = np.clip(((sy + 1.0) * h - 1.0) / 2.0, 0.0, h - 1.0)
        x0 = np.floor(px).astype(np.int64)
        y0 = np.floor(py).astype(np.int64)
        x1 = np.minimum(x0 + 1, w - 1)
        y1 = np.minimum(y0 + 1, h - 1)
        wx = (px - x0).astype(x.dtype)
        wy = (py - y0).astype(x.dtype)
        top = x[..., y0, x0] * (1 - wx) + x[..., y0, x1] * wx
        bottom = x[..., y1, x0] * (1 - wx) + x[..., y1, x1] * wx
        out[k * b:(k + 1) * b] = top * (1 - wy) + bottom * wy
    return out
