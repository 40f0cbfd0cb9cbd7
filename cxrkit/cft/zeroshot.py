"""Zero-shot classes from text prompts (``cxrkit zeroshot``, ``cxrkit probe --zero-shot``).

A CLIP model (open_clip folder: BiomedCLIP or any other) scores a class it has never seen a
labelled film of from text: each class has positive prompts ("scoliosis", "a chest x-ray
showing scoliosis") and negative ones ("no scoliosis"), each side's text embeddings are
averaged (CLIP's prompt ensembling) and the class logit is ``scale * (cos(image, positive) -
cos(image, negative))``: the log-odds of the softmax over the pair, as CheXzero and the
CXR-LT 2024 task 3 / 2026 task 2 winners score unseen findings. On the image tower's
normalised embedding that is an exact linear row, so a zero-shot class is an ordinary head
row: the saved model needs no text tower, tokenizer or open_clip text code at prediction
time, and ``predict``, ``evaluate``, the ONNX export, the container, the leaderboard entry
and the PACS node treat zero-shot classes like the others. The model records which classes
are zero-shot and their prompts (``extra.zero_shot``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


def clip_model_config(folder: str | Path) -> dict[str, Any]:
    """A classifier on the normalised CLIP image embedding of ``folder`` (its architecture
    copied from the folder, so the saved model rebuilds without it)."""
    from ..models.clip import _arch_of, read_clip_folder

    model_cfg, _, _ = read_clip_folder(folder)
    return {"arch": "classifier", "backbone": "biomedclip", "pretrained": True,
            "weights": str(Path(folder).expanduser()), "weights_map": None, "in_chans": 3, "feature_dim": None,
            "drop_rate": 0.0, "backbone_kwargs": {**_arch_of(model_cfg), "normalize": True}, "arch_kwargs": {}}


def clip_folder_of(model_cfg: dict[str, Any]) -> Path:
    """The open_clip folder behind a model config whose features zero-shot rows apply to."""
    if model_cfg.get("backbone") != "biomedclip" or model_cfg.get("feature_dim") is not None:
        raise ConfigError("zero-shot classes need a CLIP image tower as the backbone (model.backbone: biomedclip, "
                          "no feature_dim): their rows score its normalised embedding")
    if (model_cfg.get("backbone_kwargs") or {}).get("normalize", True) is False:
        raise ConfigError("zero-shot classes need the normalised CLIP embedding (backbone_kwargs.normalize: true)")
    folder = model_cfg.get("weights")
    if not folder:
        raise ConfigError("zero-shot classes need the CLIP folder (model.weights) for its text tower")
    return Path(str(folder)).expanduser()


def zero_shot_record(folder: Path, prompts: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    return {"source": Path(folder).name, "rule": "scale * (cos(image, mean positive prompt) - cos(image, mean "
            "negative prompt))", "classes": prompts}


def run_zeroshot(folder: str | Path, prompts_file: str | Path, out: str | Path, valid_table: str | Path | None = None,
                 valid_split: str | None = None, images_root: str | Path | None = None,
                 threshold_method: str = "f1", batch_size: int = 32, show_progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """A model whose every class is scored from prompts (``cxrkit zeroshot``); thresholds
    (and a report) from ``valid_table`` where it has labels for them, else 0.5."""
    from ..artifact import ModelMeta, load_model, save_model
    from ..labels import subsets_for
    from ..models import build_model
    from ..models.clip import clip_preprocessing, read_prompts, zero_shot_rows
    from ..utils import check_output_dir
    from .features import extract_features, set_head_rows
    from .pipeline import _headline, _scores, _thresholds

    t0 = time.time()
    folder = Path(folder).expanduser()
    prompts = read_prompts(prompts_file)
    model_cfg = clip_model_config(folder)
    out = check_output_dir(out, "zeroshot", [folder], overwrite)
    classes = list(prompts)
    net = build_model(model_cfg, len(classes))
    w, b = zero_shot_rows(folder, prompts)
    set_head_rows(net, w.numpy(), b.numpy())
    meta = ModelMeta(classes=classes, preprocessing=clip_preprocessing(folder), model=model_cfg,
                     thresholds=[0.5] * len(classes), name=f"{folder.name}+zero-shot", label_space=None,
                     threshold_method=threshold_method)
    meta.extra = {"zero_shot": zero_shot_record(folder, prompts)}
    summary: dict[str, Any] = {"model": str(out), "classes": classes, "valid": None}
    if valid_table is not None:
        with tempfile.TemporaryDirectory() as td:
            save_model(Path(td) / "m", net, meta)
            valid = extract_features(load_model(Path(td) / "m"), valid_table, split=valid_split, role="valid",
                                     images_root=images_root, batch_size=batch_size, show_progress=show_progress)
        wn, bn = w.numpy(), b.numpy()
        meta.thresholds = _thresholds(valid, wn, bn, threshold_method)
        scores = _scores(valid, wn, bn, meta.thresholds, subsets_for(classes, None))
        meta.metrics = {"zero_shot": {"valid": _headline(scores)}}
        summary["valid"] = _headline(scores)
        summary["n_valid"] = len(valid)
        summary["per_class_auc"] = {c["name"]: c.get("auc") for c in scores.get("classes", [])}
    summary["seconds"] = round(time.time() - t0, 1)
    write_head_model(out, net, meta, "zeroshot", {**summary, "prompts": prompts})
    return summary


def write_head_model(out: str | Path, net: Any, meta: Any, kind: str, report: dict[str, Any]) -> None:
    """A model fitted on frozen features (``probe``, ``zeroshot``) with its report in
    ``kind/summary.json``: staged beside ``out`` and renamed into place, so a failure
    leaves ``out`` as it was."""
    from ..artifact import write_model_files
    from ..utils import mark_output, staged_dir, write_json

    with staged_dir(out) as tmp:
        write_model_files(tmp, net, meta)
        (tmp / kind).mkdir()
        write_json(tmp / kind / "summary.json", report)
        mark_output(tmp, kind)


def add_zero_shot_rows(model_cfg: dict[str, Any], classes: list[str], w: np.ndarray, b: np.ndarray,
                       info: list[dict[str, Any]], prompts: dict[str, dict[str, list[str]]]
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """``probe --zero-shot``: rows from prompts for the prompt classes that have no positive
    training film (classes the training table lacks, or knows only negatives of); a class
    with training positives keeps its fitted row. Returns (W, b, the zero-shot record, None
    when no prompt class lacks training positives)."""
    from ..models.clip import zero_shot_rows

    folder = clip_folder_of(model_cfg)
    trained = {r["class"]: r for r in info}
    use = {c: p for c, p in prompts.items() if c in classes and not (trained.get(c) or {}).get("n_train_pos")}
    kept = [c for c in prompts if c not in use]
    if kept:
        log.info("zero-shot prompts ignored for %d class(es) with training positives (their fitted rows stay): %s",
                 len(kept), ", ".join(kept))
    if not use:
        log.warning("every class given prompts has positive training films: all keep their fitted rows, "
                    "none is scored zero-shot")
        return w, b, None
    zw, zb = zero_shot_rows(folder, use)
    w, b = w.copy(), b.copy()
    for k, c in enumerate(use):
        j = classes.index(c)
        w[j], b[j] = zw[k].numpy(), zb[k].numpy()
        trained.setdefault(c, {"class": c})
        trained[c].update(note="zero-shot (prompts)", C=None)
    return w, b, zero_shot_record(folder, use)
