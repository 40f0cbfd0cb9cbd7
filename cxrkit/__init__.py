"""cxrkit: long-tailed, multi-label chest X-ray classification with uncertain and missing labels.

The package is grouped by stage: ``data`` (tables, images, DICOM), ``models``, ``train``,
``cft`` (Category-wise Fine-Tuning), ``inference`` (runtime, predict, ensembles, export,
evaluation, calibration), ``hospital`` (PACS node, SR, FHIR, codes), ``leaderboard``
(container entry point, MONAI bundles), ``cli``; shared foundations (``labels``, ``losses``,
``metrics``, ``artifact``, ``utils``, ``errors``, ...) at the top.

The modules that moved into the stage packages keep their old import paths
(``cxrkit.runtime``, ``cxrkit.sr``, ``cxrkit.bundle``, ...): importing an old path gives the
very same module object as its new one (``MOVED`` below), so code, configs and MONAI bundle
``_target_`` strings written against them keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cxrkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: old module path -> where the module lives now
MOVED = {f"cxrkit.{old}": f"cxrkit.{new}" for old, new in {
    "runtime": "inference.runtime", "predict": "inference.predict", "ensemble": "inference.ensemble",
    "export": "inference.export", "explain": "inference.explain", "evaluate": "inference.evaluate",
    "calibration": "inference.calibration", "calibrate": "inference.calibrate",
    "pacs": "hospital.pacs", "sr": "hospital.sr", "fhir": "hospital.fhir", "dicom_out": "hospital.dicom_out",
    "codes": "hospital.codes", "submit": "leaderboard.submit", "bundle": "leaderboard.bundle",
}.items()}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new path (the same object)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(MOVED[spec.name])
        self._own_spec = module.__spec__  # the import system sets __spec__ to the alias's next
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = self._own_spec  # the module keeps its own spec (reload, pickling, runpy)

    def get_code(self, fullname: str) -> Any:
        """``python -m cxrkit.submit``: run the module at its new path as ``__main__``."""
        return compile(f"import runpy\nrunpy.run_module({MOVED[fullname]!r}, run_name='__main__', alter_sys=True)\n",
                       f"<{fullname}: moved to {MOVED[fullname]}>", "exec")


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())

__all__ = ["__version__", "MOVED"]
