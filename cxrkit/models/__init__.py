"""Models: a backbone registry (timm, MONAI, small built-ins) and the Classifier split
``backbone -> features z -> head`` that Category-wise Fine-Tuning relies on."""

from .classifier import Classifier, ModelConfig, build_model
from .registry import build_backbone, list_backbones, register_backbone

__all__ = ["Classifier", "ModelConfig", "build_model", "build_backbone", "list_backbones", "register_backbone"]
