"""``cxrkit train``, ``evaluate`` and ``calibrate``: make a model, score it, calibrate it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import CxrkitError
from ._common import app, console, err_console, _ON_INTERRUPT, _quote_argv, _device, _first_table_image


@app.command("train", context_settings={"allow_extra_args": False})
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Config overrides key.sub=value, e.g. train.epochs=3 optim.lr=3e-4.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last checkpoint.")] = False,
    stop_after_epochs: Annotated[Optional[int], typer.Option("--stop-after-epochs", min=1, help="Stop after this many epochs of this invocation (continue later with --resume).")] = None,
) -> None:
    """Train a model from a YAML config into a run folder.

    The run folder gets the resolved config, per-epoch metrics (JSON/CSV), plots, a
    resumable checkpoint and the best model as RUN_DIR/model. Under torchrun it trains with
    DistributedDataParallel.

    Example: cxrkit train configs/nih_hires.yaml --out runs/nih_hires train.epochs=3"""
    from ..train.config import load_config
    from ..train.trainer import fit

    ovs = list(overrides or [])
    if resume and out is not None and (out / "config.yaml").is_file():
        cfg = load_config(out / "config.yaml", ovs)
    else:
        cfg = load_config(config, ovs)
    run_dir = out or Path("runs") / cfg.name
    for which, ref in (("train", cfg.data.train), ("valid", cfg.data.valid)):
        if not Path(ref.table).exists():
            raise CxrkitError(f"{ref.table}: file not found (data.{which}.table of {config}); put the data there, "
                              f"set CXRKIT_DATA to the folder holding it when the config says ${{CXRKIT_DATA...}}, "
                              f"or give data.{which}.table=PATH")

    def stopped() -> str:
        import json as _json

        try:
            done = _json.loads((run_dir / "checkpoint" / "state.json").read_text()).get("epoch", 0)
        except (OSError, ValueError):
            done = 0
        cmd = _quote_argv(["--out", str(run_dir), "--resume"] if out is None else ["--resume"])
        return (f"interrupted: training stopped after {done} complete epoch(s) of {cfg.train.epochs} in {run_dir}; "
                f"continue with: {cmd}")

    _ON_INTERRUPT.append(stopped)
    res = fit(cfg, run_dir, resume=resume, stop_after_epochs=stop_after_epochs, console=console)
    if res.completed:
        b = res.best_metrics
        console.print(f"[bold]done[/bold]: best epoch {res.best_epoch}, valid mAUC {b.get('mAUC')}, "
                      f"mAP {b.get('mAP')}; model in {res.model_dir}")


def _print_eval(summary: dict) -> None:
    tab = Table(title=f"{summary.get('table')} ({summary['n_samples']} images)")
    for col in ("class", "AUC", "AP", "F1", "threshold", "ECE", "Brier", "pos", "neg"):
        tab.add_column(col, justify="left" if col == "class" else "right")

    def f(v: object) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for c in summary["classes"]:
        tab.add_row(c["name"], f(c["auc"]), f(c["ap"]), f(c["f1"]), f(c["threshold"]), f(c.get("ece")), f(c.get("brier")),
                    str(c["n_pos"]), str(c["n_neg"]))
    console.print(tab)
    console.print(f"mAUC {f(summary['mAUC'])}   mAP {f(summary['mAP'])}   mF1 {f(summary['mF1'])}")
    cal = summary.get("calibration") or {}
    if cal:
        console.print("   ".join(f"mean {k.upper()} {f(cal.get('mean_' + k))}" for k in ("ece", "ace", "mce", "brier"))
                      + f"   ({summary.get('calibrated') or 'uncalibrated'} probabilities)")
    console.print("   ".join(f"{k} {f(summary.get(k))}" for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")))
    for name, sub in (summary.get("subsets") or {}).items():
        console.print(f"{name}: mAUC {f(sub.get('mAUC'))}  mAP {f(sub.get('mAP'))}")
    groups = summary.get("groups") or {}
    hmt = {g: groups[g] for g in ("head", "medium", "tail") if g in groups}
    if hmt:
        console.print("  ".join(f"{g}: mAUC {f(v.get('mAUC'))}" for g, v in hmt.items()))
    fg = {g: groups[g] for g in ("G1", "G2", "G3", "G4", "G5") if groups.get(g)}
    if fg:
        console.print("  ".join(f"{g}: mAP {f(v.get('mAP'))}" for g, v in fg.items())
                      + f"   (classes in {len(fg)} groups by known labels, G1 fewest)")
    elif summary.get("groups_note"):
        console.print(summary["groups_note"])
    for w in summary.get("warnings", []):
        err_console.print(f"warning: {w}", markup=False, highlight=False)
    if summary.get("n_failed"):
        err_console.print(f"warning: {summary['n_failed']} image(s) missing or unreadable were left out", markup=False)


@app.command("evaluate")
def evaluate(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    table: Annotated[Path, typer.Argument(help="Labelled table (any supported format).")],
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the table's image paths are relative to.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON here.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Table format (default: detect).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Only rows of this split (split column value or .txt id list).")] = None,
    uncertain: Annotated[str, typer.Option("--uncertain", help="Score uncertain (-1) labels as: ignore, ones or zeros.")] = "ignore",
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation: none, flip, seed000, seed000+flip.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Score per study: max, mean or view-weighted.")] = None,
    lateral_weight: Annotated[float, typer.Option("--lateral-weight", help="view-weighted: weight of lateral views.")] = 0.5,
    engine: Annotated[str, typer.Option("--engine", help="auto (with an up-to-date ONNX export: openvino on Intel CPUs when installed, else onnx; without one: torch), torch, onnx (onnxruntime) or openvino (both export on first use).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (int8 / bf16 only on CPUs with VNNI / AMX / AVX-512 BF16 units), fp32, int8 (onnx, after export --int8) or bf16 (torch, openvino).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass (evaluation: 32, twice predict's 16, since no decoded batch is kept).")] = 32,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Image-decoding worker processes.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    corrupt: Annotated[Optional[list[str]], typer.Option("--corrupt", help="Also score with this corruption applied to each decoded image (repeatable): blur, salt-pepper, speckle, optionally with parameters, e.g. blur:sigma=0.02.")] = None,
    corrupt_seed: Annotated[int, typer.Option("--corrupt-seed", help="Seed of the corruption noise; the same seed gives the same pixels.")] = 0,
    tracking: Annotated[Optional[str], typer.Option("--tracking", help="Log the scores: mlflow[:URI] or tensorboard[:DIR] (default: none).")] = None,
) -> None:
    """Score a saved model or ensemble on a labelled table: per-class AUC / AP / F1 and their means.

    With --corrupt, the same images are scored again under each corruption (seed 004's
    robustness test) and the clean and corrupted scores are reported side by side.

    Example: cxrkit evaluate runs/nih_hires/model ../shared/data/nih_hires/labels.csv --split valid --json eval.json"""
    from ..data.corrupt import parse_corruption
    from ..inference.ensemble import load_predictor
    from ..inference.evaluate import evaluate_table
    from ..utils import write_json

    corruptions = [parse_corruption(c, corrupt_seed) for c in corrupt or []]  # checked before any work
    from ..tracking import TrackingConfig

    track = TrackingConfig.parse(tracking)
    pred = load_predictor(model, engine=engine, device=_device(device), precision=precision)
    summary = evaluate_table(pred, table, images_root=images_root, format=format, split=split, batch_size=batch_size,
                             workers=workers, tta=tta, uncertain=uncertain, study=study, lateral_weight=lateral_weight,
                             corruptions=corruptions, return_scores=True)
    summary["_reliability"] = (summary.pop("_targets"), summary.pop("_scores"))
    _print_eval(summary)
    if summary.get("corruptions"):
        tab = Table(title="robustness: clean vs corrupted (same images)")
        for col in ("corruption", "mAUC clean", "mAUC corrupted", "mAP clean", "mAP corrupted"):
            tab.add_column(col, justify="left" if col == "corruption" else "right")

        def f(v: object) -> str:
            return "-" if v is None else f"{v:.4f}"

        for label, c in summary["corruptions"].items():
            tab.add_row(label, f(c["clean_mAUC"]), f(c["mAUC"]), f(c["clean_mAP"]), f(c["mAP"]))
        console.print(tab)
        if json_out:  # one film under each corruption, beside the JSON
            from ..report import plot_corruptions

            first = next(p for p in _first_table_image(table, images_root, format))
            sheet = json_out.with_name(json_out.stem + ".corruptions.png")
            plot_corruptions(pred.preprocessings[0].read(first), corruptions, sheet, key=str(first),
                             title=f"{first.name}: what --corrupt did")
            console.print(f"wrote {sheet}")
    reliability = summary.pop("_reliability")
    if json_out:
        write_json(json_out, summary)
        console.print(f"wrote {json_out}")
        if reliability is not None:
            from ..inference.calibration import plot_reliability

            png = json_out.with_name(json_out.stem + ".reliability.png")
            t, p = reliability
            plot_reliability(t, {"model": p}, png, title=f"Reliability: {Path(model).name} on {Path(table).name}")
            console.print(f"wrote {png}")
    if track.backend != "none":
        from ..tracking import make_tracker

        tr = make_tracker(track, f"evaluate-{Path(model).name}", json_out.parent if json_out else Path.cwd())
        tr.log_params({"command": "evaluate", "model": str(model), "table": str(table), "split": split, "tta": tta,
                       "study": study, "uncertain": uncertain})
        tr.log_metrics({k: v for k, v in summary.items() if k in ("mAUC", "mAP", "mF1", "CF1", "OF1")})
        tr.log_table("evaluation", {k: v for k, v in summary.items() if not k.startswith("_")})
        if json_out:
            tr.log_artifact(json_out)
        tr.close()


@app.command("calibrate")
def calibrate(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    table: Annotated[Path, typer.Argument(help="Labelled table to fit on (validation films, never the test set).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the calibrated model (a copy; the input stays as it is).")],
    method: Annotated[str, typer.Option("--method", help="temperature, platt, isotonic, or none (only --operating-point; none also removes a calibration).")] = "temperature",
    operating_point: Annotated[Optional[str], typer.Option("--operating-point", help="Per class threshold by target: sensitivity=0.90, specificity=0.95, f1 or youden (default: the thresholds keep their calls).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Only rows of this split of the table (e.g. valid).")] = None,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of the table's images kept out of the fit, to measure before / after on (0: measure on the fitted images).")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the holdout draw.")] = 0,
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the table's image paths are relative to.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Table format (default: detect).")] = None,
    uncertain: Annotated[str, typer.Option("--uncertain", help="Uncertain (-1) labels in the fit: ignore, ones or zeros.")] = "ignore",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Image-decoding worker processes.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even if it is not an earlier calibrate output.")] = False,
) -> None:
    """Calibrate a model's probabilities per class and choose its operating points.

    Fits on the table's known labels (less --holdout of its images), prints ECE / ACE / MCE /
    Brier / mAUC before and after on the held-out images, and writes a copy of the model
    carrying the calibration, the thresholds and (with --operating-point) the sensitivity and
    specificity reached with 95 % intervals. predict, evaluate, ensemble, export, the MONAI
    bundle, the container and the PACS node all apply it.

    Example: cxrkit calibrate runs/nih_hires/model ../shared/data/nih_hires/labels.csv --split valid --method platt --operating-point sensitivity=0.90 --out runs/nih_hires/model-cal"""
    from ..inference.calibrate import run_calibrate

    r = run_calibrate(model, table, out, method=method, operating_point=operating_point, split=split,
                      images_root=images_root, format=format, holdout=holdout, seed=seed, uncertain=uncertain,
                      batch_size=batch_size, workers=workers, overwrite=overwrite)
    tab = Table(title=f"{'held-out' if r['check_is_holdout'] else 'fitted (in-sample)'} images: "
                      f"{r['images_check']} (fitted on {r['images_fit']})")
    for col in ("", "mean ECE", "mean ACE", "mean MCE", "mean Brier", "mAUC"):
        tab.add_column(col, justify="right")

    def f(v: object) -> str:
        return "-" if v is None else f"{v:.4f}"

    for k in ("before", "after"):
        b = r[k]
        tab.add_row(k, f(b["mean_ece"]), f(b["mean_ace"]), f(b["mean_mce"]), f(b["mean_brier"]), f(b["mAUC"]))
    console.print(tab)
    chk = r.get("operating_point_check")
    if chk:
        t2 = Table(title=f"operating point {r['operating_point']} on the held-out images")
        for col in ("class", "threshold", "sensitivity (95% CI)", "specificity (95% CI)", "pos", "neg"):
            t2.add_column(col, justify="left" if col == "class" else "right")

        def ci(v: object, lo_hi: list) -> str:
            return "-" if v is None else f"{v:.3f} ({lo_hi[0]:.3f}-{lo_hi[1]:.3f})"

        for c, v in chk.items():
            t2.add_row(c, f"{v['threshold']:.4f}", ci(v["sensitivity"], v["sensitivity_ci95"]),
                       ci(v["specificity"], v["specificity_ci95"]), str(v["n_positive"]), str(v["n_negative"]))
        console.print(t2)
    console.print(f"wrote {r['out']} (report and reliability diagram in {Path(r['out']) / 'calibration'})")
