"""Training configuration: YAML -> typed dataclasses, with ``key.sub=value`` overrides.

Relative paths in a config are resolved against the current folder first, then against
the folder of the config file. The resolved config is written into every run folder and
every saved model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..data.preprocess import Preprocessing
from ..errors import ConfigError
from ..labels import LabelPolicy
from ..models.classifier import ModelConfig
from ..tracking import TrackingConfig

log = logging.getLogger(__name__)


@dataclass
class TableRef:
    """A label table, optionally one split of it (a value of its ``split`` column, or a .txt
    file of image ids), a format hint and the folder its image paths are relative to."""

    table: str = ""
    split: str | None = None
    format: str | None = None
    images_root: str | None = None


@dataclass
class DataConfig:
    train: TableRef = field(default_factory=TableRef)
    valid: TableRef = field(default_factory=TableRef)
    classes: list[str] | None = None  # subset / order of the table's classes; default: all
    views: list[str] | None = None  # keep only these views (e.g. [PA, AP]); default: all
    label_policy: dict[str, Any] = field(default_factory=lambda: {"uncertain": "ignore", "unknown": "ignore"})
    valid_uncertain: str = "ignore"  # how -1 in the validation table is scored
    partial_known: float | None = None  # simulate partial labels: keep this proportion per training image
    partial_seed: int = 0
    cache: str = "disk"  # disk (memory-mapped, reused) or memory
    cache_dir: str | None = None
    cache_dtype: str = "uint8"
    workers: int = 2


@dataclass
class AugmentConfig:
    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "bce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam, adamw, sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant, onecycle, cosine
    pct_start: float = 0.2  # onecycle warm-up fraction
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    warmup_epochs: float = 0.0  # cosine warm-up
    min_lr: float = 0.0


@dataclass
class RunConfig:
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    grad_clip: float | None = None
    ema: float | None = None  # EMA decay of the weights, e.g. 0.9997; None = off
    amp: bool = True  # false = fp32 everywhere (the older switch; precision says more)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: auto = bf16 on CPUs with AMX / AVX-512 BF16 (else fp32),
    #                          bf16 on CUDA where supported, else fp16 with loss scaling
    channels_last: bool | None = None  # channels-last memory format; None = on where bf16 / fp16 is used
    monitor: str = "mAUC"  # validation metric for best-checkpoint selection: mAUC, mAP, loss
    monitor_subset: str | None = None  # e.g. "competition": mean over that subset of classes
    patience: int | None = None  # early stop after this many epochs without improvement
    threshold_method: str = "f1"  # per-class thresholds chosen on validation: f1 or youden
    device: str = "auto"
    seed: int = 0
    sync_bn: bool = False  # SyncBatchNorm under DDP
    deterministic: bool = False  # torch.use_deterministic_algorithms


@dataclass
class TrainConfig:
    name: str = "model"
    label_space: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"size": 224})
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    model: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RunConfig = field(default_factory=RunConfig)
    partial: dict[str, Any] | None = None  # unknown-label strategy: {strategy: ignore|an|ll-r|selective|cl-score|cl-score+, params: {...}}
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # {backend: none|mlflow|tensorboard, uri, experiment}

    # --- derived views -------------------------------------------------------------
    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def preprocessing_obj(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def label_policy(self) -> LabelPolicy:
        return LabelPolicy.from_dict(self.data.label_policy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> TrainConfig:
        _ = self.model_config, self.preprocessing_obj, self.label_policy
        self.tracking.validate()
        if not self.data.train.table:
            raise ConfigError("data.train.table is required")
        if not self.data.valid.table:
            raise ConfigError("data.valid.table is required (best-checkpoint selection and thresholds use it)")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if self.train.threshold_method not in ("f1", "youden"):
            raise ConfigError("train.threshold_method must be 'f1' or 'youden'")
        from ..inference.engines import PRECISIONS

        if self.train.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)} (got {self.train.precision!r})")
        if self.train.monitor not in ("mAUC", "mAP", "loss"):
            raise ConfigError("train.monitor must be mAUC, mAP or loss")
        if self.optim.name not in ("adam", "adamw", "sgd"):
            raise ConfigError("optim.name must be adam, adamw or sgd")
        import math

        if not (isinstance(self.optim.lr, (int, float)) and math.isfinite(self.optim.lr) and self.optim.lr > 0):
            raise ConfigError(f"optim.lr must be a positive number, got {self.optim.lr!r}")
        if self.optim.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.optim.weight_decay!r}")
        from ..losses import check_loss

        check_loss(self.loss.name, dict(self.loss.params))
        if self.schedule.name not in ("constant", "onecycle", "cosine"):
            raise ConfigError("schedule.name must be constant, onecycle or cosine")
        from .partial import build_strategy

        build_strategy(self.partial)
        if self.data.partial_known is not None and not 0 < self.data.partial_known <= 1:
            raise ConfigError("data.partial_known must be in (0, 1]")
        m = self.model_config
        from ..models.classifier import lookup_arch

        lookup_arch(m.arch)  # an unknown architecture fails before any image is read
        from ..models.classifier import check_model_config

        check_model_config(m)  # so do an unknown backbone, backbone kwarg or weights file
        if m.in_chans != self.preprocessing_obj.channels:
            raise ConfigError(f"model.in_chans ({m.in_chans}) must equal preprocessing.channels "
                              f"({self.preprocessing_obj.channels})")
        from ..models.registry import TXV_PREPROCESSING

        conv = TXV_PREPROCESSING.get(m.backbone)
        if conv is not None:  # torchxrayvision's weights expect their own input convention
            pre = self.preprocessing_obj
            if (pre.channels != 1 or [round(v, 6) for v in pre.mean] != [0.5]
                    or [round(v, 8) for v in pre.std] != [round(1 / 2048, 8)]):
                raise ConfigError(f"{m.backbone} expects torchxrayvision's input convention (one channel, "
                                  f"-1024..1024): set preprocessing: {{size: {conv['size']}, channels: 1, "
                                  "mean: [0.5], std: [0.00048828125]}")
            if pre.size != conv["size"]:
                log.warning("%s was trained at %d px; preprocessing.size is %d", m.backbone, conv["size"], pre.size)
        want = _checkpoint_convention(m)
        if want is not None:  # a foundation checkpoint's own input convention (RAD-DINO, BiomedCLIP)
            pre, c = self.preprocessing_obj, want["channels"]
            if (pre.size != want["size"] or pre.channels != c
                    or [round(v, 4) for v in pre.mean] != [round(v, 4) for v in want["mean"][:c]]
                    or [round(v, 4) for v in pre.std] != [round(v, 4) for v in want["std"][:c]]):
                raise ConfigError(f"{m.backbone} expects its checkpoint's input convention: set preprocessing: "
                                  f"{{size: {want['size']}, channels: {c}, mean: {want['mean'][:c]}, "
                                  f"std: {want['std'][:c]}, resize: center-crop}}")
        return self


def _checkpoint_convention(m: Any) -> dict[str, Any] | None:
    """The input a foundation backbone's published weights expect (size, channels, mean, std),
    or None: RAD-DINO's from its folder's preprocessor_config.json, a CLIP image tower's from
    its open_clip_config.json (BiomedCLIP's without a folder)."""
    if m.backbone == "rad-dino" and m.weights:
        from ..models.foundation import read_hf_preprocessing

        return {**read_hf_preprocessing(m.weights), "size": int(m.backbone_kwargs.get("img_size", 518)),
                "channels": m.in_chans}
    if m.backbone == "biomedclip":
        from ..models.clip import BIOMEDCLIP_ARCH, clip_preprocessing

        arch = {**BIOMEDCLIP_ARCH, **{k: v for k, v in m.backbone_kwargs.items() if k != "normalize"}}
        return clip_preprocessing(m.weights if m.weights else None, arch)
    return None


def _build(cls: Any, data: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
                          f"valid: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        t = hints[k]
        sub = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(t):
            kwargs[k] = _build(t, v, sub)
        else:
            kwargs[k] = _coerce(t, v, sub)
    return cls(**kwargs)


def _coerce(t: Any, v: Any, where: str) -> Any:
    origin = get_origin(t)
    args = get_args(t)
    if v is None:
        if type(None) in args or t is Any:
            return None
        raise ConfigError(f"{where}: must not be null")
    if origin is None and t in (int, float, str, bool):
        if t is float and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if t is float and isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise ConfigError(f"{where}: expected {t.__name__}, got {v!r}")
        return v
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], v, where)
        return v
    if origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        return [_coerce(args[0], x, f"{where}[{i}]") if args else x for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {v!r}")
        return dict(v)
    return v


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {k} is not a mapping")
        node[keys[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or a dict), apply ``key.sub=value`` overrides, resolve relative
    table paths, validate."""
    base: Path | None = None
    if raw is None:
        if path is None:
            raise ConfigError("no config given")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
        base = p.parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    cfg = _build(TrainConfig, raw, "")
    for ref in (cfg.data.train, cfg.data.valid):
        ref.table = resolve_path(ref.table, base)
        if ref.split and ref.split.endswith(".txt"):
            ref.split = resolve_path(ref.split, base)
        if ref.images_root:
            ref.images_root = resolve_path(ref.images_root, base)
    if cfg.model.get("weights") and not str(cfg.model["weights"]).startswith("pkg:"):
        cfg.model["weights"] = resolve_path(cfg.model["weights"], base)
    return cfg.validate()


_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(value: str) -> str:
    """``${CXRKIT_DATA:-../shared/data}/nih_hires/labels.csv``: the variable's value when it is
    set and not empty, else the default after ``:-``; ``${NAME}`` without a default must be set."""

    def sub(m: Any) -> str:
        v = os.environ.get(m.group(1))
        if v:
            return v
        if m.group(2) is None:
            raise ConfigError(f"{value}: the environment variable {m.group(1)} is not set")
        return m.group(2)

    return _VAR_RE.sub(sub, value)


def resolve_path(value: str, base: Path | None) -> str:
    if not value:
        return value
    p = Path(expand_vars(value)).expanduser()
    if p.is_absolute() or p.exists() or base is None:
        return str(p)
    alt = base / p
    return str(alt) if alt.exists() else str(p)


def dump_config(cfg: TrainConfig, path: str | Path) -> Path:
    from ..utils import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Path(path)
