"""Heads shared by the architectures.

:class:`PerClassLinear` is the last layer of architectures with per-class features
(label-query decoders, ML-VPT): ``logit_c = <w_c, z_c> + b_c`` for features z of shape
B x C x Z. Like ``nn.Linear`` on shared features, row c is category c's logistic
regression, which is what Category-wise Fine-Tuning fine-tunes.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PerClassLinear(nn.Module):
    """``weight`` C x Z, ``bias`` C; ``forward(z: B x C x Z) -> B x C``."""

    def __init__(self, num_classes: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = (z * self.weight).sum(-1)
        return out + self.bias if self.bias is not None else out
