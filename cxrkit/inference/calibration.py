"""Calibrated probabilities and operating points.

* :func:`fit_calibration` fits, per class, on the known labels (``NaN`` = unknown):
  ``temperature`` (one scale of the logit, strictly monotone; T kept in [0.2, 20]), ``platt``
  (scale and shift of the logit, strictly monotone; Platt 1999), ``isotonic`` (a non-decreasing step function,
  scikit-learn's ``IsotonicRegression``; it may merge scores into one step, so it can change
  AUC, which the first two never do). A class without known positives or negatives keeps
  its probabilities (identity, listed in ``identity``).
* :func:`apply_calibration` maps probabilities (numpy only: the container and the ONNX
  engine use it); :func:`apply_calibration_torch` is the same map in torch (MONAI bundle).
* :func:`calibration_errors`: per-class ECE / ACE / MCE with MONAI's binning
  (``CalibrationErrorMetric``: 20 equal bins, ``torch.bucketize`` edges) and the Brier score,
  vectorised over classes, unknown labels left out.
* :func:`operating_points`: per class the threshold for ``sensitivity=0.90``,
  ``specificity=0.95``, ``f1`` or ``youden``, with the sensitivity and specificity reached and
  their 95 % Wilson intervals.

The saved model carries ``calibration`` and ``operating_point`` in ``model.json`` (an
ensemble in ``ensemble.json``); :class:`cxrkit.runtime.Predictor` applies a member's
calibration to its probabilities before the ensemble average, and an ensemble's own
calibration to the average.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CxrkitError

METHODS = ("temperature", "platt", "isotonic")
EPS = 1e-7
N_BINS = 20  # MONAI CalibrationErrorMetric's default
#: bounds of the logit scale (1 / temperature: T in [0.2, 20]) and shift: beyond them the map
#: saturates or flattens float32 probabilities into ties, which would change AUC
A_RANGE = (0.05, 5.0)
B_RANGE = (-10.0, 10.0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _known(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets, dtype=np.float64)
    known = np.isfinite(t) & ((t == 0) | (t == 1))
    return np.where(known, t, 0.0), known


def _fit_logistic(z: np.ndarray, y: np.ndarray, m: np.ndarray, bias: bool, iters: int = 100,
                  ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the (a, b) of sigmoid(a z + b) with the least log loss over the masked
    entries: damped Newton steps, all columns at once."""
    c = z.shape[1]
    a, b = np.ones(c), np.zeros(c)
    mf = m.astype(np.float64)
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        r, w = (p - y) * mf, p * (1 - p) * mf
        ga, gb = (r * z).sum(0) + ridge * (a - 1), r.sum(0) + ridge * b
        haa, hbb, hab = (w * z * z).sum(0) + ridge, w.sum(0) + ridge, (w * z).sum(0)
        if bias:
            det = np.maximum(haa * hbb - hab * hab, 1e-300)
            da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        else:
            da, db = ga / haa, np.zeros(c)
        da, db = np.clip(da, -2, 2), np.clip(db, -5, 5)
        a, b = np.clip(a - da, *A_RANGE), np.clip(b - db, *B_RANGE)  # a > 0: the map stays increasing
        if max(np.abs(da).max(initial=0), np.abs(db).max(initial=0)) < 1e-10:
            break
    return a, b


def fit_calibration(probs: Any, targets: Any, classes: Sequence[str], method: str) -> dict[str, Any]:
    """Per-class calibration of ``probs`` (N x C) to ``targets`` (1 / 0 / NaN unknown)."""
    if method not in METHODS:
        raise CxrkitError(f"calibration method must be one of {', '.join(METHODS)} (got {method!r})")
    p = np.asarray(probs, dtype=np.float64)
    y, m = _known(targets)
    if p.shape != y.shape or p.shape[1] != len(classes):
        raise CxrkitError(f"calibration: {p.shape} probabilities for {y.shape} labels and {len(classes)} classes")
    pos, neg = (y * m).sum(0), ((1 - y) * m).sum(0)
    ok = (pos > 0) & (neg > 0)
    out: dict[str, Any] = {"method": method, "classes": list(classes),
                           "identity": [c for c, k in zip(classes, ok) if not k]}
    if method in ("temperature", "platt"):
        a, b = _fit_logistic(_logit(p), y, m & ok[None, :], bias=method == "platt")
        a, b = np.where(ok, a, 1.0), np.where(ok, b, 0.0)
        out["a"], out["b"] = [float(v) for v in a], [float(v) for v in b]
        if method == "temperature":
            out["temperature"] = [float(1.0 / v) for v in a]
        return out
    from sklearn.isotonic import IsotonicRegression

    xs, ys = [], []
    for j in range(p.shape[1]):
        if not ok[j]:
            xs.append([0.0, 1.0])
            ys.append([0.0, 1.0])
            continue
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p[m[:, j], j], y[m[:, j], j])
        xs.append([float(v) for v in iso.X_thresholds_])
        ys.append([float(v) for v in iso.y_thresholds_])
    out["x"], out["y"] = xs, ys
    return out


def check_calibration(cal: Any, classes: Sequence[str], where: str = "model") -> None:
    """Raise a one-line error when a stored calibration does not fit the model's classes."""
    if not isinstance(cal, dict) or cal.get("method") not in METHODS:
        raise CxrkitError(f"{where}: calibration has no known method")
    if list(cal.get("classes") or []) != list(classes):
        raise CxrkitError(f"{where}: calibration is for other classes than the model's")
    keys = ("a", "b") if cal["method"] != "isotonic" else ("x", "y")
    if any(len(cal.get(k) or []) != len(classes) for k in keys):
        raise CxrkitError(f"{where}: calibration has {len(cal.get(keys[0]) or [])} entries for {len(classes)} classes")


def apply_calibration(probs: Any, cal: dict[str, Any] | None) -> np.ndarray:
    """``probs`` (N x C, in ``cal["classes"]`` order) through the calibration (float64)."""
    p = np.asarray(probs, dtype=np.float64)
    if not cal:
        return p
    if cal["method"] in ("temperature", "platt"):
        return _sigmoid(np.asarray(cal["a"]) * _logit(p) + np.asarray(cal["b"]))
    out = np.empty_like(p)
    for j, (x, y) in enumerate(zip(cal["x"], cal["y"])):
        out[:, j] = np.interp(p[:, j], x, y)
    return out


def apply_calibration_torch(p: Any, cal: dict[str, Any] | None) -> Any:
    """The same map as :func:`apply_calibration` on a torch tensor (N x C, float64)."""
    import torch

    if not cal:
        return p
    if cal["method"] in ("temperature", "platt"):
        a = torch.tensor(cal["a"], dtype=p.dtype, device=p.device)
        b = torch.tensor(cal["b"], dtype=p.dtype, device=p.device)
        return torch.sigmoid(a * torch.logit(p.clamp(EPS, 1 - EPS)) + b)
    cols = []
    for j, (x, y) in enumerate(zip(cal["x"], cal["y"])):
        xt = torch.tensor(x, dtype=p.dtype, device=p.device)
        yt = torch.tensor(y, dtype=p.dtype, device=p.device)
        v = p[:, j].clamp(float(x[0]), float(x[-1]))
        if len(x) == 1:
            cols.append(torch.full_like(v, float(y[0])))
            continue
        i = torch.searchsorted(xt, v, right=True).clamp(1, len(x) - 1)
        x0, x1, y0, y1 = xt[i - 1], xt[i], yt[i - 1], yt[i]
        w = torch.where(x1 > x0, (v - x0) / (x1 - x0).clamp_min(1e-300), torch.zeros_like(v))
        cols.append(y0 + w * (y1 - y0))
    return torch.stack(cols, 1)


# ---------------------------------------------------------------------------------------
# calibration error (MONAI's binning) and Brier score
# ---------------------------------------------------------------------------------------


def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """MONAI's edges: ``torch.linspace(0, 1 + float32 eps, n_bins + 1)`` in float32."""
    import torch

    return torch.linspace(0.0, 1.0 + float(np.finfo(np.float32).eps), n_bins + 1).numpy()


def reliability_bins(targets: Any, probs: Any, n_bins: int = N_BINS, right: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class and bin: mean probability, observed frequency (NaN where empty) and count,
    each C x n_bins, over the known labels."""
    p = np.asarray(probs, dtype=np.float32)
    y, m = _known(targets)
    c = p.shape[1]
    edges = bin_edges(n_bins)
    idx = np.minimum(np.searchsorted(edges[1:], p, side="right" if right else "left"), n_bins - 1)
    flat = (np.arange(c)[None, :] * n_bins + idx)[m]
    counts = np.bincount(flat, minlength=c * n_bins).reshape(c, n_bins).astype(np.float64)
    sp = np.bincount(flat, weights=p.astype(np.float64)[m], minlength=c * n_bins).reshape(c, n_bins)
    sy = np.bincount(flat, weights=y[m], minlength=c * n_bins).reshape(c, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp, my = sp / counts, sy / counts
    mp[counts == 0] = np.nan
    my[counts == 0] = np.nan
    return mp, my, counts


def calibration_errors(targets: Any, probs: Any, n_bins: int = N_BINS, right: bool = False) -> dict[str, np.ndarray]:
    """Per class ``ece``, ``ace``, ``mce`` (as MONAI's ``CalibrationErrorMetric`` with
    ``calibration_reduction`` expected / average / maximum) and ``brier``; NaN for a class
    without known labels."""
    mp, my, counts = reliability_bins(targets, probs, n_bins, right)
    diff = np.abs(mp - my)
    n = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.where(n > 0, np.nansum(diff * counts, 1) / np.maximum(n, 1), np.nan)
        filled = ~np.isnan(diff)
        ace = np.where(filled.any(1), np.nansum(diff, 1) / np.maximum(filled.sum(1), 1), np.nan)
        mce = np.where(filled.any(1), np.nanmax(np.where(filled, diff, -np.inf), 1), np.nan)
    p = np.asarray(probs, dtype=np.float64)
    y, m = _known(targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        brier = np.where(m.sum(0) > 0, (((p - y) ** 2) * m).sum(0) / np.maximum(m.sum(0), 1), np.nan)
    return {"ece": ece, "ace": ace, "mce": mce, "brier": brier}


def calibration_summary(targets: Any, probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Per class and mean ECE / ACE / MCE / Brier (means over classes where defined)."""
    e = calibration_errors(targets, probs)
    out: dict[str, Any] = {"classes": {c: {k: _f(e[k][j]) for k in e} for j, c in enumerate(classes)}}
    for k in e:
        v = e[k][np.isfinite(e[k])]
        out[f"mean_{k}"] = float(v.mean()) if len(v) else None
    return out


def _f(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def plot_reliability(targets: Any, probs_by_name: dict[str, Any], path: Any, title: str = "") -> None:
    """Reliability diagram PNG: observed frequency against mean probability per bin, pooled
    over all classes' known labels, one line per set of probabilities (e.g. before / after
    calibration), with the bins' counts below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_write

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    for name, probs in probs_by_name.items():
        p = np.asarray(probs, dtype=np.float64)
        y, m = _known(targets)
        mp, my, counts = reliability_bins(y[m][:, None], p[m][:, None])
        ok = counts[0] > 0
        e = calibration_errors(y[m][:, None], p[m][:, None])["ece"][0]
        ax.plot(mp[0][ok], my[0][ok], marker="o", ms=3, label=f"{name} (pooled ECE {e:.3f})")
        hx.bar(np.arange(N_BINS) / N_BINS + 0.5 / N_BINS, counts[0], width=1 / N_BINS, alpha=0.5, label=name)
    ax.set_ylabel("observed frequency")
    ax.set_title(title or "Reliability diagram (all findings pooled)")
    ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    hx.set_xlabel("predicted probability")
    hx.set_ylabel("labels")
    hx.set_yscale("log")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# operating points
# ---------------------------------------------------------------------------------------


def parse_operating_point(text: str) -> tuple[str, float | None]:
    """``sensitivity=0.90`` / ``specificity=0.95`` / ``f1`` / ``youden`` -> (kind, value)."""
    s = str(text).strip().lower().replace(" ", "")
    mt = re.fullmatch(r"(sensitivity|specificity|sens|spec|tpr|tnr)[=:]([0-9]*\.?[0-9]+)(%?)", s)
    if mt:
        kind = {"sens": "sensitivity", "tpr": "sensitivity", "spec": "specificity", "tnr": "specificity"}.get(
            mt.group(1), mt.group(1))
        v = float(mt.group(2)) / (100.0 if mt.group(3) else 1.0)
        if not 0.0 < v <= 1.0:
            raise CxrkitError(f"--operating-point {text}: the {kind} must be in (0, 1]")
        return kind, v
    if s in ("f1", "youden"):
        return s, None
    raise CxrkitError(f"--operating-point {text!r}: use sensitivity=0.90, specificity=0.95, f1 or youden")


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float | None, float | None]:
    """95 % Wilson score interval of the proportion k / n."""
    if n <= 0:
        return None, None
    phat = k / n
    den = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / den
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def operating_points(targets: Any, probs: Any, classes: Sequence[str], target: str) -> dict[str, Any]:
    """Per class the threshold (positive when ``p >= t``) meeting ``target`` on these labels
    (the highest threshold with at least the asked sensitivity; the lowest with at least
    the asked specificity; the F1 / Youden optimum), with the sensitivity and specificity it
    reaches and their 95 % Wilson intervals. A class without known positives and negatives
    keeps ``None`` (the caller keeps its old threshold)."""
    from ..metrics import best_thresholds

    kind, value = parse_operating_point(target)
    p = np.asarray(probs, dtype=np.float64)
    y, m = _known(targets)
    if kind in ("f1", "youden"):
        thr = best_thresholds(np.where(m, y, np.nan), p, method=kind)
    else:
        thr = np.full(p.shape[1], np.nan)
        for j in range(p.shape[1]):
            pos = np.sort(p[m[:, j] & (y[:, j] == 1), j])[::-1]
            neg = np.sort(p[m[:, j] & (y[:, j] == 0), j])
            if not len(pos) or not len(neg):
                continue
            if kind == "sensitivity":
                thr[j] = pos[max(0, math.ceil(value * len(pos) - 1e-9) - 1)]
            else:
                k = math.ceil(value * len(neg) - 1e-9)
                thr[j] = 0.0 if k == 0 else float(np.nextafter(np.float32(neg[k - 1]), np.float32(np.inf)))
    out: dict[str, Any] = {"target": f"{kind}={value:g}" if value is not None else kind, "classes": {}}
    for j, c in enumerate(classes):
        if not np.isfinite(thr[j]):
            out["classes"][c] = None
            continue
        known = m[:, j]
        pred = p[known, j] >= thr[j]
        yy = y[known, j] == 1
        tp, fn = int((pred & yy).sum()), int((~pred & yy).sum())
        tn, fp = int((~pred & ~yy).sum()), int((pred & ~yy).sum())
        sens, spec = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
        out["classes"][c] = {"threshold": float(thr[j]), "sensitivity": sens, "specificity": spec,
                             "sensitivity_ci95": list(wilson(tp, tp + fn)), "specificity_ci95": list(wilson(tn, tn + fp)),
                             "n_positive": tp + fn, "n_negative": tn + fp}
    return out


def operating_points_at(targets: Any, probs: Any, classes: Sequence[str], thresholds: Sequence[float]
                        ) -> dict[str, Any]:
    """Sensitivity and specificity (with 95 % Wilson intervals) at given thresholds."""
    p = np.asarray(probs, dtype=np.float64)
    y, m = _known(targets)
    out = {}
    for j, c in enumerate(classes):
        known = m[:, j]
        pred = p[known, j] >= thresholds[j]
        yy = y[known, j] == 1
        tp, fn, tn, fp = (int(v.sum()) for v in (pred & yy, ~pred & yy, ~pred & ~yy, pred & ~yy))
        out[c] = {"threshold": float(thresholds[j]),
                  "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
                  "sensitivity_ci95": list(wilson(tp, tp + fn)), "specificity_ci95": list(wilson(tn, tn + fp)),
                  "n_positive": tp + fn, "n_negative": tn + fp}
    return out
