"""Compiled kernels (numba) for CFT's two hot loops, with exact NumPy fall-backs elsewhere.

* :func:`auc_rows` / :func:`ap_rows`: exact ROC AUC (ties count 1/2) and scikit-learn's
  average precision of many float32 score rows against one label vector. Each row's
  scores become order-preserving 32-bit keys carrying the label in a 33rd bit, radix sorted
  (three 11-bit passes, one counting pass for all three), then one scan over groups of
  equal scores counts, per positive, the negatives below and tied. O(n) per row instead of
  NumPy's O(n log n) comparison sorts; rows run in parallel threads.
* :func:`asl_grad`: one fused pass over the feature matrix for CFT-BP: per sample the
  logit ``x_i . w + b``, the ASL derivative (the same clamps, clips and detached focal
  weights as :class:`cxrkit.losses.AsymmetricLoss`) and ``g += d_i x_i`` while ``x_i`` is
  still in L1 cache, so the matrix is read from memory once per epoch instead of twice.
* :func:`asl_grad_rows`: the same for K categories that share the feature rows (CFT-BP of
  all categories together): one pass over the matrix serves all K rows, four samples at a
  time, each row of the weights read once per four samples.

numba compiles these on first use (cached on disk when the package folder, or numba's
user cache, is writable). Without numba (``pip install numba`` is part of cxrkit's
dependencies, but the leaderboard container leaves it out) or with ``CXRKIT_NO_NUMBA=1``,
:data:`AVAILABLE` is False and callers use their NumPy / PyTorch code, which gives the
same values (tests/test_cft_kernels.py checks each kernel against it).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

try:  # pragma: no cover - import guard
    if os.environ.get("CXRKIT_NO_NUMBA", "").strip() not in ("", "0"):
        raise ImportError("disabled by CXRKIT_NO_NUMBA")
    import numba
    from numba import njit, prange

    if not os.environ.get("NUMBA_THREADING_LAYER"):
        # numba's own scheduler: fork-safe (CFT's --workers fork after the parent ran a
        # kernel; GNU OpenMP aborts there). Not safe for concurrent calls from several
        # Python threads, hence the lock below.
        numba.config.THREADING_LAYER = "workqueue"
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised with CXRKIT_NO_NUMBA=1
    numba = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "auc_rows", "ap_rows", "asl_grad", "asl_grad_rows", "default_threads", "scores", "set_threads"]

_LOCK = threading.Lock()
_FAST = {"reassoc", "contract"}  # let the dot products vectorise; no finite-math assumptions

if AVAILABLE:

    @njit(cache=True, parallel=True)
    def _rank_rows(scores, labels, npos, nneg, metric_ap):  # pragma: no cover - compiled
        """Per row: 64-bit keys (order-preserving uint32 of the score, -0.0 as +0.0) << 1 |
        label, LSD radix sorted on the 32 key bits (three 11-bit passes, one counting pass),
        then one scan over groups of equal scores. A row holding NaN gives NaN."""
        n_rows, n = scores.shape
        out = np.empty(n_rows, np.float64)
        for r in prange(n_rows):
            u = scores[r].view(np.uint32)
            a = np.empty(n, np.uint64)
            b = np.empty(n, np.uint64)
            cnt = np.zeros((3, 2048), np.int64)
            nan = False
            for i in range(n):
                v = u[i]
                if (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                    nan = True
                if v == np.uint32(0x80000000):
                    v = np.uint32(0)
                if v & np.uint32(0x80000000):
                    v = ~v
                else:
                    v = v | np.uint32(0x80000000)
                a[i] = (np.uint64(v) << np.uint64(1)) | np.uint64(labels[i])
                cnt[0, v & np.uint32(2047)] += 1
                cnt[1, (v >> np.uint32(11)) & np.uint32(2047)] += 1
                cnt[2, v >> np.uint32(22)] += 1
            if nan:
                out[r] = np.nan  # the caller scores NaN rows with its NumPy code
                continue
            for p in range(3):
                tot = 0
                for d in range(2048):
                    c = cnt[p, d]
                    cnt[p, d] = tot
                    tot += c
            for i in range(n):
                d = (a[i] >> np.uint64(1)) & np.uint64(2047)
                b[cnt[0, d]] = a[i]
                cnt[0, d] += 1
            for i in range(n):
                d = (b[i] >> np.uint64(12)) & np.uint64(2047)
                a[cnt[1, d]] = b[i]
                cnt[1, d] += 1
            for i in range(n):
                d = (a[i] >> np.uint64(23)) & np.uint64(2047)
                b[cnt[2, d]] = a[i]
                cnt[2, d] += 1
            # b: ascending by score; groups of equal scores
            if metric_ap:
                acc = 0.0
                tp = 0
                fp = 0
                i = n - 1
                while i >= 0:
                    key = b[i] >> np.uint64(1)
                    cp = 0
                    cn = 0
                    while i >= 0 and (b[i] >> np.uint64(1)) == key:
                        if b[i] & np.uint64(1):
                            cp += 1
                        else:
                            cn += 1
                        i -= 1
                    tp += cp
                    fp += cn
                    if cp:
                        acc += cp * (tp / (tp + fp))
                out[r] = acc / npos
            else:
                total2 = 0
                below = 0
                i = 0
                while i < n:
                    key = b[i] >> np.uint64(1)
                    cp = 0
                    cn = 0
                    while i < n and (b[i] >> np.uint64(1)) == key:
                        if b[i] & np.uint64(1):
                            cp += 1
                        else:
                            cn += 1
                        i += 1
                    total2 += 2 * cp * below + cp * cn
                    below += cn
                out[r] = total2 / (2.0 * npos * nneg)
        return out

    @njit(cache=True, inline="always")
    def _asl_term(s, yi, gamma_pos, gamma_neg, clip, log_eps):  # pragma: no cover - compiled
        """(loss, d loss / d logit) of one entry, as AsymmetricLoss computes them."""
        # log sigmoid(s) and log sigmoid(-s), stable
        if s >= 0:
            e = math.exp(-s)
            ls_pos = -math.log1p(e)
            ls_neg = -s - math.log1p(e)
            p = 1.0 / (1.0 + e)
        else:
            e = math.exp(s)
            ls_pos = s - math.log1p(e)
            ls_neg = -math.log1p(e)
            p = e / (1.0 + e)
        q = 1.0 - p
        loss = 0.0
        grad = 0.0
        if yi != 0.0:
            w_pos = 1.0 if gamma_pos == 0.0 else math.exp(gamma_pos * ls_neg)
            if ls_pos >= log_eps:
                loss -= yi * w_pos * ls_pos
                grad -= yi * w_pos * q
            else:
                loss -= yi * w_pos * log_eps
        if yi != 1.0:
            yn = 1.0 - yi
            p_m = p
            if clip > 0.0:
                p_m = p - clip
                if p_m < 0.0:
                    p_m = 0.0
            if gamma_neg == 0.0:
                w_neg = 1.0
            elif p_m > 0.0:
                w_neg = p_m ** gamma_neg
            else:
                w_neg = 0.0
            if clip > 0.0:
                t = q + clip
                if t <= 1.0:
                    lt = math.log(t)
                    if lt >= log_eps:
                        loss -= yn * w_neg * lt
                        grad += yn * w_neg * q * p / t
                    else:
                        loss -= yn * w_neg * log_eps
                # t > 1: log(min(t, 1)) = 0, no loss and no gradient
            else:
                if ls_neg >= log_eps:
                    loss -= yn * w_neg * ls_neg
                    grad += yn * w_neg * p
                else:
                    loss -= yn * w_neg * log_eps
        return loss, grad

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _asl_grad(x, y, w, b, gamma_pos, gamma_neg, clip, log_eps, n_chunks):  # pragma: no cover - compiled
        n, z = x.shape
        part = np.zeros((n_chunks, z + 2), np.float64)
        step = (n + n_chunks - 1) // n_chunks
        for c in prange(n_chunks):
            g = np.zeros(z, np.float32)
            gb = 0.0
            loss = 0.0
            for i in range(c * step, min(n, (c + 1) * step)):
                s = np.float32(0.0)
                for j in range(z):
                    s += x[i, j] * w[j]
                s += b
                li, di = _asl_term(np.float64(s), np.float64(y[i]), gamma_pos, gamma_neg, clip, log_eps)
                loss += li
                gb += di
                d = np.float32(di)
                for j in range(z):
                    g[j] += d * x[i, j]
            for j in range(z):
                part[c, j] = g[j]
            part[c, z] = gb
            part[c, z + 1] = loss
        return part.sum(axis=0)



if AVAILABLE:

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _asl_grad_rows(x, y, w, b, gamma_pos, gamma_neg, clip, log_eps, n_chunks):  # pragma: no cover - compiled
        """:func:`_asl_grad` for K rows at once (y: n x K, NaN = unknown): four samples at a time,
        so each row of ``w`` is read once per four samples and ``g`` updated once per four."""
        n, z = x.shape
        k_n = w.shape[0]
        part = np.zeros((n_chunks, k_n, z + 2), np.float64)
        nb = (n + 3) // 4
        step = ((nb + n_chunks - 1) // n_chunks) * 4
        for c in prange(n_chunks):
            g = np.zeros((k_n, z), np.float32)
            d = np.zeros((k_n, 4), np.float32)
            lo = c * step
            hi = min(n, (c + 1) * step)
            i = lo
            while i < hi:
                m = min(4, hi - i)
                for k in range(k_n):
                    s0 = np.float32(0.0)
                    s1 = np.float32(0.0)
                    s2 = np.float32(0.0)
                    s3 = np.float32(0.0)
                    if m == 4:
                        for j in range(z):
                            wkj = w[k, j]
                            s0 += x[i, j] * wkj
                            s1 += x[i + 1, j] * wkj
                            s2 += x[i + 2, j] * wkj
                            s3 += x[i + 3, j] * wkj
                        ss = (s0, s1, s2, s3)
                    else:
                        for j in range(z):
                            s0 += x[i, j] * w[k, j]
                        if m > 1:
                            for j in range(z):
                                s1 += x[i + 1, j] * w[k, j]
                        if m > 2:
                            for j in range(z):
                                s2 += x[i + 2, j] * w[k, j]
                        ss = (s0, s1, s2, s3)
                    for q in range(4):
                        d[k, q] = 0.0
                    for q in range(m):
                        yi = y[i + q, k]
                        if yi != yi:
                            continue
                        li, di = _asl_term(np.float64(ss[q] + b[k]), np.float64(yi), gamma_pos, gamma_neg, clip, log_eps)
                        part[c, k, z + 1] += li
                        part[c, k, z] += di
                        d[k, q] = np.float32(di)
                if m == 4:
                    for k in range(k_n):
                        d0, d1, d2, d3 = d[k, 0], d[k, 1], d[k, 2], d[k, 3]
                        for j in range(z):
                            g[k, j] += d0 * x[i, j] + d1 * x[i + 1, j] + d2 * x[i + 2, j] + d3 * x[i + 3, j]
                else:
                    for q in range(m):
                        for k in range(k_n):
                            dk = d[k, q]
                            for j in range(z):
                                g[k, j] += dk * x[i + q, j]
                i += 4
            for k in range(k_n):
                for j in range(z):
                    part[c, k, j] = g[k, j]
        return part.sum(axis=0)

if AVAILABLE:

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _matvec(x, w, b):  # pragma: no cover - compiled
        n, z = x.shape
        out = np.empty(n, np.float32)
        for i in prange(n):
            s = np.float32(0.0)
            for j in range(z):
                s += x[i, j] * w[j]
            out[i] = s + b
        return out


if AVAILABLE:

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _matvec_rows(x, w, b):  # pragma: no cover - compiled
        n, z = x.shape
        out = np.empty((n, w.shape[0]), np.float32)
        for i in prange(n):
            for k in range(w.shape[0]):
                s = np.float32(0.0)
                for j in range(z):
                    s += x[i, j] * w[k, j]
                out[i, k] = s + b[k]
        return out


def scores_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w.T + b`` (n x K) for K rows ``w``, each column the same sums as
    :func:`scores` gives for that row alone."""
    with _LOCK:
        return _matvec_rows(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w, np.float32),
                            np.ascontiguousarray(b, np.float32))


def scores(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """``x @ w + b`` (float32) on numba's threads: inside the fused loop, a BLAS call would
    wake OpenBLAS's threads, which keep spinning against the kernels' threads afterwards."""
    with _LOCK:
        return _matvec(np.ascontiguousarray(x, np.float32), np.asarray(w, np.float32), np.float32(b))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


_PROCESS_THREADS = [_cores()]


def default_threads() -> int:
    """The threads CFT's fitness and fused passes use when told 0: the process's cores, or
    what :func:`set_threads` set (CFT's worker processes set 1)."""
    return int(numba.get_num_threads()) if AVAILABLE else _PROCESS_THREADS[0]


def set_threads(n: int) -> None:
    """Threads the kernels (and the NumPy fall-back) use from now on in this process."""
    _PROCESS_THREADS[0] = max(1, int(n))
    if AVAILABLE:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def _rank(scores: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray, ap: bool, threads: int) -> np.ndarray:
    """float32 rows; a row holding NaN comes back NaN (callers rescore it their way)."""
    s = np.ascontiguousarray(np.atleast_2d(scores), dtype=np.float32)
    labels = np.zeros(s.shape[1], np.uint8)
    labels[np.asarray(pos_idx, dtype=np.int64)] = 1
    with _LOCK:
        old = numba.get_num_threads()
        if threads > 0:
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS, s.shape[0])))
        try:
            return _rank_rows(s, labels, len(pos_idx), len(neg_idx), ap)
        finally:
            numba.set_num_threads(old)


def auc_rows(scores: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray, threads: int = 0) -> np.ndarray:
    """Exact ROC AUC of each float32 row of ``scores`` (P x n) against the labels whose
    positives are ``pos_idx`` and negatives ``neg_idx``; needs both classes. ``threads``:
    0 = numba's thread count (all cores unless set lower)."""
    return _rank(scores, pos_idx, neg_idx, False, threads)


def ap_rows(scores: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray, threads: int = 0) -> np.ndarray:
    """Average precision (scikit-learn's, ties one threshold) of each float32 row; needs a
    positive."""
    return _rank(scores, pos_idx, neg_idx, True, threads)


def _chunks(n: int) -> int:
    # a few chunks per thread balance the load; each chunk keeps its own gradient (Z floats)
    return max(1, min(4 * default_threads(), n // 256 or 1))


def asl_grad(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, gamma_pos: float, gamma_neg: float,
             clip: float, eps: float) -> tuple[np.ndarray, float, float]:
    """Summed ASL over (x, y) of the row (w, b): (gradient w.r.t. w, w.r.t. b, loss); one
    pass over ``x`` (n x Z float32, C-contiguous)."""
    with _LOCK:
        out = _asl_grad(x, np.asarray(y, np.float32), np.asarray(w, np.float32), np.float32(b), float(gamma_pos),
                        float(gamma_neg), float(clip), math.log(eps), _chunks(x.shape[0]))
    z = x.shape[1]
    return out[:z], float(out[z]), float(out[z + 1])


def asl_grad_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, gamma_pos: float, gamma_neg: float,
                  clip: float, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`asl_grad` for K rows ``w`` (K x Z) over one feature matrix ``x`` (n x Z) with
    labels ``y`` (n x K, NaN = not known for that row's category): (gradients K x Z, bias
    gradients K, losses K), one pass over ``x`` for all K. The logits are the same sums
    as :func:`asl_grad`'s; the gradients are summed four samples at a time, so they differ
    from its by float32 rounding (relative 1e-6)."""
    with _LOCK:
        out = _asl_grad_rows(x, np.ascontiguousarray(y, np.float32), np.ascontiguousarray(w, np.float32),
                             np.ascontiguousarray(b, np.float32), float(gamma_pos), float(gamma_neg), float(clip),
                             math.log(eps), _chunks(x.shape[0]))
    z = x.shape[1]
    return out[:, :z], out[:, z].copy(), out[:, z + 1].copy()
