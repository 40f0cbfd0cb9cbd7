"""Training: configs, the trainer (checkpoints, resume, EMA, AMP, DDP) and LR schedules."""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
