"""Batched forward passes shared by training (validation), evaluation, prediction and CFT's
feature extraction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .data.augment import TTAView, apply_tta
from .utils import progress


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return dev


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (when supported, else float16); no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def run_batches(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, Any]],
                device: torch.device, views: Sequence[TTAView] | None = None, amp: bool = True,
                description: str = "", total: int | None = None, show_progress: bool = True
                ) -> tuple[np.ndarray, list[Any]]:
    """Apply ``fn`` (images -> N x K outputs) to every batch, optionally averaging over TTA
    views (all views of a batch in one forward pass). Returns stacked float32 outputs and
    the batch keys in order."""
    outs: list[np.ndarray] = []
    keys: list[Any] = []
    it = progress(batches, description, total=total, enabled=show_progress and bool(description))
    for x, key in it:
        x = x.to(device, non_blocking=True)
        b = x.shape[0]
        if views is not None and len(views) > 1:
            x = apply_tta(x, views)
        with autocast(device, amp):
            y = fn(x).float()
        if views is not None and len(views) > 1:
            y = y.view(len(views), b, *y.shape[1:]).mean(0)
        outs.append(y.cpu().numpy())
        keys.append(key)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), keys
    return np.concatenate(outs).astype(np.float32, copy=False), keys
