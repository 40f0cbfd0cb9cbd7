"""The trainer behind ``cxrkit train``.

One epoch = seeded shuffle -> (augmented, cached) batches -> loss on targets made by the
label policy (LSR values redrawn every epoch) -> optimiser step with the scheduled LR,
optional gradient clipping, AMP on CUDA and an EMA of the weights -> validation (all
metrics) -> checkpoint. The best epoch by the monitored validation metric becomes the
saved model, with per-class thresholds chosen on validation.

Everything random is derived from (seed, epoch, index), and checkpoints hold the model,
EMA, optimiser state and counters (safetensors + JSON), so ``--resume`` after an
interruption gives the same weights as an uninterrupted run. Under ``torchrun`` each
process trains on its shard with DistributedDataParallel; rank 0 writes the run folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..artifact import ModelMeta, default_thresholds, save_model
from ..data.augment import build_augmentation
from ..data.dataset import EpochSampler, ImageDataset, ImageSet, load_images, sample_seed
from ..data.preprocess import Preprocessing
from ..data.tables import LabelTable, load_table, resolve_image_paths, summarize as summarize_table
from ..errors import ConfigError, CxrkitError
from ..inference.engines import autocast, resolve_device, resolve_precision, run_batches
from ..labels import UncertaintyPolicy, apply_uncertainty, subsets_for
from ..losses import build_loss
from ..metrics import best_thresholds, summarize as summarize_metrics
from ..models import build_model
from ..models.classifier import count_parameters
from ..utils import atomic_write, progress, staged_dir, write_json
from .config import TableRef, TrainConfig, dump_config
from .distributed import barrier, broadcast_flag, cleanup, gather_rows, init_distributed
from .schedule import lr_at

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


@dataclass
class SplitData:
    """One split, decoded: the table rows that have a readable image, aligned with ``images``."""

    table: LabelTable
    images: ImageSet
    rows: np.ndarray  # indices into images (readable rows)
    labels: np.ndarray  # labels of those rows
    failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    completed: bool


def load_split(ref: TableRef, cfg: TrainConfig, pre: Preprocessing, role: str, show_progress: bool = True,
               classes: list[str] | None = None) -> SplitData:
    """Read a table (one split of it), keep the configured classes and views, find and decode
    the images. Missing and unreadable files are recorded, not fatal."""
    table = load_table(ref.table, format=ref.format)
    if ref.split:
        table = select_split(table, ref.split)
    wanted = classes or cfg.data.classes
    if wanted:
        table = table.select_classes(list(wanted))
    if cfg.data.views:
        keep = {v.upper() for v in cfg.data.views}
        if "view" not in table.meta.columns:
            raise ConfigError(f"{ref.table}: data.views is set but the table has no view information")
        mask = table.meta["view"].astype(str).str.upper().isin(keep).to_numpy()
        table = table.select(mask)
    if len(table) == 0:
        raise CxrkitError(f"{ref.table}: no {role} rows left after selecting split / views")
    if role == "train" and cfg.data.partial_known is not None:
        from ..data.partial import partial_table

        table = partial_table(table, cfg.data.partial_known, cfg.data.partial_seed)
    paths, exists = resolve_image_paths(table, ref.images_root)
    failures = [{"row": int(i), "path": str(paths[i]), "reason": "missing", "detail": "file not found"}
                for i in np.flatnonzero(~exists)]
    images = load_images(paths, pre, cache=cfg.data.cache, cache_dir=cfg.data.cache_dir, workers=cfg.data.workers,
                         dtype=cfg.data.cache_dtype, description=f"decoding {role} images", show_progress=show_progress)
    failures += [f for f in images.failures if f["reason"] != "missing"]
    rows = np.flatnonzero(images.ok)
    if len(rows) == 0:
        raise CxrkitError(f"{ref.table}: none of the {len(table)} {role} images could be read "
                          f"(first: {failures[0]['path']}: {failures[0]['detail']})")
    if failures:
        log.warning("%s: %d of %d %s images missing or unreadable; they are left out", ref.table, len(failures),
                    len(table), role)
    return SplitData(table, images, rows, table.labels[rows].astype(np.float32), failures)


def select_split(table: LabelTable, split: str) -> LabelTable:
    """Rows of one split: a value of the table's ``split`` column, or a text file listing the
    image ids of the split one per line (NIH's ``train_val_list.txt`` / ``test_list.txt``)."""
    p = Path(split)
    if p.suffix == ".txt" and p.is_file():
        wanted = {ln.strip() for ln in p.read_text().splitlines() if ln.strip()}
        mask = np.array([str(i) in wanted or Path(str(i)).name in wanted for i in table.ids])
        if not mask.any():
            raise CxrkitError(f"{p}: none of its {len(wanted)} ids are in {table.source}")
        return table.select(mask)
    return table.split(split)


def eval_targets(labels: np.ndarray, uncertain: str = "ignore") -> np.ndarray:
    """Validation / evaluation targets: 1 / 0 / NaN; uncertain labels mapped by a hard policy."""
    pol = UncertaintyPolicy.parse(uncertain)
    if pol in (UncertaintyPolicy.ONES_LSR, UncertaintyPolicy.ZEROS_LSR):
        raise ConfigError("evaluation cannot use an LSR policy for uncertain labels; use ignore, ones or zeros")
    return apply_uncertainty(labels, pol)


def masked_bce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over known entries (NaN targets skipped)."""
    known = ~np.isnan(targets)
    if not known.any():
        return float("nan")
    x = logits[known].astype(np.float64)
    y = targets[known].astype(np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


# ---------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON; nothing pickled)
# ---------------------------------------------------------------------------------------


def _cpu_tensors(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for k, v in sd.items():
        t = v.detach().cpu().contiguous()
        if t.data_ptr() in seen and t.numel():
            t = t.clone()
        seen.add(t.data_ptr())
        out[prefix + k] = t
    return out


def save_checkpoint(out: Path, model: nn.Module, ema: Any, opt: torch.optim.Optimizer, state: dict[str, Any],
                    strategy: Any = None) -> None:
    from safetensors.torch import save_file

    tensors = _cpu_tensors(model.state_dict(), "model.")
    if strategy is not None:
        tensors.update(_cpu_tensors(strategy.state(), "partial."))
    if ema is not None:
        tensors.update(_cpu_tensors(ema.module.state_dict(), "ema."))
    osd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in osd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    meta = dict(state)
    meta["optimizer"] = {"param_groups": osd["param_groups"], "scalars": scalars}
    with staged_dir(out / CHECKPOINT_DIR) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float))


def load_checkpoint(out: Path, model: nn.Module, ema: Any, opt: torch.optim.Optimizer,
                    strategy: Any = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    d = out / CHECKPOINT_DIR
    tensors = load_file(str(d / "state.safetensors"))
    if strategy is not None:
        strategy.load_state({k[8:]: v for k, v in tensors.items() if k.startswith("partial.")})
    meta = json.loads((d / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if ema_sd:
            ema.module.load_state_dict(ema_sd)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    meta.pop("optimizer")
    return meta


def has_checkpoint(out: Path) -> bool:
    return (out / CHECKPOINT_DIR / "state.json").is_file()


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # type: ignore[arg-type]
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)  # type: ignore[arg-type]
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _setup_file_log(out: Path) -> logging.Handler:
    h = logging.FileHandler(out / "train.log")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("cxrkit").addHandler(h)
    if logging.getLogger("cxrkit").level == logging.NOTSET:
        logging.getLogger("cxrkit").setLevel(logging.INFO)
    return h


def _write_failures(path: Path, failures: list[dict[str, str]]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "reason", "detail"], extrasaction="ignore")
        w.writeheader()
        w.writerows(failures)


def _history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys = ["epoch", "lr", "train_loss", "valid_loss", "mAUC", "mAP", "mF1", "monitor", "seconds"]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for h in history:
            w.writerow({k: h.get(k) for k in keys})


def _monitor_value(cfg: TrainConfig, summary: dict[str, Any], valid_loss: float) -> float:
    m = cfg.train.monitor
    if m == "loss":
        return -valid_loss
    if cfg.train.monitor_subset:
        sub = summary.get("subsets", {}).get(cfg.train.monitor_subset)
        if sub is None:
            raise ConfigError(f"train.monitor_subset {cfg.train.monitor_subset!r} is not a subset of this label space")
        v = sub.get(m)
    else:
        v = summary.get(m)
    return float("nan") if v is None else float(v)


class _Run:
    """What the steps of :func:`fit` share: the config, the run folder, the process's place in a
    distributed run, the data, the model and its optimiser, and the training ``state`` (what a
    checkpoint holds). Filled step by step."""

    def __init__(self, cfg: TrainConfig, out: Path, show_progress: bool, console: Any) -> None:
        self.cfg, self.out = cfg, out
        self.say = console.print if console is not None else (lambda *a, **k: None)
        self.device = resolve_device(cfg.train.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.main = self.dist.is_main
        self.show = show_progress and self.main
        from ..tracking import Tracker

        self.tracker: Tracker = Tracker()
        self.log_handler: logging.Handler | None = None
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
                                      "history": [], "completed": False}


def fit(cfg: TrainConfig, out: str | Path, resume: bool = False, stop_after_epochs: int | None = None,
        show_progress: bool = True, console: Any = None) -> TrainResult:
    """Train ``cfg`` into the run folder ``out``, in named steps: open the run folder, load the
    data, build the model, resume from the checkpoint (or start), then per epoch train one
    epoch and validate / checkpoint it, and finally write the report. Ctrl-C leaves the last
    epoch's checkpoint for ``--resume``; ``stop_after_epochs`` stops early the same way."""
    run = _Run(cfg, Path(out), show_progress, console)
    status = "FAILED"
    try:
        _open_run_folder(run, resume)
        _load_data(run)
        _build_model(run)
        if _resume_or_start(run, resume):  # the run had finished: nothing to train
            status = "FINISHED"
            return _result(run.out, run.state)
        _set_precision(run)
        epochs_this_run = 0
        for epoch in range(int(run.state["epoch"]), cfg.train.epochs):
            t0 = time.time()
            losses, lr = _train_one_epoch(run, epoch)
            stop = _validate_and_checkpoint(run, epoch, losses, lr, t0)
            epochs_this_run += 1
            if stop:
                break
            if stop_after_epochs is not None and epochs_this_run >= stop_after_epochs and epoch + 1 < cfg.train.epochs:
                run.say(f"stopping after {epochs_this_run} epoch(s) as asked; continue with --resume")
                status = "FINISHED"
                return _result(run.out, run.state, completed=False)
        _write_final_report(run)
        status = "FINISHED"
        return _result(run.out, run.state)
    except KeyboardInterrupt:  # Ctrl-C: the last epoch's checkpoint stays for --resume
        status = "KILLED"
        raise
    finally:
        run.tracker.close(status)
        if run.log_handler is not None:
            logging.getLogger("cxrkit").removeHandler(run.log_handler)
            run.log_handler.close()
        cleanup(run.dist)


def _open_run_folder(run: _Run, resume: bool) -> None:
    """The run folder, its log, config and tracker (rank 0); a finished or started run is
    only continued with ``resume``."""
    cfg, out = run.cfg, run.out
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        if has_checkpoint(out) and not resume:
            raise CxrkitError(f"{out}: holds a checkpoint of an earlier run; use --resume to continue it or "
                              "choose another --out")
        run.log_handler = _setup_file_log(out)
        dump_config(cfg, out / "config.yaml")
        from ..tracking import make_tracker

        run.tracker = make_tracker(cfg.tracking, out.name or cfg.name, out)
        run.tracker.log_params(cfg.to_dict())
    barrier(run.dist)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _load_data(run: _Run) -> None:
    """Both splits (rank 0 decodes and fills the disk cache first; the others then read it),
    checked, with the label distribution and the unreadable files reported."""
    cfg, out = run.cfg, run.out
    run.pre = pre = cfg.preprocessing_obj
    splits: dict[str, SplitData] = {}
    for turn in ([0] if not run.dist.enabled else [0, 1]):
        if (turn == 0) == run.main:
            splits["train"] = load_split(cfg.data.train, cfg, pre, "train", run.show)
            splits["valid"] = load_split(cfg.data.valid, cfg, pre, "valid", run.show,
                                         classes=list(splits["train"].table.classes))
        barrier(run.dist)
    run.train, run.valid = train, valid = splits["train"], splits["valid"]
    run.classes = classes = train.table.classes
    if valid.table.classes != classes:
        raise CxrkitError(f"train and valid tables have different classes ({len(classes)} vs "
                          f"{len(valid.table.classes)}); set data.classes")
    if not run.main:
        return
    for split_name, sd in (("train", train), ("valid", valid)):
        lab = np.asarray(sd.labels)
        if lab.size:
            empty = [c for c, col in zip(classes, lab.T) if np.isnan(col).all()]
            if empty:
                log.warning("every %s label of %s is unknown: %s", split_name, ", ".join(empty),
                            "nothing is learned for it" if split_name == "train" else "it cannot be validated")
    _write_failures(out / "data_failures.csv", [dict(f, split="train") for f in train.failures]
                    + [dict(f, split="valid") for f in valid.failures])
    dist_summary = summarize_table(train.table.select(train.rows))
    write_json(out / "label_distribution.json", dist_summary)
    from ..report import plot_label_distribution

    plot_label_distribution(dist_summary, out / "label_distribution.png")
    run.say(f"train: {len(train.rows)} images, valid: {len(valid.rows)} images, {len(classes)} classes"
            + (f" ({len(train.failures) + len(valid.failures)} unreadable / missing, see data_failures.csv)"
               if train.failures or valid.failures else ""))


def _build_model(run: _Run) -> None:
    """Label policy and partial-label strategy, the model (its config completed from the
    labels), EMA, optimiser, loss and the two data loaders."""
    cfg, out, train, valid, classes, device = run.cfg, run.out, run.train, run.valid, run.classes, run.device
    run.policy = cfg.label_policy
    run.policy.resolve(classes)  # validates per-class names
    from ..models.classifier import prepare_model_config
    from .partial import build_strategy

    cfg.model = prepare_model_config(cfg.model, train.labels, list(classes))
    run.strategy = build_strategy(cfg.partial)
    run.elem_loss = None
    if run.strategy is not None:
        from ..labels import LabelPolicy

        # the strategy decides what unknown labels do; uncertain ones follow the policy
        run.policy = LabelPolicy(uncertain=run.policy.uncertain, per_class=run.policy.per_class, unknown="ignore")
        run.strategy.prepare(train.labels)
        run.elem_loss = build_loss(cfg.loss.name, **{**cfg.loss.params, "reduction": "none"}).to(device)
    run.unknown_all = torch.from_numpy(np.isnan(train.labels))
    with warnings.catch_warnings():  # the fill value of leaderboard rows whose image is missing
        warnings.simplefilter("ignore")
        pos_frac = np.nanmean(np.where(np.isnan(train.labels), np.nan, train.labels == 1), axis=0)
    run.prevalence = {c: (float(v) if np.isfinite(v) else None) for c, v in zip(classes, pos_frac)}
    if run.main:
        dump_config(cfg, out / "config.yaml")  # now with what the architecture derived from the labels
        if cfg.data.partial_known is not None:  # the split every method of a comparison shares
            from ..data.partial import write_portable

            write_portable(train.table, out / "partial_train.csv", cfg.data.train.images_root)
    run.valid_t = eval_targets(valid.labels, cfg.data.valid_uncertain)
    run.model = model = build_model(cfg.model_config, len(classes)).to(device)
    n_trainable, n_total = count_parameters(model)
    run.param_counts = {"trainable": n_trainable, "total": n_total}
    if run.main:
        log.info("model %s / %s: %d trainable of %d parameters", cfg.model_config.arch,
                 cfg.model_config.backbone, n_trainable, n_total)
        run.say(f"model: {n_trainable:,} trainable of {n_total:,} parameters")
    if run.dist.enabled and cfg.train.sync_bn:
        run.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run.ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        run.ema = ModelEmaV3(model, decay=float(cfg.train.ema))
    run.opt = _optimizer(cfg, model)
    run.loss_fn = build_loss(cfg.loss.name, **cfg.loss.params)
    if hasattr(run.loss_fn, "to"):
        run.loss_fn = run.loss_fn.to(device)
    _build_loaders(run)


def _build_loaders(run: _Run) -> None:
    cfg, train, valid, pre, dist = run.cfg, run.train, run.valid, run.pre, run.dist
    augment = build_augmentation(cfg.augmentation.name, **cfg.augmentation.params)
    train_ds = ImageDataset(train.images, train.rows, pre, augment, seed=cfg.train.seed)
    run.sampler = EpochSampler(len(train_ds), shuffle=True, seed=cfg.train.seed, rank=dist.rank,
                               world_size=dist.world_size)
    pin = run.device.type == "cuda"
    run.workers = workers = cfg.data.workers
    run.loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=run.sampler, num_workers=workers,
                            pin_memory=pin, drop_last=len(run.sampler) > cfg.train.batch_size,
                            persistent_workers=workers > 0)
    valid_ds = ImageDataset(valid.images, valid.rows, pre, None)
    valid_sampler = EpochSampler(len(valid_ds), shuffle=False, rank=dist.rank, world_size=dist.world_size, pad=False)
    run.eval_bs = cfg.train.eval_batch_size or cfg.train.batch_size * 2
    run.valid_loader = DataLoader(valid_ds, batch_size=run.eval_bs, sampler=valid_sampler, num_workers=workers,
                                  pin_memory=pin, persistent_workers=workers > 0)
    run.steps_per_epoch = len(run.loader)
    run.total_steps = run.steps_per_epoch * cfg.train.epochs


def _resume_or_start(run: _Run, resume: bool) -> bool:
    """With ``resume``, the checkpoint's weights, optimiser and state; True when that run had
    already finished (its final report is written if a kill interrupted it)."""
    out, cfg = run.out, run.cfg
    if resume and has_checkpoint(out):
        run.state = load_checkpoint(out, run.model, run.ema, run.opt, run.strategy)
        if run.main and not run.state.get("completed"):
            run.say(f"resuming from epoch {run.state['epoch'] + 1} of {cfg.train.epochs}")
    elif resume and run.main:
        run.say("no checkpoint to resume from; starting a new run")
    if not run.state.get("completed"):
        return False
    if run.main and not (out / "summary.json").is_file():  # killed while writing the final report
        run.say(f"all {run.state['epoch']} epoch(s) were trained; finishing the final report")
        _final_report(out, cfg, run.classes, run.valid_t, run.state)
    elif run.main:
        run.say(f"this run already finished ({run.state['epoch']} epoch(s)); nothing to resume")
    barrier(run.dist)
    return True


def _set_precision(run: _Run) -> None:
    """DDP wrapper, the precision the hardware can do, channels-last, the gradient scaler."""
    cfg, device, model = run.cfg, run.device, run.model
    run.net = model
    if run.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.net = DDP(model, device_ids=[run.dist.local_rank] if device.type == "cuda" else None)
    requested = cfg.train.precision if cfg.train.amp else "fp32"
    run.precision, why = resolve_precision(requested, device)
    channels_last = cfg.train.channels_last
    if requested in ("auto", True) and device.type == "cpu" and run.precision == "bf16" and not run.dist.enabled:
        # bf16 units are no guarantee: time this network both ways on a batch of this size
        # (once per network, batch and CPU: remembered in the cache and in the checkpoint, so
        # that a resumed or repeated run trains in the same precision)
        run.precision, measured_cl, why = _measured_precision(run, model)
        if channels_last is None:
            channels_last = measured_cl
    if channels_last is None:
        channels_last = run.precision != "fp32"
    if run.main:
        run.say(f"precision {run.precision} on {device.type} ({why}){', channels-last' if channels_last else ''}")
        log.info("precision %s on %s (%s), channels_last=%s", run.precision, device.type, why, channels_last)
    run.fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    run.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and run.precision == "fp16")
    run.subsets = subsets_for(list(run.classes), cfg.label_space)


def _measured_precision(run: _Run, model: nn.Module) -> tuple[str, bool, str]:
    """(precision, channels_last, why) for ``precision: auto`` on a CPU with bf16 units: the
    resumed run's own choice, else this machine's cached measurement for this network and
    batch, else a measurement (:func:`cxrkit.inference.engines.fastest_cpu_precision`)."""
    import hashlib
    import platform

    from ..inference.engines import fastest_cpu_precision
    from ..inference.runtime import cpu_model_name
    from ..utils import cache_root

    if run.state.get("precision_choice"):
        p, cl, why = run.state["precision_choice"]
        return str(p), bool(cl), f"{why}; kept from the run being resumed"
    cfg, pre = run.cfg, run.pre
    h, w = pre.hw
    batch = min(cfg.train.batch_size, len(run.train.rows)) or 1
    key = hashlib.sha256(json.dumps([cfg.model_config.to_dict(), batch, h, w, pre.channels, cpu_model_name(),
                                     torch.__version__, platform.machine()], sort_keys=True,
                                    default=str).encode()).hexdigest()[:32]
    cache = cache_root() / "train_precision.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        p, cl, why = known[key]
        choice = (str(p), bool(cl), f"{why}; measured earlier on this machine")
    else:
        x = torch.randn(batch, pre.channels, h, w, generator=torch.Generator().manual_seed(0))
        choice = fastest_cpu_precision(model, x)
        known[key] = list(choice)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cache) as tmp:
                tmp.write_text(json.dumps(known, indent=1))
        except OSError:  # a read-only cache only costs a measurement next time
            pass
    run.state["precision_choice"] = list(choice)
    return choice


def _train_one_epoch(run: _Run, epoch: int) -> tuple[list[float], float]:
    """One pass over the training loader; returns the batch losses and the last learning rate."""
    cfg, device, model, opt, strategy = run.cfg, run.device, run.model, run.opt, run.strategy
    torch.manual_seed(sample_seed(cfg.train.seed, epoch, 0x5EED))  # dropout etc.
    base = run.policy.targets(run.train.labels, run.classes, np.random.default_rng([cfg.train.seed, epoch, 17]))
    targets = torch.from_numpy(strategy.targets(base, epoch) if strategy is not None else base)
    run.sampler.set_epoch(epoch)
    run.net.train()
    losses: list[float] = []
    step = int(run.state["step"])
    lr = cfg.optim.lr
    for x, idx in progress(run.loader, f"epoch {epoch + 1}/{cfg.train.epochs}", total=run.steps_per_epoch,
                           enabled=run.show):
        lr = lr_at(step, run.total_steps, cfg.optim.lr, cfg.schedule, run.steps_per_epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        x = x.to(device, non_blocking=True, memory_format=run.fmt)
        y = targets[idx].to(device, non_blocking=True)
        with autocast(device, run.precision):
            logits = run.net(x)
        # architectures with several heads (ML-VPT) train each head on the loss (seed 001 eq. 17)
        heads = getattr(model, "last_logits", None) or (logits,)
        if strategy is not None:
            unknown = run.unknown_all[idx].to(device, non_blocking=True)
            loss = sum(strategy.loss(run.elem_loss, h.float(), y, unknown, epoch) for h in heads)
        else:
            loss = sum(run.loss_fn(h.float(), y) for h in heads)
        if not torch.isfinite(loss):
            raise CxrkitError(f"epoch {epoch + 1}: loss became {loss.item()}; lower optim.lr or set train.grad_clip")
        opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            run.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        run.scaler.step(opt)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(model, step=step)
        losses.append(float(loss.detach()))
        step += 1
    run.state["step"] = step
    return losses, lr


def _validation_logits(run: _Run, epoch: int) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """The validation logits of every rank in table order (on the EMA weights when EMA is on),
    and the partial-label strategy's update on the training films when it needs one."""
    eval_model = run.ema.module if run.ema is not None else run.model
    eval_model.eval()
    logits_v, keys = run_batches(eval_model, run.valid_loader, run.device, amp=run.precision, show_progress=False)
    idx_v = np.concatenate([np.asarray(k) for k in keys]) if keys else np.zeros(0, dtype=np.int64)
    logits_all = gather_rows(torch.from_numpy(logits_v), run.dist).numpy()
    idx_all = gather_rows(torch.from_numpy(idx_v), run.dist).numpy()
    logits_all = logits_all[np.argsort(idx_all, kind="stable")]
    partial_info: dict[str, Any] = {}
    if run.strategy is not None and run.strategy.needs_train_predictions:
        plain = ImageDataset(run.train.images, run.train.rows, run.pre, None)
        t_logits, _ = run_batches(eval_model, DataLoader(plain, batch_size=run.eval_bs, num_workers=run.workers),
                                  run.device, amp=run.precision, show_progress=False)
        partial_info = run.strategy.update(t_logits, epoch)
        log.info("epoch %d pseudo-labels: %s", epoch + 1, partial_info)
    return eval_model, logits_all, partial_info


def _validate_and_checkpoint(run: _Run, epoch: int, losses: list[float], lr: float, t0: float) -> bool:
    """Validation metrics, the best model so far (with thresholds chosen on validation), the
    checkpoint and the metrics files; True to stop (early stopping, agreed by every rank)."""
    cfg, out, state = run.cfg, run.out, run.state
    eval_model, logits_all, partial_info = _validation_logits(run, epoch)
    stop = False
    if run.main:
        rec, probs = _epoch_record(run, epoch, logits_all, losses, lr, t0, partial_info)
        state["history"].append(rec)
        monitor = rec["monitor"]
        improved = np.isfinite(monitor) and (state["best"] is None or monitor > state["best"])
        if improved or state["best"] is None:
            state["best"], state["best_epoch"], state["bad_epochs"] = monitor, epoch + 1, 0
            thr = default_thresholds(best_thresholds(run.valid_t, probs, method=cfg.train.threshold_method))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                final = summarize_metrics(run.valid_t, probs, list(run.classes), thresholds=thr, subsets=run.subsets)
            _save_best(out, eval_model, cfg, run.classes, thr, final, epoch + 1, run.param_counts, run.prevalence)
            np.save(out / ".best_valid_probs.npy", probs.astype(np.float32))
        else:
            state["bad_epochs"] += 1
        run.say(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {rec['train_loss']:.4f}  valid loss "
                f"{rec['valid_loss']:.4f}  mAUC {_fmt(rec['mAUC'])}  mAP {_fmt(rec['mAP'])}"
                + ("  [best]" if state["best_epoch"] == epoch + 1 else ""))
        log.info("epoch %d: %s", epoch + 1, {k: v for k, v in rec.items() if k != "per_class_auc"})
        run.tracker.log_metrics({k: v for k, v in rec.items() if k != "epoch"}, step=epoch + 1)
        if cfg.train.patience is not None and state["bad_epochs"] >= cfg.train.patience:
            run.say(f"early stop: no improvement of {cfg.train.monitor} for {cfg.train.patience} epochs")
            stop = True
        state["epoch"] = epoch + 1
        state["completed"] = stop or epoch + 1 == cfg.train.epochs
        save_checkpoint(out, run.model, run.ema, run.opt, state, run.strategy)
        write_json(out / "metrics.json", state["history"])
        _history_csv(out / "metrics.csv", state["history"])
    else:
        state["epoch"] = epoch + 1
    stop = broadcast_flag(stop, run.dist)
    barrier(run.dist)
    return stop


def _epoch_record(run: _Run, epoch: int, logits_all: np.ndarray, losses: list[float], lr: float, t0: float,
                  partial_info: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """One epoch's line of metrics.csv, and the validation probabilities."""
    probs = 1.0 / (1.0 + np.exp(-logits_all.astype(np.float64)))
    valid_loss = masked_bce(logits_all, run.valid_t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = summarize_metrics(run.valid_t, probs, list(run.classes), subsets=run.subsets)
    monitor = _monitor_value(run.cfg, summary, valid_loss)
    rec = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "valid_loss": valid_loss, "mAUC": summary.get("mAUC"), "mAP": summary.get("mAP"),
           "mF1": summary.get("mF1"), "monitor": monitor, "seconds": round(time.time() - t0, 2),
           "per_class_auc": {c["name"]: c["auc"] for c in summary["classes"]}, **partial_info}
    return rec, probs


def _write_final_report(run: _Run) -> None:
    """The completed checkpoint, the report and plots (rank 0), logged to the tracker."""
    run.state["completed"] = True
    if run.main:
        save_checkpoint(run.out, run.model, run.ema, run.opt, run.state, run.strategy)
        _final_report(run.out, run.cfg, run.classes, run.valid_t, run.state)
        for art in ("plots", "label_distribution.png", "summary.json", "metrics.csv", "model"):
            run.tracker.log_artifact(run.out / art)
    barrier(run.dist)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _save_best(out: Path, model: nn.Module, cfg: TrainConfig, classes: tuple[str, ...], thresholds: list[float],
               metrics: dict[str, Any], epoch: int, parameters: dict[str, int] | None = None,
               prevalence: dict[str, float | None] | None = None) -> None:
    meta = ModelMeta(
        classes=list(classes),
        preprocessing=cfg.preprocessing_obj.to_dict(),
        model=cfg.model_config.to_dict(),
        thresholds=thresholds,
        name=cfg.name,
        threshold_method=cfg.train.threshold_method,
        label_space=cfg.label_space,
        train_config=cfg.to_dict(),
        metrics={"valid": metrics, "epoch": epoch, "parameters": parameters or {}},
        extra={"train_prevalence": prevalence or {}},
    )
    save_model(out / "model", model, meta)


def _result(out: Path, state: dict[str, Any], completed: bool | None = None) -> TrainResult:
    best = next((h for h in state["history"] if h["epoch"] == state.get("best_epoch")), {})
    return TrainResult(out, out / "model", int(state.get("best_epoch") or 0), best, state["history"],
                       state["completed"] if completed is None else completed)


def _final_report(out: Path, cfg: TrainConfig, classes: tuple[str, ...], valid_t: np.ndarray,
                  state: dict[str, Any]) -> None:
    from ..report import plot_curves, plot_roc_pr

    hist = state["history"]
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_curves({"train loss": [h["train_loss"] for h in hist], "valid BCE": [h["valid_loss"] for h in hist]},
                plots / "loss.png", ylabel="loss", title=f"{cfg.name}: loss")
    plot_curves({"valid mAUC": [h["mAUC"] if h["mAUC"] is not None else float("nan") for h in hist],
                 "valid mAP": [h["mAP"] if h["mAP"] is not None else float("nan") for h in hist]},
                plots / "metrics.png", ylabel="score", title=f"{cfg.name}: validation")
    probs_file = out / ".best_valid_probs.npy"
    if probs_file.is_file():
        probs = np.load(probs_file)
        plot_roc_pr(valid_t, probs, list(classes), plots / "roc.png", plots / "pr.png")
    # summary.json is written last and marks the report complete: a run killed before it is
    # finished by --resume (the best epoch's probabilities are kept until then)
    write_json(out / "summary.json", {"name": cfg.name, "best_epoch": state["best_epoch"],
                                      "monitor": cfg.train.monitor, "best_monitor": state["best"],
                                      "epochs_run": len(hist), "model": str(out / "model")})
    if probs_file.is_file():
        probs_file.unlink()
