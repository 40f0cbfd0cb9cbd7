"""Experiment tracking: MLflow or TensorBoard, or nothing (the default).

``tracking: {backend: mlflow | tensorboard | none, uri: ..., experiment: cxrkit}`` in a
training config; ``--tracking mlflow[:URI]`` / ``tensorboard[:DIR]`` for ``evaluate`` and
``cft``. What is logged: the resolved config as parameters (flattened, ``optim.lr`` ...),
every epoch's metrics (numbers only), the run folder's plots and the saved model as
artifacts, and evaluation / CFT tables (JSON artifacts with MLflow, text with TensorBoard).

* ``mlflow``: ``uri`` is any MLflow tracking URI (``http://mlflow:5000``, ``sqlite:///...``,
  ``file:...``); default ``file:<run folder>/mlruns``, a local file store (MLflow 3 keeps
  its file store behind ``MLFLOW_ALLOW_FILE_STORE``, which cxrkit sets for ``file:`` URIs).
* ``tensorboard``: event files under ``uri`` (default ``<run folder>/tensorboard``).
* ``none``: nothing is imported, nothing touches the network; the container has neither
  package.

A tracker never stops the job it tracks: a failure to log is one warning, and the run goes
on (and is marked failed / killed in MLflow when it ends that way).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("none", "mlflow", "tensorboard")


@dataclass
class TrackingConfig:
    backend: str = "none"
    uri: str | None = None
    experiment: str = "cxrkit"

    def validate(self) -> TrackingConfig:
        if self.backend not in BACKENDS:
            raise ConfigError(f"tracking.backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, spec: str | None) -> TrackingConfig:
        """``mlflow``, ``mlflow:URI``, ``tensorboard:DIR`` or ``none`` (command-line form)."""
        if not spec:
            return cls()
        backend, _, uri = spec.partition(":")
        return cls(backend=backend.strip().lower(), uri=uri or None).validate()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """Logs nothing (``backend: none``); the interface the others implement."""

    backend = "none"

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def log_table(self, name: str, table: Any) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass

    @staticmethod
    def numeric(metrics: dict[str, Any]) -> dict[str, float]:
        out = {}
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if v == v and abs(v) != float("inf"):
                out[str(k).replace("@", "_at_")] = float(v)
        return out

    def _warn(self, what: str, e: Exception) -> None:
        log.warning("%s tracking: %s failed (%s); the run goes on", self.backend, what,
                    str(e).splitlines()[0][:160] if str(e) else type(e).__name__)


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, cfg: TrackingConfig, run_name: str, out: Path) -> None:
        try:
            import mlflow
        except ImportError:
            from .extras import install_hint

            raise ConfigError(f"tracking.backend mlflow needs MLflow: {install_hint('tracking', ['mlflow-skinny'])}") from None
        uri = cfg.uri or (out / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.experiment)
        self.run = mlflow.start_run(run_name=run_name)
        self.run_id = self.run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        try:
            flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:500]
                    for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 90):  # MLflow takes at most 100 params per call
                self.mlflow.log_params(dict(items[i:i + 90]))
        except Exception as e:  # noqa: BLE001 - tracking never stops the job
            self._warn("logging parameters", e)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        try:
            self.mlflow.log_metrics(self.numeric(metrics), step=step)
        except Exception as e:  # noqa: BLE001
            self._warn("logging metrics", e)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        p = Path(path)
        try:
            if p.is_dir():
                self.mlflow.log_artifacts(str(p), artifact_path=folder or p.name)
            elif p.is_file():
                self.mlflow.log_artifact(str(p), artifact_path=folder)
        except Exception as e:  # noqa: BLE001
            self._warn(f"logging {p.name}", e)

    def log_table(self, name: str, table: Any) -> None:
        try:
            self.mlflow.log_dict(table, f"{name}.json")
        except Exception as e:  # noqa: BLE001
            self._warn(f"logging the {name} table", e)

    def close(self, status: str = "FINISHED") -> None:
        try:
            self.mlflow.end_run(status=status)
        except Exception as e:  # noqa: BLE001
            self._warn("ending the run", e)


class TensorBoardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, cfg: TrackingConfig, run_name: str, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from .extras import install_hint

            raise ConfigError(f"tracking.backend tensorboard needs TensorBoard: {install_hint('tracking', ['tensorboard'])}") from None
        self.log_dir = Path(cfg.uri) if cfg.uri else out / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir / run_name))

    def log_params(self, params: dict[str, Any]) -> None:
        try:
            flat = flatten(params)
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())), 0)
        except Exception as e:  # noqa: BLE001
            self._warn("logging parameters", e)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        try:
            for k, v in self.numeric(metrics).items():
                self.writer.add_scalar(k, v, step or 0)
            self.writer.flush()
        except Exception as e:  # noqa: BLE001
            self._warn("logging metrics", e)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        p = Path(path)
        try:
            files = sorted(p.rglob("*.png")) if p.is_dir() else ([p] if p.suffix == ".png" else [])
            if files:
                import numpy as np
                from PIL import Image

                for f in files:
                    img = np.asarray(Image.open(f).convert("RGB"))
                    tag = f"{folder or p.name}/{f.stem}" if p.is_dir() else (f"{folder}/{f.stem}" if folder else f.stem)
                    self.writer.add_image(tag, img, 0, dataformats="HWC")
            elif p.exists():
                self.writer.add_text(f"artifacts/{folder or p.name}", str(p.resolve()), 0)
            self.writer.flush()
        except Exception as e:  # noqa: BLE001
            self._warn(f"logging {p.name}", e)

    def log_table(self, name: str, table: Any) -> None:
        try:
            self.writer.add_text(name, "    " + json.dumps(table, indent=1, default=str).replace("\n", "\n    "), 0)
            self.writer.flush()
        except Exception as e:  # noqa: BLE001
            self._warn(f"logging the {name} table", e)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def make_tracker(cfg: TrackingConfig | dict[str, Any] | None, run_name: str, out: str | Path) -> Tracker:
    if isinstance(cfg, dict):
        cfg = TrackingConfig(**cfg)
    cfg = (cfg or TrackingConfig()).validate()
    if cfg.backend == "mlflow":
        return MlflowTracker(cfg, run_name, Path(out))
    if cfg.backend == "tensorboard":
        return TensorBoardTracker(cfg, run_name, Path(out))
    return Tracker()
