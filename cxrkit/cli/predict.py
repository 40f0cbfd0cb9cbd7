"""``cxrkit predict`` and ``explain``: a model on folders of films, and its saliency maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CxrkitError
from ._common import app, console, _ON_INTERRUPT, _quote_argv, _device, _csv_list, _parse_shard


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
    engine: Annotated[str, typer.Option("--engine", help="auto (with an up-to-date ONNX export: openvino on Intel CPUs when installed, else onnx; without one: torch), torch, onnx (onnxruntime) or openvino (both export on first use).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (int8 / bf16 only on CPUs with VNNI / AMX / AVX-512 BF16 units), fp32, int8 (onnx, after export --int8) or bf16 (torch, openvino).")] = "auto",
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
    from ..data.images import set_limits
    from ..inference.ensemble import load_predictor
    from ..inference.predict import PredictOptions, run_predict
    from ..inference.runtime import DicomFilter

    opts = PredictOptions(  # checked once, before the model is loaded or any image read
        batch_size=batch_size, workers=workers, tta=tta, images_root=images_root, resume=resume, overwrite=overwrite,
        shard=_parse_shard(shard), study=study, lateral_weight=lateral_weight, sr_dir=sr, study_key=study_key,
        fhir_dir=fhir, codes_file=codes,
        dicom_filter=DicomFilter(modalities=_csv_list(modalities, DicomFilter.modalities),
                                 body_parts=_csv_list(body_parts, DicomFilter.body_parts),
                                 views=_csv_list(views, DicomFilter.views), require_view=require_view,
                                 enabled=not no_filter)).check()
    _check_predict_outputs(model, out, sr, explain_dir, fhir, codes)
    set_limits(max_pixels=max_pixels, min_size=min_size, min_range=min_range)
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
    res = run_predict(pred, inputs, out, opts)
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
        from ..inference.explain import explain as run_explain
        from ..inference.predict import read_rows

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
    from ..extras import require
    from ..utils import check_writable_dir

    if sr is not None:
        require("sr", "--sr")
    if fhir is not None:
        require("fhir", "--fhir")
    if codes is not None:
        from ..hospital.codes import check_code_file

        check_code_file(codes)
    if explain_dir is not None:
        require("explain", "--explain")
        if (Path(model) / "ensemble.json").is_file():
            raise CxrkitError("--explain needs a single model (explain an ensemble's members one by one)")
    check_writable_dir(out.parent, "--out")
    for folder, what in ((sr, "--sr"), (explain_dir, "--explain"), (fhir, "--fhir")):
        if folder is not None:
            check_writable_dir(folder, what)


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
    from ..inference.explain import METHODS
    from ..inference.explain import explain as run_explain

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
