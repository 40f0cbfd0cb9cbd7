"""``cxrkit cft``: a saved model + train / valid tables -> a new model with fine-tuned rows.

The result has the same architecture and inference cost; only head rows change. What CFT
did (settings, the choice per category, before / after scores) is recorded in the model's
metadata and in ``MODEL_OUT/cft/`` (report CSV / JSON, gain bars, learning curves).

Sharding: ``shard=(i, n)`` fine-tunes the categories c with c % n == i and writes a *part*
(rows + report) instead of a model; :func:`merge_parts` combines the parts into the model.
Under ``torchrun`` every rank takes its shard and rank 0 gathers and writes the model.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import LoadedModel, ModelMeta, default_thresholds, load_model, write_model_files
from ..errors import ArtifactError, ConfigError, CxrkitError
from ..labels import subsets_for
from ..metrics import best_thresholds, summarize
from ..utils import atomic_write, check_output_dir, mark_output, staged_dir, write_json
from .features import FeatureSet, extract_features, head_rows, set_head_rows
from .runner import CategoryResult, CFTConfig, eval_labels, run_categories, run_ft_layer

log = logging.getLogger(__name__)

PART_JSON = "cft_part.json"
PART_ROWS = "cft_rows.safetensors"


def holdout_split(fs: FeatureSet, fraction: float, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """Split rows into (choice, held-out) by patient / study groups, seeded."""
    if not 0 < fraction < 1:
        raise ConfigError("holdout must be a fraction between 0 and 1")
    groups = np.asarray(fs.groups if fs.groups else fs.ids)
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(uniq)[: max(1, int(round(len(uniq) * fraction)))].tolist())
    mask = np.array([g in held for g in groups])
    if mask.all() or not mask.any():
        raise CxrkitError("the validation split is too small to hold part of it out")
    return fs.subset(np.flatnonzero(~mask)), fs.subset(np.flatnonzero(mask))


def _eval_targets(fs: FeatureSet) -> np.ndarray:
    return np.stack([eval_labels(fs.labels[:, c]) for c in range(fs.labels.shape[1])], axis=1)


def _probs(fs: FeatureSet, w: np.ndarray, b: np.ndarray, cal: dict[str, Any] | None = None) -> np.ndarray:
    from ..inference.calibration import apply_calibration

    return apply_calibration(1.0 / (1.0 + np.exp(-fs.logits(w, b).astype(np.float64))), cal)


def _scores(fs: FeatureSet, w: np.ndarray, b: np.ndarray, thresholds: list[float] | None,
            subsets: dict[str, list[str]], cal: dict[str, Any] | None = None) -> dict[str, Any]:
    probs = _probs(fs, w, b, cal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return summarize(_eval_targets(fs), probs, list(fs.classes), thresholds=thresholds, subsets=subsets)


def _thresholds(fs: FeatureSet, w: np.ndarray, b: np.ndarray, method: str,
                cal: dict[str, Any] | None = None) -> list[float]:
    return default_thresholds(best_thresholds(_eval_targets(fs), _probs(fs, w, b, cal), method=method))


def _recalibrate(model: LoadedModel, valid: FeatureSet, w: np.ndarray, b: np.ndarray, method: str
                 ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[float]]:
    """A calibrated model's calibration no longer fits once CFT changed its head: it is fitted
    again (same method) on the validation films, and an operating point chosen by target
    (``sensitivity=0.90``) is chosen again on the new probabilities; thresholds otherwise by
    the model's method."""
    from ..inference.calibration import fit_calibration, operating_points

    cal0, op0 = model.meta.calibration, model.meta.operating_point
    cal = None
    if cal0:
        cal = fit_calibration(_probs(valid, w, b), _eval_targets(valid), list(valid.classes), cal0["method"])
        cal["fitted_on"] = dict(cal0.get("fitted_on") or {}, refit_by="cft (validation films)")
    if op0 and op0.get("target"):
        op = operating_points(_eval_targets(valid), _probs(valid, w, b, cal), list(valid.classes), op0["target"])
        old = list(model.meta.thresholds)
        thr = [float(c["threshold"]) if c else old[i] for i, c in enumerate(op["classes"].values())]
        return cal, dict(op, refit_by="cft"), thr
    return cal, None, _thresholds(valid, w, b, method, cal)


def run_cft(model_path: str | Path, train_table: str | Path, valid_table: str | Path, out: str | Path,
            cfg: CFTConfig, images_root: str | Path | None = None, train_split: str | None = None,
            valid_split: str | None = None, test_table: str | Path | None = None, test_split: str | None = None,
            holdout: float | None = None, feature_dtype: str = "float32", cache_dir: str | Path | None = None,
            batch_size: int = 64, show_progress: bool = True, console: Any = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Extract (cached) features, fine-tune the rows, write the new model (or a shard's part)."""
    say = console.print if console is not None else (lambda *a, **k: None)
    cfg.validate()
    out = Path(out)
    t0 = time.time()
    check_output_dir(out, "cft" if cfg.shard[1] == 1 else "cft-part", [model_path], overwrite)
    model = load_model(model_path)
    if not hasattr(model.model, "head") or not hasattr(model.model, "features"):
        raise CxrkitError(f"{model_path}: this architecture exposes no per-class head rows for CFT")
    common = dict(images_root=images_root, cache_dir=cache_dir, dtype=feature_dtype, batch_size=batch_size,
                  show_progress=show_progress)
    train = extract_features(model, train_table, split=train_split, role="train", **common)
    valid = extract_features(model, valid_table, split=valid_split, role="valid", **common)
    test = None
    if test_table is not None:
        test = extract_features(model, test_table, split=test_split, role="test", **common)
    elif holdout:
        valid, test = holdout_split(valid, holdout, cfg.seed)
    say(f"features: train {len(train)}, valid {len(valid)}" + (f", held-out {len(test)}" if test is not None else "")
        + f" (Z = {train.z.shape[-1]})")
    w, b = head_rows(model.model)

    from ..train.distributed import init_distributed

    dist_info = init_distributed("cpu")
    if dist_info.enabled:
        cfg.shard = (dist_info.rank, dist_info.world_size)
    if cfg.method == "ft-bp-asl":
        results = run_ft_layer(train, valid, test, w, b, cfg)
    else:
        results = run_categories(train, valid, test, w, b, cfg, show_progress=show_progress and dist_info.is_main)
    if dist_info.enabled:
        results = _gather_results(results, dist_info)
        if not dist_info.is_main:
            return {"rank": dist_info.rank, "categories": 0}
        cfg.shard = (0, 1)
    elif cfg.shard[1] > 1:
        write_part(out, model, cfg, results)
        say(f"wrote CFT part {cfg.shard[0]}/{cfg.shard[1]} ({len(results)} categories) to {out}; "
            "combine the parts with `cxrkit cft-merge`")
        return {"part": str(out), "categories": len(results)}
    return finish(model, cfg, results, train, valid, test, out, seconds=time.time() - t0, say=say)


def finish(model: LoadedModel, cfg: CFTConfig, results: list[CategoryResult], train: FeatureSet | None,
           valid: FeatureSet, test: FeatureSet | None, out: str | Path, seconds: float = 0.0,
           say: Any = None) -> dict[str, Any]:
    """Write the fine-tuned model and the reports."""
    say = say or (lambda *a, **k: None)
    out = Path(out)
    w0, b0 = head_rows(model.model)
    w, b = w0.copy(), b0.copy()
    for r in results:
        w[r.index], b[r.index] = r.w, r.b
    subsets = subsets_for(list(model.classes), model.meta.label_space)
    cal0 = model.meta.calibration
    cal, op, thr = _recalibrate(model, valid, w, b, model.meta.threshold_method or cfg.threshold_method)
    metrics = {"valid_before": _scores(valid, w0, b0, list(model.meta.thresholds), subsets, cal0),
               "valid_after": _scores(valid, w, b, thr, subsets, cal)}
    if test is not None:
        metrics["test_before"] = _scores(test, w0, b0, list(model.meta.thresholds), subsets, cal0)
        metrics["test_after"] = _scores(test, w, b, thr, subsets, cal)
    set_head_rows(model.model, w, b)
    meta_d = model.meta.to_dict()
    meta = ModelMeta(**{k: v for k, v in meta_d.items() if k in ModelMeta.__dataclass_fields__})
    meta.thresholds = thr
    meta.calibration = cal
    meta.operating_point = op
    meta.name = f"{model.meta.name}+cft"
    meta.created = ""
    metric = cfg.choice_metric
    per_cat = [r.summary() for r in results]
    meta.cft = {"config": cfg.to_dict(), "metric": metric, "categories": per_cat,
                "n_changed": sum(not r.chosen.startswith("original") for r in results),
                "source_model": str(model.path), "source_sha256": model.meta.weights_sha256,
                "n_train": len(train) if train is not None else None, "n_valid": len(valid),
                "n_test": len(test) if test is not None else None, "seconds": round(seconds, 1)}
    meta.metrics = dict(meta.metrics or {})
    meta.metrics["cft"] = {k: _headline(v) for k, v in metrics.items()}
    from ..report import plot_cft_curves, plot_cft_gains

    summary = {"model": str(out), "metric": metric, "changed": meta.cft["n_changed"], "categories": len(results),
               **{k: _headline(v) for k, v in metrics.items()}, "seconds": round(seconds, 1)}
    # the model, its report, plots and summary are written in one staging folder and swapped
    # in once: a kill at any point leaves either the old output or the whole new one
    with staged_dir(out) as tmp:
        write_model_files(tmp, model.model, meta)
        rep = tmp / "cft"
        rep.mkdir()
        write_report(rep, results, metric, metrics)
        plot_cft_gains(results, metric, rep / "gains.png")
        plot_cft_curves(results, rep / "curves.png")
        write_json(rep / "summary.json", summary)
        mark_output(tmp, "cft")
    return summary


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    d = {k: s.get(k) for k in ("mAUC", "mAP", "mF1")}
    for name, sub in (s.get("subsets") or {}).items():
        d[f"{name}_mAUC"] = sub.get("mAUC")
        d[f"{name}_mAP"] = sub.get("mAP")
    return d


def write_report(folder: Path, results: list[CategoryResult], metric: str, metrics: dict[str, Any]) -> None:
    import csv

    rows = []
    for r in results:
        rows.append({"class": r.name, "chosen": r.chosen, f"valid_{metric}_before": r.val_before,
                     f"valid_{metric}_after": r.val_after, f"test_{metric}_before": r.test_before,
                     f"test_{metric}_after": r.test_after, "n_valid": r.n_val,
                     "n_train": ";".join(f"{k}:{v}" for k, v in r.n_train.items()), "seconds": round(r.seconds, 2)})
    with atomic_write(folder / "report.csv") as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["class"])
        wr.writeheader()
        wr.writerows(rows)
    write_json(folder / "report.json", {"metric": metric, "categories": [r.summary() for r in results],
                                        "curves": {r.name: r.curves for r in results}, "metrics": metrics})


# ---------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------


def write_part(out: Path, model: LoadedModel, cfg: CFTConfig, results: list[CategoryResult]) -> Path:
    from safetensors.torch import save_file
    import torch

    with staged_dir(out) as tmp:
        tensors = {}
        for r in results:
            tensors[f"w.{r.index}"] = torch.from_numpy(np.ascontiguousarray(r.w, dtype=np.float32))
            tensors[f"b.{r.index}"] = torch.tensor([r.b], dtype=torch.float32)
        save_file(tensors or {"empty": torch.zeros(1)}, str(tmp / PART_ROWS))
        (tmp / PART_JSON).write_text(json.dumps({
            "format": "cxrkit-cft-part", "model_sha256": model.meta.weights_sha256, "config": cfg.to_dict(),
            "shard": list(cfg.shard), "results": [dict(r.summary(), curves=r.curves) for r in results]}, default=float))
        mark_output(tmp, "cft-part")
    return out


def read_part(path: str | Path) -> tuple[dict[str, Any], list[CategoryResult]]:
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / PART_JSON).is_file():
        raise ArtifactError(f"{p}: not a CFT part (no {PART_JSON})")
    meta = json.loads((p / PART_JSON).read_text())
    rows = load_file(str(p / PART_ROWS))
    results = []
    for d in meta["results"]:
        c = int(d["index"])
        r = CategoryResult(**{k: v for k, v in d.items() if k in CategoryResult.__dataclass_fields__
                              and k not in ("w", "b", "curves")},
                           w=rows[f"w.{c}"].numpy(), b=float(rows[f"b.{c}"][0]))
        r.curves = d.get("curves", {})
        results.append(r)
    return meta, results


def merge_parts(model_path: str | Path, parts: list[str | Path], valid_table: str | Path, out: str | Path,
                images_root: str | Path | None = None, valid_split: str | None = None,
                test_table: str | Path | None = None, test_split: str | None = None, holdout: float | None = None,
                feature_dtype: str = "float32", cache_dir: str | Path | None = None,
                show_progress: bool = True, console: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Combine shard parts into the fine-tuned model (thresholds and scores from ``valid``)."""
    check_output_dir(out, "cft", [model_path, *parts], overwrite)
    model = load_model(model_path)
    results: list[CategoryResult] = []
    cfg_d: dict[str, Any] | None = None
    for p in parts:
        meta, res = read_part(p)
        if meta["model_sha256"] != model.meta.weights_sha256:
            raise ArtifactError(f"{p}: was made from another model")
        cfg_d = cfg_d or meta["config"]
        results += res
    if cfg_d is None:
        raise ConfigError("no parts given")
    idx = [r.index for r in results]
    if len(set(idx)) != len(idx):
        raise ArtifactError("the parts overlap (a category appears twice)")
    cfg_d = dict(cfg_d, shard=(0, 1))
    cfg = CFTConfig(**{k: v for k, v in cfg_d.items() if k in CFTConfig.__dataclass_fields__})
    common = dict(images_root=images_root, cache_dir=cache_dir, dtype=feature_dtype, show_progress=show_progress)
    valid = extract_features(model, valid_table, split=valid_split, role="valid", **common)
    test = extract_features(model, test_table, split=test_split, role="test", **common) if test_table else None
    if test is None and holdout:
        valid, test = holdout_split(valid, holdout, cfg.seed)
    return finish(model, cfg, sorted(results, key=lambda r: r.index), None, valid, test, out,
                  say=console.print if console is not None else None)


def _gather_results(results: list[CategoryResult], info: Any) -> list[CategoryResult]:
    """All ranks' results on every rank (JSON + float32 rows as tensors; nothing pickled)."""
    import torch

    from ..train.distributed import gather_rows

    payload = json.dumps([dict(r.summary(), curves=r.curves) for r in results], default=float).encode()
    z = results[0].w.shape[0] if results else 0
    zt = torch.tensor([z])
    zs = gather_rows(zt, info)
    z = int(zs.max())
    data = gather_rows(torch.tensor([len(payload)], dtype=torch.int64), info)
    blob = torch.zeros(int(data.max()), dtype=torch.uint8)
    blob[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    blobs = gather_rows(blob[None], info)
    rows = torch.zeros((len(results), z + 1), dtype=torch.float32)
    for i, r in enumerate(results):
        rows[i, :z] = torch.from_numpy(np.asarray(r.w, np.float32))
        rows[i, z] = r.b
    all_rows = gather_rows(rows, info)
    out: list[CategoryResult] = []
    k = 0
    for rank in range(info.world_size):
        items = json.loads(bytes(blobs[rank, : int(data[rank])].tolist()).decode())
        for d in items:
            r = CategoryResult(**{kk: v for kk, v in d.items() if kk in CategoryResult.__dataclass_fields__
                                  and kk not in ("w", "b", "curves")},
                               w=all_rows[k, :z].numpy().copy(), b=float(all_rows[k, z]))
            r.curves = d.get("curves", {})
            out.append(r)
            k += 1
    return sorted(out, key=lambda r: r.index)
