"""The ``cxrkit`` command line (typer). Thin: every command calls the library.

User mistakes (missing files, bad tables, unreadable images, invalid options) end with a
one-line ``error: ...`` on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import CxrkitError

app = typer.Typer(
    name="cxrkit",
    help="cxrkit: long-tailed, multi-label chest X-ray classification with uncertain and missing labels.\n\n"
    "Train models, calibrate them category by category (CFT), ensemble them, ship them as a "
    "leaderboard container and run batch inference on hospital DICOM.\n\n"
    "-v / --verbose and -q / --quiet may come before or after the command (cxrkit predict ... -v).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Label tables and images: demo data, inspect, render, partial labels.", no_args_is_help=True)
app.add_typer(data_app, name="data")
weights_app = typer.Typer(help="Pretrained weight files: convert third-party state dicts for timm.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
pacs_app = typer.Typer(help="cxrkit as a DICOM node: receive studies from a PACS, send results back as SR.", no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("cxrkit")


#: set by long commands: returns the one line printed on Ctrl-C (where the run stopped, how to resume)
_ON_INTERRUPT: list[Any] = []


def _quote_argv(extra: list[str] | None = None, drop: tuple[str, ...] = ()) -> str:
    import shlex

    args = [a for a in sys.argv[1:] if a not in drop]
    return "cxrkit " + " ".join(shlex.quote(a) for a in args + [e for e in (extra or []) if e not in args])


def _version(value: bool) -> None:
    if value:
        console.print(f"cxrkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log info and debug messages to the console.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for h in logging.getLogger().handlers:
        h.setLevel(level)  # the console shows warnings; run folders keep their own INFO logs
    for noisy in ("pydicom", "PIL", "matplotlib", "timm", "monai", "pylibjpeg", "openjpeg", "libjpeg", "rle"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if quiet:
        os.environ["CXRKIT_QUIET"] = "1"


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


@data_app.command("demo")
def data_demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic dataset into.")],
    n_studies: Annotated[int, typer.Option("--n-studies", min=10, help="Number of studies (1-2 views each). 400 here, a quick dataset; `cxrkit demo` uses 600 so its model has enough to learn from.")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same files.")] = 0,
    size: Annotated[int, typer.Option("--size", min=32, max=1024, help="Image size in pixels.")] = 128,
) -> None:
    """Write the SYNTHETIC demo dataset in CheXpert layout.

    train.csv has uncertain (-1.0) and blank labels, valid.csv is fully labelled, the PNG
    images have the findings drawn in (enlarged heart, effusion meniscus, ...).

    Example: cxrkit data demo demo-data --n-studies 400"""
    from .data.demo import generate_demo

    if out_dir.exists() and not out_dir.is_dir():
        raise CxrkitError(f"{out_dir}: exists and is not a folder")
    d = generate_demo(out_dir, n_studies=n_studies, seed=seed, size=size)
    console.print(f"wrote synthetic demo data: {d.n_train_images} train, {d.n_valid_images} valid and "
                  f"{d.n_test_images} test images")
    console.print("  " + "\n  ".join(str(p) for p in (d.train_csv, d.valid_csv, d.test_csv) if p))


@data_app.command("demo-dicom")
def data_demo_dicom(
    data_dir: Annotated[Path, typer.Argument(help="A demo dataset: the folder `cxrkit data demo` wrote, or demo-run/data.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the DICOM files (PATIENT/STUDY/VIEW.dcm).")],
    split: Annotated[str, typer.Option("--split", help="train, valid or test.")] = "test",
) -> None:
    """Write one split of the SYNTHETIC demo films as CR DICOM, one study per demo study.

    A hospital-like DICOM folder for trying predict --sr and pacs listen on a fresh machine
    (synthetic patients, no real person).

    Example: cxrkit data demo-dicom demo-run/data demo-run/dicom"""
    from .data.demo import demo_to_dicom

    if split not in ("train", "valid", "test"):
        raise CxrkitError(f"--split must be train, valid or test (got {split!r})")
    n, studies = demo_to_dicom(data_dir, out_dir, split)
    console.print(f"wrote {n} synthetic CR DICOM file(s) in {studies} studies to {out_dir}")


@data_app.command("inspect")
def data_inspect(
    table: Annotated[Path, typer.Argument(help="Label table: CheXpert / NIH / CXR-LT CSV, COCO JSON, Open Images CSV, generic CSV.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="chexpert, nih, cxr-lt, coco, openimages or generic (default: detect).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the counts as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a long-tail bar chart (PNG) here.")] = None,
    classes: Annotated[Optional[Path], typer.Option("--classes", help="Class list file (Open Images / generic tables).")] = None,
    head_min: Annotated[Optional[float], typer.Option("--head-min", help="Head classes have at least this many positives (default: terciles).")] = None,
    tail_max: Annotated[Optional[float], typer.Option("--tail-max", help="Tail classes have at most this many positives (default: terciles).")] = None,
) -> None:
    """Count positive / negative / uncertain / unknown labels per class.

    Also assigns head / medium / tail groups; writes JSON and a long-tail bar chart on request.

    Example: cxrkit data inspect ../shared/data/chexpert/train.csv.gz --plot dist.png"""
    from .data.tables import load_table, summarize
    from .report import plot_label_distribution
    from .utils import write_json

    t = load_table(table, format=format, classes=classes)
    s = summarize(t, head_min=head_min, tail_max=tail_max)
    tab = Table(title=f"{table} - {s['format']}, {s['n_images']:,} images"
                + (f", {s['n_studies']:,} studies" if "n_studies" in s else ""))
    for col in ("class", "positive", "negative", "uncertain", "unknown", "prev.", "group"):
        tab.add_column(col, justify="left" if col in ("class", "group") else "right")
    for c in s["classes"]:
        tab.add_row(c["name"], f"{c['positive']:,}", f"{c['negative']:,}", f"{c['uncertain']:,}",
                    f"{c['unknown']:,}", f"{c['prevalence']:.3f}", c["group"])
    console.print(tab)
    if "no_finding" in s:
        console.print(f"No Finding: {s['no_finding']:,} images")
    console.print(f"known labels: {100 * s['known_fraction']:.2f}%")
    if json_out:
        write_json(json_out, s)
        console.print(f"wrote {json_out}")
    if plot:
        plot_label_distribution(s, plot)
        console.print(f"wrote {plot}")


@data_app.command("render")
def data_render(
    image: Annotated[Path, typer.Argument(help="PNG / JPEG / DICOM file.")],
    out: Annotated[Path, typer.Argument(help="Output PNG (8-bit grey).")],
    size: Annotated[Optional[int], typer.Option("--size", min=8, max=4096, help="Model input size (default 224, or the model's).")] = None,
    resize: Annotated[Optional[str], typer.Option("--resize", help="stretch, letterbox or center-crop.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Use this saved model's preprocessing.")] = None,
) -> None:
    """Write an image as the model sees it, before normalisation, as 8-bit grey PNG.

    DICOM goes through the full pipeline first: modality LUT / rescale, VOI LUT or window,
    MONOCHROME1 inversion; then the resize to the model's input size.

    Example: cxrkit data render film.dcm seen.png --model runs/nih_hires/model"""
    import cv2

    from .data.preprocess import Preprocessing
    from .utils import atomic_write

    if model is not None:
        from .artifact import load_preprocessing

        pre = load_preprocessing(model)
        if size is not None or resize is not None:
            d = pre.to_dict()
            d["size"] = size if size is not None else d["size"]
            d["resize"] = resize or d["resize"]
            pre = Preprocessing.from_dict(d)
    else:
        pre = Preprocessing(size=size or 224, resize=resize or "stretch")
    if out.suffix.lower() != ".png":
        raise CxrkitError(f"{out}: output must be a .png file")
    img = pre.render(image)
    with atomic_write(out) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise CxrkitError(f"{out}: could not write PNG")
    h, w = img.shape
    console.print(f"wrote {out} ({w}x{h}, 8-bit grey)")


@data_app.command("partial")
def data_partial(
    table: Annotated[Path, typer.Argument(help="A fully (or partly) labelled table, any supported format.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV (cxrkit generic format).")],
    known: Annotated[float, typer.Option("--known", min=0.0, max=1.0, help="Proportion of labels kept per image (e.g. 0.1).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same table -> the same known labels.")] = 0,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Input format (default: detect).")] = None,
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Where the input's images are (default: found next to the table).")] = None,
) -> None:
    """Write a partially labelled copy: keep --known of each image's labels, the rest unknown.

    Simulates the partial-label setting of the CFT paper (10 %..90 % known) reproducibly; the
    copy's image paths are relative to its own folder.

    Example: cxrkit data partial coco/instances_train2014.json --known 0.1 --seed 0 --out coco10.csv"""
    from .data.partial import write_partial_table
    from .data.tables import load_table

    if not 0 < known <= 1:
        raise CxrkitError("--known must be in (0, 1]")
    t = load_table(table, format=format)
    write_partial_table(t, out, known, seed, images_root)
    kept = max(1, round(known * len(t.classes)))
    console.print(f"wrote {out}: {len(t)} images, {kept} of {len(t.classes)} labels known per image (seed {seed})")


@data_app.command("nih-subset")
def data_nih_subset(
    files: Annotated[Path, typer.Argument(help="The subset's file list (Image Index, split), e.g. configs/nih_hires.files.csv.")],
    release: Annotated[Path, typer.Argument(help="The unpacked official NIH ChestX-ray14 release (images_*/images/*.png and Data_Entry_2017_v2020.csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write labels.csv and images/ into.")],
    table: Annotated[Optional[Path], typer.Option("--table", help="The official label table, when it is not in RELEASE.")] = None,
    size: Annotated[int, typer.Option("--size", min=16, max=1024, help="Film size in pixels (nih_hires: 256, nih1000: 64).")] = 256,
) -> None:
    """Make a config's NIH film subset from the official ChestX-ray14 release.

    Writes OUT/labels.csv (Image Index, split and the official labels of the listed films) and
    OUT/images/ (8-bit grey PNG, shrunk with Lanczos); films not in the release are listed in
    OUT/missing.csv. Rerunning redoes only what changed.

    Example: cxrkit data nih-subset configs/nih_hires.files.csv ~/ChestX-ray14 --out data/nih_hires"""
    from .data.nih import build_subset

    res = build_subset(files, release, out, table=table, size=size)
    console.print(f"wrote {res.labels}: {res.written + res.reused} film(s) in {out / 'images'} "
                  f"({res.written} new, {res.reused} already there)")
    if res.missing:
        err_console.print(f"warning: {len(res.missing)} listed film(s) are not in {release}; see {out / 'missing.csv'}",
                          markup=False, highlight=False)


# ---------------------------------------------------------------------------------------
# train / evaluate / predict
# ---------------------------------------------------------------------------------------


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
    from .train.config import load_config
    from .train.trainer import fit

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


def _device(device: str) -> Any:
    from .inference import resolve_device

    return resolve_device(device)


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
    engine: Annotated[str, typer.Option("--engine", help="auto (onnx when the model has an up-to-date ONNX export, else torch), torch, or onnx (onnxruntime; exported on first use).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (int8 / bf16 only on CPUs with VNNI / AMX units), fp32, int8 (onnx, after export --int8) or bf16 (torch).")] = "auto",
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
    from .data.corrupt import parse_corruption
    from .ensemble import load_predictor
    from .evaluate import evaluate_table
    from .utils import write_json

    corruptions = [parse_corruption(c, corrupt_seed) for c in corrupt or []]  # checked before any work
    from .tracking import TrackingConfig

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
            from .report import plot_corruptions

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
            from .calibration import plot_reliability

            png = json_out.with_name(json_out.stem + ".reliability.png")
            t, p = reliability
            plot_reliability(t, {"model": p}, png, title=f"Reliability: {Path(model).name} on {Path(table).name}")
            console.print(f"wrote {png}")
    if track.backend != "none":
        from .tracking import make_tracker

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
    from .calibration import run_calibrate

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


def _first_table_image(table: Path, images_root: Path | None, format: str | None) -> Any:
    from .data.tables import load_table, resolve_image_paths

    paths, exists = resolve_image_paths(load_table(table, format=format), images_root)
    return (Path(p) for p, ok in zip(paths, exists) if ok)


def _csv_list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip().upper() for v in value.split(",") if v.strip())


@app.command("predict")
def predict(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image / DICOM files, folders (searched recursively) or label tables.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV (one row per image).")] = Path("preds.csv"),
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="For table inputs: folder their paths are relative to.")] = None,
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation: none, flip, seed000, seed000+flip.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Also write <out>.studies.csv: one row per study, max, mean or view-weighted.")] = None,
    lateral_weight: Annotated[float, typer.Option("--lateral-weight", help="view-weighted: weight of lateral views.")] = 0.5,
    study_key: Annotated[str, typer.Option("--study-key", help="Files without study information (no DICOM StudyInstanceUID, no table study column): auto = each file is its own study; folder = the files of a folder are one study.")] = "auto",
    engine: Annotated[str, typer.Option("--engine", help="auto (onnx when the model has an up-to-date ONNX export, else torch), torch, or onnx (onnxruntime; exported on first use).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (int8 / bf16 only on CPUs with VNNI / AMX units), fp32, int8 (onnx, after export --int8) or bf16 (torch).")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue: skip inputs already in the output or failures file.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: only the inputs whose key hashes to i (split work across machines; the key is the path relative to the input folder, so mount points may differ).")] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", min=1, help="Refuse images declaring more pixels than this, from the header, before decoding (too_large; default 100000000).")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", min=1, help="Refuse images whose shorter side is below this many pixels (too_small; default 32).")] = None,
    min_range: Annotated[Optional[float], typer.Option("--min-range", min=0.0, max=1.0, help="Refuse blank / near-constant images whose intensity spread (0.5-99.5th percentile, 0..1) is below this (empty; default 0.02).")] = None,
    modalities: Annotated[Optional[str], typer.Option("--modalities", help="DICOM modalities to use (default CR,DX; empty = any).")] = None,
    body_parts: Annotated[Optional[str], typer.Option("--body-parts", help="DICOM BodyPartExamined values accepted when present (default CHEST,THORAX,...; empty = any).")] = None,
    views: Annotated[Optional[str], typer.Option("--views", help="Views accepted when known (default PA,AP,LATERAL,LL,RL; empty = any).")] = None,
    require_view: Annotated[bool, typer.Option("--require-view", help="Skip DICOM without a usable ViewPosition.")] = False,
    no_filter: Annotated[bool, typer.Option("--no-filter", help="Predict every readable DICOM, whatever its modality / body part / view.")] = False,
    sr: Annotated[Optional[Path], typer.Option("--sr", help="Also write one DICOM Structured Report (TID 1500, SNOMED CT coded) per study here (needs highdicom).")] = None,
    fhir: Annotated[Optional[Path], typer.Option("--fhir", help="Also write one FHIR R4 Bundle (DiagnosticReport + Observations + Device) per study here (needs fhir.resources).")] = None,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CSV of your labels' codes (label,scheme,code,meaning[,site_scheme,site_code,site_meaning]) for --sr / --fhir; wins over the shipped table.")] = None,
    explain_dir: Annotated[Optional[Path], typer.Option("--explain", help="Also write saliency maps here for each positive call (cxrkit explain; single models).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass; rows are flushed to disk after each batch.")] = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Decoding worker processes.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
) -> None:
    """Predict every image found in the inputs; one row per image, reasons for the rest.

    Rows carry the DICOM UIDs and view, model name and version, and per label the
    probability, threshold and call. Every input not used is in <out>.failures.csv with its
    reason. Rows are flushed as they come: an interrupted run continues with --resume.
    Exits non-zero only if nothing could be predicted.

    Example: cxrkit predict runs/nih_hires/model /mnt/pacs-export --out preds.csv --study max --sr sr/ --fhir fhir/"""
    from .data.images import set_limits
    from .ensemble import load_predictor
    from .predict import run_predict
    from .runtime import DicomFilter

    from .predict import check_predict_options

    check_predict_options(tta=tta, study=study, shard=_parse_shard(shard), lateral_weight=lateral_weight,
                          batch_size=batch_size, study_key=study_key)  # before the model is loaded or any image read
    _check_predict_outputs(model, out, sr, explain_dir, fhir, codes)
    set_limits(max_pixels=max_pixels, min_size=min_size, min_range=min_range)
    filt = DicomFilter(modalities=_csv_list(modalities, DicomFilter.modalities),
                       body_parts=_csv_list(body_parts, DicomFilter.body_parts),
                       views=_csv_list(views, DicomFilter.views), require_view=require_view, enabled=not no_filter)
    pred = load_predictor(model, engine=engine, device=_device(device), precision=precision)

    def stopped() -> str:
        n = 0
        try:
            with open(out, "rb") as f:
                n = max(0, sum(1 for _ in f) - 1)
        except OSError:
            pass
        return (f"interrupted: about {n} row(s) are in {out}; continue with: "
                f"{_quote_argv(['--resume'], drop=('--overwrite',))}")

    _ON_INTERRUPT.append(stopped)
    res = run_predict(pred, inputs, out, batch_size=batch_size, workers=workers, tta=tta, images_root=images_root,
                      dicom_filter=filt, resume=resume, overwrite=overwrite, shard=_parse_shard(shard), study=study,
                      lateral_weight=lateral_weight, sr_dir=sr, study_key=study_key, fhir_dir=fhir, codes_file=codes)
    msg = f"predicted {res['predicted']} image(s) -> {res['out']}"
    if res["already_done"]:
        msg += f" ({res['already_done']} already there)"
    if res["failed"]:
        msg += f"; {res['failed']} not used, see {res['failures']}"
    if res.get("studies"):
        msg += f"; per study: {res['studies']}"
    if res.get("sr"):
        msg += f"; structured reports: {res['sr']}"
    if res.get("fhir"):
        msg += f"; FHIR: {res['fhir']}"
    console.print(msg)
    if explain_dir is not None:
        from .explain import explain as run_explain
        from .predict import read_rows

        rows, probs = read_rows(out, pred.classes)
        calls = {r["path"]: [c for c in pred.classes if r.get(f"call:{c}") == "1"] for r in rows}
        calls = {p: c for p, c in calls.items() if c}
        ex = run_explain(model, list(calls), explain_dir, only_positive=calls, device=str(_device(device)))
        console.print(f"saliency maps: {ex['maps']} for the positive calls of {ex['images']} image(s) -> {explain_dir}")


def _check_predict_outputs(model: Path, out: Path, sr: Path | None, explain_dir: Path | None,
                           fhir: Path | None = None, codes: Path | None = None) -> None:
    """Everything the end of a predict run needs, checked before its first image: the optional
    packages of --sr / --explain and every output folder (a read-only --sr folder failed only
    after the whole run had been predicted)."""
    from .extras import require
    from .utils import check_writable_dir

    if sr is not None:
        require("sr", "--sr")
    if fhir is not None:
        require("fhir", "--fhir")
    if codes is not None:
        from .codes import check_code_file

        check_code_file(codes)
    if explain_dir is not None:
        require("explain", "--explain")
        if (Path(model) / "ensemble.json").is_file():
            raise CxrkitError("--explain needs a single model (explain an ensemble's members one by one)")
    check_writable_dir(out.parent, "--out")
    for folder, what in ((sr, "--sr"), (explain_dir, "--explain"), (fhir, "--fhir")):
        if folder is not None:
            check_writable_dir(folder, what)


def _check_node_outputs(fhir: bool, codes: Path | None) -> None:
    from .extras import require

    if fhir:
        require("fhir", "--fhir")
    if codes is not None:
        from .codes import check_code_file

        check_code_file(codes)


@app.command("ensemble")
def ensemble(
    models: Annotated[list[Path], typer.Argument(help="Saved model folders (each possibly CFT-tuned).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble folder to write.")],
    weights: Annotated[Optional[str], typer.Option("--weights", help="Comma-separated weights (default equal).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Name recorded in ensemble.json and every output row (default: ensemble).")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Classes (comma-separated) when members differ.")] = None,
    valid: Annotated[Optional[Path], typer.Option("--valid", help="Choose the ensemble's thresholds on this table.")] = None,
    valid_split: Annotated[Optional[str], typer.Option("--valid-split", help="Only rows of this split of --valid (split column value or .txt id list).")] = None,
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="Folder the --valid table's image paths are relative to.")] = None,
    tta: Annotated[Optional[str], typer.Option("--tta", help="TTA used when choosing thresholds on --valid.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder that another command (or you) wrote.")] = False,
) -> None:
    """Combine saved models into one ensemble (weighted mean of probabilities).

    Example: cxrkit ensemble runs/a/model runs/b/model --out runs/ens --valid valid.csv"""
    from .ensemble import build_ensemble

    w = [float(x) for x in weights.split(",")] if weights else None
    cl = [c.strip() for c in classes.split(",")] if classes else None
    build_ensemble(models, out, weights=w, name=name, classes=cl, valid_table=valid, images_root=images_root,
                   valid_split=valid_split, tta=tta, overwrite=overwrite)
    console.print(f"wrote ensemble of {len(models)} model(s) to {out}")
    if valid is not None:  # the validation scores its thresholds were chosen on
        import json as _json

        m = (_json.loads((out / "ensemble.json").read_text()).get("metrics") or {}).get("valid") or {}

        def f(v: object) -> str:
            return "-" if v is None else f"{v:.4f}"

        console.print(f"thresholds chosen on {valid}: valid mAUC {f(m.get('mAUC'))}, mAP {f(m.get('mAP'))}, "
                      f"mF1 {f(m.get('mF1'))}")


@app.command("export")
def export(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (model.onnx next to the weights).")] = False,
    deploy: Annotated[Optional[Path], typer.Option("--deploy", help="Also write a lean copy (JSON + ONNX, no PyTorch weights) here, e.g. for a container.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder that another command (or you) wrote.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx: static int8 quantisation calibrated on validation films (fast on CPUs with VNNI / AMX).")] = False,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="--int8: table of calibration films (default: the model's own validation table).")] = None,
    calibration_split: Annotated[Optional[str], typer.Option("--calibration-split", help="--int8: only this split of the calibration table.")] = None,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=1, help="--int8: films used for calibration (a seeded sample).")] = 128,
    calibration_method: Annotated[str, typer.Option("--calibration-method", help="--int8: percentile (99.999th), minmax or entropy.")] = "percentile",
    images_root: Annotated[Optional[Path], typer.Option("--images-root", help="--int8: folder the calibration table's paths are relative to.")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Write a MONAI Bundle here (configs/metadata.json, configs/inference.json, models/model.pt, docs/, LICENSE).")] = None,
    dataset_dir: Annotated[Optional[Path], typer.Option("--dataset-dir", help="--bundle: default film folder of inference.json (default: the bundle's data/; override with --dataset_dir at run time).")] = None,
    license_file: Annotated[Optional[Path], typer.Option("--license", help="--bundle: LICENSE text to ship (default: Apache-2.0 for the code, the training data's terms for the weights).")] = None,
    no_filter: Annotated[bool, typer.Option("--no-filter", help="--bundle: read every DICOM, whatever its modality / body part / view (default: predict's chest-radiograph filter).")] = False,
) -> None:
    """Export a model to ONNX for onnxruntime on the CPU (every member of an ensemble), or to
    a MONAI Bundle.

    Examples: cxrkit export runs/ens --onnx --deploy challenge/build/model;
    cxrkit export runs/demo/model --bundle bundles/demo"""
    from .export import deployment_copy, export_int8, export_model

    if not onnx and (deploy or int8):
        raise CxrkitError("--deploy and --int8 need --onnx")
    if bundle is not None:
        from .bundle import export_bundle

        res = export_bundle(model, bundle, overwrite=overwrite, dataset_dir=dataset_dir,
                            dicom_filter=None if no_filter else "default", license_file=license_file)
        console.print(f"wrote MONAI Bundle {res['bundle']} ({res['classes']} classes; network rebuilt from "
                      f"inference.json equals the model, max |logit difference| {res['max_abs_logit_diff']:.1e}); "
                      f"run: cd {res['bundle']} && python -m monai.bundle run --config_file configs/inference.json "
                      f"--dataset_dir FILMS")
        if not onnx:
            return
    if not onnx:
        raise CxrkitError("say which format to export: --onnx or --bundle DIR")
    if calibration_method not in ("percentile", "minmax", "entropy"):
        raise CxrkitError(f"--calibration-method must be percentile, minmax or entropy (got {calibration_method!r})")
    if deploy:  # refuse a bad target before any work
        from .runtime import read_spec
        from .utils import check_output_dir

        spec = read_spec(model)
        check_output_dir(deploy, "export --deploy", [spec.path, *(m.path for m in spec.members)], overwrite)
    res = export_model(model)
    for f, d in zip(res["files"], res["max_abs_diff"]):
        console.print(f"wrote {f} (max |onnxruntime - torch| = {d:.2e})" if d is not None else f"wrote {f}")
    if int8:
        q = export_int8(model, calibration, calibration_split, images_root, calibration_images, calibration_method)
        from .export import INT8_TOLERANCE

        for f, d, c in zip(q["files"], q["max_prob_diff"], q["calibration"]):
            note = "" if d <= INT8_TOLERANCE else f"; above {INT8_TOLERANCE}, so --precision auto keeps fp32"
            console.print(f"wrote {f} (calibrated on {c['images']} films of {c['table']}; "
                          f"max |int8 - fp32| probability on them = {d:.4f}{note})")
    if deploy:
        deployment_copy(model, deploy, overwrite=overwrite)
        console.print(f"wrote deployment copy to {deploy}")


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


def _parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return (0, 1)
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise CxrkitError(f"--shard {shard!r}: use i/n, e.g. 0/4") from None
    return (i, n)


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
    from .cft.pipeline import run_cft
    from .cft.runner import CFTConfig

    ga, bp = _parse_sets(sets)
    from .tracking import TrackingConfig

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

        from .tracking import flatten, make_tracker

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
    from .cft.pipeline import merge_parts

    merge_parts(model, parts, valid_table, out, images_root=images_root, valid_split=valid_split,
                test_table=test_table, test_split=test_split, holdout=holdout, console=console, overwrite=overwrite)
    _print_cft(out)


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="Saved model folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image or DICOM files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays, contact sheets and explain.csv.")],
    labels: Annotated[Optional[str], typer.Option("--labels", help="Findings to explain, comma-separated (default: all).")] = None,
    method: Annotated[str, typer.Option("--method", help="gradcam, gradcam++, layercam, eigencam or hirescam.")] = "gradcam",
    dicom_sc: Annotated[bool, typer.Option("--dicom-sc", help="For DICOM inputs, also a DICOM Secondary Capture of each overlay in the film's study (derived, not for diagnosis).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
) -> None:
    """Saliency maps: per image and finding, the class activation map over the film as the
    model saw it (PNG, probability in the title), a contact sheet per image, explain.csv.

    Example: cxrkit explain runs/nih_hires/model film.png --out maps --labels Cardiomegaly,Effusion"""
    from .explain import METHODS
    from .explain import explain as run_explain

    if method not in METHODS:
        raise CxrkitError(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise CxrkitError(f"not a file: {missing[0]}")
    res = run_explain(model, images, out, labels=[x.strip() for x in labels.split(",")] if labels else None,
                      method=method, dicom_sc=dicom_sc, device=str(_device(device)))
    for path, reason in res["failed"]:
        console.print(f"not explained: {path} ({reason})")
    if res["maps"] == 0:
        raise CxrkitError(f"nothing could be explained: {len(res['failed'])} of {len(images)} input(s) unreadable")
    console.print(f"wrote {res['maps']} map(s) for {res['images']} image(s) to {out} ({method} on layer {res['layer']})")


@pacs_app.command("listen")
def pacs_listen(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    spool: Annotated[Path, typer.Option("--spool", help="Folder for received instances, results, reports and the state database (owner-only).")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "CXRKIT",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = 11112,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    allow_ae: Annotated[Optional[str], typer.Option("--allow-ae", help="Calling AE titles accepted, comma-separated (others are rejected at association); default: any.")] = None,
    send_to: Annotated[Optional[str], typer.Option("--send-to", help="Send each study's SR by C-STORE to AE@host:port.")] = None,
    idle: Annotated[float, typer.Option("--idle", min=0.0, help="Seconds without a new instance after which a study is processed.")] = 10.0,
    engine: Annotated[str, typer.Option("--engine", help="auto, torch or onnx.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
    modalities: Annotated[Optional[str], typer.Option("--modalities", help="DICOM modalities to predict (default CR,DX).")] = None,
    body_parts: Annotated[Optional[str], typer.Option("--body-parts", help="BodyPartExamined values accepted when present (default CHEST,THORAX,...).")] = None,
    fhir: Annotated[bool, typer.Option("--fhir", help="Also write a FHIR R4 Bundle per study into <spool>/fhir/ (needs fhir.resources).")] = False,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CSV of your labels' codes for the SR and FHIR (see predict --codes).")] = None,
) -> None:
    """Receive CR / DX studies over DICOM (a Storage SCP), predict each study once it is
    complete, write the rows and a DICOM SR per study, and optionally send the SR back.

    Example: cxrkit pacs listen runs/nih_hires/model --spool /var/spool/cxrkit --allow-ae PACS --send-to PACS@pacs.local:104"""
    from .ensemble import load_predictor
    from .pacs import Listener, ListenerConfig, parse_target
    from .runtime import DicomFilter

    if send_to:
        parse_target(send_to)  # checked before the model is loaded
    from .extras import require

    require("pacs", "cxrkit pacs listen")
    _check_node_outputs(fhir, codes)
    filt = DicomFilter(modalities=_csv_list(modalities, DicomFilter.modalities),
                       body_parts=_csv_list(body_parts, DicomFilter.body_parts))
    pred = load_predictor(model, engine=engine, device=_device(device))
    cfg = ListenerConfig(ae_title=ae_title, host=host, port=port,
                         allow_ae=tuple(a for a in (allow_ae or "").split(",") if a.strip()), send_to=send_to, idle=idle,
                         fhir=fhir, codes_file=str(codes) if codes else None)
    lst = Listener(pred, spool, cfg, dicom_filter=filt)
    console.print(f"cxrkit pacs listen: {cfg.ae_title} on {host}:{port}, spool {spool}; Ctrl-C / SIGTERM stops")
    lst.serve_forever()


@pacs_app.command("pull")
def pacs_pull(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    dicomweb: Annotated[str, typer.Option("--dicomweb", help="The DICOMweb server's base URL (QIDO / WADO / STOW), e.g. https://pacs/dicom-web.")],
    spool: Annotated[Path, typer.Option("--spool", help="Folder for retrieved instances, results, reports and the state database.")],
    since: Annotated[Optional[str], typer.Option("--since", help="Only studies from this date on (YYYY-MM-DD or YYYYMMDD).")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Only this StudyInstanceUID (repeatable); processed even if done before.")] = None,
    stow: Annotated[bool, typer.Option("--stow", help="Store each study's SR back on the server (STOW-RS).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="auto, torch or onnx.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
    fhir: Annotated[bool, typer.Option("--fhir", help="Also write a FHIR R4 Bundle per study into <spool>/fhir/ (needs fhir.resources).")] = False,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CSV of your labels' codes for the SR and FHIR (see predict --codes).")] = None,
) -> None:
    """Find CR / DX studies on a DICOMweb server not yet processed in this spool, retrieve
    them, predict, and optionally store the SR back. Credentials from the environment only:
    CXRKIT_DICOMWEB_TOKEN (bearer) or CXRKIT_DICOMWEB_USER and CXRKIT_DICOMWEB_PASSWORD.

    Example: CXRKIT_DICOMWEB_TOKEN=... cxrkit pacs pull runs/nih_hires/model --dicomweb https://pacs/dicom-web --spool spool --since 2026-11-01 --stow"""
    import re

    from .ensemble import load_predictor
    from .pacs import DicomWeb, pull

    DicomWeb(dicomweb)  # the URL is checked before the model is loaded
    if since and not re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", since):
        raise CxrkitError(f"--since must be a date, YYYY-MM-DD (got {since!r})")
    from .extras import require

    require("pacs", "cxrkit pacs pull", ["highdicom"])
    _check_node_outputs(fhir, codes)
    pred = load_predictor(model, engine=engine, device=_device(device))
    res = pull(pred, spool, dicomweb, since=since, studies=study, stow=stow, fhir=fhir,
               codes_file=str(codes) if codes else None)
    console.print(f"{res['found']} study / studies found, {res['processed']} processed, {res['skipped']} already "
                  f"done, {res['failed']} failed; {res['instances']} instance(s) retrieved"
                  + (f"; reports sent: {res['sent']}" if stow else ""))
    for u in res["unsent"]:
        console.print(f"report of study {u['study']} not stored yet: {u['error']} (attempt {u['attempts']})")


@pacs_app.command("status")
def pacs_status(
    spool: Annotated[Path, typer.Option("--spool", help="The listener's spool folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Print a spool's queue: instances, studies and report sends by state, failures with reasons.

    Example: cxrkit pacs status --spool /var/spool/cxrkit"""
    import json as _json

    from .pacs import status

    st = status(spool)
    if json_out:
        print(_json.dumps(st, indent=1))
        return
    console.print(f"spool {st['spool']}")
    for k in ("instances", "studies", "sends"):
        console.print(f"{k}: " + (", ".join(f"{n} {s}" for s, n in sorted(st[k].items())) or "none"))
    for f in st["failed_studies"]:
        console.print(f"failed study {f['study']}: {f['reason']} (attempts {f['attempts']})")
    if st["not_used"]:
        console.print("instances not used (kind: reason x count, newest first):")
        for e in st["not_used"]:
            console.print(f"  {e['kind']}: {e['reason']} x {e['count']} (newest {e['newest']})", markup=False)
    for e in st["recent_not_used"]:
        console.print(f"  {e['at']} {e['kind']} {e['reason']}: {e['detail']}"
                      + (f" (study {e['study']})" if e["study"] else ""), markup=False, highlight=False)
    for u in st["unsent"]:
        console.print(f"report of study {u['study']} to {u['target']}: {u['status']} after {u['attempts']} "
                      f"attempt(s){': ' + u['error'] if u['error'] else ''}")


@weights_app.command("convert")
def weights_convert(
    src: Annotated[Path, typer.Argument(help="State dict: .pth / .pt (read with weights_only) or .safetensors.")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors for `model.weights` in a config.")],
    arch: Annotated[str, typer.Option("--arch", help="timm architecture the tensors correspond to, in order.")],
) -> None:
    """Rename a third-party state dict onto a timm architecture (by order; shapes checked).

    Example: cxrkit weights convert lite0.pth lite0.safetensors --arch efficientnet_lite0"""
    from .models.weights import convert_weights

    convert_weights(src, dst, arch)
    console.print(f"wrote {dst} (timm {arch})")


# ---------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("demo-run"),
    n_studies: Annotated[int, typer.Option("--n-studies", min=20, help="Synthetic studies to generate.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data, the training and CFT; the same seed gives the same run.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start clean: remove an earlier demo run in --out first (otherwise its finished stages are reused).")] = False,
) -> None:
    """Run the main job on the embedded SYNTHETIC demo data.

    Stages, in order: generate the data, inspect it, train, evaluate, category-wise
    fine-tuning, predict; all into one run folder. Finishes on a laptop CPU in a few minutes.
    Run again into the same folder, it reuses the finished stages.

    Example: cxrkit demo --out demo-run"""
    from .demo_job import run_demo

    summary = run_demo(out, n_studies=n_studies, seed=seed, console=console, overwrite=overwrite)
    console.print(f"[bold]demo finished[/bold]: everything is in {summary['out']}")


GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def hoist_global_flags(args: list[str]) -> list[str]:
    """``cxrkit predict MODEL DIR -v`` -> ``cxrkit -v predict MODEL DIR``: the global flags are
    the app's options, which click only takes before the command; users (and the README's
    "-v shows it") put them after. No command has an option of the same name, and nothing
    after a ``--`` is touched."""
    try:
        end = args.index("--")
    except ValueError:
        end = len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def main() -> None:
    """Console-script entry point: one-line errors, exit code 2 for user mistakes."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    try:
        rv = app(args=hoist_global_flags(sys.argv[1:]), prog_name="cxrkit",
                 standalone_mode=False)  # cxrkit prints usage errors itself: one line, exit 2
        if rv == 130 and _ON_INTERRUPT:  # typer turns Ctrl-C inside a command into exit code 130
            _interrupted()
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except getattr(cx, "NoArgsIsHelpError", ()) as e:  # `cxrkit` / `cxrkit data` alone: the help
        print(e.ctx.get_help())
        sys.exit(0)
    except cx.UsageError as e:  # missing argument, unknown command or option, bad value
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        err_console.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C inside a command (click turns KeyboardInterrupt into Abort)
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except CxrkitError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # missing / unwritable / existing paths, full disk
        import errno

        where = f"{e.filename}: " if e.filename else ""
        msg = e.strerror or str(e)
        if e.errno == errno.ENOTDIR and e.filename:  # an output path under an existing file
            from .utils import file_in_the_way

            blocker = file_in_the_way(Path(str(e.filename)).parent)
            if blocker is not None:
                msg = f"cannot be created: {blocker} is a file, not a folder"
        err_console.print(f"error: {where}{msg}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> None:
    """One line on Ctrl-C: where the run stopped and the command that continues it; exit 130."""
    msg = "interrupted"
    if _ON_INTERRUPT:
        try:
            msg = _ON_INTERRUPT[-1]()
        except Exception:  # the message must never hide the interrupt
            pass
    err_console.print(msg, markup=False, highlight=False, soft_wrap=True)
    sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
