"""Batched forward passes shared by training (validation), evaluation, prediction and CFT's
feature extraction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.augment import TTAView, apply_tta
from .runtime import cpu_has_bf16  # also cxrkit.inference.cpu_has_bf16
from ..utils import progress


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return dev


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(requested: str | bool, device: torch.device) -> tuple[str, str]:
    """(precision, why) for training / evaluation on ``device``. ``auto``: bf16 autocast on a
    CPU with bf16 units (else fp32: emulated bf16 is slower than fp32), bf16 on CUDA where
    supported, else fp16 with a gradient scaler. ``True`` / ``False`` are the old ``amp``
    switch (auto / fp32)."""
    if requested is True:
        requested = "auto"
    if requested is False or requested == "fp32":
        return "fp32", "asked for"
    if requested not in PRECISIONS:
        from ..errors import ConfigError

        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return ("bf16", "CUDA with bf16") if bf16 else ("fp16", "CUDA without bf16: fp16 with loss scaling")
        return str(requested), "asked for"
    if device.type != "cpu":
        return "fp32", f"{device.type}: mixed precision not used"
    if requested == "fp16":
        from ..errors import ConfigError

        raise ConfigError("precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if requested == "bf16":
        return "bf16", "asked for" + ("" if cpu_has_bf16() else " (this CPU has no bf16 units: emulated, slow)")
    if cpu_has_bf16():
        return "bf16", "CPU with AMX / AVX-512 BF16"
    return "fp32", "this CPU has no AMX / AVX-512 BF16 units, so bf16 would be slower than fp32"


def time_train_steps(model: torch.nn.Module, x: torch.Tensor, precision: str, channels_last: bool,
                     steps: int = 2) -> float:
    """Seconds per training step (forward, BCE, backward; no optimiser step, so the weights
    do not change) of ``model`` on ``x`` under ``precision``, after one warm-up step."""
    import time

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = x.to(memory_format=fmt)
    was = model.training
    model.train()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # BN running stats
    try:
        best = float("inf")
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                out = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), torch.zeros_like(out.float()))
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i:
                best = min(best, time.perf_counter() - t0)
        return best
    finally:
        model.load_state_dict(state)
        model.train(was)
        model.to(memory_format=torch.contiguous_format)


def fastest_cpu_precision(model: torch.nn.Module, x: torch.Tensor) -> tuple[str, bool, str]:
    """(precision, channels_last, why) for ``precision: auto`` on a CPU with bf16 units: a
    few timed training steps of this network on a batch of this size in fp32 and in bf16,
    each with channels-last (both measured faster than the default layout here), and the
    faster wins. Depthwise-heavy networks (EfficientNet, MobileNet) are often faster in fp32
    even on AMX; dense convolutions (DenseNet, ResNet) in bf16."""
    times = {p: time_train_steps(model, x, p, True) for p in ("fp32", "bf16")}
    best = min(times, key=times.get)  # type: ignore[arg-type]
    why = (f"measured at start-up: bf16 {times['bf16'] * 1e3:.0f} ms, fp32 {times['fp32'] * 1e3:.0f} ms a step "
           f"(batch {x.shape[0]}, channels-last)")
    return best, True, why


def autocast(device: torch.device, precision: str | bool = True) -> contextlib.AbstractContextManager[Any]:
    """Autocast for a resolved precision (``bf16`` / ``fp16``; ``fp32`` = none). A bool is
    the old switch: True = bf16 / fp16 on CUDA, nothing on the CPU."""
    if isinstance(precision, bool):
        if device.type != "cuda" or not precision:
            return contextlib.nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("bf16", "fp16") or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def run_batches(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, Any]],
                device: torch.device, views: Sequence[TTAView] | None = None, amp: bool | str = True,
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
