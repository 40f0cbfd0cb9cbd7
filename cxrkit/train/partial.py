"""Training strategies for unknown labels (partial labels), selected by ``partial.strategy``.

Every strategy receives the epoch's targets with unknown labels as NaN (uncertain labels
already mapped by the label policy) and the element-wise loss of the configured loss
(reduction ``none``), and decides what unknown labels contribute:

``ignore`` (partial-BCE, Durand et al. CVPR 2019)
    Unknown labels are left out; each image's loss is ``g(p) / C * sum`` over its known
    labels with ``g(p) = alpha p^gamma + beta`` of its known proportion p, ``gamma = 1``,
    ``g(1) = 1``, ``g(0.1) = 5`` (their setting), so images with few known labels are not
    drowned out. ``normalize: false`` gives the plain masked loss.
``an`` (Assume Negative)
    Unknown labels are negatives.
``ll-r`` (Large Loss Rejection, Kim et al. CVPR 2022)
    Assume Negative, but in each batch the unknown (assumed-negative) labels with the
    largest losses are rejected (masked): a fraction ``delta_rel * epoch`` percent of the
    batch's labels (0 in the first epoch, growing by ``delta_rel`` each epoch; the CFT paper
    uses delta_rel = 1 on COCO, 0.01 on Open Images).
``selective`` (after Ben-Baruch et al. CVPR 2022, class-aware selective loss)
    Known labels use ASL focusing (``gamma_pos`` 0, ``gamma_neg`` 1); unknown labels are
    negatives with stronger focusing ``gamma_unann`` 4, except that they are ignored for the
    ``k`` classes with the highest label prior (estimated from the known labels: frequent
    classes are the ones whose unknown labels are often positive) and wherever the model's
    current probability (label likelihood) exceeds ``eta`` (0.05). Defaults: the CFT paper's
    COCO setting (K = 5, eta = 0.05).
``cl-score`` / ``cl-score+`` (Curriculum Labeling, Durand et al. CVPR 2019)
    Start like ``ignore``; after every epoch, unknown labels whose logit on the (un-augmented)
    training image exceeds ``theta`` (2) become positive pseudo-labels, and for ``cl-score``
    those below ``-theta`` negative ones; pseudo-labels are kept for the rest of training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

STRATEGIES = ("ignore", "an", "ll-r", "selective", "cl-score", "cl-score+")


class Strategy:
    name = "base"
    needs_train_predictions = False

    def __init__(self, **params: Any) -> None:
        if params:
            raise ConfigError(f"strategy {self.name!r} has no options {sorted(params)}")

    def prepare(self, labels: np.ndarray) -> None:
        """See the training labels once (N x C, NaN = unknown)."""

    def targets(self, base: np.ndarray, epoch: int) -> np.ndarray:
        """The epoch's targets from ``base`` (NaN = unknown): NaN = not in the loss."""
        return base

    def loss(self, elem: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, unknown: torch.Tensor,
             epoch: int) -> torch.Tensor:
        """Batch loss from the element-wise loss ``elem`` (reduction none)."""
        return _mean_known(elem(logits, y), y)

    def update(self, logits: np.ndarray, epoch: int) -> dict[str, Any]:
        """After an epoch (strategies with ``needs_train_predictions``)."""
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        pass


def _mean_known(per_entry: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = (~torch.isnan(y)).sum().clamp(min=1)
    return per_entry.sum() / n


class Ignore(Strategy):
    name = "ignore"

    def __init__(self, normalize: bool = True, g_at_10: float = 5.0) -> None:
        self.normalize = normalize
        # g(p) = alpha p + beta with g(1) = 1 and g(0.1) = g_at_10 (Durand et al.: gamma = 1)
        self.alpha = (1.0 - g_at_10) / 0.9
        self.beta = 1.0 - self.alpha

    def loss(self, elem, logits, y, unknown, epoch):  # type: ignore[override]
        per = elem(logits, y)
        if not self.normalize:
            return _mean_known(per, y)
        known = (~torch.isnan(y)).float()
        p = known.mean(1)
        g = self.alpha * p + self.beta
        per_image = per.sum(1) * g / y.shape[1]
        return per_image[p > 0].mean() if (p > 0).any() else per.sum() * 0


class AssumeNegative(Strategy):
    name = "an"

    def targets(self, base, epoch):  # type: ignore[override]
        return np.where(np.isnan(base), np.float32(0.0), base).astype(np.float32)


class LargeLossRejection(AssumeNegative):
    name = "ll-r"

    def __init__(self, delta_rel: float = 1.0) -> None:
        if delta_rel < 0:
            raise ConfigError("ll-r delta_rel must be >= 0")
        self.delta_rel = delta_rel
        self.last_rejected = 0

    def rate(self, epoch: int) -> float:
        return min(1.0, self.delta_rel / 100.0 * epoch)

    def loss(self, elem, logits, y, unknown, epoch):  # type: ignore[override]
        per = elem(logits, y)
        k = min(int(math.ceil(self.rate(epoch) * per.numel())), int(unknown.sum()))
        self.last_rejected = k
        if k > 0:
            cand = torch.where(unknown, per.detach(), torch.full_like(per, -torch.inf)).flatten()
            idx = torch.topk(cand, k).indices
            keep = torch.ones(per.numel(), dtype=per.dtype, device=per.device)
            keep[idx] = 0
            per = per * keep.view_as(per)
            return per.sum() / (per.numel() - k)
        return per.mean()


class Selective(Strategy):
    name = "selective"

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 1.0, gamma_unann: float = 4.0, k: int = 5,
                 eta: float = 0.05) -> None:
        self.gamma_pos, self.gamma_neg, self.gamma_unann = gamma_pos, gamma_neg, gamma_unann
        self.k, self.eta = int(k), float(eta)
        self.ignored: np.ndarray | None = None
        self.prior: np.ndarray | None = None

    def prepare(self, labels):  # type: ignore[override]
        known = ~np.isnan(labels)
        pos = np.nansum(labels == 1, axis=0) if labels.size else np.zeros(labels.shape[1])
        self.prior = np.where(known.sum(0) > 0, pos / np.maximum(known.sum(0), 1), 0.0)
        self.ignored = np.zeros(labels.shape[1], dtype=bool)
        if self.k > 0:
            self.ignored[np.argsort(-self.prior, kind="stable")[: self.k]] = True

    def loss(self, elem, logits, y, unknown, epoch):  # type: ignore[override]
        p = torch.sigmoid(logits)
        log_p = torch.nn.functional.logsigmoid(logits)
        log_1mp = torch.nn.functional.logsigmoid(-logits)
        yk = torch.nan_to_num(y, nan=0.0)
        known = ~torch.isnan(y)
        w_pos = (1 - p).detach() ** self.gamma_pos
        w_neg = p.detach() ** self.gamma_neg
        l_known = -(yk * w_pos * log_p + (1 - yk) * w_neg * log_1mp)
        assert self.ignored is not None, "prepare() first"
        ignored_cls = torch.as_tensor(self.ignored, device=logits.device)[None, :]
        use_unknown = unknown & ~ignored_cls & (p.detach() <= self.eta)
        l_unknown = -(p.detach() ** self.gamma_unann) * log_1mp
        per = torch.where(known, l_known, torch.zeros_like(l_known)) + torch.where(use_unknown, l_unknown,
                                                                                   torch.zeros_like(l_unknown))
        n = (known | use_unknown).sum().clamp(min=1)
        return per.sum() / n


class CurriculumLabeling(Ignore):
    name = "cl-score"
    needs_train_predictions = True

    def __init__(self, theta: float = 2.0, positive_only: bool = False, normalize: bool = True) -> None:
        super().__init__(normalize=normalize)
        self.theta = float(theta)
        self.positive_only = positive_only
        self.pseudo: np.ndarray | None = None

    def prepare(self, labels):  # type: ignore[override]
        self.pseudo = np.full(labels.shape, np.nan, dtype=np.float32)

    def targets(self, base, epoch):  # type: ignore[override]
        assert self.pseudo is not None
        return np.where(np.isnan(base), self.pseudo, base).astype(np.float32)

    def update(self, logits, epoch):  # type: ignore[override]
        assert self.pseudo is not None
        free = np.isnan(self.pseudo)
        pos = free & (logits > self.theta)
        self.pseudo[pos] = 1.0
        n_neg = 0
        if not self.positive_only:
            neg = free & (logits < -self.theta)
            self.pseudo[neg] = 0.0
            n_neg = int(neg.sum())
        return {"pseudo_positive": int(pos.sum()), "pseudo_negative": n_neg,
                "pseudo_total": int((~np.isnan(self.pseudo)).sum())}

    def state(self):  # type: ignore[override]
        return {} if self.pseudo is None else {"pseudo": torch.from_numpy(self.pseudo.copy())}

    def load_state(self, state):  # type: ignore[override]
        if "pseudo" in state:
            self.pseudo = state["pseudo"].numpy().copy()


class CurriculumLabelingPositive(CurriculumLabeling):
    name = "cl-score+"

    def __init__(self, theta: float = 2.0, normalize: bool = True) -> None:
        super().__init__(theta=theta, positive_only=True, normalize=normalize)


_REGISTRY = {c.name: c for c in (Ignore, AssumeNegative, LargeLossRejection, Selective, CurriculumLabeling,
                                  CurriculumLabelingPositive)}


def build_strategy(cfg: Mapping[str, Any] | None) -> Strategy | None:
    """``{"strategy": name, "params": {...}}`` -> a strategy (None: the classic label policy)."""
    if not cfg:
        return None
    cfg = dict(cfg)
    name = str(cfg.pop("strategy", "")).lower()
    params = dict(cfg.pop("params", {}) or {})
    if cfg:
        raise ConfigError(f"unknown partial keys {sorted(cfg)}; use strategy and params")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown partial-label strategy {name!r}; use one of {list(STRATEGIES)}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as e:
        raise ConfigError(f"strategy {name!r}: {e}") from None
