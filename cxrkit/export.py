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

from .errors import ArtifactError, CxrkitError
from .runtime import MODEL_FILE, ONNX_FILE, MemberSpec, ModelSpec, onnx_location, read_spec
from .utils import atomic_write

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4


def _sidecar(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name + ".json")


def is_fresh(member: MemberSpec) -> bool:
    f = onnx_location(member)
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
    from .artifact import load_model

    model = load_model(member.path)
    net = model.model.eval()
    h, w = member.preprocessing.hw
    x = torch.randn(batch, member.preprocessing.channels, h, w, generator=torch.Generator().manual_seed(0))
    target = member.path / ONNX_FILE
    if not os.access(member.path, os.W_OK):
        target = onnx_location(member)
        target.parent.mkdir(parents=True, exist_ok=True)
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
    _sidecar(target).write_text(json.dumps({"weights_sha256": member.meta.get("weights_sha256"),
                                            "opset": OPSET, "max_abs_diff": diff, "torch": torch.__version__}))
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
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CxrkitError("ONNX export needs onnx and onnxruntime (pip install cxrkit[onnx])") from None
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


def deployment_copy(path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """A lean copy for containers: every ``model.json`` / ``ensemble.json`` and ``model.onnx``
    (no PyTorch weights), exported first when needed. Written in a staging folder and swapped
    in; an existing ``out`` is replaced only if an earlier ``export --deploy`` wrote it (or with
    ``overwrite``), and never when it is or holds the model being exported."""
    import shutil

    from .utils import check_output_dir, mark_output, staged_dir

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
        mark_output(tmp, "export --deploy")
    return out
