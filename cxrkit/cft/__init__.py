"""Category-wise Fine-Tuning (seed 000): feature cache, CFT-BP, CFT-GA (PyGAD), greedy
per-category selection, parallel and sharded runs."""

from .features import FeatureSet, extract_features, head_rows, set_head_rows
from .runner import METHODS, CFTConfig, run_categories

__all__ = ["FeatureSet", "extract_features", "head_rows", "set_head_rows", "METHODS", "CFTConfig", "run_categories"]
