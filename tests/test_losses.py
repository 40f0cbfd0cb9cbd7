"""Tests of cxrkit.losses against independent float64 NumPy implementations, hand-computed
values, stability on extreme logits, masking of unknown labels and gradient flow."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from cxrkit.errors import ConfigError
from cxrkit.losses import (
    LOSSES,
    AsymmetricLoss,
    AsymmetricPolynomialLoss,
    AUCMLoss,
    BCELoss,
    FocalLoss,
    HillLoss,
    RobustAsymmetricLoss,
    WMWLoss,
    build_loss,
)

torch.set_num_threads(2)

# ---------------------------------------------------------------------------------------
# Independent NumPy references (float64). Each returns element-wise (L+, L-).
# ---------------------------------------------------------------------------------------


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def np_logsigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def ref_bce(x: np.ndarray, pos_weight: Any = None) -> tuple[np.ndarray, np.ndarray]:
    w = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    return -w * np_logsigmoid(x), -np_logsigmoid(-x)


def ref_focal(x: np.ndarray, gamma: float = 2.0, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    p, q = np_sigmoid(x), np_sigmoid(-x)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    return -a_pos * q**gamma * np_logsigmoid(x), -a_neg * p**gamma * np_logsigmoid(-x)


def ref_asl(x: np.ndarray, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05,
            eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    # structured like the official Alibaba-MIIL code: xs_neg = (1 - p + clip).clamp(max=1)
    xs_pos = np_sigmoid(x)
    xs_neg = np_sigmoid(-x)
    if clip > 0:
        xs_neg = np.minimum(xs_neg + clip, 1.0)
    p_m = 1.0 - xs_neg
    l_pos = -np.log(np.maximum(xs_pos, eps)) * np_sigmoid(-x) ** gamma_pos
    l_neg = -np.log(np.maximum(xs_neg, eps)) * p_m**gamma_neg
    return l_pos, l_neg


def ref_apl(x: np.ndarray, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
            eps: float = 1e-8, alpha: tuple[float, ...] = (0.0, 1.75), beta: tuple[float, ...] = (1.0,),
            log_term: bool = True, lamb: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = np_sigmoid(x)
    q = np_sigmoid(-x)
    one_m_pm = np.minimum(q + clip, 1.0) if clip > 0 else q
    p_m = 1.0 - one_m_pm
    if log_term:
        inner_pos = -np.log(np.maximum(p, eps))
        for m, a in enumerate(alpha, start=1):
            inner_pos = inner_pos + (a - 1.0 / m) * q**m
        inner_neg = -np.log(np.maximum(one_m_pm, eps))
        for n, b in enumerate(beta, start=1):
            inner_neg = inner_neg + (b - 1.0 / n) * p_m**n
        l_pos, l_neg = q**gamma_pos * inner_pos, p_m**gamma_neg * inner_neg
    else:
        l_pos = sum(a * q ** (m + gamma_pos) for m, a in enumerate(alpha, start=1))
        l_neg = sum(b * p_m ** (n + gamma_neg) for n, b in enumerate(beta, start=1))
    if lamb is not None:
        l_neg = (lamb - p) * l_neg
    return np.asarray(l_pos), np.asarray(l_neg)


def ref_apl_official(x: np.ndarray, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                     eps: float = 1e-8, epsilon_neg: float = 0.0, epsilon_pos: float = 1.0,
                     epsilon_pos_pow: float = -2.5) -> tuple[np.ndarray, np.ndarray]:
    """Structure of the official LUMIA-Group/APL ``APLLoss`` (its parameterisation)."""
    xs_pos = np_sigmoid(x)
    xs_neg = np.minimum(np_sigmoid(-x) + clip, 1.0)
    pc = np.maximum(xs_pos, eps)
    los_pos = np.log(pc) + epsilon_pos * (1 - pc) + epsilon_pos_pow * 0.5 * (1 - pc) ** 2
    los_neg = np.log(np.maximum(xs_neg, eps)) + epsilon_neg * np.maximum(xs_neg, eps)
    w_pos = (1 - xs_pos) ** gamma_pos
    w_neg = (1 - xs_neg) ** gamma_neg
    return -los_pos * w_pos, -los_neg * w_neg


def ref_hill(x: np.ndarray, lamb: float = 1.5, margin: float = 1.0,
             gamma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    xm = x - margin
    p_pos = np_sigmoid(xm)
    p = np_sigmoid(x)
    return -((1.0 - p_pos) ** gamma) * np_logsigmoid(xm), (lamb - p) * p**2


def ref_reduce(l_pos: np.ndarray, l_neg: np.ndarray, t: np.ndarray, reduction: str) -> np.ndarray:
    known = ~np.isnan(t)
    y = np.where(known, t, 0.0)
    loss = np.where(known, y * l_pos + (1 - y) * l_neg, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum())
    return np.asarray(loss.sum() / max(int(known.sum()), 1))


def ref_wmw(x: np.ndarray, t: np.ndarray, gamma: float = 0.3, p: float = 2.0) -> tuple[np.ndarray, int]:
    """Per-class pair sums (vectorised NumPy) and the number of pairs."""
    x2, t2 = (x[:, None], t[:, None]) if x.ndim == 1 else (x, t)
    s = np_sigmoid(x2)
    out, n_pairs = [], 0
    for c in range(s.shape[1]):
        known = ~np.isnan(t2[:, c])
        pos = s[known & (t2[:, c] >= 0.5), c]
        neg = s[known & (t2[:, c] < 0.5), c]
        d = pos[:, None] - neg[None, :]
        out.append(np.where(d < gamma, np.abs(-(d - gamma)) ** p, 0.0).sum())
        n_pairs += pos.size * neg.size
    return np.asarray(out), n_pairs


def brute_wmw(x: list[float], t: list[float], gamma: float, p: float) -> float:
    s = [1.0 / (1.0 + math.exp(-v)) for v in x]
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if t[i] == 1 and t[j] == 0:
                d = s[i] - s[j]
                if d < gamma:
                    total += (-(d - gamma)) ** p
    return total


def ref_aucm(x: np.ndarray, t: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: np.ndarray,
             margin: float = 1.0, imratio: float | None = None) -> np.ndarray:
    s = np_sigmoid(x)
    out = np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        known = ~np.isnan(t[:, c])
        if not known.any():
            continue
        sc, yc = s[known, c], t[known, c]
        pc = yc.mean() if imratio is None else imratio
        pos = (yc == 1).astype(float)
        neg = (yc == 0).astype(float)
        out[c] = (
            (1 - pc) * np.mean((sc - a[c]) ** 2 * pos)
            + pc * np.mean((sc - b[c]) ** 2 * neg)
            + 2 * alpha[c] * (pc * (1 - pc) * margin + np.mean(pc * sc * neg - (1 - pc) * sc * pos))
            - pc * (1 - pc) * alpha[c] ** 2
        )
    return out


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

EXTREMES = np.array([30.0, -30.0, 1e4, -1e4, 100.0, -100.0, 0.0, 15.0, -15.0, 3.0])


def make_batch(n: int = 48, c: int = 5, seed: int = 0, nan_frac: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 3.0, size=(n, c))
    t = (rng.random((n, c)) < 0.4).astype(np.float64)
    # extreme logits with both target values (rows 0..9 positive, rows 10..19 negative)
    x[: len(EXTREMES), 0] = EXTREMES
    t[: len(EXTREMES), 0] = 1.0
    x[len(EXTREMES) : 2 * len(EXTREMES), 0] = EXTREMES
    t[len(EXTREMES) : 2 * len(EXTREMES), 0] = 0.0
    nan = rng.random((n, c)) < nan_frac
    nan[: 2 * len(EXTREMES), 0] = False
    t[nan] = np.nan
    return x, t


# name -> (torch factory, numpy element-wise reference)
CASES: dict[str, tuple[Callable[[str], torch.nn.Module], Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]] = {
    "bce": (lambda r: BCELoss(reduction=r), ref_bce),
    "bce-posweight": (
        lambda r: BCELoss(reduction=r, pos_weight=[1.0, 2.0, 0.5, 3.0, 1.5]),
        lambda x: ref_bce(x, pos_weight=[1.0, 2.0, 0.5, 3.0, 1.5]),
    ),
    "focal": (lambda r: FocalLoss(reduction=r), ref_focal),
    "focal-alpha": (lambda r: FocalLoss(gamma=1.5, alpha=0.25, reduction=r), lambda x: ref_focal(x, 1.5, 0.25)),
    "asl": (lambda r: AsymmetricLoss(reduction=r), ref_asl),
    "asl-noclip": (
        lambda r: AsymmetricLoss(gamma_neg=2.0, gamma_pos=0.0, clip=0.0, reduction=r),
        lambda x: ref_asl(x, 2.0, 0.0, 0.0),
    ),
    "asl-grad-weights": (
        lambda r: AsymmetricLoss(gamma_neg=3.0, gamma_pos=0.5, clip=0.1, detach_focal_weight=False, reduction=r),
        lambda x: ref_asl(x, 3.0, 0.5, 0.1),
    ),
    "apl": (lambda r: AsymmetricPolynomialLoss(reduction=r), ref_apl),
    "apl-seed002": (
        lambda r: AsymmetricPolynomialLoss(gamma_neg=2.0, gamma_pos=0.0, reduction=r),
        lambda x: ref_apl(x, gamma_neg=2.0),
    ),
    "apl-3terms": (
        lambda r: AsymmetricPolynomialLoss(gamma_pos=1.0, alpha=(0.5, 1.0, 2.0), beta=(1.5, 0.2), reduction=r),
        lambda x: ref_apl(x, gamma_pos=1.0, alpha=(0.5, 1.0, 2.0), beta=(1.5, 0.2)),
    ),
    "apl-poly": (
        lambda r: AsymmetricPolynomialLoss(gamma_pos=1.0, gamma_neg=2.0, alpha=(1.0, 0.5, 0.3), beta=(1.0, 2.0),
                                           log_term=False, reduction=r),
        lambda x: ref_apl(x, gamma_pos=1.0, gamma_neg=2.0, alpha=(1.0, 0.5, 0.3), beta=(1.0, 2.0), log_term=False),
    ),
    "ral": (lambda r: RobustAsymmetricLoss(reduction=r), lambda x: ref_apl(x, lamb=1.5)),
    "ral-poly": (
        lambda r: RobustAsymmetricLoss(gamma_neg=1.0, alpha=(1.0, 2.0), beta=(1.0, 0.5), log_term=False, lamb=2.0,
                                       reduction=r),
        lambda x: ref_apl(x, gamma_neg=1.0, alpha=(1.0, 2.0), beta=(1.0, 0.5), log_term=False, lamb=2.0),
    ),
    "hill": (lambda r: HillLoss(reduction=r), ref_hill),
    "hill-custom": (
        lambda r: HillLoss(lamb=2.0, margin=0.5, gamma=1.0, reduction=r),
        lambda x: ref_hill(x, 2.0, 0.5, 1.0),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_elementwise_matches_numpy(case: str, reduction: str, dtype: torch.dtype) -> None:
    factory, ref = CASES[case]
    x, t = make_batch(seed=1)
    out = factory(reduction)(torch.tensor(x, dtype=dtype), torch.tensor(t, dtype=dtype))
    assert out.dtype == dtype
    expected = ref_reduce(*ref(x), t, reduction)
    assert np.all(np.isfinite(expected))
    atol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=atol)
    if reduction == "none":
        assert out.shape == x.shape
        assert torch.all(out[torch.isnan(torch.tensor(t))] == 0)


def test_apl_defaults_match_official_parameterisation() -> None:
    x, t = make_batch(seed=2)
    for gamma_neg in (4.0, 2.0):
        out = AsymmetricPolynomialLoss(gamma_neg=gamma_neg, reduction="none")(torch.tensor(x), torch.tensor(t))
        expected = ref_reduce(*ref_apl_official(x, gamma_neg=gamma_neg), t, "none")
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-10)


def test_one_dimensional_input() -> None:
    x, t = make_batch(seed=3)
    x1, t1 = x[:, 1], t[:, 1]
    for name, (factory, ref) in CASES.items():
        if "posweight" in name:
            continue
        out = factory("sum")(torch.tensor(x1), torch.tensor(t1))
        np.testing.assert_allclose(out.item(), ref_reduce(*ref(x1), t1, "sum"), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------


def scalar(loss: torch.nn.Module, x: float, y: float) -> float:
    return float(loss(torch.tensor([x], dtype=torch.float64), torch.tensor([y], dtype=torch.float64)))


def test_hand_computed_values() -> None:
    assert scalar(BCELoss(), 0.0, 1.0) == pytest.approx(math.log(2), rel=1e-12)
    assert scalar(BCELoss(), 0.0, 0.0) == pytest.approx(math.log(2), rel=1e-12)
    assert scalar(BCELoss(pos_weight=3.0), 0.0, 1.0) == pytest.approx(3 * math.log(2), rel=1e-12)
    # focal at x = 0: p = 0.5 -> 0.25 * log 2 on both sides; alpha = 0.25 weights positives
    assert scalar(FocalLoss(), 0.0, 1.0) == pytest.approx(0.25 * math.log(2), rel=1e-12)
    assert scalar(FocalLoss(alpha=0.25), 0.0, 0.0) == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-12)
    # ASL x = 0, y = 0, clip 0.05, gamma_neg 4: p = 0.5, p_m = 0.45
    assert scalar(AsymmetricLoss(), 0.0, 0.0) == pytest.approx(-(0.45**4) * math.log(0.55), rel=1e-12)
    # ASL x = 0, y = 1, gamma_pos 1: -(0.5) log 0.5
    assert scalar(AsymmetricLoss(), 0.0, 1.0) == pytest.approx(0.5 * math.log(2), rel=1e-12)
    # ASL negative with p below the clip contributes exactly 0
    assert scalar(AsymmetricLoss(), -5.0, 0.0) == 0.0
    # ASL clamps at eps: x = -1e4, y = 1, gamma_pos = 0 -> -log(1e-8)
    assert scalar(AsymmetricLoss(gamma_pos=0.0), -1e4, 1.0) == pytest.approx(-math.log(1e-8), rel=1e-12)
    # APL official defaults at x = 0, y = 1: -log .5 - .5 + 1.25 * .25
    assert scalar(AsymmetricPolynomialLoss(), 0.0, 1.0) == pytest.approx(math.log(2) - 0.5 + 0.3125, rel=1e-12)
    # APL negative at x = 0 (beta = 1 -> no polynomial correction): ASL with gamma_neg 4
    assert scalar(AsymmetricPolynomialLoss(), 0.0, 0.0) == pytest.approx(-(0.45**4) * math.log(0.55), rel=1e-12)
    # RAL negative at x = 0: (1.5 - 0.5) * the APL value
    assert scalar(RobustAsymmetricLoss(lamb=2.0), 0.0, 0.0) == pytest.approx(-1.5 * 0.45**4 * math.log(0.55), rel=1e-12)
    # APL pure polynomial, x = 0, y = 1, alpha = (1, 2), gamma_pos = 0: 1 * .5 + 2 * .25
    poly = AsymmetricPolynomialLoss(alpha=(1.0, 2.0), log_term=False)
    assert scalar(poly, 0.0, 1.0) == pytest.approx(1.0, rel=1e-12)
    # Hill at x = 1 (margin 1): positive -(1 - 0.5)^2 log 0.5; negative at x = 0: (1.5 - .5) * .25
    assert scalar(HillLoss(), 1.0, 1.0) == pytest.approx(0.25 * math.log(2), rel=1e-12)
    assert scalar(HillLoss(), 0.0, 0.0) == pytest.approx(0.25, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Stability and gradients
# ---------------------------------------------------------------------------------------


def all_losses(num_classes: int) -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    for name in LOSSES:
        params: dict[str, Any] = {"num_classes": num_classes} if name == "aucm" else {}
        out[name] = build_loss(name, **params)
    out["asl-grad"] = AsymmetricLoss(gamma_pos=0.5, detach_focal_weight=False)
    out["apl-grad"] = AsymmetricPolynomialLoss(gamma_pos=1.5, gamma_neg=2.5, detach_focal_weight=False)
    out["ral-grad"] = RobustAsymmetricLoss(gamma_pos=0.5, gamma_neg=0.5, detach_focal_weight=False)
    out["apl-poly"] = AsymmetricPolynomialLoss(gamma_neg=0.5, log_term=False, detach_focal_weight=False)
    out["asl-noclip"] = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    out["wmw-p1"] = WMWLoss(p=1.0)
    out["wmw-p05"] = WMWLoss(p=0.5)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_finite(dtype: torch.dtype) -> None:
    vals = torch.tensor([1e4, -1e4, 100.0, -100.0, 30.0, -30.0], dtype=dtype)
    x = torch.stack([vals, vals.flip(0), vals], dim=1)  # (6, 3)
    t = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=dtype)
    t[0, 2] = float("nan")
    for name, loss in all_losses(3).items():
        for targets in (t, 1 - t, torch.full_like(t, 0.7)):
            logits = x.clone().requires_grad_(True)
            value = loss(logits, targets)
            assert torch.isfinite(value).all(), name
            value.sum().backward()
            assert logits.grad is not None and torch.isfinite(logits.grad).all(), name


def test_gradient_flow_and_nan_entries_get_zero_gradient() -> None:
    rng = np.random.default_rng(4)
    # |x| < 0.5: p stays above the clip (ASL negatives keep a gradient) and all WMW pairs are active
    x = rng.uniform(-0.5, 0.5, size=(16, 3))
    t = np.tile(np.array([1.0, 0.0]), 8)[:, None].repeat(3, axis=1)
    t[[2, 5, 11], [0, 1, 2]] = np.nan
    nan = torch.tensor(np.isnan(t))
    for name, loss in all_losses(3).items():
        logits = torch.tensor(x, requires_grad=True)
        loss(logits, torch.tensor(t)).backward()
        g = logits.grad
        assert g is not None
        assert torch.all(g[nan] == 0), name
        assert torch.all(g[~nan] != 0), name
        if isinstance(loss, AUCMLoss):
            for p in (loss.a, loss.b, loss.alpha):
                assert p.grad is not None and torch.all(p.grad != 0), name


def test_nan_targets_do_not_leak_with_extreme_logits() -> None:
    x = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.3, -0.2]], dtype=torch.float32, requires_grad=True)
    t = torch.tensor([[float("nan"), float("nan")], [1.0, 0.0], [0.0, 1.0]])
    for name, loss in all_losses(2).items():
        x.grad = None
        value = loss(x, t)
        value.sum().backward()
        assert torch.isfinite(value).all(), name
        assert x.grad is not None and torch.all(x.grad[0] == 0), name


@pytest.mark.parametrize(
    "loss",
    [
        BCELoss(pos_weight=2.0),
        FocalLoss(gamma=1.5, alpha=0.3),
        AsymmetricLoss(gamma_pos=1.0, gamma_neg=3.0, clip=0.05, detach_focal_weight=False),
        AsymmetricPolynomialLoss(gamma_pos=1.0, gamma_neg=2.0, detach_focal_weight=False),
        AsymmetricPolynomialLoss(log_term=False, alpha=(1.0, 0.5), beta=(2.0,), detach_focal_weight=False),
        RobustAsymmetricLoss(gamma_pos=1.0, gamma_neg=2.0, detach_focal_weight=False),
        HillLoss(),
        WMWLoss(gamma=0.3, p=2.0),
        WMWLoss(gamma=0.4, p=3.0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradcheck(loss: torch.nn.Module) -> None:
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(0.0, 1.5, size=(10, 2)), requires_grad=True)
    t = torch.tensor((rng.random((10, 2)) < 0.5).astype(float))
    t[0, 0], t[1, 1] = 1.0, 0.0
    t[3, 1] = float("nan")
    assert torch.autograd.gradcheck(lambda z: loss(z, t), (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_aucm_with_parameters() -> None:
    rng = np.random.default_rng(6)
    loss = AUCMLoss(2, margin=0.8).double()
    with torch.no_grad():
        loss.a.copy_(torch.tensor([0.3, 0.7]))
        loss.b.copy_(torch.tensor([0.1, 0.2]))
        loss.alpha.copy_(torch.tensor([0.5, -0.4]))
    x = torch.tensor(rng.normal(size=(12, 2)), requires_grad=True)
    t = torch.tensor((rng.random((12, 2)) < 0.5).astype(float))
    t[4, 0] = float("nan")

    def f(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, al: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, {"a": a, "b": b, "alpha": al}, (z, t))

    params = tuple(p.detach().clone().requires_grad_(True) for p in (loss.a, loss.b, loss.alpha))
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_detached_focal_weight_changes_gradient_not_value() -> None:
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    t = (torch.arange(13) % 2).to(torch.float64)
    grads, values = [], []
    for detach in (True, False):
        z = x.clone().requires_grad_(True)
        v = AsymmetricLoss(detach_focal_weight=detach)(z, t)
        v.backward()
        values.append(v.item())
        grads.append(z.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert not torch.allclose(grads[0], grads[1])


# ---------------------------------------------------------------------------------------
# Relations between losses, soft targets, masks, reductions, input checks
# ---------------------------------------------------------------------------------------


def test_asl_without_focusing_or_clip_is_bce() -> None:
    x, t = make_batch(seed=7)
    xt, tt = torch.tensor(x), torch.tensor(t)
    keep = np.abs(x) < 15  # BCE is unclamped, ASL clamps log p at log(eps) = -18.4
    tt_kept = torch.where(torch.tensor(keep), tt, torch.tensor(float("nan"), dtype=tt.dtype))
    for reduction in ("sum", "mean", "none"):
        asl = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0, reduction=reduction)(xt, tt_kept)
        bce = BCELoss(reduction=reduction)(xt, tt_kept)
        torch.testing.assert_close(asl, bce, rtol=1e-12, atol=1e-12)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(xt[keep & ~np.isnan(t)], tt[keep & ~np.isnan(t)],
                                                               reduction="sum")
    torch.testing.assert_close(BCELoss()(xt, tt_kept), ref)


@pytest.mark.parametrize("gammas", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.05), (3.0, 2.0, 0.0)])
def test_apl_with_natural_coefficients_is_asl(gammas: tuple[float, float, float]) -> None:
    gn, gp, clip = gammas
    x, t = make_batch(seed=8)
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t)
    asl = AsymmetricLoss(gamma_neg=gn, gamma_pos=gp, clip=clip, reduction="none")(xt, tt)
    apl = AsymmetricPolynomialLoss(gamma_neg=gn, gamma_pos=gp, clip=clip, alpha=(1.0, 0.5), beta=(1.0,),
                                   reduction="none")(xt, tt)
    torch.testing.assert_close(apl, asl, rtol=1e-12, atol=1e-12)
    (g_asl,) = torch.autograd.grad(asl.sum(), xt, retain_graph=True)
    (g_apl,) = torch.autograd.grad(apl.sum(), xt)
    torch.testing.assert_close(g_apl, g_asl, rtol=1e-10, atol=1e-12)


def test_ral_is_apl_with_hill_weight_on_negatives() -> None:
    x, _ = make_batch(seed=9)
    xt = torch.tensor(x)
    p = torch.sigmoid(xt)
    kwargs: dict[str, Any] = {"gamma_neg": 2.0, "alpha": (0.5, 1.0), "beta": (2.0,), "reduction": "none"}
    for lamb in (1.5, 2.0, 1.0):
        neg_t, pos_t = torch.zeros_like(xt), torch.ones_like(xt)
        ral = RobustAsymmetricLoss(lamb=lamb, **kwargs)
        apl = AsymmetricPolynomialLoss(**kwargs)
        torch.testing.assert_close(ral(xt, neg_t), (lamb - p) * apl(xt, neg_t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ral(xt, pos_t), apl(xt, pos_t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bce", "focal", "asl", "apl", "ral", "hill"])
def test_soft_targets_mix_both_terms(name: str) -> None:
    x = torch.linspace(-6, 6, 25, dtype=torch.float64)
    loss = build_loss(name, reduction="none")
    pos = loss(x, torch.ones_like(x))
    neg = loss(x, torch.zeros_like(x))
    for y in (0.7, 0.2):
        soft = loss(x, torch.full_like(x, y))
        torch.testing.assert_close(soft, y * pos + (1 - y) * neg, rtol=1e-12, atol=1e-12)


def test_mask_is_combined_with_nan_targets() -> None:
    x, t = make_batch(seed=10)
    mask = np.random.default_rng(10).random(x.shape) < 0.7
    expected_targets = np.where(mask, t, np.nan)
    for _name, (factory, ref) in CASES.items():
        for reduction in ("sum", "mean"):
            out = factory(reduction)(torch.tensor(x), torch.tensor(t), mask=torch.tensor(mask))
            np.testing.assert_allclose(out.item(), ref_reduce(*ref(x), expected_targets, reduction), rtol=1e-5)
    # a per-class mask broadcasts over samples
    col_mask = torch.tensor([True, False, True, True, False])
    out = BCELoss()(torch.tensor(x), torch.tensor(t), mask=col_mask)
    ref_t = t.copy()
    ref_t[:, ~col_mask.numpy()] = np.nan
    np.testing.assert_allclose(out.item(), ref_reduce(*ref_bce(x), ref_t, "sum"), rtol=1e-10)


def test_mean_with_no_known_entry_is_zero() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.full((4, 3), float("nan"))
    for name, loss in all_losses(3).items():
        loss.reduction = "mean"
        v = loss(x, t)
        assert v.item() == 0.0, name
        v.backward()  # still part of the graph
        assert x.grad is not None and torch.all(x.grad == 0)


def test_half_precision_logits_computed_in_float32() -> None:
    x = torch.tensor([[1e4, -1e4, 0.5]], dtype=torch.float16)
    t = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float16)
    for loss in (BCELoss(), AsymmetricLoss(), RobustAsymmetricLoss()):
        v = loss(x, t)
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="same shape"):
        BCELoss()(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BCELoss()(torch.zeros(3), torch.tensor([1.0, -1.0, 0.0]))  # uncertain code not mapped
    # an out-of-range value at a masked-out entry is ignored
    BCELoss()(torch.zeros(3), torch.tensor([1.0, -1.0, 0.0]), mask=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="built for 3 classes"):
        AUCMLoss(3)(torch.zeros(4, 2), torch.zeros(4, 2))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("bce", {"reduction": "avg"}),
        ("focal", {"gamma": -1.0}),
        ("focal", {"alpha": 1.5}),
        ("asl", {"clip": 1.0}),
        ("asl", {"eps": 0.0}),
        ("apl", {"alpha": "abc"}),
        ("apl", {"log_term": False, "beta": ()}),
        ("ral", {"lamb": float("nan")}),
        ("wmw", {"p": 0.0}),
        ("aucm", {"num_classes": 0}),
        ("aucm", {"num_classes": 2, "imratio": [0.1, 0.2, 0.3]}),
        ("aucm", {"num_classes": 2, "imratio": 1.0}),
        ("bce", {"pos_weight": [[1.0]]}),
    ],
)
def test_invalid_parameters_raise_config_error(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_loss(name, **params)


def test_registry_and_build_loss() -> None:
    assert set(LOSSES) == {"bce", "focal", "asl", "apl", "ral", "hill", "wmw", "aucm"}
    asl = build_loss("asl", gamma_neg=2)
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 2.0 and asl.clip == 0.05
    assert isinstance(build_loss("  APL "), AsymmetricPolynomialLoss)
    assert isinstance(build_loss("aucm", num_classes=5), AUCMLoss)
    with pytest.raises(ConfigError, match="valid names: apl, asl, aucm, bce, focal, hill, ral, wmw"):
        build_loss("dice")
    with pytest.raises(ConfigError, match="asl"):
        build_loss("asl", gama_neg=2)  # misspelt parameter
    with pytest.raises(ConfigError, match="aucm"):
        build_loss("aucm")  # num_classes is required
    for cls in LOSSES.values():
        assert isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    # defaults documented in the brief / module docstring
    apl = AsymmetricPolynomialLoss()
    assert (apl.gamma_neg, apl.gamma_pos, apl.clip, apl.eps) == (4.0, 0.0, 0.05, 1e-8)
    assert (apl.alpha, apl.beta, apl.log_term, apl.detach_focal_weight) == ((0.0, 1.75), (1.0,), True, True)
    assert RobustAsymmetricLoss().lamb == 1.5 and RobustAsymmetricLoss().alpha == (0.0, 1.75)
    assert (asl.gamma_pos, AsymmetricLoss().gamma_neg) == (1.0, 4.0)
    hill = HillLoss()
    assert (hill.lamb, hill.margin, hill.gamma) == (1.5, 1.0, 2.0)
    assert BCELoss().reduction == "sum" and AUCMLoss(2).reduction == "mean"


# ---------------------------------------------------------------------------------------
# WMW
# ---------------------------------------------------------------------------------------


def test_wmw_zero_when_separated_by_margin() -> None:
    x = torch.tensor([[5.0, 4.0], [4.0, -4.0], [-4.0, 6.0], [-5.0, -5.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    v = WMWLoss(gamma=0.3)(x, t)
    assert v.item() == 0.0
    v.backward()
    assert x.grad is not None and torch.all(x.grad == 0)
    # a mis-ordered pair is penalised
    assert WMWLoss(gamma=0.3)(x.detach(), 1 - t).item() > 0


@pytest.mark.parametrize(("gamma", "p"), [(0.3, 2.0), (0.5, 3.0), (0.2, 1.0), (0.7, 1.5)])
def test_wmw_matches_brute_force(gamma: float, p: float) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 1.0, size=12)
    t = (rng.random(12) < 0.4).astype(float)
    t[0], t[1] = 1.0, 0.0
    expected = brute_wmw(list(x), list(t), gamma, p)
    out = WMWLoss(gamma=gamma, p=p)(torch.tensor(x), torch.tensor(t))
    assert out.item() == pytest.approx(expected, rel=1e-10)
    n_pairs = int(t.sum()) * int((1 - t).sum())
    out_mean = WMWLoss(gamma=gamma, p=p, reduction="mean")(torch.tensor(x), torch.tensor(t))
    assert out_mean.item() == pytest.approx(expected / n_pairs, rel=1e-10)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_wmw_matches_numpy_with_nan_and_extremes(reduction: str) -> None:
    x, t = make_batch(seed=12)
    t[:, 4] = np.where(np.isnan(t[:, 4]), np.nan, 0.0)  # a class without positives contributes 0
    per_class, n_pairs = ref_wmw(x, t)
    out = WMWLoss(reduction=reduction)(torch.tensor(x), torch.tensor(t))
    expected = {"none": per_class, "sum": per_class.sum(), "mean": per_class.sum() / n_pairs}[reduction]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    if reduction == "none":
        assert out[4].item() == 0.0


def test_wmw_chunking_gives_same_value_and_gradient() -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(0.0, 1.0, size=(300, 2))
    t = (rng.random((300, 2)) < 0.3).astype(float)
    results = []
    for chunk in (1 << 22, 7, 1):
        loss = WMWLoss()
        loss.pair_chunk_elements = chunk
        z = torch.tensor(x, requires_grad=True)
        v = loss(z, torch.tensor(t))
        v.backward()
        results.append((v.detach(), z.grad))
    for v, g in results[1:]:
        torch.testing.assert_close(v, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, results[0][1], rtol=1e-12, atol=1e-12)


def test_wmw_large_batch_runs_chunked() -> None:
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(6000, 1, generator=gen, requires_grad=True)
    t = (torch.rand(6000, 1, generator=gen) < 0.5).float()
    v = WMWLoss(reduction="mean")(x, t)
    v.backward()
    assert torch.isfinite(v) and x.grad is not None and torch.isfinite(x.grad).all()


def test_wmw_soft_targets_are_thresholded() -> None:
    x = torch.tensor([0.1, 0.4, -0.3, 0.2], dtype=torch.float64)
    soft = torch.tensor([0.7, 0.5, 0.2, 0.49], dtype=torch.float64)
    hard = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert WMWLoss()(x, soft).item() == pytest.approx(WMWLoss()(x, hard).item(), rel=1e-12)


# ---------------------------------------------------------------------------------------
# AUCM
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("imratio", [None, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_aucm_matches_numpy(imratio: float | None, reduction: str) -> None:
    x, t = make_batch(seed=15)
    t[:, 3] = np.nan  # a class without known labels contributes 0
    loss = AUCMLoss(5, margin=0.7, imratio=imratio, reduction=reduction).double()
    rng = np.random.default_rng(15)
    a, b, alpha = rng.uniform(0, 1, 5), rng.uniform(0, 1, 5), rng.uniform(0, 1, 5)
    with torch.no_grad():
        loss.a.copy_(torch.tensor(a))
        loss.b.copy_(torch.tensor(b))
        loss.alpha.copy_(torch.tensor(alpha))
    out = loss(torch.tensor(x), torch.tensor(t)).detach().numpy()
    per_class = ref_aucm(x, t, a, b, alpha, margin=0.7, imratio=imratio)
    assert per_class[3] == 0.0
    expected = {"none": per_class, "sum": per_class.sum(), "mean": per_class.sum() / 4}[reduction]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_aucm_parameters_get_gradients_and_initial_value() -> None:
    loss = AUCMLoss(2)
    names = {n for n, _ in loss.named_parameters()}
    assert names == {"a", "b", "alpha"} and loss.a.shape == (2,)
    x = torch.zeros(4, 2, requires_grad=True)  # s = 0.5
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    v = loss(x, t)
    # a = b = alpha = 0, p = 0.5: mean over entries of (0.5 * 0.25 * y + 0.5 * 0.25 * (1 - y)) = 0.125
    assert v.item() == pytest.approx(0.125, rel=1e-6)
    v.backward()
    for p in (loss.a, loss.b, loss.alpha):
        assert p.grad is not None and torch.all(p.grad != 0)
    # dL_c/d alpha_c = 2 (p(1-p) m + mean(p s (1-y) - (1-p) s y)) = 2 * 0.25 = 0.5 at s = p = 0.5;
    # reduction "mean" over the 2 classes halves it
    torch.testing.assert_close(loss.alpha.grad, torch.tensor([0.25, 0.25]))


def test_aucm_one_class_one_dimensional() -> None:
    x, t = make_batch(seed=16)
    loss = AUCMLoss(1).double()
    out = loss(torch.tensor(x[:, 2]), torch.tensor(t[:, 2]))
    zeros = np.zeros(1)
    expected = ref_aucm(x[:, 2:3], t[:, 2:3], zeros, zeros, zeros)[0]
    assert out.item() == pytest.approx(expected, rel=1e-10)


def np_ral_released(x: np.ndarray, y: np.ndarray, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                    eps: float = 1e-8, lamb: float = 1.5, eps_pos: float = 1.0, eps_pos_pow: float = -2.5,
                    eps_neg: float = 0.0) -> float:
    """The released RAL code's formula (kalelpark/RAL ``Ralloss``), written out in float64 NumPy:
    Taylor positive term, clipped negative term times (lamb - p) p^2 (lamb - q_m), both times
    the one-sided focusing weight (1 - p_t)^gamma, summed and negated."""
    p = np_sigmoid(x)
    q_m = np.minimum(1.0 - p + clip, 1.0)
    pc = np.maximum(p, eps)
    pos = y * (np.log(pc) + eps_pos * (1 - pc) + eps_pos_pow * 0.5 * (1 - pc) ** 2)
    neg = (1 - y) * (np.log(np.maximum(q_m, eps)) + eps_neg * np.maximum(q_m, eps)) * (lamb - p) * p**2 * (lamb - q_m)
    p_t = p * y + q_m * (1 - y)
    w = (1 - p_t) ** (gamma_pos * y + gamma_neg * (1 - y))
    return float(-((pos + neg) * w).sum())


@pytest.mark.parametrize("lamb,gamma_neg", [(1.5, 4.0), (2.0, 2.0), (1.2, 0.0)])
def test_ral_released_variant_matches_the_released_formula(lamb: float, gamma_neg: float) -> None:
    x, _ = make_batch(seed=21)
    y = (np.random.default_rng(3).random(x.shape) < 0.3).astype(np.float64)
    loss = RobustAsymmetricLoss(variant="released", lamb=lamb, gamma_neg=gamma_neg)
    xt = torch.tensor(x, requires_grad=True)
    value = loss(xt, torch.tensor(y))
    assert value.item() == pytest.approx(np_ral_released(x, y, gamma_neg=gamma_neg, lamb=lamb), rel=1e-9, abs=1e-9)
    # the released code keeps the gradient through the focusing weight: compare with finite
    # differences of the NumPy formula
    value.backward()
    h = 1e-6
    idx = [(21, 1), (30, 3), (40, 4), (25, 2)]
    for i, j in idx:
        xp, xm = x.copy(), x.copy()
        xp[i, j] += h
        xm[i, j] -= h
        fd = (np_ral_released(xp, y, gamma_neg=gamma_neg, lamb=lamb) - np_ral_released(xm, y, gamma_neg=gamma_neg,
                                                                                        lamb=lamb)) / (2 * h)
        assert xt.grad[i, j].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_ral_paper_and_released_variants_differ_and_bad_variant_is_refused() -> None:
    x, _ = make_batch(seed=22)
    y = torch.zeros_like(torch.tensor(x))
    paper = RobustAsymmetricLoss()(torch.tensor(x), y)
    released = RobustAsymmetricLoss(variant="released")(torch.tensor(x), y)
    assert not torch.allclose(paper, released)
    assert RobustAsymmetricLoss().detach_focal_weight and not RobustAsymmetricLoss(variant="released").detach_focal_weight
    with pytest.raises(ConfigError, match="variant"):
        RobustAsymmetricLoss(variant="github")
    assert build_loss("ral", variant="released").variant == "released"
