"""Preprocessing to the model's input: one object, saved with every model and reloaded.

``Preprocessing`` turns a file (PNG / JPEG / DICOM) into the tensor a model sees:

    read (full DICOM pipeline, [0, 1]) -> resize (stretch / letterbox / center-crop)
    -> [augmentation, training only] -> channels (1 or 3) -> (x - mean) / std

``render`` stops before normalisation and returns the 8-bit grey image a person can check
(``cxrkit data render``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError
from .images import read_image, read_image_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_MODES = ("stretch", "letterbox", "center-crop")
INTENSITY_MODES = ("auto", "minmax")
_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
           "nearest": cv2.INTER_NEAREST, "lanczos": cv2.INTER_LANCZOS4}


@dataclass
class Preprocessing:
    """How an image file becomes a model input.

    ``size``: output height and width (an int for square); ``channels``: 1 or 3 (grey
    repeated); ``mean`` / ``std``: per-channel normalisation of the [0, 1] image (``None``
    picks ImageNet statistics for 3 channels, 0.5 / 0.25 for 1); ``resize``: ``stretch``
    (CheXpert practice), ``letterbox`` (keep aspect, pad with black) or ``center-crop``;
    ``intensity``: ``auto`` (8-bit / 255, 16-bit by bit depth, DICOM by its VOI window) or
    ``minmax``; ``colour``: ``grey`` (radiographs: grey, repeated to ``channels``) or ``rgb``
    (natural images keep their colour; needs 3 channels).
    """

    size: int | tuple[int, int] = 224
    channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "stretch"
    intensity: str = "auto"
    interpolation: str = "area"
    colour: str = "grey"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.size, Sequence) and not isinstance(self.size, str):
            if len(self.size) != 2:
                raise ConfigError(f"preprocessing size must be an int or [height, width], got {self.size}")
            self.size = (int(self.size[0]), int(self.size[1]))
        else:
            self.size = int(self.size)  # type: ignore[arg-type]
        if min(self.hw) < 8 or max(self.hw) > 4096:
            raise ConfigError(f"preprocessing size {self.size} out of range 8..4096")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.mean is None:
            self.mean = IMAGENET_MEAN if self.channels == 3 else (0.5,)
        if self.std is None:
            self.std = IMAGENET_STD if self.channels == 3 else (0.25,)
        try:
            self.mean = tuple(float(m) for m in self.mean)  # type: ignore[union-attr]
            self.std = tuple(float(s) for s in self.std)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConfigError(f"mean and std must be lists of numbers, got {self.mean!r} / {self.std!r}") from None
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, self.channels):
                raise ConfigError(f"{name} needs 1 or {self.channels} values, got {len(v)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError("std values must be > 0")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.interpolation not in _INTERP:
            raise ConfigError(f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}")
        if self.colour not in ("grey", "rgb"):
            raise ConfigError(f"colour must be 'grey' or 'rgb', got {self.colour!r}")
        if self.colour == "rgb" and self.channels != 3:
            raise ConfigError("colour 'rgb' needs channels: 3")

    # -- geometry ---------------------------------------------------------------------
    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else self.size  # type: ignore[return-value]

    def resize_image(self, img: np.ndarray) -> np.ndarray:
        """[0, 1] image (H x W grey or H x W x 3) of any size -> ``hw`` (float32)."""
        h, w = self.hw
        ih, iw = img.shape[:2]
        if (ih, iw) == (h, w):
            return img.astype(np.float32, copy=False)
        interp = _INTERP[self.interpolation]
        if self.resize == "stretch":
            return _resize(img, w, h, interp)
        scale = min(h / ih, w / iw) if self.resize == "letterbox" else max(h / ih, w / iw)
        nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
        r = _resize(img, nw, nh, interp)
        if self.resize == "letterbox":
            out = np.zeros((h, w, *img.shape[2:]), dtype=np.float32)
            y0, x0 = (h - nh) // 2, (w - nw) // 2
            out[y0:y0 + nh, x0:x0 + nw] = r
            return out
        y0, x0 = (nh - h) // 2, (nw - w) // 2
        return np.ascontiguousarray(r[y0:y0 + h, x0:x0 + w])

    # -- the pipeline -----------------------------------------------------------------
    def read(self, path: str | Path) -> np.ndarray:
        """Read at full size: H x W (grey) or H x W x 3 (``rgb``) float32 in [0, 1]."""
        if self.colour == "rgb":
            return read_image_rgb(path, intensity=self.intensity)
        return read_image(path, intensity=self.intensity)

    @property
    def decode_hw(self) -> tuple[int, int]:
        """The smallest decoded size this input may be read at: ``REDUCED_MARGIN`` times the
        model's size (both sides for a centre crop, which keeps the shorter one)."""
        from .images import REDUCED_MARGIN

        h, w = self.hw
        need = (int(np.ceil(h * REDUCED_MARGIN)), int(np.ceil(w * REDUCED_MARGIN)))
        return (max(need), max(need)) if self.resize == "center-crop" else need

    def read_for_model(self, path: str | Path, need: tuple[int, int] | None = None) -> np.ndarray:
        """Read for this model's input: like :meth:`read`, but a large JPEG may be decoded at
        a reduced (M/8) scale inside libjpeg-turbo, never below ``need`` (default
        :attr:`decode_hw`: the resize that follows then sees nearly the same image)."""
        need = need or self.decode_hw
        if self.colour == "rgb":
            return read_image_rgb(path, intensity=self.intensity, min_hw=need)
        return read_image(path, intensity=self.intensity, min_hw=need)

    def load(self, path: str | Path) -> np.ndarray:
        """Read and resize: the [0, 1] float32 image before augmentation / normalisation."""
        return self.resize_image(self.read(path))

    def render(self, path: str | Path) -> np.ndarray:
        """8-bit image exactly as the model sees it before normalisation (grey, or RGB)."""
        return to_uint8(self.load(path))

    def normalize(self, img: np.ndarray) -> np.ndarray:
        """[0, 1] image -> normalised float32 C x H x W: H x W (grey) or H x W x 3 (rgb), or a
        batch of either (N x H x W / N x H x W x 3) -> N x C x H x W."""
        x = np.asarray(img, dtype=np.float32)
        if self.colour == "rgb":
            batched = x.ndim == 4
            x = np.moveaxis(x, -1, -3)
        else:
            batched = x.ndim == 3
            x = x[:, None] if batched else x[None]
            x = np.repeat(x, self.channels, axis=-3) if self.channels > 1 else x
        shape = (1, -1, 1, 1) if batched else (-1, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def __call__(self, path: str | Path) -> Any:
        import torch

        return torch.from_numpy(self.normalize(self.load(path)))

    def denormalize(self, x: Any) -> Any:
        """Inverse of :meth:`normalize` on a tensor / array (first channel, [0, 1]; grey)."""
        m, s = self.mean[0], self.std[0]  # type: ignore[index]
        return x[..., 0, :, :] * s + m

    # -- persistence ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        d["mean"], d["std"] = list(self.mean), list(self.std)  # type: ignore[arg-type]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {sorted(unknown)}; use {sorted(known)}")
        return cls(**dict(d))


def _resize(img: np.ndarray, w: int, h: int, interp: int) -> np.ndarray:
    if interp == cv2.INTER_AREA and (w > img.shape[1] or h > img.shape[0]):
        interp = cv2.INTER_LINEAR  # INTER_AREA is for shrinking
    return cv2.resize(img.astype(np.float32, copy=False), (w, h), interpolation=interp)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
