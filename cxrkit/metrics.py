"""Multi-label evaluation metrics (SPEC section 7), vectorised across classes.

Inputs everywhere are ``targets`` and ``scores`` of shape ``(N, C)`` (or ``(N,)`` for one
class, giving length-1 results):

* ``targets`` hold ``1`` (positive), ``0`` (negative) or ``NaN`` (unknown). An unknown entry
  is ignored for its class only. Any other value (``-1`` uncertain, ``0.7`` a soft target...)
  raises :class:`MetricInputError` (a ``ValueError``): map uncertain labels first, e.g. with
  :class:`cxrkit.labels.LabelPolicy`.
* ``scores`` are finite real numbers (probabilities or logits), any float or integer dtype.

Ranking metrics (:func:`roc_auc`, :func:`average_precision`, :func:`best_thresholds`) sort
every class once and work on *tie groups* (runs of equal scores), a chunk of classes at a
time so that memory stays bounded (about ``_CHUNK_ELEMENTS`` entries per chunk) for inputs
such as 50,000 x 1,000. They equal scikit-learn's ``roc_auc_score`` /
``average_precision_score`` on the known entries of each class, ties included.

A metric that is undefined for a class (no positive or no negative among its known labels)
is ``NaN`` for that class; :func:`mean_defined` leaves such classes out of a mean and warns
naming them (:class:`UndefinedMetricWarning`), never a silent ``NaN`` mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CxrkitError
from .labels import frequency_groups, head_medium_tail
from .utils import to_jsonable

__all__ = [
    "MetricInputError",
    "UndefinedMetricWarning",
    "roc_auc",
    "average_precision",
    "best_thresholds",
    "confusion_at",
    "f1_at",
    "multilabel_prf",
    "mean_defined",
    "group_means",
    "summarize",
]

#: Target entries (samples x classes) handled per chunk of classes; bounds peak memory to a
#: few hundred MB whatever the input size.
_CHUNK_ELEMENTS = 1 << 21
#: Max classes per chunk.
_CHUNK_MAX_CLASSES = 256
#: Objective values within this of a class's best count as ties in :func:`best_thresholds`.
_TIE_TOL = 1e-12
#: At most this many class names are spelled out in a warning.
_MAX_NAMES_IN_WARNING = 30


class MetricInputError(CxrkitError, ValueError):
    """Targets or scores handed to a metric are malformed (shape, label value, non-finite score)."""


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for some classes, which are left out of a mean."""


# ---------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------


def _as_2d(targets: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` views of targets and scores (``(N,)`` becomes ``(N, 1)``); shapes checked."""
    t = np.asarray(targets)
    s = np.asarray(scores)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if s.ndim == 1:
        s = s.reshape(-1, 1)
    if t.ndim != 2 or s.ndim != 2:
        raise MetricInputError(
            f"targets and scores must be 1-D (N,) or 2-D (N, C) arrays; got shapes {np.shape(targets)} "
            f"and {np.shape(scores)}"
        )
    if t.shape != s.shape:
        raise MetricInputError(f"targets {t.shape} and scores {s.shape} must have the same shape")
    if not (np.issubdtype(t.dtype, np.number) or t.dtype == np.bool_):
        raise MetricInputError(f"targets must be numeric (1, 0 or NaN); got dtype {t.dtype}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_) or np.issubdtype(s.dtype, np.complexfloating):
        raise MetricInputError(f"scores must be real numbers; got dtype {s.dtype}")
    return t, s


def _label_masks(t: np.ndarray, col0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (positive, negative) masks of a block of targets; anything but 1/0/NaN raises.

    ``col0`` is the index of the block's first class, used in the error message."""
    pos = t == 1
    neg = t == 0
    if np.issubdtype(t.dtype, np.floating):
        ok = pos | neg | np.isnan(t)
    else:
        ok = pos | neg
    if not ok.all():
        bad = np.argwhere(~ok)
        r, c = (int(x) for x in bad[0])
        values = np.unique(t[~ok])
        shown = ", ".join(repr(float(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
        raise MetricInputError(
            f"targets must be 1 (positive), 0 (negative) or NaN (unknown); found {len(bad)} other value(s) "
            f"({shown}), first at sample {r}, class {c + col0}. Map uncertain (-1) or soft labels first "
            "(cxrkit.labels.LabelPolicy / apply_uncertainty)"
        )
    return pos, neg


def _check_scores(s: np.ndarray, col0: int = 0) -> None:
    if np.issubdtype(s.dtype, np.floating) and not np.isfinite(s).all():
        r, c = (int(x) for x in np.argwhere(~np.isfinite(s))[0])
        raise MetricInputError(
            f"scores must be finite; found {s[r, c]!r} at sample {r}, class {c + col0}"
        )


def _column_chunks(n_samples: int, n_classes: int) -> Iterator[slice]:
    step = max(1, min(_CHUNK_MAX_CLASSES, _CHUNK_ELEMENTS // max(n_samples, 1)))
    for a in range(0, n_classes, step):
        yield slice(a, min(a + step, n_classes))


def _row_chunks(n_samples: int, n_classes: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(n_classes, 1))
    for a in range(0, n_samples, step):
        yield slice(a, min(a + step, n_samples))


# ---------------------------------------------------------------------------------------
# Sorted tie groups (the shared machinery of the ranking metrics)
# ---------------------------------------------------------------------------------------

#: Row (class) offset added to the 32-bit order key of a float32 score, so that the keys of a
#: whole chunk sort globally: key = ((order bits + row << _ROW_SHIFT) << 2) | label code.
_ROW_SHIFT = 33
_CODE_NEG, _CODE_POS, _CODE_UNKNOWN = 0, 1, 2


def _order_bits(b: np.ndarray) -> None:
    """In place: int32 bit patterns of float32 values -> int32 that sort like the floats
    (lower 31 bits of negative values flipped; the transform is its own inverse)."""
    b ^= (b >> 31) & np.int32(0x7FFFFFFF)


@dataclass
class _SortedChunk:
    """A chunk of ``c`` classes x ``n`` samples, each class sorted by ascending score and the
    classes laid end to end (flat position ``row * n + rank``). The general path, used for
    scores that are not float32 values (float32 ones take the faster route in
    :func:`_positive_stats`).

    ``key``: int64, non-decreasing over the whole chunk; ``key >> 2`` identifies the tie
    group (equal within a run of equal scores of one class, different across classes) and
    ``key & 3`` is the label code (0 negative, 1 positive, 2 unknown). ``ppos`` / ``upos``:
    flat positions of the known positives / unknown entries, ascending."""

    n: int
    c: int
    key: np.ndarray
    ppos: np.ndarray
    upos: np.ndarray
    sorted_scores: np.ndarray | None  # float64 path; None when the key holds the score
    #: Counts of positives / negatives before each class boundary (length c + 1).
    pos_edge: np.ndarray = field(init=False)
    neg_edge: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        edges = np.arange(self.c + 1, dtype=np.int64) * self.n
        self.pos_edge = self.pos_before(edges)
        self.neg_edge = self.neg_before(edges)

    def pos_before(self, x: np.ndarray) -> np.ndarray:
        """Number of known positives at flat positions ``< x``."""
        return np.searchsorted(self.ppos, x)

    def neg_before(self, x: np.ndarray) -> np.ndarray:
        """Number of known negatives at flat positions ``< x``."""
        return x - np.searchsorted(self.ppos, x) - np.searchsorted(self.upos, x)

    def group_bounds(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[start, end)`` flat positions of the tie groups holding positions ``x``."""
        g = self.key[x] >> 2
        return np.searchsorted(self.key, g << 2), np.searchsorted(self.key, (g + 1) << 2)

    def score_at(self, x: np.ndarray) -> np.ndarray:
        """The score (float64) at flat positions ``x``."""
        if self.sorted_scores is not None:
            return self.sorted_scores[x].astype(np.float64)
        bits = ((self.key[x] >> 2) - ((x // self.n) << _ROW_SHIFT)).astype(np.int32)
        _order_bits(bits)
        return bits.view(np.float32).astype(np.float64)


def _prepare_block(
    t_block: np.ndarray, s_block: np.ndarray, col0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one block (N x c): (positive, negative, unknown) masks and the scores as
    float32 when that is exact (float32, float16, small ints, float64 holding float32
    values), float64 otherwise."""
    pos, neg = _label_masks(t_block, col0)
    unk = ~(pos | neg)
    _check_scores(s_block, col0)
    s = s_block
    if s.dtype == np.float64:
        with np.errstate(over="ignore", invalid="ignore"):
            s32 = s.astype(np.float32)
        if np.array_equal(s32, s):  # exactly float32 values (e.g. upcast model outputs)
            s = s32
    elif s.dtype != np.float32:
        if s.dtype in (np.float16, np.bool_, np.int8, np.uint8, np.int16, np.uint16):
            s = s.astype(np.float32)  # exact
        else:
            s = s.astype(np.float64)
    return pos, neg, unk, s


def _sorted_chunk(pos: np.ndarray, unk: np.ndarray, s: np.ndarray) -> _SortedChunk:
    """Sort one prepared block (N x c) per class (see :class:`_SortedChunk`). float32 scores:
    one int64 sort per class of keys that carry the score's order bits and the label code;
    float64: argsort, keys from the tie-group rank."""
    n, c = s.shape
    rows = (np.arange(c, dtype=np.int64) << _ROW_SHIFT)[:, None]
    sorted_scores: np.ndarray | None = None
    if s.dtype == np.float32:
        st = np.array(s.T, order="C")  # a copy: modified in place below
        st += np.float32(0.0)  # -0.0 -> +0.0: equal scores must share a key
        bits = st.view(np.int32)
        _order_bits(bits)
        key = bits.astype(np.int64)
        key += rows
        key <<= 2
        key += pos.T
        key += unk.T
        key += unk.T
        key.sort(axis=1)
    else:
        st = np.ascontiguousarray(s.T)
        order = np.argsort(st, axis=1)
        ss = np.take_along_axis(st, order, axis=1)
        new = np.empty(ss.shape, dtype=bool)
        new[:, 0] = True
        np.not_equal(ss[:, 1:], ss[:, :-1], out=new[:, 1:])
        key = np.cumsum(new, axis=1, dtype=np.int64)  # tie-group rank within the class
        key += rows
        key <<= 2
        key += np.take_along_axis(np.ascontiguousarray(pos.T), order, axis=1)
        u = np.take_along_axis(np.ascontiguousarray(unk.T), order, axis=1)
        key += u
        key += u
        sorted_scores = ss.ravel()
    key = key.ravel()
    code = key.view(np.uint8)[::8] if np.little_endian else (key & 3).astype(np.uint8)
    code = code & np.uint8(3)
    ppos = np.flatnonzero(code == _CODE_POS)
    upos = np.flatnonzero(code == _CODE_UNKNOWN)
    return _SortedChunk(n, c, key, ppos, upos, sorted_scores)


#: Use the float32 fast path of :func:`_positive_stats` (tests switch it off to cross-check).
_FAST_FLOAT32 = True


@dataclass
class _PositiveStats:
    """Every known positive of a block of ``c`` classes, grouped by class and in ascending
    score order within a class: its class ``row``, its ``score`` (float64) and, among the
    known entries of its class, the numbers of positives with a strictly lower score
    (``pos_below``), of negatives with a strictly lower score (``neg_below``) and of
    negatives with the same score (``neg_tied``). ``P`` / ``N``: known positives / negatives
    per class. Counts are int64.

    Predicting positive at ``score >= x`` for the score ``x`` of a positive gives
    ``TP = P - pos_below`` and ``FP = N - neg_below``."""

    row: np.ndarray
    score: np.ndarray
    pos_below: np.ndarray
    neg_below: np.ndarray
    neg_tied: np.ndarray
    P: np.ndarray
    N: np.ndarray

    @property
    def c(self) -> int:
        return len(self.P)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        return self.P[self.row] - self.pos_below, self.N[self.row] - self.neg_below


def _positive_stats(t_block: np.ndarray, s_block: np.ndarray, col0: int) -> _PositiveStats:
    """:class:`_PositiveStats` of one block (N x c) of targets and scores."""
    pos, neg, unk, s = _prepare_block(t_block, s_block, col0)
    n, c = s.shape
    P = np.count_nonzero(pos, axis=0).astype(np.int64)
    Nn = np.count_nonzero(neg, axis=0).astype(np.int64)
    if s.dtype == np.float32 and _FAST_FLOAT32:
        # Sort the float32 scores themselves (the fastest sort), unknown entries moved to +inf
        # (scores are finite), then turn them into globally sorted int64 keys (order bits +
        # class offset) and locate each positive's score among all known entries and among
        # the positives (sorted separately, 1-D) with binary searches.
        rows = np.arange(c, dtype=np.int64)
        st = np.array(s.T, order="C")  # a copy: modified in place below
        st += np.float32(0.0)  # -0.0 -> +0.0
        prow = np.repeat(rows, P)
        pbits = st[pos.T].view(np.int32)
        _order_bits(pbits)
        pkey = pbits.astype(np.int64) + (prow << _ROW_SHIFT)
        pkey.sort()
        np.copyto(st, np.float32(np.inf), where=unk.T)
        st.sort(axis=1)
        bits = st.view(np.int32)
        _order_bits(bits)
        key = bits.astype(np.int64)
        key += (rows << _ROW_SHIFT)[:, None]
        key = key.ravel()
        first = prow * n
        below = np.searchsorted(key, pkey, side="left") - first  # known, score < x
        tied = np.searchsorted(key, pkey, side="right") - first - below  # known, score == x
        pstart = np.concatenate(([0], np.cumsum(P)))[prow]
        pos_below = np.searchsorted(pkey, pkey, side="left") - pstart
        pos_tied = np.searchsorted(pkey, pkey, side="right") - pstart - pos_below
        sbits = (pkey - (prow << _ROW_SHIFT)).astype(np.int32)
        _order_bits(sbits)
        score = sbits.view(np.float32).astype(np.float64)
        return _PositiveStats(prow, score, pos_below, below - pos_below, tied - pos_tied, P, Nn)
    ch = _sorted_chunk(pos, unk, s)
    gs, ge = ch.group_bounds(ch.ppos)  # tie group [gs, ge) of each positive
    row = ch.ppos // n
    neg_gs = ch.neg_before(gs)
    return _PositiveStats(
        row,
        ch.score_at(ch.ppos),
        ch.pos_before(gs) - ch.pos_edge[row],
        neg_gs - ch.neg_edge[row],
        ch.neg_before(ge) - neg_gs,
        P,
        Nn,
    )


def _ranking(targets: Any, scores: Any, *, auc: bool, ap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ROC AUC and AP from one sort (either may be skipped; skipped ones are NaN)."""
    t, s = _as_2d(targets, scores)
    n, n_classes = t.shape
    out_auc = np.full(n_classes, np.nan)
    out_ap = np.full(n_classes, np.nan)
    if n == 0:
        if n_classes:
            _label_masks(t)
        return out_auc, out_ap
    for sl in _column_chunks(n, n_classes):
        ps = _positive_stats(t[:, sl], s[:, sl], sl.start)
        row, P, Nn, c = ps.row, ps.P, ps.N, ps.c
        if auc:
            # Mann-Whitney with ties as 1/2: a positive beats the negatives of its class with a
            # lower score and half of those with the same score (2x that, exact integers).
            twice = 2 * ps.neg_below + ps.neg_tied
            num = np.bincount(row, weights=twice.astype(np.float64), minlength=c)
            with np.errstate(divide="ignore", invalid="ignore"):
                a = num / (2.0 * P * Nn)
            out_auc[sl] = np.where((P > 0) & (Nn > 0), a, np.nan)
        if ap:
            # Each positive adds (1 / P) * precision at the threshold equal to its score
            # (everything with that score or above predicted positive); tied positives share
            # one threshold, which gives scikit-learn's step-wise AP.
            tp, fp = ps.tp_fp()
            sums = np.bincount(row, weights=tp / (tp + fp), minlength=c)  # tp >= 1
            with np.errstate(divide="ignore", invalid="ignore"):
                out_ap[sl] = np.where(P > 0, sums / P, np.nan)
    return out_auc, out_ap


# ---------------------------------------------------------------------------------------
# Public metrics
# ---------------------------------------------------------------------------------------


def roc_auc(targets: Any, scores: Any) -> np.ndarray:
    """Per-class ROC AUC, shape ``(C,)`` float64.

    Ties count 1/2 (Mann-Whitney with average ranks), equal to scikit-learn's
    ``roc_auc_score`` on the known entries of each class. ``NaN`` where a class has no
    positive or no negative among its known labels."""
    return _ranking(targets, scores, auc=True, ap=False)[0]


def average_precision(targets: Any, scores: Any) -> np.ndarray:
    """Per-class average precision, shape ``(C,)`` float64, as scikit-learn's
    ``average_precision_score`` on the known entries of each class: the step-wise sum over
    distinct thresholds (tied scores form one threshold) in decreasing order of
    ``(recall_k - recall_{k-1}) * precision_k``.

    ``NaN`` where a class has no positive among its known labels (scikit-learn warns and
    returns 0 or NaN there). A class with positives but no negatives has AP 1."""
    return _ranking(targets, scores, auc=False, ap=True)[1]


def best_thresholds(targets: Any, scores: Any, method: str = "f1") -> np.ndarray:
    """Per class the score threshold ``t`` (predict positive when ``score >= t``) that
    maximises F1 (``method="f1"``) or Youden's J = TPR - FPR (``method="youden"``) on the
    known labels, shape ``(C,)`` float64.

    Candidates are the distinct scores of the known entries of the class (only those of
    positives can win, so only those are evaluated). Tie-breaking rule:
    among candidates whose objective is within 1e-12 of the best, the **highest** threshold
    is returned (fewest predicted positives). ``NaN`` for a class without known positives or
    without known negatives; the caller substitutes a default (e.g. 0.5)."""
    key = str(method).strip().lower().replace("'", "").replace("_", "-")
    if key in {"f1", "f-1", "fscore", "f-score"}:
        use_f1 = True
    elif key in {"youden", "youden-j", "j", "youdens-j"}:
        use_f1 = False
    else:
        raise MetricInputError(f"unknown threshold method {method!r}; use 'f1' or 'youden'")
    t, s = _as_2d(targets, scores)
    n, n_classes = t.shape
    out = np.full(n_classes, np.nan)
    if n == 0:
        if n_classes:
            _label_masks(t)
        return out
    for sl in _column_chunks(n, n_classes):
        ps = _positive_stats(t[:, sl], s[:, sl], sl.start)
        # Only thresholds at the score of a positive can be optimal: lowering the threshold
        # onto a group of negatives (and unknowns) only adds false positives, which lowers F1
        # and J, and a top group of negatives scores F1 = 0 and J < 0 while the lowest
        # threshold already reaches F1 > 0 and J = 0. So the positives are the candidates.
        P, Nn = ps.P, ps.N
        tp, fp = (x.astype(np.float64) for x in ps.tp_fp())
        Pg = P[ps.row].astype(np.float64)
        Ng = Nn[ps.row].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if use_f1:
                val = 2.0 * tp / (tp + fp + Pg)  # 2TP / (2TP + FP + FN)
            else:
                val = tp / Pg - fp / Ng
        val = np.where(np.isfinite(val), val, -np.inf)
        defined = (P > 0) & (Nn > 0)
        if not defined.any():
            continue
        # Per class (positives are contiguous, in ascending score order): the best value, then
        # the last (= highest-threshold) candidate within tolerance of it.
        first = np.concatenate(([0], np.cumsum(P)[:-1]))[P > 0]
        best = np.full(ps.c, -np.inf)
        best[P > 0] = np.maximum.reduceat(val, first)
        idx = np.where(val >= best[ps.row] - _TIE_TOL, np.arange(len(val)), -1)
        pick = np.maximum.reduceat(idx, first)
        thr = np.full(ps.c, np.nan)
        thr[P > 0] = ps.score[pick]
        out[sl] = np.where(defined, thr, np.nan)
    return out


def _thresholds_vector(thresholds: Any, n_classes: int) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_classes, float(thr))
    thr = thr.reshape(-1)
    if thr.shape != (n_classes,):
        raise MetricInputError(f"thresholds must be a scalar or have one value per class ({n_classes}); got {thr.shape}")
    if np.isnan(thr).any():
        raise MetricInputError(
            f"thresholds are NaN for class(es) {np.flatnonzero(np.isnan(thr)).tolist()}; substitute a default "
            "(e.g. 0.5) for classes best_thresholds could not tune"
        )
    return thr


def confusion_at(targets: Any, scores: Any, thresholds: Any) -> dict[str, np.ndarray]:
    """Per-class confusion counts at ``thresholds`` (a scalar or one per class): predict
    positive when ``score >= threshold``; unknown entries are ignored.

    Returns ``{"tp", "fp", "fn", "tn"}``, each an int64 array of shape ``(C,)``."""
    t, s = _as_2d(targets, scores)
    n, n_classes = t.shape
    thr = _thresholds_vector(thresholds, n_classes)
    out = {k: np.zeros(n_classes, dtype=np.int64) for k in ("tp", "fp", "fn", "tn")}
    for sl in _row_chunks(n, n_classes):
        pos, neg = _label_masks(t[sl])
        _check_scores(s[sl])
        pred = s[sl] >= thr
        out["tp"] += np.count_nonzero(pos & pred, axis=0)
        out["fp"] += np.count_nonzero(neg & pred, axis=0)
        out["fn"] += np.count_nonzero(pos & ~pred, axis=0)
        out["tn"] += np.count_nonzero(neg & ~pred, axis=0)
    return out


def _f1_from(cm: Mapping[str, np.ndarray]) -> np.ndarray:
    den = 2 * cm["tp"] + cm["fp"] + cm["fn"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2.0 * cm["tp"] / den, np.nan)


def f1_at(targets: Any, scores: Any, thresholds: Any) -> np.ndarray:
    """Per-class F1 = 2TP / (2TP + FP + FN) at ``thresholds`` (scalar or per class), shape
    ``(C,)``; ``NaN`` where the denominator is 0 (no known positive and nothing predicted
    positive among the known entries)."""
    return _f1_from(confusion_at(targets, scores, thresholds))


def _safe_ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _prf_from(cm: Mapping[str, np.ndarray]) -> dict[str, float]:
    tp, fp, fn = (cm[k].astype(np.float64) for k in ("tp", "fp", "fn"))
    cp = float(np.mean(_safe_ratio(tp, tp + fp))) if len(tp) else math.nan
    cr = float(np.mean(_safe_ratio(tp, tp + fn))) if len(tp) else math.nan
    op = float(_safe_ratio(tp.sum(), tp.sum() + fp.sum()))
    or_ = float(_safe_ratio(tp.sum(), tp.sum() + fn.sum()))
    return {
        "CP": cp,
        "CR": cr,
        "CF1": float(_safe_ratio(2 * cp * cr, cp + cr)),
        "OP": op,
        "OR": or_,
        "OF1": float(_safe_ratio(2 * op * or_, op + or_)),
    }


def multilabel_prf(targets: Any, scores: Any, threshold: Any = 0.5) -> dict[str, float]:
    """Per-class and overall precision / recall / F1 of multi-label papers (ML-GCN; seed 002
    sec. IV-A) at ``threshold`` (scalar or per class; positive when ``score >= threshold``).

    ``CP`` / ``CR``: mean over classes of TP/(TP+FP) and TP/(TP+FN); ``CF1 = 2 CP CR / (CP + CR)``;
    ``OP`` / ``OR``: the same ratios over counts summed over classes; ``OF1 = 2 OP OR / (OP + OR)``.
    Unknown entries are ignored. A ratio with a zero denominator counts as 0 (scikit-learn's
    ``zero_division=0``), so a class with nothing predicted positive has precision 0 and one
    with no known positive has recall 0; both stay in the class means."""
    return _prf_from(confusion_at(targets, scores, threshold))


# ---------------------------------------------------------------------------------------
# Means with explicit handling of undefined classes
# ---------------------------------------------------------------------------------------

_REASONS = {
    "AUC": "no positive or no negative among known labels",
    "AP": "no positive among known labels",
    "F1": "no known positive and nothing predicted positive",
}


def _names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"class {i}" for i in range(n)]
    out = [str(x) for x in names]
    if len(out) != n:
        raise MetricInputError(f"got {len(out)} class names for {n} values")
    return out


def mean_defined(
    values: Any,
    names: Sequence[str] | None = None,
    what: str = "AUC",
    *,
    reason: str | None = None,
    warn: bool = True,
) -> float:
    """Mean of the defined (non-NaN) ``values``, leaving undefined classes out.

    When some classes are undefined, emits one :class:`UndefinedMetricWarning` naming them
    (the first 30, then a count), e.g. ``AUC undefined (no positive or no negative among
    known labels) for 2 class(es), left out of the mean: Hernia, Fibrosis``. When all are
    undefined (or there are none) returns ``NaN``, with a warning. ``reason`` overrides the
    parenthesised explanation (defaults exist for ``AUC``, ``AP`` and ``F1``); ``warn=False``
    silences the warning (for callers that already warned about the same classes)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    labels = _names(names, len(v))
    bad = np.isnan(v)
    why = reason if reason is not None else _REASONS.get(what, "undefined")
    if bad.any() and warn:
        skipped = [labels[i] for i in np.flatnonzero(bad)]
        listed = ", ".join(skipped[:_MAX_NAMES_IN_WARNING])
        if len(skipped) > _MAX_NAMES_IN_WARNING:
            listed += f" ... and {len(skipped) - _MAX_NAMES_IN_WARNING} more"
        if bad.all():
            msg = f"{what} undefined ({why}) for all {len(v)} class(es), the mean is NaN: {listed}"
        else:
            msg = f"{what} undefined ({why}) for {len(skipped)} class(es), left out of the mean: {listed}"
        warnings.warn(msg, UndefinedMetricWarning, stacklevel=2)
    if bad.all():
        if len(v) == 0 and warn:
            warnings.warn(f"{what}: no classes to average, the mean is NaN", UndefinedMetricWarning, stacklevel=2)
        return math.nan
    return float(v[~bad].mean())


def _group_order(labels: list[Any]) -> list[Any]:
    uniq = list(dict.fromkeys(labels))
    try:
        return sorted(uniq)
    except TypeError:
        return uniq


def group_means(
    values: Any,
    groups: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    what: str = "AUC",
    warn: bool = True,
) -> dict[str, float]:
    """Mean of the defined values per group label: ``{str(label): mean}``.

    ``groups`` gives a label per class (``"head"`` / ``"medium"`` / ``"tail"``, ``0..4``...);
    keys are in sorted label order (first-appearance order if labels do not sort). Each
    group's mean follows :func:`mean_defined` (a warning per group with undefined classes
    unless ``warn=False``; ``NaN`` for a group with no defined value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = list(groups)
    if len(g) != len(v):
        raise MetricInputError(f"got {len(g)} group labels for {len(v)} values")
    labels = _names(names, len(v))
    out: dict[str, float] = {}
    for key in _group_order(g):
        idx = [i for i, x in enumerate(g) if x == key]
        out[str(key)] = mean_defined(
            v[idx], [labels[i] for i in idx], f"{what} (group {key})", reason=_REASONS.get(what), warn=warn
        )
    return out


# ---------------------------------------------------------------------------------------
# The evaluation report
# ---------------------------------------------------------------------------------------


def _label_counts(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, c = t.shape
    n_pos = np.zeros(c, dtype=np.int64)
    n_neg = np.zeros(c, dtype=np.int64)
    for sl in _row_chunks(n, c):
        pos, neg = _label_masks(t[sl])
        n_pos += np.count_nonzero(pos, axis=0)
        n_neg += np.count_nonzero(neg, axis=0)
    return n_pos, n_neg, n - n_pos - n_neg


def _summary_thresholds(thresholds: Any, n_classes: int) -> np.ndarray:
    """``None`` -> 0.5 for all; a scalar or one per class, NaN (untuned) -> 0.5."""
    if thresholds is None:
        return np.full(n_classes, 0.5)
    thr = np.asarray(thresholds, dtype=np.float64)
    thr = np.full(n_classes, float(thr)) if thr.ndim == 0 else thr.reshape(-1).copy()
    if thr.shape != (n_classes,):
        raise MetricInputError(f"thresholds must be a scalar or have one value per class ({n_classes}); got {thr.shape}")
    thr[np.isnan(thr)] = 0.5
    return thr


def _subset_indices(subsets: Mapping[str, Sequence[str]] | None, names: list[str]) -> dict[str, list[int]]:
    index = {c: i for i, c in enumerate(names)}
    out: dict[str, list[int]] = {}
    for sub, members in (subsets or {}).items():
        missing = [m for m in members if m not in index]
        if missing:
            raise MetricInputError(f"subset {sub!r} names classes that are not evaluated: {missing}")
        out[str(sub)] = [index[m] for m in members]
    return out


def _group_report(auc: np.ndarray, ap: np.ndarray, names: list[str], hmt_counts: np.ndarray,
                  g5_counts: np.ndarray) -> dict[str, Any]:
    """``class_groups`` (head / medium / tail per class), ``groups`` (their mAUC / mAP and
    G1..G5's) and, when G1..G5 cannot be formed, ``groups_note``."""
    n_classes = len(names)
    out: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    if n_classes:
        hmt = head_medium_tail(hmt_counts)
        out["class_groups"] = dict(zip(names, hmt))
        todo: list[tuple[list[str], tuple[str, ...]]] = [(hmt, ("head", "medium", "tail"))]
        if n_classes >= 5 and len(np.unique(g5_counts)) > 1:
            g5 = [f"G{int(g) + 1}" for g in frequency_groups(g5_counts, 5)]
            todo.append((g5, tuple(f"G{i}" for i in range(1, 6))))
        else:  # every class has as many known labels (a fully labelled table), or too few classes
            out["groups_note"] = ("G1..G5 omitted: " + ("fewer than 5 classes" if n_classes < 5 else
                                  "every class has the same number of known labels (fully labelled)"))
        for labels, keys in todo:
            m_auc = group_means(auc, labels, names, what="AUC", warn=False)
            m_ap = group_means(ap, labels, names, what="AP", warn=False)
            for k in keys:
                groups[k] = {"mAUC": m_auc[k], "mAP": m_ap[k]} if k in m_auc else None
    out["groups"] = groups
    return out


def summarize(
    targets: Any,
    scores: Any,
    classes: Sequence[str],
    thresholds: Any = None,
    subsets: Mapping[str, Sequence[str]] | None = None,
    group_counts: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """The evaluation report used by ``cxrkit evaluate`` and training. JSON-serialisable:
    undefined values (``NaN``) are written as ``None``.

    Keys:

    * ``n_samples``; ``classes``: one dict per class with ``name, auc, ap, f1, threshold,
      n_pos, n_neg, n_unknown`` (``f1`` at ``threshold``).
    * ``mAUC``, ``mAP``, ``mF1``: means over the classes where the metric is defined, with an
      :class:`UndefinedMetricWarning` naming the classes left out.
    * ``CP, CR, CF1, OP, OR, OF1`` (:func:`multilabel_prf`) at the per-class thresholds.
    * ``subsets``: ``{name: {"mAUC", "mAP"}}`` for each ``subsets`` entry (name -> class names,
      e.g. ``{"competition": CHEXPERT_COMPETITION_5}``).
    * ``groups``: ``{"head"|"medium"|"tail"|"G1".."G5": {"mAUC", "mAP"}}``. Head / medium /
      tail come from :func:`cxrkit.labels.head_medium_tail` (terciles) and G1..G5 (G1 =
      fewest) from :func:`cxrkit.labels.frequency_groups` with 5 groups, both on
      ``group_counts`` when given (e.g. training-set positives). Without it, head / medium /
      tail use the number of positives per class and G1..G5 the number of known labels per
      class, both counted in these ``targets``. A group with no class is ``None``.

    ``thresholds``: ``None`` (0.5 for all), a scalar, or one per class; a ``NaN`` threshold
    (a class :func:`best_thresholds` could not tune) is replaced by 0.5.
    Group and subset means do not warn again: the overall means already named the classes.
    """
    t, s = _as_2d(targets, scores)
    n, n_classes = t.shape
    names = [str(c) for c in classes]
    if len(names) != n_classes:
        raise MetricInputError(f"got {len(names)} class names for {n_classes} score columns")
    thr = _summary_thresholds(thresholds, n_classes)
    sub_idx = _subset_indices(subsets, names)
    gc = None
    if group_counts is not None:
        gc = np.asarray(group_counts, dtype=np.float64).reshape(-1)
        if gc.shape != (n_classes,):
            raise MetricInputError(f"group_counts must have one value per class ({n_classes}); got {gc.shape}")

    n_pos, n_neg, n_unknown = _label_counts(t)
    auc, ap = _ranking(t, s, auc=True, ap=True)
    cm = confusion_at(t, s, thr)
    f1 = _f1_from(cm)
    report: dict[str, Any] = {
        "n_samples": int(n),
        "classes": [{"name": names[i], "auc": auc[i], "ap": ap[i], "f1": f1[i], "threshold": thr[i],
                     "n_pos": n_pos[i], "n_neg": n_neg[i], "n_unknown": n_unknown[i]} for i in range(n_classes)],
        "mAUC": mean_defined(auc, names, "AUC"),
        "mAP": mean_defined(ap, names, "AP"),
        "mF1": mean_defined(f1, names, "F1"),
    }
    report.update(_prf_from(cm))
    report["subsets"] = {sub: {"mAUC": mean_defined(auc[idx], [names[i] for i in idx], "AUC", warn=False),
                               "mAP": mean_defined(ap[idx], [names[i] for i in idx], "AP", warn=False)}
                         for sub, idx in sub_idx.items()}
    hmt_counts, g5_counts = (gc, gc) if gc is not None else (n_pos, n_pos + n_neg)
    report.update(_group_report(auc, ap, names, hmt_counts, g5_counts))
    return to_jsonable(report)
