"""``cxrkit probe``: per-class linear heads on the frozen features of a backbone.

A foundation model's features (RAD-DINO, torchxrayvision, an ImageNet network) are
extracted once per split (cached, as CFT caches them), then each class gets its own
L2-regularised logistic regression on the training rows its label is known for (under
the uncertainty policy: U-Ignore / U-Ones / U-Zeros), its regularisation chosen on the
validation split's AUC; the features are standardised for the fit and the scaler folded
back into the row, so the head applies to the raw features. The result is an ordinary
saved model (backbone + head, preprocessing, thresholds chosen on validation) that
``predict``, ``evaluate``, ``cft``, the container, the bundle and the PACS node use
unchanged; ``cxrkit cft`` fine-tunes its rows further.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import LoadedModel, ModelMeta, load_model, save_model
from ..errors import ConfigError, CxrkitError
from ..utils import check_output_dir
from .features import FeatureSet, extract_features, set_head_rows
from .fitness import BinaryScorer
from .runner import eval_labels, train_targets

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0)


def _source_model(source: str | Path, classes: list[str]) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any],
                                                                    str, str | None]:
    """(network with a fresh head for ``classes``, model config, preprocessing, name, label
    space) from a saved model folder or a training config (YAML)."""
    p = Path(source)
    if p.is_dir():
        m = load_model(p)
        net = m.model
        if not hasattr(net, "head") or not hasattr(net, "features"):
            raise CxrkitError(f"{source}: this architecture exposes no head rows to fit")
        net.head = torch.nn.Linear(net.head.in_features, len(classes))
        net.num_classes = len(classes)
        return net, dict(m.meta.model), dict(m.meta.preprocessing), m.meta.name, m.meta.label_space
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        from ..models import build_model
        from ..train.config import load_config

        cfg = load_config(p)
        if cfg.model_config.arch != "classifier":
            raise ConfigError(f"{source}: probe fits heads on a classifier backbone (model.arch: classifier)")
        net = build_model(cfg.model_config, len(classes))  # the backbone's pretrained / local weights
        return (net, cfg.model_config.to_dict(), cfg.preprocessing_obj.to_dict(), cfg.name or p.stem,
                cfg.label_space)
    raise CxrkitError(f"{source}: expected a saved model folder or a training config (.yaml)")


def fit_rows(train: FeatureSet, valid: FeatureSet, policy: str = "ignore", c_grid: tuple[float, ...] = C_GRID,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One logistic-regression row per class: (W C x Z, b C, per-class record)."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(train.z, dtype=np.float64)
    zv = np.asarray(valid.z, dtype=np.float64)
    mu = z.mean(0)
    sd = z.std(0)
    sd[sd < 1e-12] = 1.0
    zs, zvs = (z - mu) / sd, (zv - mu) / sd
    n_cls = train.labels.shape[1]
    w = np.zeros((n_cls, z.shape[1]), np.float32)
    b = np.zeros(n_cls, np.float32)
    info: list[dict[str, Any]] = []
    for c in range(n_cls):
        yt = train_targets(train.labels[:, c], policy)
        kt = ~np.isnan(yt)
        y = yt[kt].astype(int)
        yv = eval_labels(valid.labels[:, c])
        kv = ~np.isnan(yv)
        rec: dict[str, Any] = {"class": train.classes[c], "n_train": int(kt.sum()), "n_train_pos": int(y.sum())}
        if kt.sum() == 0 or y.min() == y.max():
            prior = float(np.clip(y.mean() if len(y) else 0.5, 1e-4, 1 - 1e-4))
            b[c] = np.log(prior / (1 - prior))
            rec.update(C=None, valid_auc=None, note="one class only in training: bias = log-odds of the prior")
            info.append(rec)
            continue
        scorer = BinaryScorer(yv[kv].astype(int), "auc")
        best: tuple[float, float, Any] | None = None
        for cval in c_grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr = LogisticRegression(C=cval, max_iter=2000, random_state=seed).fit(zs[kt], y)
            v = float(scorer(zvs[kv] @ lr.coef_[0] + lr.intercept_[0])[0]) if scorer.defined else float("nan")
            if best is None or (not np.isnan(v) and (np.isnan(best[0]) or v > best[0] + 1e-12)):
                best = (v, cval, lr)
        assert best is not None
        v, cval, lr = best
        # the scaler folded into the row: w . (x - mu) / sd + b0 = (w / sd) . x + b0 - w . mu / sd
        w[c] = (lr.coef_[0] / sd).astype(np.float32)
        b[c] = np.float32(lr.intercept_[0] - float((lr.coef_[0] * mu / sd).sum()))
        rec.update(C=cval, valid_auc=None if np.isnan(v) else round(v, 6))
        info.append(rec)
    return w, b, info


def run_probe(source: str | Path, train_table: str | Path, valid_table: str | Path, out: str | Path,
              policy: str = "ignore", train_split: str | None = None, valid_split: str | None = None,
              images_root: str | Path | None = None, c_grid: tuple[float, ...] = C_GRID,
              threshold_method: str = "f1", batch_size: int = 32, show_progress: bool = True,
              overwrite: bool = False, zero_shot: str | Path | None = None) -> dict[str, Any]:
    """Extract (cached) frozen features of ``source``'s backbone, fit per-class heads, save
    the model at ``out`` (its report in ``out/probe/``). ``zero_shot``: a prompts file; its
    classes without positive training films are scored from their prompts (a CLIP backbone:
    :mod:`cxrkit.cft.zeroshot`), those the training table lacks are added."""
    from ..data.tables import load_table
    from ..labels import UncertaintyPolicy
    from .pipeline import _scores, _thresholds, _headline

    t0 = time.time()
    if UncertaintyPolicy.parse(policy) not in (UncertaintyPolicy.IGNORE, UncertaintyPolicy.ONES,
                                               UncertaintyPolicy.ZEROS):
        raise ConfigError(f"probe policy must be ignore, ones or zeros (got {policy!r})")
    if not c_grid or any(c <= 0 for c in c_grid):
        raise ConfigError("the regularisation grid (C) must hold positive numbers")
    out = check_output_dir(out, "probe", [source], overwrite)
    classes = list(load_table(train_table).classes)
    prompts = None
    if zero_shot is not None:
        from ..models.clip import read_prompts

        prompts = read_prompts(zero_shot)
        classes += [c for c in prompts if c not in classes]
    net, model_cfg, pre, name, label_space = _source_model(source, classes)
    if prompts is not None:
        from .zeroshot import clip_folder_of

        clip_folder_of(model_cfg)  # refuse a non-CLIP backbone before extracting anything
    meta = ModelMeta(classes=classes, preprocessing=pre, model=model_cfg, thresholds=[0.5] * len(classes),
                     name=f"{name}+probe", label_space=label_space, threshold_method=threshold_method)
    with tempfile.TemporaryDirectory() as td:
        # the frozen network as a saved model: its weight hash keys the feature cache
        save_model(Path(td) / "frozen", net, meta)
        frozen = load_model(Path(td) / "frozen")
        common = dict(images_root=images_root, batch_size=batch_size, show_progress=show_progress)
        train = extract_features(frozen, train_table, split=train_split, role="train", **common)
        valid = extract_features(frozen, valid_table, split=valid_split, role="valid", **common)
    if len(train) == 0 or len(valid) == 0:
        raise CxrkitError("no readable training or validation films to fit the heads on")
    t_feat = time.time() - t0
    w, b, info = fit_rows(train, valid, policy, c_grid)
    zs_record = None
    if prompts is not None:
        from .zeroshot import add_zero_shot_rows

        w, b, zs_record = add_zero_shot_rows(model_cfg, classes, w, b, info, prompts)
    thr = _thresholds(valid, w, b, threshold_method)
    from ..labels import subsets_for

    scores = _scores(valid, w, b, thr, subsets_for(classes, label_space))
    set_head_rows(net, w, b)
    meta.thresholds = thr
    meta.metrics = {"probe": {"valid": _headline(scores)}}
    meta.extra = {"probe": {"source": str(source), "policy": policy, "c_grid": list(c_grid), "classes": info,
                            "n_train": len(train), "n_valid": len(valid), "feature_dim": int(train.z.shape[-1]),
                            "seconds_features": round(t_feat, 1), "seconds": round(time.time() - t0, 1)}}
    if zs_record is not None:
        meta.extra["zero_shot"] = zs_record
    summary = {"model": str(out), "valid": _headline(scores), "n_train": len(train), "n_valid": len(valid),
               "zero_shot": list((zs_record or {}).get("classes") or []),
               "feature_dim": int(train.z.shape[-1]), "seconds": round(time.time() - t0, 1)}
    from .zeroshot import write_head_model

    write_head_model(out, net, meta, "probe", {**summary, "classes": info})
    return summary


def run_probe_cft(source: str | Path, train_table: str | Path, valid_table: str | Path, out: str | Path,
                  method: str, policy: str = "ignore", train_split: str | None = None,
                  valid_split: str | None = None, images_root: str | Path | None = None,
                  overwrite: bool = False, console: Any = None, **probe_kw: Any) -> dict[str, Any]:
    """``probe --cft METHOD``: the probe's heads, then Category-wise Fine-Tuning of their rows
    (BP / GA / greedy) on the same frozen features; ``out`` is the fine-tuned model with both
    reports (``probe/summary.json``, ``cft/``). The probe model is staged next to ``out`` and
    removed; a failure leaves ``out`` as it was."""
    import shutil

    from .pipeline import run_cft
    from .runner import CFTConfig

    pols = ["ignore", "ones", "zeros"] if method == "greedy" else [policy]
    cfg = CFTConfig(method=method, policies=pols).validate()  # a bad method fails before any work
    out = check_output_dir(out, "cft", [source], overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.probe-", dir=out.parent) as td:
        stage = Path(td) / "probe-model"
        res = run_probe(source, train_table, valid_table, stage, policy=policy, train_split=train_split,
                        valid_split=valid_split, images_root=images_root, **probe_kw)
        cres = run_cft(stage, train_table, valid_table, out, cfg, images_root=images_root, train_split=train_split,
                       valid_split=valid_split, console=console, overwrite=overwrite,
                       show_progress=probe_kw.get("show_progress", True))
        shutil.copytree(stage / "probe", out / "probe", dirs_exist_ok=True)
    return {**res, "model": str(out), "cft": cres}


def load_probe(path: str | Path) -> LoadedModel:
    """A probe model (an ordinary saved model)."""
    return load_model(path)
