"""``cxrkit cft`` and ``cft-merge``: Category-wise Fine-Tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import CxrkitError
from ._common import app, console, _ON_INTERRUPT, _quote_argv, _parse_shard


def _parse_sets(sets: list[str] | None) -> tuple[dict, dict]:
    """--set ga.generations=100 --set bp.lr=1e-3 -> (ga overrides, bp overrides)."""
    import yaml

    ga: dict = {}
    bp: dict = {}
    for item in sets or []:
        if "=" not in item or not item.split("=", 1)[0].startswith(("ga.", "bp.")):
            raise CxrkitError(f"--set {item!r}: use ga.<option>=value or bp.<option>=value")
        key, value = item.split("=", 1)
        target = ga if key.startswith("ga.") else bp
        target[key[3:]] = yaml.safe_load(value)
    return ga, bp


@app.command("probe")
def probe(
    source: Annotated[Path, typer.Argument(help="A saved model folder or a training config (.yaml) naming the backbone (e.g. rad-dino with its weights folder).")],
    train_table: Annotated[Path, typer.Argument(help="Training table (the heads are fitted on it).")],
    valid_table: Annotated[Path, typer.Argument(help="Validation table (each head's regularisation and the thresholds are chosen on it).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    policy: Annotated[str, typer.Option("--policy", help="Uncertain training labels: ignore, ones or zeros.")] = "ignore",
    c_grid: Annotated[str, typer.Option("--c", help="Inverse L2 regularisation strengths tried per class, comma-separated.")] = "0.01,0.1,1",
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the tables' image paths are relative to.")] = None,
    train_split: Annotated[Optional[str], typer.Option("--train-split", help="Split of the training table.")] = None,
    valid_split: Annotated[Optional[str], typer.Option("--valid-split", help="Split of the validation table.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    cft_method: Annotated[Optional[str], typer.Option("--cft", help="Then Category-wise Fine-Tuning of the heads' rows on the same features: bp-asl, bp-wmw, bp-aucm, ga-auc, ga-ap or greedy (the model in --out is the fine-tuned one, with probe/ and cft/ reports).")] = None,
    zero_shot: Annotated[Optional[Path], typer.Option("--zero-shot", help="Prompts file (YAML: class -> positive / negative prompts): its classes without positive training films are scored from text (a biomedclip / open_clip backbone); classes the training table lacks are added.")] = None,
) -> None:
    """Linear heads on frozen features: extract the backbone's features once (cached), fit
    one logistic regression per class on its known training labels, choose its
    regularisation and threshold on validation, and save an ordinary model (then
    `cxrkit cft` fine-tunes its rows further).

    Example: cxrkit probe configs/foundation/rad_dino_probe.yaml labels.csv labels.csv --train-split train --valid-split valid --out runs/probe"""
    from ..cft.probe import run_probe, run_probe_cft

    try:
        grid = tuple(float(v) for v in c_grid.split(",") if v.strip())
    except ValueError:
        raise CxrkitError(f"--c must be numbers separated by commas (got {c_grid!r})") from None
    if cft_method:
        res = run_probe_cft(source, train_table, valid_table, out, cft_method, policy=policy,
                            train_split=train_split, valid_split=valid_split, images_root=images_root,
                            overwrite=overwrite, console=console, c_grid=grid, zero_shot=zero_shot)
    else:
        res = run_probe(source, train_table, valid_table, out, policy=policy, train_split=train_split,
                        valid_split=valid_split, images_root=images_root, c_grid=grid, overwrite=overwrite,
                        zero_shot=zero_shot)
    v = res["valid"]
    if res.get("zero_shot"):
        console.print(f"zero-shot from prompts: {', '.join(res['zero_shot'])}")
    console.print(f"probe: {res['n_train']} training and {res['n_valid']} validation films, Z = {res['feature_dim']}; "
                  f"valid mAUC {v['mAUC']:.4f}, mAP {v['mAP']:.4f}; {res['seconds']:.0f} s; model in {out}")
    if cft_method:  # the heads' rows fine-tuned: before / after per category
        _print_cft(out)


@app.command("zeroshot")
def zeroshot(
    clip_folder: Annotated[Path, typer.Argument(help="open_clip folder (open_clip_config.json + open_clip_pytorch_model.bin or open_clip_model.safetensors), e.g. BiomedCLIP.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="YAML / JSON: class -> list of positive prompts, or -> {positive: [...], negative: [...]}, or a list of class names (templates).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    valid_table: Annotated[Optional[Path], typer.Option("--valid", help="Labelled table: thresholds (F1) and a report for the classes it has labels for (else 0.5).")] = None,
    valid_split: Annotated[Optional[str], typer.Option("--valid-split", help="Split of the validation table.")] = None,
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the table's image paths are relative to.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """A model whose classes are scored from text prompts alone (no training film): each
    class logit is scale x (cosine to its positive prompts - cosine to its negative ones) on
    the CLIP image embedding, stored as an ordinary head row, so predict, evaluate, export,
    the container and the PACS node use it unchanged.

    Example: cxrkit zeroshot weights/biomedclip --prompts prompts.yaml --out runs/zeroshot"""
    from ..cft.zeroshot import run_zeroshot

    res = run_zeroshot(clip_folder, prompts, out, valid_table=valid_table, valid_split=valid_split,
                       images_root=images_root, overwrite=overwrite)
    line = f"zero-shot model with {len(res['classes'])} class(es) from prompts: {', '.join(res['classes'][:8])}"
    if res["valid"] is not None and res["valid"].get("mAUC") is not None:
        line += f"; valid mAUC {res['valid']['mAUC']:.4f} on {res['n_valid']} films"
    console.print(f"{line}; model in {out}")


@app.command("cft")
def cft(
    model: Annotated[Path, typer.Argument(help="Saved model folder.")],
    train_table: Annotated[Path, typer.Argument(help="Training table (the labels CFT fine-tunes on).")],
    valid_table: Annotated[Path, typer.Argument(help="Validation table (early stopping and the per-category choice).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder (or a part folder with --shard).")],
    method: Annotated[str, typer.Option("--method", help="bp-asl, bp-wmw, bp-aucm, ga-auc, ga-ap, greedy or ft-bp-asl (ablation).")] = "ga-auc",
    preset: Annotated[str, typer.Option("--preset", help="chexpert (AUC; 30 individuals, 500 generations) or coco (AP; 50 individuals, 5,000 generations).")] = "chexpert",
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the tables' image paths are relative to.")] = None,
    policies: Annotated[Optional[str], typer.Option("--policies", help="Uncertainty policies for training labels, e.g. ignore,ones,zeros (default: ignore; greedy: all three).")] = None,
    candidates: Annotated[Optional[str], typer.Option("--candidates", help="greedy: row methods compared (default bp-asl,ga-<metric>).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes fine-tuning categories in parallel.")] = 1,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: only categories c with c mod n = i; writes a part for cxrkit cft-merge.")] = None,
    train_split: Annotated[Optional[str], typer.Option("--train-split", help="Split of the training table (split column value or .txt id list).")] = None,
    valid_split: Annotated[Optional[str], typer.Option("--valid-split", help="Split of the validation table (split column value or .txt id list).")] = None,
    test_table: Annotated[Optional[Path], typer.Option("--test", help="Held-out table: scored before / after, never used for choices.")] = None,
    test_split: Annotated[Optional[str], typer.Option("--test-split", help="Split of the --test table.")] = None,
    holdout: Annotated[Optional[float], typer.Option("--holdout", help="Without --test: hold out this fraction of the validation patients for reporting.")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Only these categories (comma-separated).")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="auc or ap (default: by method / preset).")] = None,
    min_val_positives: Annotated[int, typer.Option("--min-val-positives", min=0, help="Keep a category's row when its validation labels have fewer positives (or negatives) than this.")] = 5,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="Override a GA / BP option, e.g. --set ga.generations=200 --set bp.lr=1e-3.")] = None,
    feature_dtype: Annotated[str, typer.Option("--feature-dtype", help="float32 or float16 feature cache.")] = "float32",
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Feature cache folder (default ~/.cache/cxrkit/features).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the GA / BP runs and of --holdout; the same seed gives the same rows.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder that another command (or you) wrote.")] = False,
    tracking: Annotated[Optional[str], typer.Option("--tracking", help="Log the CFT report: mlflow[:URI] or tensorboard[:DIR] (default: none).")] = None,
) -> None:
    """Category-wise Fine-Tuning: fine-tune each category's head row on its known labels.

    Prints a per-category before / after table and writes the new model (same inference
    cost) with MODEL_OUT/cft/report.csv, report.json, gains.png and curves.png.

    Example: cxrkit cft runs/demo/model train.csv valid.csv --out runs/demo/model-cft --method greedy"""
    from ..cft.pipeline import run_cft
    from ..cft.runner import CFTConfig

    ga, bp = _parse_sets(sets)
    from ..tracking import TrackingConfig

    track = TrackingConfig.parse(tracking)  # checked before any work
    _ON_INTERRUPT.append(lambda: f"interrupted: CFT stopped before writing {out} (nothing there was changed); "
                                 f"the feature cache is kept, so rerunning is quick: {_quote_argv()}")
    pols = [p.strip() for p in policies.split(",")] if policies else (["ignore", "ones", "zeros"] if method == "greedy" else ["ignore"])
    cfg = CFTConfig(method=method, preset=preset, policies=pols,
                    candidates=[c.strip() for c in candidates.split(",")] if candidates else None,
                    metric=metric, ga=ga, bp=bp, workers=workers, shard=_parse_shard(shard),
                    classes=[c.strip() for c in classes.split(",")] if classes else None, seed=seed,
                    min_val_positives=min_val_positives).validate()
    res = run_cft(model, train_table, valid_table, out, cfg, images_root=images_root, train_split=train_split,
                  valid_split=valid_split, test_table=test_table, test_split=test_split, holdout=holdout,
                  feature_dtype=feature_dtype, cache_dir=cache_dir, console=console, overwrite=overwrite)
    if "part" in res or "rank" in res:
        return
    _print_cft(out)
    if track.backend != "none":
        import json as _json

        from ..tracking import flatten, make_tracker

        rep = _json.loads((out / "cft" / "report.json").read_text())
        tr = make_tracker(track, f"cft-{Path(out).name}", Path(out).parent)
        tr.log_params({"command": "cft", "model": str(model), **cfg.to_dict()})
        tr.log_metrics(flatten({k: v for k, v in rep.get("metrics", {}).items() if isinstance(v, dict)}))
        tr.log_table("cft_report", rep)
        tr.log_artifact(out / "cft")
        tr.close()


def _print_cft(out: Path) -> None:
    import json

    rep = json.loads((out / "cft" / "report.json").read_text())
    m = rep["metric"].upper()
    tab = Table(title=f"CFT ({m}) - {out}")
    for col in ("class", "chosen", f"valid {m} before", "after", f"held-out {m} before", "after "):
        tab.add_column(col, justify="left" if col in ("class", "chosen") else "right")

    def f(v: object) -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.4f}"

    for c in rep["categories"]:
        tab.add_row(c["name"], c["chosen"], f(c["val_before"]), f(c["val_after"]), f(c["test_before"]),
                    f(c["test_after"]))
    console.print(tab)
    for split in ("valid", "test"):
        b, a = rep["metrics"].get(f"{split}_before"), rep["metrics"].get(f"{split}_after")
        if b and a:
            comp = ""
            if (b.get("subsets") or {}).get("competition"):
                comp = (f"; competition-5 mAUC {f(b['subsets']['competition']['mAUC'])} -> "
                        f"{f(a['subsets']['competition']['mAUC'])}")
            console.print(f"{'held-out' if split == 'test' else 'valid'}: mAUC {f(b['mAUC'])} -> {f(a['mAUC'])}, "
                          f"mAP {f(b['mAP'])} -> {f(a['mAP'])}{comp}")
    console.print(f"model written to {out}; report and plots in {out / 'cft'}")


@app.command("cft-merge")
def cft_merge(
    model: Annotated[Path, typer.Argument(help="The model the parts were made from.")],
    parts: Annotated[list[Path], typer.Argument(help="Part folders written by cxrkit cft --shard i/n.")],
    valid_table: Annotated[Path, typer.Option("--valid", help="Validation table (thresholds, before / after).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the tables' image paths are relative to.")] = None,
    valid_split: Annotated[Optional[str], typer.Option("--valid-split", help="Split of the validation table (split column value or .txt id list).")] = None,
    test_table: Annotated[Optional[Path], typer.Option("--test", help="Held-out table: scored before / after, never used for choices.")] = None,
    test_split: Annotated[Optional[str], typer.Option("--test-split", help="Split of the --test table.")] = None,
    holdout: Annotated[Optional[float], typer.Option("--holdout", help="Without --test: hold out this fraction of the validation patients (as cft did).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder that another command (or you) wrote.")] = False,
) -> None:
    """Combine the parts of a sharded CFT run into the fine-tuned model.

    Example: cxrkit cft-merge runs/m parts/0 parts/1 --valid valid.csv --out runs/m-cft"""
    from ..cft.pipeline import merge_parts

    merge_parts(model, parts, valid_table, out, images_root=images_root, valid_split=valid_split,
                test_table=test_table, test_split=test_split, holdout=holdout, console=console, overwrite=overwrite)
    _print_cft(out)
