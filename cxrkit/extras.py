"""Optional dependencies (the ``[extras]`` of pyproject.toml) and the one install hint every
message gives for them.

cxrkit is installed from a checkout (``pip install -e ".[sr]"``) until it is published on the
package index; the hint names the packages themselves first, since ``pip install PACKAGE``
works wherever cxrkit came from (a checkout, a wheel, the container)."""

from __future__ import annotations

import importlib

from .errors import CxrkitError

#: extra -> (import name, pip package) pairs it brings; kept in step with pyproject.toml
#: (tests/test_packaging.py checks that every package named here is in that extra)
EXTRAS: dict[str, list[tuple[str, str]]] = {
    "onnx": [("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript")],
    "sr": [("highdicom", "highdicom")],
    "pacs": [("pynetdicom", "pynetdicom"), ("highdicom", "highdicom")],
    "explain": [("pytorch_grad_cam", "grad-cam")],
    "tracking": [("mlflow", "mlflow-skinny"), ("tensorboard", "tensorboard")],
    "bundle": [("ignite", "pytorch-ignite"), ("fire", "fire"), ("jsonschema", "jsonschema")],
    "fhir": [("fhir.resources", "fhir.resources")],
    "openvino": [("openvino", "openvino"), ("nncf", "nncf")],
    "clip": [("open_clip", "open_clip_torch")],
}


def install_hint(extra: str, packages: list[str] | None = None) -> str:
    """``pip install highdicom (in a cxrkit checkout: pip install -e ".[sr]")``."""
    pkgs = packages or [p for _, p in EXTRAS[extra]]
    return f'pip install {" ".join(pkgs)} (in a cxrkit checkout: pip install -e ".[{extra}]")'


def missing(extra: str, modules: list[str] | None = None) -> list[str]:
    """The pip packages of ``extra`` (or of its ``modules``) that cannot be imported."""
    out = []
    for mod, pkg in EXTRAS[extra]:
        if modules is not None and mod not in modules:
            continue
        try:
            importlib.import_module(mod)
        except ImportError:
            out.append(pkg)
    return out


def require(extra: str, what: str, modules: list[str] | None = None) -> None:
    """Raise a one-line :class:`CxrkitError` naming what to install when a package is missing."""
    gone = missing(extra, modules)
    if gone:
        raise CxrkitError(f"{what} needs {' and '.join(gone)}: {install_hint(extra, gone)}")
