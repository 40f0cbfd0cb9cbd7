"""Fitness for CFT: exact AUC / AP of many score vectors against one label vector, and the
scores of a GA population kept up to date incrementally.

A GA child differs from an already scored individual (a parent, an elite) in a few genes
(sparse mutation, segments of crossover), so its scores on all n samples are that
individual's scores plus ``X[:, genes] @ delta[genes]`` - a sparse update costing n x k
instead of the n x Z matrix product. :class:`PopulationScorer` finds, for every new
solution, the previously scored solution with the fewest differing genes, updates
incrementally when that is cheaper and falls back to one batched matrix product for the
rest; exact rescoring every ``refresh`` generations bounds float32 drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels

METRICS = ("auc", "ap")


class BinaryScorer:
    """Exact ROC AUC (ties count 1/2) or average precision (scikit-learn's step-wise AP,
    ties form one threshold) of score rows against fixed 0/1 labels ``y``.

    Per row: sort the positives' and the negatives' scores (SIMD sorts), then merge the two
    sorted runs (a stable argsort of two runs is a linear merge) to count, per positive, the
    negatives below it:

    * AUC = sum over positives of (#negatives below + 1/2 #negatives tied) / (P N)
    * AP  = mean over positives of TP(>= s) / (TP(>= s) + FP(>= s))

    float32 rows go to the compiled kernels of :mod:`cxrkit.cft.kernels` when numba is
    there (the same merge on radix-sorted keys, O(n) per row, rows in parallel; the same
    values); other dtypes and rows holding NaN take the NumPy code. ``threads``: 0 = all
    the process's cores (numba's thread count); NumPy's code runs ``threads`` > 1 rows in
    parallel threads (numpy releases the GIL there), else one."""

    def __init__(self, y: np.ndarray, metric: str = "auc", threads: int = 0, compiled: bool = True) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        y = np.asarray(y)
        if y.ndim != 1 or not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be a 1-D array of 0 / 1")
        self.y = y.astype(bool)
        self.metric = metric
        self.n_pos = int(self.y.sum())
        self.n_neg = int((~self.y).sum())
        self.pos_idx = np.flatnonzero(self.y)
        self.neg_idx = np.flatnonzero(~self.y)
        self.threads = max(0, int(threads))
        self.compiled = bool(compiled) and kernels.AVAILABLE
        self._pool = None

    @property
    def defined(self) -> bool:
        return self.n_pos > 0 and (self.n_neg > 0 or self.metric == "ap")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """``scores``: P x n (one row per individual) or n -> one value per row."""
        s = np.atleast_2d(np.asarray(scores))
        if not self.defined:
            return np.full(s.shape[0], np.nan)
        fn = self._auc_row if self.metric == "auc" else self._ap_row
        if self.compiled and s.dtype == np.float32:
            kernel = kernels.auc_rows if self.metric == "auc" else kernels.ap_rows
            out = kernel(s, self.pos_idx, self.neg_idx, self.threads)
            for i in np.flatnonzero(np.isnan(out)):  # rows holding NaN: NumPy's sort order
                out[i] = fn(s[i])
            return out
        pool = self.pool()
        if pool is not None and s.shape[0] > 1:
            return np.fromiter(pool.map(fn, s), dtype=np.float64, count=s.shape[0])
        return np.fromiter(map(fn, s), dtype=np.float64, count=s.shape[0])

    @property
    def n_threads(self) -> int:
        """``threads``, 0 resolved to the process's threads (:func:`kernels.default_threads`)."""
        return self.threads or kernels.default_threads()

    def pool(self) -> Any:
        """The thread pool (more than one thread), created on first use."""
        if self.n_threads <= 1:
            return None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.n_threads)
        return self._pool

    def _split(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.sort(row[self.pos_idx]), np.sort(row[self.neg_idx])

    def _merge(self, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Merge the two sorted runs, positives first (a stable argsort of two runs is one
        linear merge): in a group of equal values the positives precede the tied negatives.
        Returns the merged values, the positive flags and, per positive (ascending), the
        number of negatives strictly below it."""
        runs = np.concatenate([pos, neg])
        order = np.argsort(runs, kind="stable")
        is_pos = order < self.n_pos
        below = np.flatnonzero(is_pos) - np.arange(self.n_pos)
        return runs[order], is_pos, below, order

    def _auc_row(self, row: np.ndarray) -> float:
        pos, neg = self._split(row)
        vals, is_pos, below, _ = self._merge(pos, neg)
        total = float(below.sum())
        # values shared by both classes: the last positive of such a group is followed by a negative
        k = np.flatnonzero((vals[1:] == vals[:-1]) & is_pos[:-1] & ~is_pos[1:])
        if len(k):  # each (positive, negative) tied pair counts 1/2
            v = vals[k]
            cp = np.searchsorted(pos, v, "right") - np.searchsorted(pos, v, "left")
            cn = np.searchsorted(neg, v, "right") - np.searchsorted(neg, v, "left")
            total += 0.5 * float((cp * cn).sum())
        return total / (self.n_pos * self.n_neg)

    def _ap_row(self, row: np.ndarray) -> float:
        pos, neg = self._split(row)
        # TP(>= s) for each positive: positives from the start of its tie group upwards
        new_group = np.r_[True, pos[1:] != pos[:-1]]
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(self.n_pos), 0))
        tp = self.n_pos - group_start
        fp = self.n_neg - self._merge(pos, neg)[2]  # negatives not strictly below: >= s, ties included
        return float(np.mean(tp / (tp + fp)))


def torch_rank_metric(scores: Any, y: Any, metric: str = "auc") -> Any:
    """Exact ROC AUC (ties 1/2) or average precision of each row of ``scores`` (P x n torch
    tensor, any device, e.g. CUDA) against 0/1 labels ``y`` (n): one batched sort and two
    batched ``searchsorted`` calls, no Python loop over rows. float64 results, the same
    values as :class:`BinaryScorer` (tests/test_cft_kernels.py)."""
    import torch

    s = scores if scores.ndim == 2 else scores[None]
    yb = y.to(device=s.device, dtype=torch.bool)
    n_pos = int(yb.sum())
    n_neg = int(yb.numel()) - n_pos
    if n_pos == 0 or (metric == "auc" and n_neg == 0):
        return torch.full((s.shape[0],), float("nan"), dtype=torch.float64, device=s.device)
    s = s + 0.0  # -0.0 -> +0.0, as the CPU code counts them equal
    if metric == "auc":
        v, _ = torch.sort(s, dim=1)
        lo = torch.searchsorted(v, s.contiguous(), right=False).to(torch.float64)
        hi = torch.searchsorted(v, s.contiguous(), right=True).to(torch.float64)
        mid = (lo + hi + 1) / 2  # 1-based mid-ranks: ties share the mean of their ranks
        rank_sum = (mid * yb.to(torch.float64)).sum(dim=1)
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    # AP: for each positive, TP(>= s) / (TP(>= s) + FP(>= s))
    pos = s[:, yb]
    neg = s[:, ~yb]
    ps, _ = torch.sort(pos, dim=1)
    ns, _ = torch.sort(neg, dim=1)
    tp = (n_pos - torch.searchsorted(ps, ps, right=False)).to(torch.float64)
    fp = (n_neg - torch.searchsorted(ns.contiguous(), ps, right=False)).to(torch.float64) if n_neg else 0.0
    return (tp / (tp + fp)).mean(dim=1)


def population_product(sols: np.ndarray, xt: np.ndarray, pool: Any = None, threads: int = 1) -> np.ndarray:
    """Scores ``sols[:, :-1] @ xt + sols[:, -1:]`` (P x n float32) written into one array:
    rows split into ``threads`` chunks, each chunk's product (single-threaded BLAS) and bias
    computed in place by one thread of ``pool``. Each row's values are bitwise those of the
    plain expression for that row alone (the same sgemm sums, then the same float32 add),
    without the two extra passes over the result that the expression and a concatenation
    cost (82 MB each for 686 x 30,000 scores)."""
    sols = np.atleast_2d(np.asarray(sols, dtype=np.float32))
    out = np.empty((len(sols), xt.shape[1]), np.float32)

    def part(lo: int, hi: int) -> None:
        np.matmul(sols[lo:hi, :-1], xt, out=out[lo:hi])
        out[lo:hi] += sols[lo:hi, -1:]

    k = min(len(sols), max(1, threads))
    sizes = [len(sols) // k + (i < len(sols) % k) for i in range(k)]  # np.array_split's chunks
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    if pool is None or len(bounds) <= 2:
        part(0, len(sols))
    else:
        list(pool.map(lambda i: part(bounds[i], bounds[i + 1]), range(len(bounds) - 1)))
    return out


class PopulationScorer:
    """Fitness of GA solutions ``[w_1..w_Z, b]`` on fixed features, with incremental updates.

    ``xt``: Z x n float32 features (transposed, rows contiguous), ``y``: n labels. Scores of
    every live solution are cached (keyed by its bytes); ``alive`` (the current population)
    lets the cache drop the dead."""

    def __init__(self, xt: np.ndarray, y: np.ndarray, metric: str = "auc", refresh: int = 25,
                 sparse_fraction: float = 0.06, threads: int = 0, torch_device: str | None = None,
                 product: Any = None) -> None:
        self.product = product  # computes exact scores together with other GAs (ga.SharedProduct)
        self.torch_device = torch_device
        if torch_device is not None:  # scores and AUC / AP with torch there (a GPU), every solution exactly
            import torch

            self._xt_t = torch.as_tensor(np.ascontiguousarray(xt, dtype=np.float32), device=torch_device)
            self._y_t = torch.as_tensor(np.asarray(y), device=torch_device)
        self.xt = np.ascontiguousarray(xt, dtype=np.float32)
        self.z = self.xt.shape[0]
        self.scorer = BinaryScorer(y, metric, threads=threads)
        self.refresh = refresh
        self.max_sparse = max(1, int(sparse_fraction * self.z))
        self.cache: dict[bytes, np.ndarray] = {}
        self.cache_sol = np.zeros((0, self.z + 1), dtype=np.float32)
        self.cache_scores: list[np.ndarray] = []  # one score row per cached solution
        self.calls = 0
        self.stats = {"reused": 0, "sparse": 0, "dense": 0}

    def exact_scores(self, sols: np.ndarray) -> np.ndarray:
        sols = np.atleast_2d(np.asarray(sols, dtype=np.float32))
        if self.product is not None:
            return self.product(sols)
        # rows split over our threads (BLAS itself runs single-threaded inside the GA, so its
        # idle threads do not spin against the AUC threads)
        return population_product(sols, self.xt, self.scorer.pool(), self.scorer.n_threads)

    def _incremental(self, sols: np.ndarray) -> np.ndarray:
        p = sols.shape[0]
        # the nearest cached solution of each (counts above max_sparse need not be exact:
        # those solutions are scored by the matrix product whatever their nearest)
        nearest, counts = kernels.nearest_rows(sols, self.cache_sol, self.max_sparse)
        out = np.empty((p, self.xt.shape[1]), dtype=np.float32)
        dense = []
        for i in range(p):
            j = nearest[i]
            k = counts[i]
            if k == 0:
                out[i] = self.cache_scores[j]
                self.stats["reused"] += 1
            elif k <= self.max_sparse:
                genes = np.flatnonzero(sols[i] != self.cache_sol[j])
                delta = sols[i, genes] - self.cache_sol[j, genes]
                upd = self.cache_scores[j].copy()
                has_bias = genes[-1] == self.z
                w_genes = genes[:-1] if has_bias else genes
                if len(w_genes):
                    upd += delta[: len(w_genes)] @ self.xt[w_genes]
                if has_bias:
                    upd += delta[-1]
                out[i] = upd
                self.stats["sparse"] += 1
            else:
                dense.append(i)
        if len(dense) == p:  # no relative close enough (dense mutation): the product is the result
            self.stats["dense"] += p
            return self.exact_scores(sols)
        if dense:
            out[dense] = self.exact_scores(sols[dense])
            self.stats["dense"] += len(dense)
        return out

    def scores(self, sols: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
        """Scores (P x n) of ``sols``; ``alive``: the whole current population (optional)."""
        sols = np.atleast_2d(np.asarray(sols, dtype=np.float32))
        self.calls += 1
        if len(self.cache_sol) == 0 or self.calls % self.refresh == 0:
            out = self.exact_scores(sols)
            self.stats["dense"] += sols.shape[0]
            if self.calls % self.refresh == 0 and len(self.cache_sol):
                self.cache_scores = list(self.exact_scores(self.cache_sol))  # drop accumulated rounding
        else:
            out = self._incremental(sols)
        # the cache keeps the live population plus these solutions; the score rows are kept
        # as a list (views of the batches they came in), so keeping them copies no scores
        keep = None
        if alive is not None:
            live = {np.asarray(a, dtype=np.float32).tobytes() for a in np.atleast_2d(alive)}
            keep = [i for i, sol in enumerate(self.cache_sol) if sol.tobytes() in live]
        old_sol = self.cache_sol if keep is None else self.cache_sol[keep]
        old_sc = self.cache_scores if keep is None else [self.cache_scores[i] for i in keep]
        size = 4 * max(len(sols), 16)
        self.cache_sol = np.concatenate([old_sol, sols])[-size:]
        self.cache_scores = [*old_sc, *out][-size:]
        return out

    def __call__(self, sols: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
        if self.torch_device is not None:
            import torch

            w = torch.as_tensor(np.atleast_2d(np.asarray(sols, dtype=np.float32)), device=self.torch_device)
            self.calls += 1
            self.stats["dense"] += int(w.shape[0])
            scores = w[:, :-1] @ self._xt_t + w[:, -1:]
            return torch_rank_metric(scores, self._y_t, self.scorer.metric).cpu().numpy()
        return self.scorer(self.scores(sols, alive))
