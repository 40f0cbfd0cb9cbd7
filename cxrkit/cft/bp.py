"""CFT-BP: fine-tune one category's row by back-propagation on its known labels.

* ``bp-asl``: full-batch Adam on ASL (seed 000: CheXpert gamma+ = gamma- = clip = 0, i.e. BCE,
  lr 1e-4, 500 epochs; COCO gamma+ = 0, gamma- = 4, clip = 0.05, lr 1e-4, 5,000 epochs).
* ``bp-wmw``: SGD (lr 1e-3, momentum 0.9, batches of 32,768) on the Wilcoxon-Mann-Whitney
  AUC surrogate.
* ``bp-aucm``: PESG (LibAUC's update: clipping 1, momentum 0.9, epoch_decay 2e-3, weight decay
  1e-5; lr 1e-2, margin 1, full batch) on the AUC-margin loss; ``bp.pesg=cxrkit`` is the
  earlier plain form (docs/cft.md compares them).

Each category early-stops at its own best validation score (AUC or AP) and keeps the
original row when no epoch beats it. :func:`fit_layer_bp` is the FT-BP ablation: the
whole layer at once with one early stop on the mean validation score.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..losses import build_loss
from ..utils import replace_fields
from .fitness import BinaryScorer
from .ga import RowFit


@dataclass
class BPConfig:
    loss: str = "asl"  # asl, wmw, aucm (any cxrkit loss name)
    loss_params: dict[str, Any] = field(default_factory=lambda: {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0})
    optimizer: str = "adam"  # adam, sgd, pesg
    lr: float = 1e-4
    epochs: int = 500
    batch_size: int | None = None  # None = full batch
    momentum: float = 0.9
    epoch_decay: float = 2e-3  # PESG: pull towards the reference point (LibAUC's epoch_decay / gamma)
    weight_decay: float = 0.0
    pesg: str = "libauc"  # PESG update: "libauc" (the published optimiser) or "cxrkit" (plain, before 0.2)
    clip_value: float = 1.0  # PESG (libauc): gradients clamped to +-clip_value
    metric: str = "auc"
    patience: int | None = None  # stop after this many epochs without validation gain
    eval_every: int = 1
    fused: bool = True  # full-batch Adam on ASL: the fused one-pass kernel (numba) instead of autograd
    device: str = "cpu"  # "cuda": the autograd loop on the GPU (validation scored on the CPU)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> BPConfig:
        return replace_fields(self, "BP", **kw)


def bp_preset(method: str, preset: str) -> BPConfig:
    """The seed-000 settings of ``bp-asl`` / ``bp-wmw`` / ``bp-aucm`` for a preset."""
    metric = "auc" if preset == "chexpert" else "ap"
    if method == "bp-asl":
        if preset == "chexpert":
            return BPConfig(loss="asl", loss_params={"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0}, lr=1e-4,
                            epochs=500, metric=metric)
        return BPConfig(loss="asl", loss_params={"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}, lr=1e-4,
                        epochs=5000, metric=metric, patience=300)
    if method == "bp-wmw":
        return BPConfig(loss="wmw", loss_params={"reduction": "mean"}, optimizer="sgd", lr=1e-3, momentum=0.9,
                        batch_size=32768, epochs=500, metric=metric)
    if method == "bp-aucm":
        return BPConfig(loss="aucm", loss_params={"margin": 1.0}, optimizer="pesg", lr=1e-2, epochs=500,
                        weight_decay=1e-5, metric=metric)
    raise ConfigError(f"unknown BP method {method!r}")


class PESG:
    """Proximal epoch stochastic gradient (Guo et al. 2020) for the AUC-margin loss.

    ``variant="libauc"`` is LibAUC's published optimiser (``libauc.optimizers.PESG``, mode
    ``sgd``), written from its update rule: for the row and a, b,
    d = clamp(grad, -clip_value, clip_value) + epoch_decay (v - v_ref) + weight_decay v, a
    momentum buffer buf <- (1 - momentum) buf + momentum d (LibAUC's form; the first buf is
    d), v <- v - lr buf; the reference point v_ref starts as N(0, 0.01^2) noise (seeded) as
    in LibAUC; the dual step is alpha <- clamp(alpha + lr (2 (margin + b - a) - 2 alpha), 0, 999),
    LibAUC's closed form, not autograd's alpha gradient.

    ``variant="cxrkit"`` is cxrkit's earlier plain form: no clipping, no momentum, v_ref = the
    original row, alpha <- max(alpha + lr dF/dalpha, 0)."""

    def __init__(self, params: list[torch.Tensor], loss: torch.nn.Module, lr: float, epoch_decay: float,
                 weight_decay: float = 0.0, variant: str = "libauc", momentum: float = 0.9,
                 clip_value: float = 1.0, seed: int = 0) -> None:
        if variant not in ("libauc", "cxrkit"):
            raise ConfigError(f"bp.pesg must be libauc or cxrkit, got {variant!r}")
        self.variant = variant
        self.loss = loss
        self.lr, self.epoch_decay, self.weight_decay = lr, epoch_decay, weight_decay
        self.momentum, self.clip_value = momentum, clip_value
        if variant == "libauc":
            # LibAUC optimises a and b with the same rule as the model
            self.params = [*params, *(p for n, p in loss.named_parameters() if n in ("a", "b"))]
            gen = torch.Generator().manual_seed(int(seed))
            self.ref = [(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.01).to(p.device) for p in self.params]
        else:
            self.params = list(params)
            self.ref = [p.detach().clone() for p in self.params]
        self.buf: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in {id(q): q for q in [*self.params, *self.loss.parameters()]}.values():
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, (p, r) in enumerate(zip(self.params, self.ref)):
            if p.grad is None:
                continue
            g = p.grad.clamp(-self.clip_value, self.clip_value) if self.variant == "libauc" else p.grad
            d = g + self.epoch_decay * (p - r) + self.weight_decay * p
            if self.variant == "libauc" and self.momentum:
                if self.buf[i] is None:
                    self.buf[i] = d.clone()
                else:
                    self.buf[i] = self.buf[i] * (1 - self.momentum) + d * self.momentum
                d = self.buf[i]
            p -= self.lr * d
        named = dict(self.loss.named_parameters())
        alpha = named.get("alpha")
        if self.variant == "libauc":
            if alpha is not None and alpha.grad is not None:
                margin = float(getattr(self.loss, "margin", 1.0))
                alpha += self.lr * (2 * (margin + named["b"] - named["a"]) - 2 * alpha)
                alpha.clamp_(0, 999)
            return
        for name, p in named.items():
            if p.grad is None:
                continue
            if name == "alpha":
                p += self.lr * p.grad
                p.clamp_(min=0)
            else:
                p -= self.lr * p.grad


def _optimizer(cfg: BPConfig, params: list[torch.Tensor], loss: torch.nn.Module) -> Any:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "pesg":
        return PESG(params, loss, cfg.lr, cfg.epoch_decay, cfg.weight_decay, variant=cfg.pesg,
                    momentum=cfg.momentum, clip_value=cfg.clip_value, seed=cfg.seed)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use adam, sgd or pesg")


def _loss(cfg: BPConfig, num_classes: int = 1) -> torch.nn.Module:
    params = dict(cfg.loss_params)
    if cfg.loss == "aucm":
        params.setdefault("num_classes", num_classes)
    return build_loss(cfg.loss, **params)


CURVE_POINTS = 400  # points a CFT report keeps of each learning curve (runner._downsample)


def loss_epoch(epoch: int, cfg: BPConfig) -> bool:
    """Whether ``epoch``'s training loss goes into the curve: the first and every
    ceil(epochs / CURVE_POINTS)-th, so a curve holds at most ~400 points (``train_loss_epoch`` names
    them). The loss is only a diagnostic: the fused kernel computes it (a log per entry) only
    on these epochs, the gradient needing one exp."""
    every = max(1, -(-cfg.epochs // CURVE_POINTS))
    return epoch == 1 or epoch % every == 0


_ASL_KEYS = {"gamma_pos", "gamma_neg", "clip", "eps", "detach_focal_weight", "reduction"}


def fused_asl_params(cfg: BPConfig) -> dict[str, Any] | None:
    """The ASL parameters when ``cfg`` can take the fused path (full-batch Adam on ASL with
    detached focal weights, numba available), else None."""
    from . import kernels

    p = dict(cfg.loss_params)
    if (not kernels.AVAILABLE or not cfg.fused or cfg.device != "cpu" or cfg.loss != "asl" or cfg.optimizer != "adam"
            or cfg.batch_size
            or set(p) - _ASL_KEYS or not p.get("detach_focal_weight", True)
            or p.get("reduction", "sum") not in ("sum", "mean")):
        return None
    ref = build_loss("asl", **p)  # the loss's own defaults and checks
    return {"gamma_pos": ref.gamma_pos, "gamma_neg": ref.gamma_neg, "clip": ref.clip, "eps": ref.eps,
            "mean": ref.reduction == "mean"}


class _Adam:
    """torch.optim.Adam's single-tensor update (float32, betas 0.9 / 0.999, eps 1e-8), on
    NumPy arrays: the same arithmetic in the same order as the PyTorch optimiser. Each
    parameter may stack the rows of several categories (all stepped every epoch, so one
    step count serves them): elementwise, each row gets the update it would get alone."""

    def __init__(self, params: list[np.ndarray], lr: float, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.wd = params, np.float32(lr), np.float32(weight_decay)
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def keep(self, rows: np.ndarray) -> None:
        """Keep only these rows (categories) of every parameter and its state."""
        self.params = [p[rows] for p in self.params]
        self.m = [m[rows] for m in self.m]
        self.v = [v[rows] for v in self.v]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        step_size = np.float32(float(self.lr) / bc1)
        bc2_sqrt = np.float32(bc2 ** 0.5)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            g = g.astype(np.float32)
            if self.wd:
                g = g + self.wd * p
            m += np.float32(1 - b1) * (g - m)  # exp_avg.lerp_(grad, 1 - beta1)
            v *= np.float32(b2)
            v += np.float32(1 - b2) * g * g
            denom = np.sqrt(v) / bc2_sqrt + np.float32(1e-8)
            p -= step_size * (m / denom)


def _fit_row_fused(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, w0: np.ndarray, b0: float,
                   cfg: BPConfig, asl: dict[str, Any], t0: float) -> RowFit:
    """:func:`fit_row_bp` for full-batch Adam on ASL with the fused kernel (one category of
    :func:`_fit_rows_fused`)."""
    fit = _fit_rows_fused(x, np.asarray(y, np.float32).reshape(-1, 1), xv, np.asarray(yv, np.float64).reshape(-1, 1),
                          np.asarray(w0, np.float32).reshape(1, -1), np.array([b0], np.float32), cfg, asl, t0)[0]
    fit.stats.pop("batched", None)
    return fit


def fit_rows_bp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                w0: np.ndarray, b0: np.ndarray, cfg: BPConfig) -> list[RowFit]:
    """:func:`fit_row_bp` for K categories that share the feature rows: ``y_train`` (n x K)
    and ``y_val`` (n_val x K) hold each category's 0 / 1 labels, NaN where its label is
    unknown; ``w0`` K x Z, ``b0`` K. Each category gets the result :func:`fit_row_bp` gives
    on its own known rows (same losses, Adam steps, validation scores, early stop, kept
    original), but full-batch Adam on ASL runs as one pass over the features per epoch for
    all categories still training (:func:`kernels.asl_grad_rows`). Other losses and
    optimisers, or no numba: one :func:`fit_row_bp` per category."""
    t0 = time.perf_counter()
    x = np.ascontiguousarray(x_train, dtype=np.float32)
    xv = np.ascontiguousarray(x_val, dtype=np.float32)
    y = np.asarray(y_train, np.float32).reshape(len(x), -1)
    yv = np.asarray(y_val, np.float32).reshape(len(xv), -1)
    w0 = np.asarray(w0, np.float32).reshape(y.shape[1], -1)
    b0 = np.asarray(b0, np.float32).reshape(-1)
    asl = fused_asl_params(cfg)
    if asl is None:
        fits = []
        for k in range(y.shape[1]):
            kt, kv = ~np.isnan(y[:, k]), ~np.isnan(yv[:, k])
            fits.append(fit_row_bp(x[kt], y[kt, k].astype(int), xv[kv], yv[kv, k].astype(int), w0[k], float(b0[k]), cfg))
        return fits
    return _fit_rows_fused(x, y, xv, yv, w0, b0, cfg, asl, t0)


def _fit_rows_fused(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, w0: np.ndarray, b0: np.ndarray,
                    cfg: BPConfig, asl: dict[str, Any], t0: float) -> list[RowFit]:
    """Full-batch Adam on ASL for K categories over shared features (labels NaN where
    unknown): per epoch one fused pass (:func:`kernels.asl_grad_rows`) gives every category
    still training its gradient, one Adam step updates their stacked rows, and one call
    scores all their validation columns (:func:`kernels.score_columns`)."""
    from . import kernels

    k_n = y.shape[1]
    known_t = [np.flatnonzero(~np.isnan(y[:, k])) for k in range(k_n)]
    known_v = [np.flatnonzero(~np.isnan(yv[:, k])) for k in range(k_n)]
    out: list[RowFit | None] = [None] * k_n
    live: list[int] = []
    scorers, before, best, curves = {}, {}, {}, {}
    for k in range(k_n):
        yk = y[known_t[k], k]
        scorers[k] = BinaryScorer(yv[known_v[k], k].astype(int), cfg.metric)
        if not scorers[k].defined or yk.size == 0 or yk.min() == yk.max():
            v0 = float(scorers[k](xv[known_v[k]] @ w0[k] + np.float32(b0[k]))[0])
            out[k] = RowFit(w0[k].copy(), float(b0[k]), v0, v0, False, 0, 0, 0.0,
                            stats={"skipped": "no positives / negatives"})
            continue
        live.append(k)
        curves[k] = {"train_loss": [], "train_loss_epoch": [], "val": []}
    active = list(live)
    w = w0[active].copy()
    b = b0[active].copy()
    yv_act = yv[:, active]

    def val_scores() -> np.ndarray:
        # all categories' validation scores: one pass for the logits (the sums kernels.scores
        # gives each row), one call for the metrics; a column the kernel leaves NaN (scores
        # holding NaN) scored by the category's own scorer
        sv = kernels.scores_rows(xv, w, b)
        v = kernels.score_columns(sv, yv_act, cfg.metric)
        for i in np.flatnonzero(np.isnan(v)):
            k = active[i]
            v[i] = scorers[k](np.ascontiguousarray(sv[known_v[k], i]))[0]
        return v

    if active:
        # the starting score by the same matrix-vector product as every epoch's
        for i, v in enumerate(val_scores()):
            k = active[i]
            before[k] = float(v)
            best[k] = {"val": before[k], "w": w[i].copy(), "b": float(b[i]), "epoch": 0, "stale": 0, "last": 0}
    scale = np.array([1.0 / max(len(known_t[k]), 1) if asl["mean"] else 1.0 for k in active])
    n_batched = len(live)
    opt = _Adam([w, b], cfg.lr, cfg.weight_decay)
    y_act = np.ascontiguousarray(y[:, active])
    for epoch in range(1, cfg.epochs + 1):
        if not active:
            break
        want_loss = loss_epoch(epoch, cfg)
        g, gb, loss = kernels.asl_grad_rows(x, y_act, w, b, asl["gamma_pos"], asl["gamma_neg"], asl["clip"],
                                            asl["eps"], want_loss)
        opt.step([g * scale[:, None], gb * scale])
        w, b = opt.params
        for i, k in enumerate(active):
            if want_loss:
                curves[k]["train_loss"].append(float(loss[i]) * float(scale[i]))
                curves[k]["train_loss_epoch"].append(epoch)
            best[k]["last"] = epoch
        if not (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            continue
        keep = np.ones(len(active), bool)
        for i, v in enumerate(val_scores()):
            k = active[i]
            v = float(v)
            curves[k]["val"].append(v)
            bk = best[k]
            if v > bk["val"] + 1e-12:
                bk.update(val=v, w=w[i].copy(), b=float(b[i]), epoch=epoch, stale=0)
            else:
                bk["stale"] += cfg.eval_every
            if cfg.patience is not None and bk["stale"] >= cfg.patience:
                keep[i] = False
        if not keep.all():
            rows = np.flatnonzero(keep)
            active = [active[i] for i in rows]
            opt.keep(rows)
            w, b = opt.params
            scale = scale[rows]
            y_act = np.ascontiguousarray(y[:, active])
            yv_act = yv[:, active]
    seconds = (time.perf_counter() - t0) / max(n_batched, 1)
    for k in live:
        bk = best[k]
        improved = bk["val"] > before[k] + 1e-12
        out[k] = RowFit((bk["w"] if improved else w0[k].copy()).astype(np.float32),
                        float(bk["b"] if improved else b0[k]), before[k], bk["val"] if improved else before[k],
                        improved, int(bk["last"]), int(bk["epoch"]), seconds, curves[k],
                        stats={"fused": True, "batched": n_batched})
    return [r for r in out if r is not None]


def fit_row_bp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               w0: np.ndarray, b0: float, cfg: BPConfig) -> RowFit:
    """Fine-tune ``(w0, b0)`` on the known labels (x_train, y_train); early stop per category
    on ``cfg.metric`` over (x_val, y_val).

    Full-batch Adam on ASL (bp-asl) takes the fused path (:func:`_fit_row_fused`, one pass
    over the features per epoch) when numba is there; ``bp.fused: false`` forces the
    PyTorch autograd loop, which every other loss / optimiser uses. Both give the same best
    epoch and row to float32 rounding (tests/test_cft_kernels.py)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    val_scorer = BinaryScorer(y_val, cfg.metric)
    x = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.float32))
    xv = np.ascontiguousarray(x_val, dtype=np.float32)
    w = torch.tensor(np.asarray(w0, dtype=np.float32), requires_grad=True)
    b = torch.tensor(float(b0), dtype=torch.float32, requires_grad=True)
    val_before = float(val_scorer(xv @ np.asarray(w0, np.float32) + np.float32(b0))[0])
    if not val_scorer.defined or y.numel() == 0 or y.min() == y.max():
        return RowFit(np.asarray(w0, np.float32).copy(), float(b0), val_before, val_before, False, 0, 0,
                      time.perf_counter() - t0, stats={"skipped": "no positives / negatives"})
    asl = fused_asl_params(cfg)
    if asl is not None:
        return _fit_row_fused(x.numpy(), y.numpy(), xv, np.asarray(y_val), w0, b0, cfg, asl, t0)
    if cfg.device != "cpu":  # e.g. cuda: features, labels and the row live on the GPU
        dev = torch.device(cfg.device)
        x, y = x.to(dev), y.to(dev)
        w = w.detach().to(dev).requires_grad_()
        b = b.detach().to(dev).requires_grad_()
    loss_fn = _loss(cfg).to(x.device)
    opt = _optimizer(cfg, [w, b], loss_fn)
    if cfg.optimizer != "pesg" and list(loss_fn.parameters()):
        opt.add_param_group({"params": list(loss_fn.parameters())})
    n = x.shape[0]
    bs = n if not cfg.batch_size else min(cfg.batch_size, n)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"val": val_before, "w": w.detach().clone(), "b": b.detach().clone(), "epoch": 0, "stale": 0}
    curves: dict[str, list[float]] = {"train_loss": [], "train_loss_epoch": [], "val": []}
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen) if bs < n else None
        total = 0.0
        for start in range(0, n, bs):
            idx = order[start:start + bs] if order is not None else slice(None)
            xb, yb = (x[idx], y[idx]) if order is not None else (x, y)
            logits = xb @ w + b
            loss = loss_fn(logits[:, None], yb[:, None])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if loss_epoch(epoch, cfg):
            curves["train_loss"].append(total)
            curves["train_loss_epoch"].append(epoch)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            with torch.no_grad():
                v = float(val_scorer(xv @ w.detach().cpu().numpy() + b.detach().cpu().numpy())[0])
            curves["val"].append(v)
            if v > best["val"] + 1e-12:
                best.update(val=v, w=w.detach().clone(), b=b.detach().clone(), epoch=epoch, stale=0)
            else:
                best["stale"] += cfg.eval_every
            if cfg.patience is not None and best["stale"] >= cfg.patience:
                break
    improved = best["val"] > val_before + 1e-12
    w_out = best["w"].cpu().numpy() if improved else np.asarray(w0, np.float32).copy()
    b_out = float(best["b"]) if improved else float(b0)
    return RowFit(w_out.astype(np.float32), b_out, val_before, best["val"] if improved else val_before, improved,
                  epoch, int(best["epoch"]), time.perf_counter() - t0, curves, stats={"device": str(x.device)})


def fit_layer_bp(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 w0: np.ndarray, b0: np.ndarray, cfg: BPConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """FT-BP (the ablation baseline): all rows at once on the masked loss (NaN = unknown), one
    early stop on the mean validation score of the defined classes."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.float32))
    xv = np.ascontiguousarray(x_val, dtype=np.float32)
    scorers = [BinaryScorer(np.nan_to_num(y_val[:, c])[~np.isnan(y_val[:, c])].astype(int), cfg.metric)
               for c in range(y_val.shape[1])]
    known_v = [~np.isnan(y_val[:, c]) for c in range(y_val.shape[1])]

    def val_mean(wn: np.ndarray, bn: np.ndarray) -> float:
        s = xv @ wn.T + bn
        vals = [sc(s[k, c])[0] for c, (sc, k) in enumerate(zip(scorers, known_v)) if sc.defined]
        return float(np.mean(vals)) if vals else float("nan")

    w = torch.tensor(np.asarray(w0, np.float32), requires_grad=True)
    b = torch.tensor(np.asarray(b0, np.float32), requires_grad=True)
    loss_fn = _loss(cfg, num_classes=w.shape[0])
    opt = _optimizer(cfg, [w, b], loss_fn)
    before = val_mean(np.asarray(w0, np.float32), np.asarray(b0, np.float32))
    best = {"val": before, "w": w.detach().clone(), "b": b.detach().clone(), "epoch": 0}
    curve = []
    for epoch in range(1, cfg.epochs + 1):
        loss = loss_fn(x @ w.T + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % cfg.eval_every == 0:
            v = val_mean(w.detach().numpy(), b.detach().numpy())
            curve.append(v)
            if v > best["val"] + 1e-12:
                best.update(val=v, w=w.detach().clone(), b=b.detach().clone(), epoch=epoch)
    return (best["w"].numpy(), best["b"].numpy(),
            {"val_before": before, "val_after": best["val"], "best_epoch": best["epoch"], "curve": curve,
             "seconds": time.perf_counter() - t0})
