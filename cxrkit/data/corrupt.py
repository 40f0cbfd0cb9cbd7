"""Image corruptions for robustness evaluation (seed 004, sec. 5.3, Table 8): Gaussian blur,
salt-and-pepper and speckle noise, applied to the decoded [0, 1] image before the model's
own preprocessing (resize, normalisation), seeded per image so two runs give the same pixels.

Seed 004 names the three corruptions and shows examples (its Fig. 5) but gives no strengths,
so cxrkit's defaults are stated here and in the evaluation JSON (every parameter can be set):

* ``blur``: Gaussian blur, ``sigma`` as a fraction of the image's shorter side (default
  0.01: 10 px on a 1024 px film, about 2 px at 224 px), so the same spec means the same
  blur at any resolution;
* ``salt-pepper``: a fraction ``amount`` of the pixels (default 0.05, scikit-image's
  default) set to 0 or 1 with equal odds (``salt_vs_pepper`` = 0.5);
* ``speckle``: multiplicative noise x + x * n, n ~ N(0, sigma^2) (default sigma 0.2; the
  scikit-image definition), clipped to [0, 1].

A spec is ``NAME`` or ``NAME:key=value[,key=value]``, e.g. ``blur:sigma=0.02``,
``salt-pepper:amount=0.1``, ``speckle:sigma=0.3``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

DEFAULTS: dict[str, dict[str, float]] = {
    "blur": {"sigma": 0.01},
    "salt-pepper": {"amount": 0.05, "salt_vs_pepper": 0.5},
    "speckle": {"sigma": 0.2},
}
ALIASES = {"gaussian-blur": "blur", "saltpepper": "salt-pepper", "salt_pepper": "salt-pepper", "sp": "salt-pepper"}


@dataclass(frozen=True)
class Corruption:
    """One corruption with its parameters and seed; call it on an image in [0, 1]."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    @property
    def label(self) -> str:
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))

    def rng(self, key: str) -> np.random.Generator:
        """A generator for one image: the same (seed, corruption, image key) -> the same noise."""
        return np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), zlib.crc32(key.encode())])

    def __call__(self, img: np.ndarray, key: str = "") -> np.ndarray:
        x = np.asarray(img, dtype=np.float32)
        if self.name == "blur":
            import cv2

            sigma = float(self.params["sigma"]) * min(x.shape[:2])
            if sigma <= 0:
                return x.copy()
            return np.clip(cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                            borderType=cv2.BORDER_REFLECT_101), 0.0, 1.0)
        rng = self.rng(key)
        if self.name == "salt-pepper":
            out = x.copy()
            hw = x.shape[:2]
            hit = rng.random(hw) < float(self.params["amount"])
            salt = rng.random(hw) < float(self.params["salt_vs_pepper"])
            out[hit & salt] = 1.0
            out[hit & ~salt] = 0.0
            return out
        if self.name == "speckle":
            noise = rng.standard_normal(x.shape[:2]).astype(np.float32) * np.float32(self.params["sigma"])
            if x.ndim == 3:
                noise = noise[..., None]
            return np.clip(x + x * noise, 0.0, 1.0)
        raise ConfigError(f"unknown corruption {self.name!r}")  # pragma: no cover (parse checks)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "seed": self.seed}


def parse_corruption(spec: str, seed: int = 0) -> Corruption:
    """``blur`` / ``blur:sigma=0.02`` / ``salt-pepper:amount=0.1`` -> :class:`Corruption`."""
    name, _, rest = str(spec).strip().partition(":")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in DEFAULTS:
        raise ConfigError(f"unknown corruption {spec!r}; use {', '.join(DEFAULTS)} (e.g. blur:sigma=0.02)")
    params = dict(DEFAULTS[name])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or k not in params:
            raise ConfigError(f"corruption {spec!r}: {item!r} is not one of {', '.join(f'{p}=...' for p in params)}")
        try:
            params[k] = float(v)
        except ValueError:
            raise ConfigError(f"corruption {spec!r}: {k} must be a number, got {v!r}") from None
    for k, v in params.items():
        if not np.isfinite(v) or v < 0 or (k in ("amount", "salt_vs_pepper") and v > 1):
            raise ConfigError(f"corruption {spec!r}: {k}={v:g} is out of range")
    return Corruption(name, params, int(seed))
