"""Export models to ONNX for CPU inference with onnxruntime (``cxrkit export --onnx``).

Each model folder gets ``model.onnx`` (dynamic batch size) and ``model.onnx.json`` (the
weights checksum it was made from, the opset, and the largest difference between PyTorch
and onnxruntime outputs on a check batch, which must stay below 1e-4). An ensemble exports
every member. A model folder that cannot be written exports into the cache instead.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, CxrkitError
from .runtime import (INT8_FILE, MODEL_FILE, ONNX_FILE, MemberSpec, ModelSpec, int8_location, onnx_location,
                      read_spec)
from ..utils import atomic_write

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
INT8_TOLERANCE = 0.02  # largest |int8 - fp32| probability on the calibration films for auto to use int8


def _sidecar(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name + ".json")


def _write_sidecar(target: Path, data: dict[str, Any]) -> None:
    with atomic_write(_sidecar(target)) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def _invalidate_sidecar(target: Path) -> None:
    """Before a new file replaces ``target``: its old sidecar stops vouching for it (a process
    killed between the two renames leaves an export that is neither fresh nor accurate, so
    it is made again or ignored, never trusted)."""
    if _sidecar(target).exists():
        _write_sidecar(target, {"accurate": False, "weights_sha256": None, "state": "being replaced"})


def is_fresh(member: MemberSpec, f: Path | None = None) -> bool:
    """``f`` (default: the member's fp32 ONNX file) exists and was made from its current
    weights (the sidecar's checksum)."""
    f = onnx_location(member) if f is None else f
    if not f.is_file():
        return False
    if not (member.path / "model.safetensors").is_file():
        return True  # an ONNX-only deployment folder: nothing to compare with
    try:
        side = json.loads(_sidecar(f).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return side.get("weights_sha256") == member.meta.get("weights_sha256")


def export_member(member: MemberSpec, batch: int = 2) -> Path:
    """Export one model folder's network to ONNX and check it against PyTorch."""
    from ..artifact import load_model

    model = load_model(member.path)
    net = model.model.eval()
    h, w = member.preprocessing.hw
    x = torch.randn(batch, member.preprocessing.channels, h, w, generator=torch.Generator().manual_seed(0))
    target = member.path / ONNX_FILE
    if not os.access(member.path, os.W_OK):
        target = onnx_location(member)
        target.parent.mkdir(parents=True, exist_ok=True)
    _invalidate_sidecar(target)
    with atomic_write(target) as tmp_path:
        tmp = str(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(net, (x,), tmp, input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                                  opset_version=OPSET, dynamo=False)
            except Exception as e:  # the TorchScript exporter cannot trace every model: try torch.export
                log.info("legacy ONNX export failed (%s); trying the dynamo exporter", e)
                torch.onnx.export(net, (x,), tmp, input_names=["image"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},), dynamo=True)
        diff = _check(tmp, net, member)
        if diff > TOLERANCE:
            raise ArtifactError(f"{member.path}: ONNX output differs from PyTorch by {diff:.2e} (> {TOLERANCE})")
    _write_sidecar(target, {"weights_sha256": member.meta.get("weights_sha256"), "opset": OPSET,
                            "max_abs_diff": diff, "torch": torch.__version__})
    return target


def _check(onnx_file: str, net: torch.nn.Module, member: MemberSpec) -> float:
    import onnxruntime as ort

    h, w = member.preprocessing.hw
    x = torch.randn(3, member.preprocessing.channels, h, w, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = torch.sigmoid(net(x)).numpy()
    return float(np.abs(1.0 / (1.0 + np.exp(-out)) - ref).max())


def ensure_onnx(spec: ModelSpec, force: bool = False) -> list[Path]:
    """Export every member that has no up-to-date ONNX file."""
    from ..extras import require

    require("onnx", "ONNX export")  # onnx, onnxruntime and onnxscript: one line naming the missing ones
    out = []
    for m in spec.members:
        if force or not is_fresh(m):
            if not (m.path / "model.safetensors").is_file():
                raise ArtifactError(f"{m.path}: no weights to export and no {ONNX_FILE}")
            out.append(export_member(m))
        else:
            out.append(onnx_location(m))
    return out


def export_model(path: str | Path, force: bool = True) -> dict[str, Any]:
    """``cxrkit export MODEL --onnx``: export a model or every member of an ensemble."""
    spec = read_spec(path)
    files = ensure_onnx(spec, force=force)
    diffs = []
    for f in files:
        try:
            diffs.append(json.loads(_sidecar(f).read_text()).get("max_abs_diff"))
        except (OSError, json.JSONDecodeError):
            diffs.append(None)
    return {"model": str(spec.path), "files": [str(f) for f in files], "max_abs_diff": diffs}


# ---------------------------------------------------------------------------------------
# int8: static quantisation with onnxruntime, calibrated on the model's own validation films
# ---------------------------------------------------------------------------------------


def _member_table(member: MemberSpec, table: str | Path | None, split: str | None,
                  images_root: str | Path | None, hint: str) -> tuple[Any, Any, str | None, Any, str]:
    """(the table, its path, split, images root, where it came from): ``table`` as given, else
    the validation table the member was trained with (its ``train_config``), relative paths
    resolved from the current folder; ``hint`` ends the error when that one is not here."""
    from ..data.tables import load_table
    from ..train.trainer import select_split

    source = "given"
    if table is None:
        valid = ((member.meta.get("train_config") or {}).get("data") or {}).get("valid") or {}
        table, split = valid.get("table"), split or valid.get("split")
        images_root = images_root or valid.get("images_root")
        source = "the model's validation table"
        if not table or not Path(table).is_file():
            raise CxrkitError(f"{member.path}: its validation table ({table or 'none recorded'}) is not here; {hint}")
    t = load_table(table)
    if split:
        t = select_split(t, split)
    return t, table, split, images_root, source


def calibration_files(member: MemberSpec, table: str | Path | None = None, split: str | None = None,
                      images_root: str | Path | None = None, n: int = 128, seed: int = 0) -> tuple[list[Path], dict]:
    """Up to ``n`` readable image paths for calibration (a seeded sample, in table order) and
    a description of where they came from. Default source: the validation table the model
    was trained with (its ``train_config``), relative paths resolved from the current folder."""
    from .predict import table_items

    t, table, split, images_root, source = _member_table(member, table, split, images_root,
                                                         "give the calibration films with --calibration TABLE")
    items = table_items(t, images_root, [])
    if not items:
        raise CxrkitError(f"{table}: none of its images were found for calibration (use --images-root)")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(items), size=min(n, len(items)), replace=False))
    files = [Path(items[i].path) for i in pick]
    import hashlib

    digest = hashlib.sha256("\n".join(str(items[i].id) for i in pick).encode()).hexdigest()
    return files, {"table": str(table), "split": split, "source": source, "images": len(files),
                   "ids_sha256": digest, "seed": seed}


def _calibration_inputs(files: list[Path], member: MemberSpec) -> tuple[list[np.ndarray], int]:
    """One 1 x C x H x W model input per readable calibration film, prepared as ``predict``
    prepares it (onnxruntime's histogram calibrators stack the steps' tensors and need them
    all the same shape), and the number of unreadable films."""
    from .predict import prepared_batches

    out, failed = [], 0
    for (p,) in prepared_batches(files, [member.preprocessing], batch_size=1):
        if p.arrays is None:
            failed += 1
        else:
            out.append(np.asarray(p.arrays[0], np.float32)[None])
    if not out:
        raise CxrkitError("none of the calibration films could be read")
    return out, failed


def export_member_int8(member: MemberSpec, files: list[Path], source: dict[str, Any],
                       method: str = "percentile") -> Path:
    """Statically quantise a member's ONNX model (QDQ, int8 weights per channel, uint8
    activations) with activation ranges calibrated on ``files``; writes ``model.int8.onnx``
    and its sidecar (the calibration source, the ranges, and the largest probability
    difference to fp32 on the calibration films)."""
    import tempfile

    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        from ..extras import install_hint

        raise CxrkitError(f"int8 export needs onnx and onnxruntime: {install_hint('onnx', ['onnx', 'onnxruntime'])}") from None
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise CxrkitError(f"calibration method must be one of {', '.join(methods)} (got {method!r})")
    fp32 = onnx_location(member)
    batches, failed = _calibration_inputs(files, member)
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {name: b}

    import contextlib
    import io

    target = int8_location(member)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs a warning per tensor and prints its settings
    _invalidate_sidecar(target)
    with tempfile.TemporaryDirectory() as td, atomic_write(target) as tmp_path, \
            contextlib.redirect_stdout(io.StringIO()):
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # the optimiser cannot handle every graph: quantise the plain one
            log.info("ONNX pre-processing failed (%s); quantising the exported graph", e)
            pre = fp32
        extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(tmp_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], extra_options=extra)
        diff = _int8_check(str(tmp_path), str(fp32), [np.concatenate(batches[i:i + 16])
                                                        for i in range(0, len(batches), 16)], name)
    root.setLevel(level)
    accurate = diff <= INT8_TOLERANCE
    if not accurate:
        log.warning("%s: int8 probabilities differ from fp32 by up to %.3f on the calibration films (> %.2f): "
                    "this model does not survive post-training quantisation; --precision auto will not use it",
                    member.path, diff, INT8_TOLERANCE)
    _write_sidecar(target, {"accurate": accurate, "tolerance": INT8_TOLERANCE,
        "weights_sha256": member.meta.get("weights_sha256"), "fp32_onnx": fp32.name, "format": "QDQ",
        "weights": "int8 per channel", "activations": "uint8 per tensor", "calibration": dict(
            source, method=method, unreadable=failed), "max_prob_diff_calibration": diff,
        "onnxruntime": ort.__version__})
    return target


def _int8_check(int8: str, fp32: str, batches: list[np.ndarray], name: str) -> float:
    import onnxruntime as ort

    a = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    diff = 0.0
    for x in batches:
        pa = 1 / (1 + np.exp(-a.run(None, {name: x})[0].astype(np.float64)))
        pb = 1 / (1 + np.exp(-b.run(None, {name: x})[0].astype(np.float64)))
        diff = max(diff, float(np.abs(pa - pb).max()))
    return diff


# ---------------------------------------------------------------------------------------
# int8 with accuracy control: NNCF's post-training quantisation of the ONNX model, layers
# put back to fp32 until the mean AUC on the model's validation films is within max_drop
# ---------------------------------------------------------------------------------------

NNCF_MAX_DROP = 0.002  # mean AUC an int8 copy may lose on the validation films (issue 24's goal)


def validation_set(member: MemberSpec, table: str | Path | None = None, split: str | None = None,
                   images_root: str | Path | None = None, uncertain: str = "ignore"
                   ) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]]:
    """Every readable film of the member's validation table (or ``table``) prepared as
    ``predict`` prepares it (one 1 x C x H x W array each), the known labels of the model's
    classes (films x classes: 1 / 0 / NaN) and where they came from."""
    from ..train.trainer import eval_targets
    from .predict import prepared_batches, table_items

    t, table, split, images_root, source = _member_table(member, table, split, images_root,
                                                         "give labelled validation films with --calibration TABLE")
    present = [c for c in member.classes if c in t.classes]
    if not present:
        raise CxrkitError(f"{table}: has labels for none of the model's classes; accuracy control needs "
                          "a labelled table (--calibration TABLE)")
    items = table_items(t, images_root, [])
    if not items:
        raise CxrkitError(f"{table}: none of its images were found (use --images-root)")
    id_to_row = {str(x): i for i, x in enumerate(t.ids)}
    xs, rows = [], []
    for k, (p,) in enumerate(prepared_batches([it.path for it in items], [member.preprocessing], batch_size=1)):
        if p.arrays is not None:
            xs.append(np.asarray(p.arrays[0], np.float32)[None])
            rows.append(id_to_row[items[k].id])
    if len(xs) < 2:
        raise CxrkitError(f"{table}: fewer than two of its films could be read")
    y = np.full((len(rows), len(member.classes)), np.nan, dtype=np.float32)
    cols = [t.classes.index(c) for c in present]
    y[:, [member.classes.index(c) for c in present]] = eval_targets(
        t.labels[np.asarray(rows)][:, cols].astype(np.float32), uncertain)
    return xs, y, {"table": str(table), "split": split, "source": source, "images": len(xs),
                   "unreadable": len(items) - len(xs), "classes_labelled": len(present)}


def _mean_auc(targets: np.ndarray, logits: np.ndarray) -> float:
    """Mean AUC over the classes defined on these films (NaN where none is)."""
    from ..metrics import mean_defined, roc_auc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mean_defined(roc_auc(targets, logits), warn=False)


def _ort_logits(model_bytes: bytes, xs: list[np.ndarray], batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: np.concatenate(xs[i:i + batch])})[0]
                           for i in range(0, len(xs), batch)]).astype(np.float32)


def export_member_int8_nncf(member: MemberSpec, table: str | Path | None = None, split: str | None = None,
                            images_root: str | Path | None = None, n_calibration: int = 128,
                            max_drop: float = NNCF_MAX_DROP, max_iterations: int = 20, seed: int = 0) -> Path:
    """NNCF post-training quantisation of a member's ONNX model with accuracy control: int8
    (QDQ) with activation ranges from a seeded sample of ``n_calibration`` validation films,
    then the layers that cost the most AUC (ranked by how far they move the outputs) are put
    back to fp32, one by one (at most ``max_iterations``), until the mean AUC over all
    validation films is within ``max_drop`` of fp32's. Writes ``model.int8.onnx`` (runs on
    onnxruntime and OpenVINO) and a sidecar with both AUCs; ``accurate`` (what ``--precision
    auto`` checks) is true only when the final drop is within ``max_drop``."""
    from ..extras import install_hint

    from .runtime import no_vendor_telemetry

    no_vendor_telemetry()
    try:
        import nncf
        import onnx
        import onnxruntime as ort
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    except ImportError:
        raise CxrkitError("int8 with accuracy control needs nncf: "
                          f"{install_hint('openvino', ['nncf', 'onnx', 'onnxruntime'])}") from None
    if not 0 <= max_drop < 1:
        raise CxrkitError(f"--max-auc-drop must be in [0, 1) (got {max_drop})")
    fp32 = onnx_location(member)
    xs, y, source = validation_set(member, table, split, images_root)
    fp32_model = onnx.load(str(fp32))
    fp32_logits = _ort_logits(fp32_model.SerializeToString(), xs)
    fp32_auc = _mean_auc(y, fp32_logits)
    if not np.isfinite(fp32_auc):
        raise CxrkitError(f"{source['table']}: no class has both positive and negative films among the "
                          f"{len(xs)} readable ones; accuracy control needs a defined AUC")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(xs), size=min(n_calibration, len(xs)), replace=False))

    fp32_probs = 1 / (1 + np.exp(-fp32_logits.astype(np.float64)))

    def validate(model: Any, items: Any) -> tuple[float, list[float]]:
        """NNCF's metric: mean AUC over all validation films (what acceptance is judged on);
        on the subsets NNCF ranks layers with (AUC is undefined on a few films), closeness to
        fp32's probabilities. Per film: minus its mean |probability - fp32's|, so NNCF ranks
        layers on the films int8 moves most."""
        data = list(items)
        idx = np.asarray([int(d[1]) for d in data])
        logits = _ort_logits(model.SerializeToString(), [d[0] for d in data])
        per_item = -np.abs(1 / (1 + np.exp(-logits.astype(np.float64))) - fp32_probs[idx]).mean(1)
        metric = _mean_auc(y[idx], logits) if len(data) == len(xs) else float(per_item.mean())
        return float(metric), [float(v) for v in per_item]

    name = fp32_model.graph.input[0].name
    cal = nncf.Dataset([xs[i] for i in pick], lambda x: {name: x})  # NNCF's ONNX engine feeds dicts
    val = nncf.Dataset([(x, i) for i, x in enumerate(xs)], lambda item: {name: item[0]})
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # NNCF reports every step at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = nncf.quantize_with_accuracy_control(
                fp32_model, cal, val, validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
                subset_size=len(pick), advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=max_iterations))
    except nncf.errors.InternalError as e:  # type: ignore[attr-defined]
        raise CxrkitError(f"{member.path}: NNCF could not quantise this model ({str(e).splitlines()[0][:200]})") from None
    finally:
        nncf_log.setLevel(level)
    q_bytes = q.SerializeToString()
    int8_logits = _ort_logits(q_bytes, xs)
    int8_auc = _mean_auc(y, int8_logits)
    drop = float(fp32_auc - int8_auc)
    diff = float(np.abs(1 / (1 + np.exp(-int8_logits.astype(np.float64))) - fp32_probs).max())
    int8_layers, layers = _quantised_layers(q)
    accurate = drop <= max_drop + 1e-12
    if not accurate:
        log.warning("%s: int8 loses %.4f mean AUC on the validation films with up to %d layers put back in "
                    "fp32 (> %.4f): --precision auto will not use it", member.path, drop, max_iterations, max_drop)
    target = int8_location(member)
    _invalidate_sidecar(target)
    with atomic_write(target) as tmp_path:
        Path(tmp_path).write_bytes(q_bytes)
        ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])  # loads, or nothing is replaced
    _write_sidecar(target, {
        "accurate": accurate, "quantizer": "nncf", "nncf": nncf.__version__, "format": "QDQ",
        "weights_sha256": member.meta.get("weights_sha256"), "fp32_onnx": fp32.name,
        "accuracy_control": {"metric": "mean AUC", "fp32": fp32_auc, "int8": int8_auc, "drop": drop,
                             "max_drop": max_drop, "max_iterations": max_iterations,
                             "validation": source},
        "calibration": dict(source, images=int(len(pick)), seed=seed, method="nncf minmax + bias correction"),
        "max_prob_diff_calibration": diff, "int8_layers": int8_layers, "layers": layers,
        "onnxruntime": ort.__version__})
    return target


def _quantised_layers(model: Any) -> tuple[int, int]:
    """(layers whose weights come through a DequantizeLinear, all Conv / Gemm / MatMul layers)."""
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return sum(1 for n in layers if len(n.input) > 1 and made_by.get(n.input[1]) == "DequantizeLinear"), len(layers)


def export_int8(path: str | Path, table: str | Path | None = None, split: str | None = None,
                images_root: str | Path | None = None, n: int = 128, method: str = "percentile",
                quantizer: str = "onnxruntime", max_drop: float = NNCF_MAX_DROP) -> dict[str, Any]:
    """``cxrkit export MODEL --onnx --int8``: fp32 ONNX (when missing) then an int8 copy per
    member, by onnxruntime's static quantisation (``quantizer="onnxruntime"``, checked by the
    largest probability change) or NNCF's with accuracy control (``"nncf"``, mean AUC on the
    validation films within ``max_drop``)."""
    if quantizer not in ("onnxruntime", "nncf"):
        raise CxrkitError(f"--quantizer must be onnxruntime or nncf (got {quantizer!r})")
    spec = read_spec(path)
    ensure_onnx(spec)
    spec = read_spec(path)
    files, diffs, cal, control = [], [], [], []
    for m in spec.members:
        if quantizer == "nncf":
            f = export_member_int8_nncf(m, table, split, images_root, n, max_drop)
        else:
            src, info = calibration_files(m, table, split, images_root, n)
            f = export_member_int8(m, src, info, method)
        files.append(str(f))
        side = json.loads(_sidecar(f).read_text())
        diffs.append(side["max_prob_diff_calibration"])
        cal.append(side["calibration"])
        control.append(side.get("accuracy_control"))
    return {"model": str(spec.path), "files": files, "max_prob_diff": diffs, "calibration": cal,
            "accuracy_control": control, "quantizer": quantizer}


def int8_is_fresh(member: MemberSpec) -> bool:
    return is_fresh(member, int8_location(member))


def deployment_copy(path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """A lean copy for containers: every ``model.json`` / ``ensemble.json`` and ``model.onnx``
    (no PyTorch weights), exported first when needed. Written in a staging folder and swapped
    in; an existing ``out`` is replaced only if an earlier ``export --deploy`` wrote it (or with
    ``overwrite``), and never when it is or holds the model being exported."""
    import shutil

    from ..utils import check_output_dir, mark_output, staged_dir

    spec = read_spec(path)
    out = check_output_dir(out, "export --deploy", [spec.path, *(m.path for m in spec.members)], overwrite)
    ensure_onnx(spec)
    with staged_dir(out) as tmp:
        if spec.kind == "ensemble":
            shutil.copy2(spec.path / "ensemble.json", tmp / "ensemble.json")
        for m in spec.members:
            dst = tmp if spec.kind == "model" else tmp / m.path.relative_to(spec.path)
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(m.path / MODEL_FILE, dst / MODEL_FILE)
            shutil.copy2(onnx_location(m), dst / ONNX_FILE)
            if int8_is_fresh(m):  # the int8 copy too: the container picks it on CPUs with int8 units
                shutil.copy2(int8_location(m), dst / INT8_FILE)
                shutil.copy2(_sidecar(int8_location(m)), dst / (INT8_FILE + ".json"))
        mark_output(tmp, "export --deploy")
    return out
