"""Multi-label losses on logits, with unknown labels masked out (SPEC section 3).

Every loss is an ``nn.Module`` called as ``loss(logits, targets, mask=None)``:

* ``logits`` and ``targets`` are float tensors of the same shape, ``(N, C)`` or ``(N,)``.
* ``targets`` lie in [0, 1]. Soft targets are allowed: the element-wise losses compute
  ``y * L+ + (1 - y) * L-``. ``NaN`` means *unknown*: the entry is ignored (contributes
  exactly 0 to the value and 0 to the gradient). An optional boolean ``mask`` (True = use)
  is AND-ed with ``~isnan(targets)``. Any other value outside [0, 1] (e.g. the -1
  "uncertain" code that a :class:`~cxrkit.labels.LabelPolicy` should have mapped) is an error.
* ``reduction``: ``"sum"`` (default of the element-wise losses, as in the reference code),
  ``"mean"`` (the sum divided by the number of used entries; 0 when there are none) or
  ``"none"`` (the element-wise tensor, zeros at masked entries). The pairwise / per-class
  losses (WMW, AUCM) document their own meaning of ``"mean"`` and ``"none"``.
* Numerically stable for any finite logit (+-1e4 included): log p is ``logsigmoid(x)``,
  log(1 - p) is ``logsigmoid(-x)``, 1 - p is ``sigmoid(-x)``. Where a reference clamps a
  probability with ``eps`` before the log (ASL, APL, RAL) the log itself is clamped at
  ``log(eps)``, which gives the same values and stays finite. Half-precision logits are
  computed in float32.

Notation: p = sigmoid(x), y = target, p_m = max(p - clip, 0) (asymmetric probability
shifting), so 1 - p_m = min(1 - p + clip, 1).

``bce`` -- :class:`BCELoss`
    L+ = -w log p, L- = -log(1 - p), w = ``pos_weight`` (per class, default 1).

``focal`` -- :class:`FocalLoss` (Lin et al., ICCV 2017)
    L+ = -a (1-p)^g log p, L- = -(1-a) p^g log(1-p). Defaults g = 2 (the paper);
    ``alpha=None`` (no class balancing, weight 1 on both sides; the paper's RetinaNet used
    a = 0.25).

``asl`` -- :class:`AsymmetricLoss` (Ridnik et al., ICCV 2021)
    L+ = -(1-p)^g+ log(max(p, eps)), L- = -p_m^g- log(max(1 - p_m, eps)).
    Defaults from the official Alibaba-MIIL code: g- = 4, g+ = 1, clip = 0.05, eps = 1e-8,
    focal weights computed without gradient (``disable_torch_grad_focal_loss``). The paper's
    own training used g+ = 0. With g+ = g- = clip = 0 it is BCE (CFT-BP-ASL on CheXpert).

``apl`` -- :class:`AsymmetricPolynomialLoss` (Huang et al., ICASSP 2023; seed 002)
    With ``log_term=True`` (Taylor expansion of -log with re-weighted leading terms)::

        L+ = (1-p)^g+  [ -log p       + sum_m (alpha_m - 1/m) (1-p)^m ]   m = 1..len(alpha)
        L- = p_m^g-    [ -log(1-p_m)  + sum_n (beta_n  - 1/n) p_m^n   ]   n = 1..len(beta)

    alpha_m / beta_n are the coefficients of the m-th / n-th Taylor term of -log (their
    natural values are 1/m): ``alpha=(1, 0.5), beta=(1,)`` gives ASL exactly. With two
    positive and one negative term this is SPEC's
    L+ = (1-p)^g+ [-log p + (a1-1)(1-p) + (a2-1/2)(1-p)^2], L- = p_m^g- [-log(1-p_m) + (b1-1)p_m].
    Defaults reproduce the official LUMIA-Group/APL code (epsilon_pos = 1, epsilon_pos_pow =
    -2.5, epsilon_neg = 0, i.e. L+ = -log p - (1-p) + 1.25 (1-p)^2): alpha = (0, 1.75),
    beta = (1,), g+ = 0, g- = 4, clip = 0.05, eps = 1e-8, focal weights without gradient.
    Seed 002 trains with g+ = 0, g- = 2 (pass ``gamma_neg=2``).
    With ``log_term=False``: the pure polynomial general form of seed 004 eq. 5,
    L+ = sum_m alpha_m (1-p)^(m + g+), L- = sum_n beta_n p_m^(n + g-) (no log term; the
    focal factors (1-p)^g+ / p_m^g- are the ones detached when ``detach_focal_weight``).

``ral`` -- :class:`RobustAsymmetricLoss` (seed 004 eq. 6)
    The APL above (same arguments and defaults) with the negative term multiplied by the
    Hill weight psi(p) = lamb - p (unclipped p, gradient flows through psi); lamb = 1.5.

``hill`` -- :class:`HillLoss` (Zhang et al. 2021, "Simple and robust loss design for
multi-label learning with missing labels"; official code defaults lamb = 1.5, margin = 1,
gamma = 2)
    L+ = -(1 - p+)^g log p+ with p+ = sigmoid(x - margin) (focal margin; weight not
    detached), L- = (lamb - p) p^2.

``wmw`` -- :class:`WMWLoss` (Yan et al., ICML 2003; CFT-BP-WMW of seed 000)
    On scores s = sigmoid(x), for each class and every (positive i, negative j) pair:
    R = (gamma - (s_i - s_j))^p if s_i - s_j < gamma else 0; loss = sum over pairs.
    gamma = 0.3 and p = 2 lie in the ranges Yan et al. recommend (0.1 <= gamma <= 0.7,
    p = 2 or 3). Pairs are evaluated in chunks with a hand-written backward, so memory stays
    bounded for batches of ~32k samples.

``aucm`` -- :class:`AUCMLoss` (Yuan et al., ICCV 2021; LibAUC ``AUCMLoss``, for PESG)
    Per class c on scores s = sigmoid(x), with learnable a_c, b_c, alpha_c and positive
    ratio p_c (``imratio`` or the batch's fraction of positives among known labels)::

        L_c = E[(1-p_c)(s-a_c)^2 y + p_c (s-b_c)^2 (1-y)
                + 2 alpha_c (p_c (1-p_c) margin + p_c s (1-y) - (1-p_c) s y)] - p_c (1-p_c) alpha_c^2

    E = mean over the known entries of class c (LibAUC's batch mean with indicator weights).
    Defaults margin = 1 (LibAUC; CFT-BP-AUCM), a = b = alpha = 0 at start (LibAUC).

Use :func:`build_loss` (``LOSSES`` registry) to build one from a config name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .errors import ConfigError

__all__ = [
    "LOSSES",
    "AUCMLoss",
    "AsymmetricLoss",
    "AsymmetricPolynomialLoss",
    "BCELoss",
    "FocalLoss",
    "HillLoss",
    "Reduction",
    "RobustAsymmetricLoss",
    "WMWLoss",
    "build_loss",
    "list_losses",
]

Reduction = Literal["sum", "mean", "none"]
_REDUCTIONS = ("sum", "mean", "none")


# ---------------------------------------------------------------------------------------
# Parameter checks and numerics helpers
# ---------------------------------------------------------------------------------------


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    return reduction


def _check_float(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float within [lo, hi] (open ends as asked), else ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{name} must be a finite number in {rng}, got {value!r}")
    return v


def _check_coefs(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a sequence of numbers, got {value!r}")
    return tuple(_check_float(f"{name}[{i}]", v) for i, v in enumerate(value))


def _log_clamped(log_value: Tensor, eps: float) -> Tensor:
    """``log(max(q, eps))`` given ``log q``: finite, same value as the references."""
    return torch.clamp(log_value, min=math.log(eps))


def _pow_one_minus_p(x: Tensor, gamma: float) -> Tensor:
    """(1 - sigmoid(x)) ** gamma, computed as exp(gamma * logsigmoid(-x)): smooth, finite."""
    if gamma == 0:
        return torch.ones_like(x)
    return torch.exp(gamma * F.logsigmoid(-x))


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for base >= 0 with a zero (not NaN/inf) gradient at base == 0."""
    if exponent == 0:
        return torch.ones_like(base)
    if exponent == 1:
        return base
    if float(exponent).is_integer() and exponent > 1:
        return base.pow(exponent)  # gradient n * base^(n-1) is finite everywhere
    pos = base > 0
    return torch.where(pos, torch.where(pos, base, torch.ones_like(base)).pow(exponent), torch.zeros_like(base))


def _clipped_prob(x: Tensor, clip: float) -> Tensor:
    """p_m = max(sigmoid(x) - clip, 0)."""
    p = torch.sigmoid(x)
    return torch.clamp(p - clip, min=0.0) if clip > 0 else p


def _log_one_minus_clipped(x: Tensor, clip: float) -> Tensor:
    """log(1 - p_m) = log(min(1 - p + clip, 1)); finite for clip > 0, logsigmoid(-x) for clip = 0."""
    if clip > 0:
        return torch.log(torch.clamp(torch.sigmoid(-x) + clip, max=1.0))
    return F.logsigmoid(-x)


def _prepare(logits: Tensor, targets: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate inputs; return (x, y, used) with NaN targets replaced by 0 and ``used`` the
    boolean mask of entries that count. Half-precision logits are promoted to float32."""
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("logits and targets must be torch tensors")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    dtype = logits.dtype
    if not logits.is_floating_point() or dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    x = logits.to(dtype)
    t = targets.to(device=x.device, dtype=dtype)
    used = ~torch.isnan(t)
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError("mask must be a boolean torch tensor")
        try:
            m = torch.broadcast_to(mask.to(device=x.device, dtype=torch.bool), t.shape)
        except RuntimeError:
            raise ValueError(f"mask {tuple(mask.shape)} cannot be broadcast to targets {tuple(t.shape)}") from None
        used = used & m
    y = torch.where(used, t, torch.zeros_like(t))
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError(
            "targets must lie in [0, 1] (NaN = unknown); map uncertain (-1) labels with a LabelPolicy first"
        )
    return x, y, used


def _as_2d(x: Tensor, y: Tensor, used: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if x.dim() == 1:
        return x[:, None], y[:, None], used[:, None]
    if x.dim() != 2:
        raise ValueError(f"expected logits of shape (N, C) or (N,), got {tuple(x.shape)}")
    return x, y, used


# ---------------------------------------------------------------------------------------
# Element-wise losses
# ---------------------------------------------------------------------------------------


class _ElementwiseLoss(nn.Module):
    """Base class: ``loss = y * L+(x) + (1 - y) * L-(x)`` per entry, masked, then reduced."""

    def __init__(self, reduction: Reduction = "sum") -> None:
        super().__init__()
        self.reduction: str = _check_reduction(reduction)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Element-wise (L+, L-) for logits ``x``; both must be finite for finite ``x``."""
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        x, y, used = _prepare(logits, targets, mask)
        l_pos, l_neg = self.terms(x)
        loss = y * l_pos + (1.0 - y) * l_neg
        loss = torch.where(used, loss, torch.zeros_like(loss))
        if self.reduction == "none":
            return loss
        total = loss.sum()
        if self.reduction == "sum":
            return total
        return total / used.sum().clamp(min=1).to(total.dtype)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class BCELoss(_ElementwiseLoss):
    """Binary cross-entropy on logits: L+ = -w log p, L- = -log(1 - p).

    ``pos_weight``: a number or one weight per class (last dimension) for positives, as in
    ``torch.nn.BCEWithLogitsLoss``; ``None`` = 1.
    """

    pos_weight: Tensor | None

    def __init__(
        self, reduction: Reduction = "sum", pos_weight: float | Sequence[float] | Tensor | None = None
    ) -> None:
        super().__init__(reduction)
        if pos_weight is None:
            self.register_buffer("pos_weight", None)
        else:
            try:
                pw = torch.as_tensor(pos_weight, dtype=torch.float32).detach().clone()
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"pos_weight must be a number or a list of numbers, got {pos_weight!r}") from None
            if pw.dim() > 1 or not bool(torch.isfinite(pw).all()) or bool((pw < 0).any()):
                raise ConfigError("pos_weight must be a non-negative finite number or a 1-D list of them")
            self.register_buffer("pos_weight", pw)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        l_pos = -F.logsigmoid(x)
        if self.pos_weight is not None:
            l_pos = l_pos * self.pos_weight.to(device=x.device, dtype=x.dtype)
        return l_pos, -F.logsigmoid(-x)


class FocalLoss(_ElementwiseLoss):
    """Focal loss (Lin et al. 2017): L+ = -a (1-p)^g log p, L- = -(1-a) p^g log(1-p).

    ``alpha=None``: no balancing (weight 1 on both sides). The focal weight keeps its gradient.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: Reduction = "sum") -> None:
        super().__init__(reduction)
        self.gamma = _check_float("gamma", gamma, lo=0)
        self.alpha = None if alpha is None else _check_float("alpha", alpha, lo=0, hi=1)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        l_pos = -_pow_one_minus_p(x, self.gamma) * F.logsigmoid(x)
        l_neg = -_pow_one_minus_p(-x, self.gamma) * F.logsigmoid(-x)
        if self.alpha is not None:
            l_pos = self.alpha * l_pos
            l_neg = (1.0 - self.alpha) * l_neg
        return l_pos, l_neg

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


class AsymmetricLoss(_ElementwiseLoss):
    """ASL (Ridnik et al., ICCV 2021), defaults of the official Alibaba-MIIL code.

    L+ = -(1-p)^gamma_pos log(max(p, eps)); L- = -p_m^gamma_neg log(max(1 - p_m, eps)),
    p_m = max(p - clip, 0). The focal weights carry no gradient when ``detach_focal_weight``
    (the reference's ``disable_torch_grad_focal_loss``). gamma_pos = gamma_neg = clip = 0
    gives BCE.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal_weight: bool = True,
        reduction: Reduction = "sum",
    ) -> None:
        super().__init__(reduction)
        self.gamma_neg = _check_float("gamma_neg", gamma_neg, lo=0)
        self.gamma_pos = _check_float("gamma_pos", gamma_pos, lo=0)
        self.clip = _check_float("clip", 0.0 if clip is None else clip, lo=0, hi=1, hi_open=True)
        self.eps = _check_float("eps", eps, lo=0, hi=1, lo_open=True, hi_open=True)
        self.detach_focal_weight = bool(detach_focal_weight)

    def _focal_weights(self, x: Tensor, p_m: Tensor) -> tuple[Tensor, Tensor]:
        """(1-p)^gamma_pos and p_m^gamma_neg, detached when asked."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_focal_weight):
            w_pos = _pow_one_minus_p(x, self.gamma_pos)
            w_neg = _safe_pow(p_m, self.gamma_neg)
        if self.detach_focal_weight:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        return w_pos, w_neg

    def _log_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log max(p, eps), log max(1 - p_m, eps), p_m)."""
        log_p = _log_clamped(F.logsigmoid(x), self.eps)
        log_1m_pm = _log_clamped(_log_one_minus_clipped(x, self.clip), self.eps)
        return log_p, log_1m_pm, _clipped_prob(x, self.clip)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_p, log_1m_pm, p_m = self._log_terms(x)
        w_pos, w_neg = self._focal_weights(x, p_m)
        return -w_pos * log_p, -w_neg * log_1m_pm

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}"
        )


class AsymmetricPolynomialLoss(AsymmetricLoss):
    """APL (Huang et al., ICASSP 2023; formula of seed 002). See the module docstring.

    ``log_term=True``:
    L+ = (1-p)^gamma_pos [-log p + sum_m (alpha_m - 1/m)(1-p)^m],
    L- = p_m^gamma_neg [-log(1-p_m) + sum_n (beta_n - 1/n) p_m^n].
    ``log_term=False`` (seed 004 eq. 5): L+ = sum_m alpha_m (1-p)^(m+gamma_pos),
    L- = sum_n beta_n p_m^(n+gamma_neg).

    Defaults reproduce the official LUMIA-Group/APL code; seed 002 uses gamma_neg = 2.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        alpha: Sequence[float] = (0.0, 1.75),
        beta: Sequence[float] = (1.0,),
        log_term: bool = True,
        detach_focal_weight: bool = True,
        reduction: Reduction = "sum",
    ) -> None:
        super().__init__(gamma_neg, gamma_pos, clip, eps, detach_focal_weight, reduction)
        self.alpha = _check_coefs("alpha", alpha)
        self.beta = _check_coefs("beta", beta)
        self.log_term = bool(log_term)
        if not self.log_term and not (self.alpha and self.beta):
            raise ConfigError("with log_term=False, alpha and beta each need at least one coefficient")

    def _neg_factor(self, x: Tensor) -> Tensor | None:
        """Extra factor on the negative term (None = 1); RAL's Hill weight."""
        return None

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q = torch.sigmoid(-x)  # 1 - p
        p_m = _clipped_prob(x, self.clip)
        if self.log_term:  # the log's Taylor terms 1/m are already in -log
            log_p, log_1m_pm, _ = self._log_terms(x)
            inner_pos = _power_series(-log_p, q, self.alpha, taylor=True)
            inner_neg = _power_series(-log_1m_pm, p_m, self.beta, taylor=True)
        else:
            inner_pos = _power_series(torch.zeros_like(x), q, self.alpha, taylor=False)
            inner_neg = _power_series(torch.zeros_like(x), p_m, self.beta, taylor=False)
        w_pos, w_neg = self._focal_weights(x, p_m)
        l_pos = w_pos * inner_pos
        l_neg = w_neg * inner_neg
        factor = self._neg_factor(x)
        if factor is not None:
            l_neg = factor * l_neg
        return l_pos, l_neg

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"alpha={self.alpha}, beta={self.beta}, log_term={self.log_term}, "
            f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}"
        )


def _power_series(start: Tensor, base: Tensor, coefs: Sequence[float], taylor: bool) -> Tensor:
    """``start + sum_m c_m base^m`` (m from 1) with ``c_m = coefs[m-1] - 1/m`` when ``taylor``
    (APL's correction of the log's Taylor expansion), else ``coefs[m-1]``; zero terms skipped."""
    out = start
    for m, a in enumerate(coefs, start=1):
        c = a - 1.0 / m if taylor else a
        if c != 0:
            out = out + c * base.pow(m)
    return out


class RobustAsymmetricLoss(AsymmetricPolynomialLoss):
    """RAL (seed 004 eq. 6): :class:`AsymmetricPolynomialLoss` whose negative term is
    multiplied by a Hill-style weight.

    ``variant="paper"`` (default) follows the paper's equation: the negative term times
    psi(p) = lamb - p (p unclipped; the gradient flows through psi), the focusing weight
    p_m^gamma_neg detached as in ASL.

    ``variant="released"`` follows the authors' released code (kalelpark/RAL, ``Ralloss``),
    which differs from the equation in two ways: the negative term is weighted by
    (lamb - p) * p^2 * (lamb - (1 - p_m)) instead of (lamb - p), and the focusing weights
    (1 - p_t)^gamma keep their gradient (``detach_focal_weight`` defaults to False there).
    With the default coefficients both share the positive term
    -log p - (1 - p) + 1.25 (1 - p)^2 and the negative term's -log(1 - p_m) p_m^gamma_neg.
    """

    VARIANTS = ("paper", "released")

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        alpha: Sequence[float] = (0.0, 1.75),
        beta: Sequence[float] = (1.0,),
        log_term: bool = True,
        detach_focal_weight: bool | None = None,
        reduction: Reduction = "sum",
        lamb: float = 1.5,
        variant: str = "paper",
    ) -> None:
        if variant not in self.VARIANTS:
            raise ConfigError(f"RAL variant must be one of {', '.join(self.VARIANTS)}, got {variant!r}")
        if detach_focal_weight is None:
            detach_focal_weight = variant == "paper"
        super().__init__(gamma_neg, gamma_pos, clip, eps, alpha, beta, log_term, detach_focal_weight, reduction)
        self.lamb = _check_float("lamb", lamb)
        self.variant = variant

    def _neg_factor(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(x)
        if self.variant == "paper":
            return self.lamb - p
        q_m = 1.0 - _clipped_prob(x, self.clip)  # the released code's clipped 1 - p
        return (self.lamb - p) * p.square() * (self.lamb - q_m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lamb={self.lamb}, variant={self.variant!r}"


class HillLoss(_ElementwiseLoss):
    """Hill loss (Zhang et al. 2021), defaults of the official code.

    L+ = -(1 - p+)^gamma log p+ with p+ = sigmoid(x - margin) (focal margin, weight keeps its
    gradient); L- = (lamb - p) p^2 with p = sigmoid(x).
    """

    def __init__(
        self, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0, reduction: Reduction = "sum"
    ) -> None:
        super().__init__(reduction)
        self.lamb = _check_float("lamb", lamb)
        self.margin = _check_float("margin", margin)
        self.gamma = _check_float("gamma", gamma, lo=0)

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xm = x - self.margin
        l_pos = -_pow_one_minus_p(xm, self.gamma) * F.logsigmoid(xm)
        p = torch.sigmoid(x)
        return l_pos, (self.lamb - p) * p * p

    def extra_repr(self) -> str:
        return f"lamb={self.lamb}, margin={self.margin}, gamma={self.gamma}, reduction={self.reduction!r}"


# ---------------------------------------------------------------------------------------
# Pairwise / per-class losses
# ---------------------------------------------------------------------------------------


class _WMWPairSum(torch.autograd.Function):
    """sum_{i,j} max(gamma - (pos_i - neg_j), 0)^power, in chunks of positives.

    Nothing of size P x Q is kept for backward: the gradient is recomputed chunk by chunk,
    so memory is bounded by the chunk size whatever the batch size.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, pos: Tensor, neg: Tensor, gamma: float, power: float, chunk: int
    ) -> Tensor:
        ctx.save_for_backward(pos, neg)
        ctx.gamma, ctx.power, ctx.chunk = gamma, power, chunk
        total = pos.new_zeros(())
        for start in range(0, pos.shape[0], chunk):
            t = (gamma - (pos[start : start + chunk, None] - neg[None, :])).clamp_(min=0)
            total = total + (t.pow_(power) if power != 1 else t).sum()
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:  # type: ignore[override]
        pos, neg = ctx.saved_tensors
        gamma, power, chunk = ctx.gamma, ctx.power, ctx.chunk
        g_pos = torch.empty_like(pos)
        g_neg = torch.zeros_like(neg)
        for start in range(0, pos.shape[0], chunk):
            t = (gamma - (pos[start : start + chunk, None] - neg[None, :])).clamp_(min=0)
            active = t > 0
            if power == 1:
                w = active.to(t.dtype)
            else:
                base = torch.where(active, t, torch.ones_like(t))
                w = torch.where(active, power * base.pow(power - 1), torch.zeros_like(t))
            g_pos[start : start + chunk] = -w.sum(dim=1)
            g_neg += w.sum(dim=0)
        return g_pos * grad_out, g_neg * grad_out, None, None, None


class WMWLoss(nn.Module):
    """Differentiable Wilcoxon-Mann-Whitney AUC surrogate (Yan et al., ICML 2003).

    On s = sigmoid(x), per class, for every (positive i, negative j) pair among the used
    entries: R = (gamma - (s_i - s_j))^p if s_i - s_j < gamma else 0. Targets are made hard
    (>= 0.5 positive). A class without positives or without negatives contributes 0.

    ``reduction``: ``"sum"`` = sum over pairs and classes; ``"mean"`` = that sum divided by
    the number of pairs (0 when there are none); ``"none"`` = per-class sums, shape (C,)
    (a 0-d tensor for 1-D input).
    """

    #: Pair-matrix elements evaluated at once (8 MB per float32 temporary; peak ~0.1 GB).
    pair_chunk_elements: int = 1 << 21

    def __init__(self, gamma: float = 0.3, p: float = 2.0, reduction: Reduction = "sum") -> None:
        super().__init__()
        self.gamma = _check_float("gamma", gamma, lo=0)
        self.p = _check_float("p", p, lo=0, lo_open=True)
        self.reduction: str = _check_reduction(reduction)

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        x, y, used = _prepare(logits, targets, mask)
        one_d = x.dim() == 1
        x, y, used = _as_2d(x, y, used)
        s = torch.sigmoid(x)
        is_pos = used & (y >= 0.5)
        is_neg = used & (y < 0.5)
        per_class = []
        n_pairs = 0
        for c in range(s.shape[1]):
            pos = s[:, c][is_pos[:, c]]
            neg = s[:, c][is_neg[:, c]]
            if pos.numel() == 0 or neg.numel() == 0:
                per_class.append(s.new_zeros(()) + 0.0 * s[:, c].sum())  # keeps the graph connected
                continue
            n_pairs += pos.numel() * neg.numel()
            chunk = max(1, self.pair_chunk_elements // neg.numel())
            per_class.append(_WMWPairSum.apply(pos, neg, self.gamma, self.p, chunk))
        values = torch.stack(per_class)
        if self.reduction == "none":
            return values[0] if one_d else values
        total = values.sum()
        if self.reduction == "sum":
            return total
        return total / max(n_pairs, 1)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, p={self.p}, reduction={self.reduction!r}"


class AUCMLoss(nn.Module):
    """AUC-margin loss (Yuan et al., ICCV 2021; LibAUC), one (a, b, alpha) per class.

    On s = sigmoid(x), per class c with positive ratio p_c::

        L_c = E[(1-p_c)(s-a_c)^2 y + p_c (s-b_c)^2 (1-y)
                + 2 alpha_c (p_c (1-p_c) margin + p_c s (1-y) - (1-p_c) s y)] - p_c (1-p_c) alpha_c^2

    E is the mean over the known (used) entries of class c, as LibAUC's batch mean with
    indicator weights. p_c = ``imratio`` (a number or one per class) if given, else the
    fraction of positives among the known labels of the batch. ``a``, ``b``, ``alpha`` are
    ``nn.Parameter`` of shape (C,), initialised to 0 like LibAUC; hand them to PESG
    (gradient descent on a, b and the model, ascent on alpha). A class with no known label
    contributes 0.

    ``reduction``: ``"mean"`` (default) = mean of L_c over classes with known labels (0 when
    none); ``"sum"`` = sum over classes; ``"none"`` = the (C,) vector.
    """

    def __init__(
        self,
        num_classes: int,
        margin: float = 1.0,
        imratio: float | Sequence[float] | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.margin = _check_float("margin", margin, lo=0)
        self.reduction: str = _check_reduction(reduction)
        self.imratio: tuple[float, ...] | None
        if imratio is None:
            self.imratio = None
        else:
            ratios = _check_coefs("imratio", imratio)
            if len(ratios) == 1:
                ratios = ratios * num_classes
            if len(ratios) != num_classes:
                raise ConfigError(f"imratio needs 1 or {num_classes} values, got {len(ratios)}")
            for r in ratios:
                _check_float("imratio", r, lo=0, hi=1, lo_open=True, hi_open=True)
            self.imratio = ratios
        self.a = nn.Parameter(torch.zeros(num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))
        self.alpha = nn.Parameter(torch.zeros(num_classes))

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        x, y, used = _prepare(logits, targets, mask)
        one_d = x.dim() == 1
        x, y, used = _as_2d(x, y, used)
        if x.shape[1] != self.num_classes:
            raise ValueError(f"AUCMLoss was built for {self.num_classes} classes, got logits with {x.shape[1]}")
        s = torch.sigmoid(x)
        a = self.a.to(s.dtype)
        b = self.b.to(s.dtype)
        alpha = self.alpha.to(s.dtype)
        usedf = used.to(s.dtype)
        n_known = usedf.sum(dim=0)  # (C,)
        has = n_known > 0
        denom = n_known.clamp(min=1)
        if self.imratio is None:
            p = (y.sum(dim=0) / denom).detach()  # y is 0 at unused entries
        else:
            p = torch.tensor(self.imratio, dtype=s.dtype, device=s.device)
        term = (
            (1 - p) * (s - a) ** 2 * y
            + p * (s - b) ** 2 * (1 - y)
            + 2 * alpha * (p * (1 - p) * self.margin + p * s * (1 - y) - (1 - p) * s * y)
        )
        term = torch.where(used, term, torch.zeros_like(term))
        per_class = term.sum(dim=0) / denom - p * (1 - p) * alpha**2
        per_class = torch.where(has, per_class, torch.zeros_like(per_class))
        if self.reduction == "none":
            return per_class[0] if one_d else per_class
        total = per_class.sum()
        if self.reduction == "sum":
            return total
        return total / has.sum().clamp(min=1).to(total.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, margin={self.margin}, imratio={self.imratio}, "
            f"reduction={self.reduction!r}"
        )


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "asl": AsymmetricLoss,
    "apl": AsymmetricPolynomialLoss,
    "ral": RobustAsymmetricLoss,
    "hill": HillLoss,
    "wmw": WMWLoss,
    "aucm": AUCMLoss,
}


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return sorted(LOSSES)


def build_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss registered as ``name`` (case-insensitive) with ``params``.

    Raises ConfigError for an unknown name, unknown / missing parameters or invalid values.
    ``aucm`` needs ``num_classes``.
    """
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
    cls = LOSSES[key]
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"invalid parameters for loss {key!r} ({cls.__name__}): {exc}") from None


def check_loss(name: str, params: dict[str, Any]) -> None:
    """Fail with a ConfigError for an unknown loss, unknown parameter names or invalid values,
    without needing the data (used when a config is read)."""
    import inspect

    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
    cls = LOSSES[key]
    try:
        inspect.signature(cls.__init__).bind_partial(None, **params)
    except TypeError as exc:
        raise ConfigError(f"invalid parameters for loss {key!r} ({cls.__name__}): {exc}") from None
    if "num_classes" in inspect.signature(cls.__init__).parameters and "num_classes" not in params:
        return  # needs the class count, known once the tables are read
    build_loss(key, **params)

