"""Category-wise Fine-Tuning end to end: candidates per category, choice on validation,
report on held-out data, parallel workers, shards.

For every category c (independently, so in parallel processes or across machines):

1. for each training-label policy (U-Ignore / U-Ones / U-Zeros: the paper's "Greedy"
   uncertainty handling) take the samples whose label for c is known;
2. fine-tune the trained row (w_c, b_c) with each candidate method (CFT-BP-ASL / WMW / AUCM,
   CFT-GA-AUC / AP), each early-stopping on the validation score of c;
3. keep the candidate with the best validation score, or the original row when nothing
   beats it (ties keep the original);
4. score before / after on data not used for the choice (``test``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..labels import UncertaintyPolicy, apply_uncertainty
from .bp import CURVE_POINTS, BPConfig, bp_preset, fit_layer_bp, fit_row_bp, fit_rows_bp, fused_asl_params
from .features import FeatureSet
from .fitness import BinaryScorer
from .ga import GA_PRESETS, GAConfig, RowFit, fit_row_ga, fit_rows_ga

log = logging.getLogger(__name__)

ROW_METHODS = ("bp-asl", "bp-wmw", "bp-aucm", "ga-auc", "ga-ap")
METHODS = (*ROW_METHODS, "greedy", "ft-bp-asl")
PRESETS = ("chexpert", "coco")


@dataclass
class CFTConfig:
    method: str = "ga-auc"
    preset: str = "chexpert"
    policies: list[str] = field(default_factory=lambda: ["ignore"])
    candidates: list[str] | None = None  # greedy: the row methods compared (default bp-asl + ga-<metric>)
    metric: str | None = None  # validation metric for early stopping and the choice (default: by method / preset)
    ga: dict[str, Any] = field(default_factory=dict)  # GA option overrides
    bp: dict[str, Any] = field(default_factory=dict)  # BP option overrides
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    classes: list[str] | None = None  # only these categories (default: all)
    min_val_positives: int = 5  # keep the original row when validation has fewer positives (or negatives)
    seed: int = 0
    threshold_method: str = "f1"

    def validate(self) -> CFTConfig:
        if self.method not in METHODS:
            raise ConfigError(f"unknown CFT method {self.method!r}; use one of {list(METHODS)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown CFT preset {self.preset!r}; use one of {list(PRESETS)}")
        for p in self.policies:
            pol = UncertaintyPolicy.parse(p)
            if pol not in (UncertaintyPolicy.IGNORE, UncertaintyPolicy.ONES, UncertaintyPolicy.ZEROS):
                raise ConfigError(f"CFT policies must be ignore, ones or zeros (got {p!r})")
        for m in self.candidates or []:
            if m not in ROW_METHODS:
                raise ConfigError(f"greedy candidates must be among {list(ROW_METHODS)} (got {m!r})")
        if self.metric not in (None, "auc", "ap"):
            raise ConfigError("CFT metric must be auc or ap")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"shard must be i/n with 0 <= i < n (got {i}/{n})")
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        return self

    @property
    def row_methods(self) -> list[str]:
        if self.method == "greedy":
            return list(self.candidates or ["bp-asl", f"ga-{self.choice_metric}"])
        return [self.method]

    @property
    def choice_metric(self) -> str:
        if self.metric:
            return self.metric
        if self.method == "ga-auc":
            return "auc"
        if self.method == "ga-ap":
            return "ap"
        return "auc" if self.preset == "chexpert" else "ap"

    def ga_config(self, metric: str) -> GAConfig:
        return GA_PRESETS[self.preset].with_overrides(metric=metric, **self.ga)

    def bp_config(self, method: str) -> BPConfig:
        return bp_preset(method, self.preset).with_overrides(metric=self.choice_metric, **self.bp)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return d


@dataclass
class CategoryResult:
    index: int
    name: str
    w: np.ndarray
    b: float
    chosen: str  # "original" or "<method>/<policy>"
    val_before: float
    val_after: float
    test_before: float | None = None
    test_after: float | None = None
    n_train: dict[str, int] = field(default_factory=dict)
    n_val: int = 0
    n_val_pos: int = 0  # positives among the validation labels the choice was made on
    candidates: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("w", "curves")}
        return d


def train_targets(labels: np.ndarray, policy: str) -> np.ndarray:
    """Training labels of one category under a hard uncertainty policy (NaN = unknown)."""
    return apply_uncertainty(labels[:, None], UncertaintyPolicy.parse(policy))[:, 0]


def eval_labels(labels: np.ndarray) -> np.ndarray:
    """Validation / test labels: uncertain labels are left out (U-Ignore), unknown too."""
    return apply_uncertainty(labels[:, None], UncertaintyPolicy.IGNORE)[:, 0]


def _score(x: np.ndarray, w: np.ndarray, b: float, y: np.ndarray, metric: str) -> float | None:
    known = ~np.isnan(y)
    sc = BinaryScorer(y[known].astype(int), metric)
    if not sc.defined:
        return None
    return float(sc(x[known] @ w + np.float32(b))[0])


def _downsample(values: list[float], n: int = CURVE_POINTS) -> list[float]:
    """At most ``n`` evenly spaced points of a curve, as plain Python numbers (integers, such
    as ``train_loss_epoch``'s epochs, stay integers)."""
    idx = range(len(values)) if len(values) <= n else np.linspace(0, len(values) - 1, n).round().astype(int)
    return [int(values[i]) if isinstance(values[i], (int, np.integer)) else float(values[i]) for i in idx]


def fit_category(c: int, name: str, train: FeatureSet, valid: FeatureSet, test: FeatureSet | None,
                 w0: np.ndarray, b0: float, cfg: CFTConfig,
                 pre: dict[tuple[str, str], RowFit] | None = None) -> CategoryResult:
    """All candidates for one category; the best on validation wins. ``pre``: candidates
    already fitted (by :func:`batched_bp`), by (method, policy)."""
    t0 = time.perf_counter()
    metric = cfg.choice_metric
    yv = eval_labels(valid.labels[:, c])
    kv = ~np.isnan(yv)
    xv = valid.class_features(c, np.flatnonzero(kv))
    yv_known = yv[kv].astype(int)
    res = CategoryResult(c, name, w0.copy(), float(b0), "original", float("nan"), float("nan"), n_val=int(kv.sum()),
                         n_val_pos=int((yv[kv] == 1).sum()))
    before = BinaryScorer(yv_known, metric)
    if before.defined:
        res.val_before = res.val_after = float(before(xv @ w0 + np.float32(b0))[0])
    too_few = min(before.n_pos, before.n_neg) < cfg.min_val_positives
    if too_few:
        res.chosen = "original (too few validation labels)"
    best: RowFit | None = None
    for pi, policy in enumerate(cfg.policies):
        yt = train_targets(train.labels[:, c], policy)
        kt = ~np.isnan(yt)
        res.n_train[policy] = int(kt.sum())
        if kt.sum() == 0 or not before.defined or too_few:
            continue
        xt = train.class_features(c, np.flatnonzero(kt))
        yt_known = yt[kt].astype(int)
        for mi, method in enumerate(cfg.row_methods):
            seed = cfg.seed * 1_000_003 + c * 101 + pi * 11 + mi
            if pre and (method, policy) in pre:
                fit = pre[(method, policy)]
            elif method.startswith("ga-"):
                fit = fit_row_ga(xt, yt_known, xv, yv_known, w0, b0,
                                 cfg.ga_config(method[3:]).with_overrides(seed=seed))
            else:
                fit = fit_row_bp(xt, yt_known, xv, yv_known, w0, b0, cfg.bp_config(method).with_overrides(seed=seed))
            key = f"{method}/{policy}"
            res.candidates.append({"candidate": key, "val": fit.val_after, "improved": fit.improved,
                                   "steps": fit.steps, "best_step": fit.best_step, "seconds": round(fit.seconds, 3)})
            if any(fit.curves.values()):
                res.curves[key] = {k: _downsample(v) for k, v in fit.curves.items()}
            if fit.improved and (best is None or fit.val_after > best.val_after + 1e-12):
                best, res.chosen = fit, key
    if best is not None:
        res.w, res.b, res.val_after = best.w, best.b, best.val_after
    if test is not None:
        yt = eval_labels(test.labels[:, c])
        kt = np.flatnonzero(~np.isnan(yt))
        xte = test.class_features(c, kt)
        res.test_before = _score(xte, w0, b0, yt[kt], metric)
        res.test_after = _score(xte, res.w, res.b, yt[kt], metric)
    res.seconds = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------------------------------
# parallel execution
# ---------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    import torch

    from . import kernels

    torch.set_num_threads(1)
    kernels.set_threads(1)


def _worker(c: int) -> CategoryResult:
    s = _STATE
    return fit_category(c, s["classes"][c], s["train"], s["valid"], s["test"], s["W"][c], float(s["b"][c]), s["cfg"],
                        s.get("pre", {}).get(c))


BATCH_MIN_SHARE = 0.35  # a category joins the batched BP pass when it knows >= this share of the training rows:
#                         per known row the shared pass costs about a third of the one-category pass (measured
#                         in benchmarks/cft_speed.py), so below about a third of the rows alone is faster


def _runnable(valid: FeatureSet, todo: list[int], cfg: CFTConfig) -> tuple[np.ndarray, list[int]]:
    """Validation labels of ``todo`` (n_val x len(todo), NaN unknown) and the positions of
    the categories :func:`fit_category` would fine-tune (enough validation labels)."""
    yv = np.stack([eval_labels(valid.labels[:, c]) for c in todo], axis=1)
    ok = []
    for i in range(len(todo)):
        sc = BinaryScorer(yv[~np.isnan(yv[:, i]), i].astype(int), cfg.choice_metric)
        if sc.defined and min(sc.n_pos, sc.n_neg) >= cfg.min_val_positives:
            ok.append(i)
    return yv, ok


def batched_ga(train: FeatureSet, valid: FeatureSet, todo: list[int], w: np.ndarray, b: np.ndarray,
               cfg: CFTConfig) -> dict[int, dict[tuple[str, str], RowFit]]:
    """CFT-GA candidates of categories that know exactly the same training rows (fully
    labelled tables), run side by side with one population product per round
    (:func:`fit_rows_ga`): each category's GA is the one :func:`fit_category` runs (same
    seed, same best generation, bitwise the same row), only faster. Shared features and
    the CPU only; workers > 1 keep one category per process."""
    pre: dict[int, dict[tuple[str, str], RowFit]] = {}
    methods = [(mi, m) for mi, m in enumerate(cfg.row_methods) if m.startswith("ga-")]
    if train.per_class or not methods or len(todo) < 2 or cfg.workers > 1:
        return pre
    if any(cfg.ga_config(m[3:]).device != "cpu" for _, m in methods):
        return pre
    yv, ok = _runnable(valid, todo, cfg)
    xv = np.ascontiguousarray(np.asarray(valid.z), dtype=np.float32)
    for pi, policy in enumerate(cfg.policies):
        yt = np.stack([train_targets(train.labels[:, c], policy) for c in todo], axis=1)
        groups: dict[bytes, list[int]] = {}
        for i in ok:
            known = ~np.isnan(yt[:, i])
            if known.any():
                groups.setdefault(np.packbits(known).tobytes(), []).append(i)
        for group in groups.values():
            if len(group) < 2:
                continue
            rows = np.flatnonzero(~np.isnan(yt[:, group[0]]))
            x = np.ascontiguousarray(np.asarray(train.z[rows]), dtype=np.float32)
            cats = [todo[i] for i in group]
            for mi, method in methods:
                cfgs = [cfg.ga_config(method[3:]).with_overrides(seed=cfg.seed * 1_000_003 + c * 101 + pi * 11 + mi)
                        for c in cats]
                fits = fit_rows_ga(x, yt[rows][:, group].astype(int), xv, yv[:, group], w[cats], b[cats], cfgs)
                for c, fit in zip(cats, fits):
                    pre.setdefault(c, {})[(method, policy)] = fit
                log.info("CFT %s/%s: %d categories side by side, one population product", method, policy, len(cats))
    return pre


def batched_bp(train: FeatureSet, valid: FeatureSet, todo: list[int], w: np.ndarray, b: np.ndarray,
               cfg: CFTConfig) -> dict[int, dict[tuple[str, str], RowFit]]:
    """CFT-BP candidates fitted for many categories together: per BP method and policy, the
    categories that would run it (the same conditions as :func:`fit_category`) and know at
    least :data:`BATCH_MIN_SHARE` of the training rows share one pass over the training
    features per epoch (:func:`fit_rows_bp`: each category's result is the one it gets
    alone to float32 rounding, and depends only on its own labels, not on which categories
    share the pass: shards, workers and one process give identical rows). Only for shared
    features and the fused path (full-batch Adam on ASL); the rest run one category at a
    time in :func:`fit_category`."""
    pre: dict[int, dict[tuple[str, str], RowFit]] = {}
    methods = [m for m in cfg.row_methods if m.startswith("bp-") and fused_asl_params(cfg.bp_config(m)) is not None]
    if train.per_class or not methods or not todo:
        return pre
    yv, ok = _runnable(valid, todo, cfg)
    x = xv = None
    for policy in cfg.policies:
        yt = np.stack([train_targets(train.labels[:, c], policy) for c in todo], axis=1)
        share = (~np.isnan(yt)).mean(axis=0) if len(yt) else np.zeros(len(todo))
        group = [i for i in ok if share[i] >= BATCH_MIN_SHARE]
        if not group:
            continue
        if x is None:
            x = np.ascontiguousarray(np.asarray(train.z), dtype=np.float32)
            xv = np.ascontiguousarray(np.asarray(valid.z), dtype=np.float32)
        cats = [todo[i] for i in group]
        for method in methods:
            fits = fit_rows_bp(x, yt[:, group], xv, yv[:, group], w[cats], b[cats], cfg.bp_config(method))
            for c, fit in zip(cats, fits):
                pre.setdefault(c, {})[(method, policy)] = fit
            log.info("CFT %s/%s: %d categories in one batched pass", method, policy, len(cats))
    return pre
    metric = cfg.choice_metric
    yv = np.stack([eval_labels(valid.labels[:, c]) for c in todo], axis=1)
    ok = []
    for i, c in enumerate(todo):
        sc = BinaryScorer(yv[~np.isnan(yv[:, i]), i].astype(int), metric)
        if sc.defined and min(sc.n_pos, sc.n_neg) >= cfg.min_val_positives:
            ok.append(i)
    for policy in cfg.policies:
        yt = np.stack([train_targets(train.labels[:, c], policy) for c in todo], axis=1)
        known = ~np.isnan(yt)
        cand = [i for i in ok if known[:, i].any()]
        if len(cand) < 2:
            continue
        rows = np.flatnonzero(known[:, cand].any(axis=1))
        share = known[rows][:, cand].mean(axis=0)
        group = [i for i, f in zip(cand, share) if f >= BATCH_MIN_SHARE]
        if len(group) < 2:
            continue
        rows = np.flatnonzero(known[:, group].any(axis=1))
        x = np.ascontiguousarray(np.asarray(train.z[rows]), dtype=np.float32)
        xv = np.ascontiguousarray(np.asarray(valid.z), dtype=np.float32)
        cats = [todo[i] for i in group]
        for method in methods:
            fits = fit_rows_bp(x, yt[rows][:, group], xv, yv[:, group], w[cats], b[cats], cfg.bp_config(method))
            for c, fit in zip(cats, fits):
                pre.setdefault(c, {})[(method, policy)] = fit
            log.info("CFT %s/%s: %d categories in one batched pass", method, policy, len(cats))
    return pre


def run_categories(train: FeatureSet, valid: FeatureSet, test: FeatureSet | None, w: np.ndarray, b: np.ndarray,
                   cfg: CFTConfig, show_progress: bool = True) -> list[CategoryResult]:
    """Fine-tune the categories of this shard, in ``cfg.workers`` processes."""
    from ..utils import progress

    cfg.validate()
    classes = list(train.classes)
    wanted = range(len(classes))
    if cfg.classes:
        missing = [c for c in cfg.classes if c not in classes]
        if missing:
            raise ConfigError(f"classes not in the model: {missing}")
        wanted = [classes.index(c) for c in cfg.classes]
    i, n = cfg.shard
    todo = [c for c in wanted if c % n == i]
    pre = batched_bp(train, valid, todo, w, b, cfg)
    for c, fits in batched_ga(train, valid, todo, w, b, cfg).items():
        pre.setdefault(c, {}).update(fits)
    _STATE.update(train=train, valid=valid, test=test, W=w, b=b, cfg=cfg, classes=classes, pre=pre)
    results: list[CategoryResult] = []
    try:
        if cfg.workers > 1 and len(todo) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            with ctx.Pool(min(cfg.workers, len(todo)), initializer=_init_worker) as pool:
                for r in progress(pool.imap_unordered(_worker, todo), "CFT categories", total=len(todo),
                                  enabled=show_progress):
                    results.append(r)
        else:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # per-category problems are small; one thread avoids OpenMP overhead
            try:
                for c in progress(todo, "CFT categories", total=len(todo), enabled=show_progress):
                    results.append(_worker(c))
            finally:
                torch.set_num_threads(threads)
    finally:
        _STATE.clear()
    return sorted(results, key=lambda r: r.index)


def run_ft_layer(train: FeatureSet, valid: FeatureSet, test: FeatureSet | None, w: np.ndarray, b: np.ndarray,
                 cfg: CFTConfig) -> list[CategoryResult]:
    """FT-BP-ASL ablation: the whole layer with one early stop (uncertain -> policies[0])."""
    if train.per_class:
        raise ConfigError("ft-bp-asl needs a model with shared features")
    policy = cfg.policies[0]
    yt = np.stack([train_targets(train.labels[:, c], policy) for c in range(len(train.classes))], axis=1)
    yv = np.stack([eval_labels(valid.labels[:, c]) for c in range(len(valid.classes))], axis=1)
    bpc = cfg.bp_config("bp-asl")
    w1, b1, info = fit_layer_bp(np.asarray(train.z, np.float32), yt, np.asarray(valid.z, np.float32), yv, w, b, bpc)
    out = []
    metric = cfg.choice_metric
    xv = np.asarray(valid.z, np.float32)
    for c, name in enumerate(train.classes):
        r = CategoryResult(c, name, w1[c], float(b1[c]), f"ft-bp-asl/{policy}",
                           _score(xv, w[c], float(b[c]), yv[:, c], metric) or float("nan"),
                           _score(xv, w1[c], float(b1[c]), yv[:, c], metric) or float("nan"),
                           n_val=int((~np.isnan(yv[:, c])).sum()), n_val_pos=int((yv[:, c] == 1).sum()))
        if test is not None:
            yte = np.stack([eval_labels(test.labels[:, k]) for k in range(len(test.classes))], axis=1)
            xte = np.asarray(test.z, np.float32)
            r.test_before = _score(xte, w[c], float(b[c]), yte[:, c], metric)
            r.test_after = _score(xte, w1[c], float(b1[c]), yte[:, c], metric)
        r.curves["ft-bp-asl"] = {"val": _downsample(info["curve"])}
        out.append(r)
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
