"""Using a saved model: the torch-free ``runtime`` core (reading model folders, the DICOM
pipeline, predictors; what the leaderboard container and the hospital path run), ``predict``
over folders and tables, ``ensemble`` (and the torch engine), ``export`` (ONNX, int8),
``explain`` (saliency maps), ``evaluate``, ``calibration`` (per-class maps, ECE, operating
points) and ``calibrate`` (its command), and ``engines`` (device and precision choice,
autocast, batched forward passes).

``cxrkit.inference`` was a module before it was this package: its names (``autocast``,
``resolve_device``, ...) are still found here, loaded on first use so that importing the
torch-free runtime does not import torch.
"""

from __future__ import annotations

from typing import Any

_ENGINE_NAMES = ("resolve_device", "cpu_has_bf16", "resolve_precision", "autocast", "run_batches")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engines

        return getattr(engines, name)
    raise AttributeError(f"module 'cxrkit.inference' has no attribute {name!r}")
