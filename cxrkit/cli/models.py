"""``cxrkit ensemble``, ``export`` and ``weights convert``: combine, ship and import models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CxrkitError
from ._common import app, weights_app, console


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
    from ..inference.ensemble import build_ensemble

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
    calibration_method: Annotated[str, typer.Option("--calibration-method", help="--int8 --quantizer onnxruntime: percentile (99.999th), minmax or entropy.")] = "percentile",
    quantizer: Annotated[str, typer.Option("--quantizer", help="--int8: onnxruntime (static quantisation, accepted when no probability moves more than 0.02) or nncf (NNCF with accuracy control: layers put back to fp32 until the validation films' mean AUC is within --max-auc-drop of fp32; needs the openvino extra).")] = "onnxruntime",
    max_auc_drop: Annotated[float, typer.Option("--max-auc-drop", help="--int8 --quantizer nncf: mean AUC the int8 copy may lose on the validation films.")] = 0.002,
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
    from ..inference.export import deployment_copy, export_int8, export_model

    if not onnx and (deploy or int8):
        raise CxrkitError("--deploy and --int8 need --onnx")
    if bundle is not None:
        from ..leaderboard.bundle import export_bundle

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
    if quantizer not in ("onnxruntime", "nncf"):
        raise CxrkitError(f"--quantizer must be onnxruntime or nncf (got {quantizer!r})")
    if not 0 <= max_auc_drop < 1:
        raise CxrkitError(f"--max-auc-drop must be in [0, 1) (got {max_auc_drop})")
    if int8 and quantizer == "nncf":
        from ..extras import require

        require("openvino", "int8 with accuracy control (--quantizer nncf)", ["nncf"])
    if deploy:  # refuse a bad target before any work
        from ..inference.runtime import read_spec
        from ..utils import check_output_dir

        spec = read_spec(model)
        check_output_dir(deploy, "export --deploy", [spec.path, *(m.path for m in spec.members)], overwrite)
    res = export_model(model)
    for f, d in zip(res["files"], res["max_abs_diff"]):
        console.print(f"wrote {f} (max |onnxruntime - torch| = {d:.2e})" if d is not None else f"wrote {f}")
    if int8:
        q = export_int8(model, calibration, calibration_split, images_root, calibration_images, calibration_method,
                        quantizer, max_auc_drop)
        from ..inference.export import INT8_TOLERANCE

        for f, d, c, a in zip(q["files"], q["max_prob_diff"], q["calibration"], q["accuracy_control"]):
            if a is not None:  # NNCF with accuracy control
                note = "" if a["drop"] <= a["max_drop"] + 1e-12 else \
                    f"; above --max-auc-drop {a['max_drop']}, so --precision auto keeps fp32"
                console.print(f"wrote {f} (NNCF, calibrated on {c['images']} films of {c['table']}; mean AUC on "
                              f"{a['validation']['images']} validation films: fp32 {a['fp32']:.4f}, int8 {a['int8']:.4f}, "
                              f"drop {a['drop']:+.4f}; max |int8 - fp32| probability {d:.4f}{note})")
                continue
            note = "" if d <= INT8_TOLERANCE else f"; above {INT8_TOLERANCE}, so --precision auto keeps fp32"
            console.print(f"wrote {f} (calibrated on {c['images']} films of {c['table']}; "
                          f"max |int8 - fp32| probability on them = {d:.4f}{note})")
    if deploy:
        deployment_copy(model, deploy, overwrite=overwrite)
        console.print(f"wrote deployment copy to {deploy}")


@weights_app.command("convert")
def weights_convert(
    src: Annotated[Path, typer.Argument(help="State dict: .pth / .pt (read with weights_only) or .safetensors.")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors for `model.weights` in a config.")],
    arch: Annotated[str, typer.Option("--arch", help="timm architecture the tensors correspond to, in order.")],
) -> None:
    """Rename a third-party state dict onto a timm architecture (by order; shapes checked).

    Example: cxrkit weights convert lite0.pth lite0.safetensors --arch efficientnet_lite0"""
    from ..models.weights import convert_weights

    convert_weights(src, dst, arch)
    console.print(f"wrote {dst} (timm {arch})")


