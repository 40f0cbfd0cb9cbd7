"""``cxrkit data ...``: demo data, demo DICOM, inspect, render, partial labels, NIH subsets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import CxrkitError
from ._common import data_app, console, err_console


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
    from ..data.demo import generate_demo

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
    from ..data.demo import demo_to_dicom

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
    from ..data.tables import load_table, summarize
    from ..report import plot_label_distribution
    from ..utils import write_json

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

    from ..data.preprocess import Preprocessing
    from ..utils import atomic_write

    if model is not None:
        from ..artifact import load_preprocessing

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
    from ..data.partial import write_partial_table
    from ..data.tables import load_table

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
    from ..data.nih import build_subset

    res = build_subset(files, release, out, table=table, size=size)
    console.print(f"wrote {res.labels}: {res.written + res.reused} film(s) in {out / 'images'} "
                  f"({res.written} new, {res.reused} already there)")
    if res.missing:
        err_console.print(f"warning: {len(res.missing)} listed film(s) are not in {release}; see {out / 'missing.csv'}",
                          markup=False, highlight=False)


