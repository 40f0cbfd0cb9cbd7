"""Learning-rate schedules as pure functions of the optimisation step.

Being stateless, they resume exactly: the step count is all a checkpoint needs.
``onecycle`` follows Smith & Topin (1cycle, as ``torch.optim.lr_scheduler.OneCycleLR``
with cosine annealing): warm up from ``lr / div_factor`` to ``lr`` over ``pct_start`` of
the steps, then anneal to ``lr / (div_factor * final_div_factor)``.
"""

from __future__ import annotations

import math

from .config import ScheduleConfig


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0))) / 2


def lr_at(step: int, total_steps: int, base_lr: float, cfg: ScheduleConfig, steps_per_epoch: int = 1) -> float:
    """Learning rate for optimisation step ``step`` (0-based) out of ``total_steps``."""
    total = max(1, total_steps)
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "onecycle":
        initial = base_lr / cfg.div_factor
        final = initial / cfg.final_div_factor
        warm = max(1, int(round(cfg.pct_start * total)))
        if step < warm:
            return _cos(initial, base_lr, step / warm)
        return _cos(base_lr, final, (step - warm) / max(1, total - warm))
    if cfg.name == "cosine":
        warm = int(round(cfg.warmup_epochs * steps_per_epoch))
        if step < warm:
            return base_lr * (step + 1) / warm
        return _cos(base_lr, cfg.min_lr, (step - warm) / max(1, total - warm))
    raise ValueError(f"unknown schedule {cfg.name!r}")
