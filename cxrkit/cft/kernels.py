"""Compiled kernels (numba) for CFT's two hot loops, with exact NumPy fall-backs elsewhere.

* :func:`auc_rows` / :func:`ap_rows`: exact ROC AUC (ties count 1/2) and scikit-learn's
  average precision of many float32 score rows against one label vector. Each row's
  scores become order-preserving 32-bit keys carrying the label in a 33rd bit, radix sorted
  (three 11-bit passes, one counting pass for all three), then one scan over groups of
  equal scores counts, per positive, the negatives below and tied. O(n) per row instead of
  NumPy's O(n log n) comparison sorts; rows run in parallel threads.
* :func:`asl_grad_rows`: one fused pass over the feature matrix for CFT-BP of K categories
  that share the feature rows (K = 1: :func:`asl_grad`), eight samples at a time: the
  block's logits ``x_i . w_k + b_k`` (two rows at a time, 16 running sums, so each value of
  ``x`` and ``w`` is loaded once per block), each known entry's ASL derivative (the same
  clamps, clips and detached focal weights as :class:`cxrkit.losses.AsymmetricLoss`, one
  exp per entry; the logs only for the loss), then ``g_k += sum_i d_ik x_i`` while the block
  is still in L1 cache, so the matrix is read from memory once per epoch for all K rows.
  :func:`scores_rows` gives the same logits.

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

__all__ = ["AVAILABLE", "auc_rows", "ap_rows", "asl_grad", "asl_grad_rows", "default_threads", "score_columns", "scores",
           "scores_rows", "set_threads"]

_LOCK = threading.Lock()
_FAST = {"reassoc", "contract"}  # let the dot products vectorise; no finite-math assumptions
_BLOCK = 8  # samples per block of the fused BP kernels
_LN2 = math.log(2.0)

if AVAILABLE:

    @njit(cache=True, inline="always")
    def _rank_one(row, lab, npos, nneg, metric_ap):  # pragma: no cover - compiled
        """AUC / AP of one float32 row: 64-bit keys (order-preserving uint32 of the score,
        -0.0 as +0.0) << 1 | label, LSD radix sorted on the 32 key bits (three 11-bit passes,
        one counting pass), then one scan over groups of equal scores; entries labelled 2
        left out. NaN when the row holds NaN."""
        n_all = row.shape[0]
        u = row.view(np.uint32)
        a = np.empty(n_all, np.uint64)
        b = np.empty(n_all, np.uint64)
        cnt = np.zeros((3, 2048), np.int32)
        nan = False
        n = 0
        for i in range(n_all):
            li = lab[i]
            if li > 1:
                continue
            v = np.uint64(u[i])
            nan |= (v & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)
            if v == np.uint64(0x80000000):
                v = np.uint64(0)
            # order-preserving: negative -> all bits flipped, positive -> sign bit set
            v ^= ((v >> np.uint64(31)) * np.uint64(0x7FFFFFFF)) | np.uint64(0x80000000)
            a[n] = (v << np.uint64(1)) | np.uint64(li)
            n += 1
            cnt[0, v & np.uint64(2047)] += 1
            cnt[1, (v >> np.uint64(11)) & np.uint64(2047)] += 1
            cnt[2, v >> np.uint64(22)] += 1
        if nan:
            return np.nan  # the caller scores NaN rows with its NumPy code
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
                    bit = np.int64(b[i] & np.uint64(1))
                    cp += bit
                    cn += 1 - bit
                    i -= 1
                tp += cp
                fp += cn
                acc += cp * (tp / (tp + fp))  # a group without positives adds 0
            return acc / npos
        else:
            total2 = 0
            below = 0
            i = 0
            while i < n:
                key = b[i] >> np.uint64(1)
                cp = 0
                cn = 0
                while i < n and (b[i] >> np.uint64(1)) == key:
                    bit = np.int64(b[i] & np.uint64(1))
                    cp += bit
                    cn += 1 - bit
                    i += 1
                total2 += 2 * cp * below + cp * cn
                below += cn
            return total2 / (2.0 * npos * nneg)

    @njit(cache=True, parallel=True)
    def _rank_rows(scores, labels, npos, nneg, metric_ap):  # pragma: no cover - compiled
        """:func:`_rank_one` of every row, rows in parallel. ``labels`` (L x n, 0 / 1, 2 = left
        out): one row for all score rows (L = 1) or one per score row, with its counts
        ``npos`` / ``nneg`` (length L)."""
        n_rows = scores.shape[0]
        out = np.empty(n_rows, np.float64)
        for r in prange(n_rows):
            lr = np.int64(r) if labels.shape[0] > 1 else np.int64(0)
            out[r] = _rank_one(scores[r], labels[lr], npos[lr], nneg[lr], metric_ap)
        return out

    @njit(cache=True, nogil=True)
    def _rank_rows_serial(scores, labels, npos, nneg, metric_ap):  # pragma: no cover - compiled
        """:func:`_rank_rows` on the calling thread, without the GIL: several Python threads
        (GAs side by side) score at once, no lock needed."""
        n_rows = scores.shape[0]
        out = np.empty(n_rows, np.float64)
        for r in range(n_rows):
            lr = r if labels.shape[0] > 1 else 0
            out[r] = _rank_one(scores[r], labels[lr], npos[lr], nneg[lr], metric_ap)
        return out

    @njit(cache=True)
    def _easy_logit(log_eps, clip, log_clip):  # pragma: no cover - compiled
        """The |logit| below which none of ASL's eps clamps binds (log sigmoid(+-s) lies in
        (-|s| - ln 2, 0], and log(q + clip) >= log clip), with a 1e-6 margin; 0 when a clamp
        can bind anywhere (eps >= 1/2, or clip <= eps)."""
        if log_eps >= -_LN2 - 1e-6 or (clip > 0.0 and log_clip < log_eps + 1e-6):
            return 0.0
        return -log_eps - _LN2 - 1e-6

    @njit(cache=True, inline="always")
    def _neg_weight(p, clip, gamma_neg, ipow):  # pragma: no cover - compiled
        """(p_m, p_m ** gamma_neg): the clipped probability of a negative and its focal
        weight (an integer ``ipow`` by multiplication)."""
        p_m = p
        if clip > 0.0:
            p_m = p - clip
            if p_m < 0.0:
                p_m = 0.0
        if gamma_neg == 0.0:
            w = 1.0
        elif p_m > 0.0:
            if ipow > 0:
                w = p_m
                for _ in range(ipow - 1):
                    w *= p_m
            else:
                w = p_m ** gamma_neg
        else:
            w = 0.0
        return p_m, w

    @njit(cache=True, inline="always")
    def _asl_term(s, yi, gamma_pos, gamma_neg, clip, log_eps, ipow, want_loss, log_clip, s_easy):  # pragma: no cover - compiled
        """(loss, d loss / d logit) of one entry, as AsymmetricLoss computes them. The
        derivative needs one exp: the logarithms only feed the loss (skipped without
        ``want_loss``) and the eps clamps, which are decided without them unless the logit
        lies within 1e-6 of a clamp. ``ipow`` > 0: gamma_neg is that integer, its power
        taken by multiplication. ``log_clip``: log(clip) when clip > 0; ``s_easy``: below
        this |s| no eps clamp binds (see :func:`_easy_logit`)."""
        e = math.exp(-abs(s))
        p = (1.0 if s >= 0 else e) / (1.0 + e)
        q = 1.0 - p
        loss = 0.0
        grad = 0.0
        if not want_loss and gamma_pos == 0.0 and abs(s) <= s_easy:
            # no clamp can bind (s_easy > 0 only when eps < 1/2 and clip > eps): both terms'
            # derivatives without a branch on the label, in the order of the general code below
            p_m, w_neg = _neg_weight(p, clip, gamma_neg, ipow)
            if clip > 0.0:
                g_neg = (1.0 - yi) * w_neg * q * p / (q + clip) if p_m > 0.0 else 0.0
            else:
                g_neg = (1.0 - yi) * w_neg * p
            return 0.0, (grad - yi * 1.0 * q) + g_neg
        if yi != 0.0:
            # ls_pos = log sigmoid(s) = -log1p(e) (s >= 0) or s - log1p(e), in (s - ln 2, s)
            if s >= 0:
                above = log_eps < -_LN2 - 1e-6
                exact = not above
            else:
                above = s - _LN2 >= log_eps + 1e-6
                exact = not above and s > log_eps - 1e-6
            need_log = want_loss or exact or gamma_pos != 0.0
            ls_pos = 0.0
            l1 = 0.0
            if need_log:
                l1 = math.log1p(e)
                ls_pos = -l1 if s >= 0 else s - l1
                above = ls_pos >= log_eps
            w_pos = 1.0
            if gamma_pos != 0.0:
                w_pos = math.exp(gamma_pos * (-s - l1 if s >= 0 else -l1))
            if above:
                loss -= yi * w_pos * ls_pos
                grad -= yi * w_pos * q
            else:
                loss -= yi * w_pos * log_eps
        if yi != 1.0:
            yn = 1.0 - yi
            p_m, w_neg = _neg_weight(p, clip, gamma_neg, ipow)
            if w_neg != 0.0:
                if clip > 0.0:
                    t = q + clip
                    if t <= 1.0:  # t > 1: log(min(t, 1)) = 0, no loss and no gradient
                        # log t >= log clip
                        above = log_clip >= log_eps + 1e-6
                        lt = 0.0
                        if want_loss or not above:
                            lt = math.log(t)
                            above = lt >= log_eps
                        if above:
                            loss -= yn * w_neg * lt
                            grad += yn * w_neg * q * p / t
                        else:
                            loss -= yn * w_neg * log_eps
                else:
                    # ls_neg = log sigmoid(-s), in (-s - ln 2, -s)
                    if s <= 0:
                        above = log_eps < -_LN2 - 1e-6
                        exact = not above
                    else:
                        above = -s - _LN2 >= log_eps + 1e-6
                        exact = not above and -s > log_eps - 1e-6
                    ls_neg = 0.0
                    if want_loss or exact:
                        l1 = math.log1p(e)
                        ls_neg = -s - l1 if s >= 0 else -l1
                        above = ls_neg >= log_eps
                    if above:
                        loss -= yn * w_neg * ls_neg
                        grad += yn * w_neg * p
                    else:
                        loss -= yn * w_neg * log_eps
        return loss, grad

    @njit(cache=True, inline="always")
    def _block_logits(xb, w, sv):  # pragma: no cover - compiled
        """sv[k, q] = xb[q] . w[k] (float32 sums) for a block of 8 samples and an even number
        of rows, two rows at a time: 16 running sums, each x and w value loaded once per
        block. Every logit is the same sum whichever block slot and row pair it falls in."""
        z = xb.shape[1]
        for k in range(0, w.shape[0], 2):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            a4 = np.float32(0.0)
            a5 = np.float32(0.0)
            a6 = np.float32(0.0)
            a7 = np.float32(0.0)
            c0 = np.float32(0.0)
            c1 = np.float32(0.0)
            c2 = np.float32(0.0)
            c3 = np.float32(0.0)
            c4 = np.float32(0.0)
            c5 = np.float32(0.0)
            c6 = np.float32(0.0)
            c7 = np.float32(0.0)
            for j in range(z):
                u = w[k, j]
                v = w[k + 1, j]
                x0 = xb[0, j]
                x1 = xb[1, j]
                x2 = xb[2, j]
                x3 = xb[3, j]
                x4 = xb[4, j]
                x5 = xb[5, j]
                x6 = xb[6, j]
                x7 = xb[7, j]
                a0 += x0 * u
                a1 += x1 * u
                a2 += x2 * u
                a3 += x3 * u
                a4 += x4 * u
                a5 += x5 * u
                a6 += x6 * u
                a7 += x7 * u
                c0 += x0 * v
                c1 += x1 * v
                c2 += x2 * v
                c3 += x3 * v
                c4 += x4 * v
                c5 += x5 * v
                c6 += x6 * v
                c7 += x7 * v
            sv[k, 0] = a0
            sv[k, 1] = a1
            sv[k, 2] = a2
            sv[k, 3] = a3
            sv[k, 4] = a4
            sv[k, 5] = a5
            sv[k, 6] = a6
            sv[k, 7] = a7
            sv[k + 1, 0] = c0
            sv[k + 1, 1] = c1
            sv[k + 1, 2] = c2
            sv[k + 1, 3] = c3
            sv[k + 1, 4] = c4
            sv[k + 1, 5] = c5
            sv[k + 1, 6] = c6
            sv[k + 1, 7] = c7

    @njit(cache=True, inline="always")
    def _load_block(x, i, m, xb):  # pragma: no cover - compiled
        """Samples i .. i + m - 1 into the 8-row block (zeros after them)."""
        z = x.shape[1]
        for q in range(_BLOCK):
            if q < m:
                for j in range(z):
                    xb[q, j] = x[i + q, j]
            else:
                for j in range(z):
                    xb[q, j] = 0.0

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _asl_grad_rows(x, y, w, b, k_real, gamma_pos, gamma_neg, clip, log_eps, ipow, want_loss,
                       n_chunks):  # pragma: no cover - compiled
        """Per chunk of samples, blocks of 8: the logits of all rows (:func:`_block_logits`),
        each known entry's ASL derivative, then g[k] += sum_q d[k, q] x_q, skipped for a row
        whose 8 derivatives are all zero (unknown labels, clipped negatives). ``w`` has an
        even number of rows (a zero row pads an odd count); ``k_real`` rows are real."""
        n, z = x.shape
        k_n = w.shape[0]
        log_clip = math.log(clip) if clip > 0.0 else 0.0
        s_easy = _easy_logit(log_eps, clip, log_clip)
        part = np.zeros((n_chunks, k_n, z + 2), np.float64)
        nb = (n + _BLOCK - 1) // _BLOCK
        step = ((nb + n_chunks - 1) // n_chunks) * _BLOCK
        for c in prange(n_chunks):
            g = np.zeros((k_n, z), np.float32)
            d = np.zeros((k_n, _BLOCK), np.float32)
            sv = np.zeros((k_n, _BLOCK), np.float32)
            xb = np.zeros((_BLOCK, z), np.float32)
            lo = c * step
            hi = min(n, (c + 1) * step)
            i = lo
            while i < hi:
                m = min(_BLOCK, hi - i)
                _load_block(x, i, m, xb)
                _block_logits(xb, w, sv)
                for k in range(k_real):
                    bk = b[k]
                    for q in range(_BLOCK):
                        d[k, q] = 0.0
                        if q >= m:
                            continue
                        yi = y[i + q, k]
                        if yi != yi:
                            continue
                        li, di = _asl_term(np.float64(sv[k, q] + bk), np.float64(yi), gamma_pos, gamma_neg, clip,
                                           log_eps, ipow, want_loss, log_clip, s_easy)
                        if want_loss:
                            part[c, k, z + 1] += li
                        part[c, k, z] += di
                        d[k, q] = np.float32(di)
                for k in range(k_real):
                    d0 = d[k, 0]
                    d1 = d[k, 1]
                    d2 = d[k, 2]
                    d3 = d[k, 3]
                    d4 = d[k, 4]
                    d5 = d[k, 5]
                    d6 = d[k, 6]
                    d7 = d[k, 7]
                    if (d0 == 0.0 and d1 == 0.0 and d2 == 0.0 and d3 == 0.0 and d4 == 0.0 and d5 == 0.0
                            and d6 == 0.0 and d7 == 0.0):
                        continue
                    for j in range(z):
                        g[k, j] += (d0 * xb[0, j] + d1 * xb[1, j] + d2 * xb[2, j] + d3 * xb[3, j]
                                    + d4 * xb[4, j] + d5 * xb[5, j] + d6 * xb[6, j] + d7 * xb[7, j])
                i += _BLOCK
            for k in range(k_n):
                for j in range(z):
                    part[c, k, j] = g[k, j]
        return part.sum(axis=0)

    @njit(cache=True, parallel=True, fastmath=_FAST)
    def _scores_rows(x, w, b, k_real, n_chunks):  # pragma: no cover - compiled
        """x @ w.T + b (n x k_real) by the blocks of :func:`_asl_grad_rows`: the same sums."""
        n, z = x.shape
        k_n = w.shape[0]
        out = np.empty((n, k_real), np.float32)
        nb = (n + _BLOCK - 1) // _BLOCK
        step = ((nb + n_chunks - 1) // n_chunks) * _BLOCK
        for c in prange(n_chunks):
            sv = np.zeros((k_n, _BLOCK), np.float32)
            xb = np.zeros((_BLOCK, z), np.float32)
            i = c * step
            hi = min(n, (c + 1) * step)
            while i < hi:
                m = min(_BLOCK, hi - i)
                _load_block(x, i, m, xb)
                _block_logits(xb, w, sv)
                for q in range(m):
                    for k in range(k_real):
                        out[i + q, k] = sv[k, q] + b[k]
                i += _BLOCK
        return out


if AVAILABLE:

    @njit(cache=True)
    def _nearest(sols, cache, cap):  # pragma: no cover - compiled
        """Per solution: the first cached row with the fewest differing genes and that count,
        counts above ``cap`` not finished (reported as cap + 1)."""
        p, m = sols.shape
        best = np.empty(p, np.int64)
        count = np.empty(p, np.int64)
        for i in range(p):
            bj = 0
            bc = cap + 2
            for j in range(cache.shape[0]):
                c = 0
                for g in range(m):
                    if sols[i, g] != cache[j, g]:
                        c += 1
                        if c > cap:
                            break
                if c < bc:
                    bc = c
                    bj = j
                    if c == 0:
                        break
            best[i] = bj
            count[i] = min(bc, cap + 1)
        return best, count


def nearest_rows(sols: np.ndarray, cache: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``sols`` (P x m), the index of the first row of ``cache`` differing in
    the fewest positions and that number, capped at ``cap`` + 1 (a count above ``cap`` stops
    early): NumPy's ``(sols[:, None] != cache[None]).sum(2)`` argmin wherever the count is
    at most ``cap``, without comparing every pair in full."""
    sols = np.ascontiguousarray(sols, np.float32)
    cache = np.ascontiguousarray(cache, np.float32)
    if AVAILABLE:
        return _nearest(sols, cache, int(cap))
    counts = np.minimum((sols[:, None, :] != cache[None, :, :]).sum(axis=2), cap + 1)
    best = counts.argmin(axis=1)
    return best, counts[np.arange(len(sols)), best]


def _even_rows(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(w, b) as float32 with an even number of rows (a zero row added to an odd count)."""
    w = np.ascontiguousarray(np.atleast_2d(w), np.float32)
    b = np.ascontiguousarray(np.atleast_1d(b), np.float32).reshape(-1)
    k = w.shape[0]
    if k % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.float32)])
        b = np.concatenate([b, np.zeros(1, np.float32)])
    return w, b, k


def _int_power(gamma: float) -> int:
    """gamma as a small positive integer (its power taken by multiplication), else 0."""
    return int(gamma) if gamma == int(gamma) and 1 <= gamma <= 16 else 0


def scores_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w.T + b`` (n x K float32) for K rows ``w``: the same sums as the logits of
    :func:`asl_grad_rows`, whatever K (each row's sums do not depend on the others)."""
    x = np.ascontiguousarray(x, np.float32)
    w2, b2, k = _even_rows(w, b)
    with _LOCK:
        return _scores_rows(x, w2, b2, k, _chunks(x.shape[0]))


def scores(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """``x @ w + b`` (float32) on numba's threads, the sums of :func:`scores_rows` (inside
    the fused loop, a BLAS call would wake OpenBLAS's threads, which keep spinning against
    the kernels' threads afterwards)."""
    return scores_rows(x, np.asarray(w, np.float32).reshape(1, -1), np.array([b], np.float32))[:, 0]


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
    labels = np.zeros((1, s.shape[1]), np.uint8)
    labels[0, np.asarray(pos_idx, dtype=np.int64)] = 1
    return _rank_labels(s, labels, np.array([len(pos_idx)]), np.array([len(neg_idx)]), ap, threads)


def _rank_labels(s: np.ndarray, labels: np.ndarray, npos: np.ndarray, nneg: np.ndarray, ap: bool,
                 threads: int) -> np.ndarray:
    if threads == 1 or s.shape[0] == 1:  # one thread: the caller's, the GIL released
        return _rank_rows_serial(s, labels, npos.astype(np.int64), nneg.astype(np.int64), ap)
    with _LOCK:
        old = numba.get_num_threads()
        if threads > 0:
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS, s.shape[0])))
        try:
            return _rank_rows(s, labels, npos.astype(np.int64), nneg.astype(np.int64), ap)
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


def score_columns(scores: np.ndarray, y: np.ndarray, metric: str, threads: int = 0) -> np.ndarray:
    """Exact AUC / AP of each column k of ``scores`` (n x K float32) against column k of
    ``y`` (n x K: 0 / 1, NaN = left out), all columns in one parallel call: the values
    :class:`~cxrkit.cft.fitness.BinaryScorer` gives each column on its known entries. NaN
    where a column lacks a class, or its scores hold NaN (callers rescore it their way)."""
    s = np.ascontiguousarray(np.asarray(scores, np.float32).T)
    y = np.asarray(y, np.float64)
    labels = np.where(np.isnan(y), 2, y).astype(np.uint8).T.copy()
    npos = (labels == 1).sum(axis=1)
    nneg = (labels == 0).sum(axis=1)
    ap = metric == "ap"
    out = _rank_labels(s, labels, npos, nneg, ap, threads)
    out[(npos == 0) | ((nneg == 0) & (not ap))] = np.nan
    return out


def _chunks(n: int) -> int:
    # a few chunks per thread balance the load; each chunk keeps its own gradient (K x Z floats)
    return max(1, min(4 * default_threads(), n // 256 or 1))


def asl_grad(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, gamma_pos: float, gamma_neg: float,
             clip: float, eps: float, want_loss: bool = True) -> tuple[np.ndarray, float, float]:
    """Summed ASL over (x, y) of the row (w, b): (gradient w.r.t. w, w.r.t. b, loss); one
    pass over ``x`` (n x Z float32, C-contiguous). :func:`asl_grad_rows` with one row."""
    g, gb, loss = asl_grad_rows(x, np.asarray(y, np.float32).reshape(-1, 1), np.asarray(w).reshape(1, -1),
                                np.array([b], np.float32), gamma_pos, gamma_neg, clip, eps, want_loss)
    return g[0], float(gb[0]), float(loss[0])


def asl_grad_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, gamma_pos: float, gamma_neg: float,
                  clip: float, eps: float, want_loss: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`asl_grad` for K rows ``w`` (K x Z) over one feature matrix ``x`` (n x Z) with
    labels ``y`` (n x K, NaN = not known for that row's category): (gradients K x Z, bias
    gradients K, losses K), one pass over ``x`` for all K, eight samples at a time. A row's
    logits are the same sums whatever the other rows; its gradient is summed per block of
    eight samples, so one category fitted on its known rows alone differs from it by float32
    rounding (relative 1e-6). ``want_loss=False``: the losses come back 0 and the
    gradients cost one exp per entry instead of an exp and a log."""
    x = np.ascontiguousarray(x, np.float32)
    w2, b2, k = _even_rows(w, b)
    y = np.ascontiguousarray(y, np.float32).reshape(x.shape[0], k)
    with _LOCK:
        out = _asl_grad_rows(x, y, w2, b2, k, float(gamma_pos), float(gamma_neg), float(clip), math.log(eps),
                             _int_power(float(gamma_neg)), bool(want_loss), _chunks(x.shape[0]))
    z = x.shape[1]
    return out[:k, :z], out[:k, z].copy(), out[:k, z + 1].copy()
