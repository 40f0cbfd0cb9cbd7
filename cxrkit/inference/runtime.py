"""Inference core that needs no torch: what the leaderboard container and hospital CPU
inference run.

* :func:`read_spec` reads a model folder (``model.json``) or an ensemble folder
  (``ensemble.json`` + ``members/*``) into :class:`ModelSpec` (labels, thresholds, members
  with their preprocessing and weight).
* :func:`prepare_file` turns one input file into the model inputs: DICOM header filters
  (modality, body part, view), one decode through the DICOM pixel pipeline, then each
  member's resize / normalisation. Failures and skips come back with a reason.
* :class:`Predictor` averages members' probabilities (weighted) over TTA views;
  :class:`OnnxPredictor` runs exported members with onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.augment import TTAView, apply_tta_numpy, tta_views
from ..data.images import dicom_info, is_dicom_file
from ..data.preprocess import Preprocessing
from ..data.tables import normalise_view
from ..errors import ArtifactError, CxrkitError, FailureReason, ImageReadError

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
ENSEMBLE_FILE = "ensemble.json"
ONNX_FILE = "model.onnx"


@dataclass
class MemberSpec:
    name: str
    path: Path
    classes: list[str]
    thresholds: list[float]
    preprocessing: Preprocessing
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """A model or an ensemble: the labels it predicts and its members."""

    name: str
    version: str
    path: Path
    classes: list[str]
    thresholds: list[float]
    members: list[MemberSpec]
    kind: str = "model"  # or "ensemble"
    label_space: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessings(self) -> list[Preprocessing]:
        """Distinct inputs the members need (each file is decoded once for all of them)."""
        out: list[Preprocessing] = []
        for m in self.members:
            if m.preprocessing not in out:
                out.append(m.preprocessing)
        return out

    def member_input(self, i: int) -> int:
        return self.preprocessings.index(self.members[i].preprocessing)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable model metadata ({e})") from None


def _member(d: Path, weight: float = 1.0) -> MemberSpec:
    meta = _read_json(d / MODEL_FILE)
    if meta.get("format") != "cxrkit-model":
        raise ArtifactError(f"{d / MODEL_FILE}: not a cxrkit model")
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"])
        return MemberSpec(meta.get("name", d.name), d, list(meta["classes"]), [float(t) for t in meta["thresholds"]],
                          pre, weight, meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{d / MODEL_FILE}: incomplete model metadata ({e})") from None


def member_dir(ensemble: Path, rel: Any) -> Path:
    """An ensemble member's folder: a relative path that stays inside the ensemble folder
    (``members/00-x``); absolute paths and paths that leave it (``../other``) are refused."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ArtifactError(f"{ensemble / ENSEMBLE_FILE}: member path {rel!r} is not a relative path")
    pp = Path(rel)
    if pp.is_absolute() or rel.startswith(("/", "\\")) or ".." in pp.parts or ".." in rel.split("\\"):
        raise ArtifactError(f"{ensemble / ENSEMBLE_FILE}: member path {rel!r} leaves the ensemble folder")
    d = ensemble / pp
    root = ensemble.resolve()
    if root not in d.resolve().parents:  # e.g. a symlink pointing elsewhere
        raise ArtifactError(f"{ensemble / ENSEMBLE_FILE}: member path {rel!r} leaves the ensemble folder")
    return d


def read_spec(path: str | Path) -> ModelSpec:
    """Model or ensemble folder -> :class:`ModelSpec` (metadata only; nothing is loaded)."""
    p = Path(path)
    if p.is_file() and p.name in (MODEL_FILE, ENSEMBLE_FILE):
        p = p.parent
    if not p.exists():
        from ..utils import recover_dir

        recover_dir(p)  # a swap killed between its two renames
    if not p.exists():
        raise ArtifactError(f"{p}: model not found")
    if not p.is_dir():
        raise ArtifactError(f"{p}: a model is a folder with {MODEL_FILE} (or {ENSEMBLE_FILE})")
    if (p / ENSEMBLE_FILE).is_file():
        e = _read_json(p / ENSEMBLE_FILE)
        if e.get("format") != "cxrkit-ensemble":
            raise ArtifactError(f"{p / ENSEMBLE_FILE}: not a cxrkit ensemble")
        try:
            members = [_member(member_dir(p, m["path"]), float(m.get("weight", 1.0))) for m in e["members"]]
        except (KeyError, TypeError) as err:
            raise ArtifactError(f"{p / ENSEMBLE_FILE}: incomplete member list ({err})") from None
        return ModelSpec(e.get("name", p.name), e.get("cxrkit_version", ""), p, list(e["classes"]),
                         [float(t) for t in e["thresholds"]], members, "ensemble", e.get("label_space"), e)
    if not (p / MODEL_FILE).is_file():
        raise ArtifactError(f"{p}: no {MODEL_FILE}; not a cxrkit model folder")
    m = _member(p)
    return ModelSpec(m.name, m.meta.get("cxrkit_version", ""), p, m.classes, m.thresholds, [m], "model",
                     m.meta.get("label_space"), m.meta)


# ---------------------------------------------------------------------------------------
# preparing inputs
# ---------------------------------------------------------------------------------------


@dataclass
class DicomFilter:
    """Which DICOM images are chest radiographs to predict (hospital inference).

    Missing attributes pass (many chest DICOMs lack BodyPartExamined or ViewPosition)
    unless ``require_view``."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "TORSO", "CHEST_LAT", "CHEST LAT", "PORT CHEST")
    views: tuple[str, ...] = ("PA", "AP", "LATERAL", "LL", "RL")
    require_view: bool = False
    enabled: bool = True

    def check(self, info: Any, path: str | Path) -> str:
        """Normalised view; raises ImageReadError(NOT_CHEST_RADIOGRAPH / VIEW_EXCLUDED) to skip."""
        view = normalise_view(info.view_position) if info.view_position else ""
        if not self.enabled:
            return view
        if self.modalities and info.modality and info.modality not in self.modalities:
            raise ImageReadError(path, FailureReason.NOT_CHEST_RADIOGRAPH,
                                 f"modality {info.modality} is not one of {','.join(self.modalities)}")
        if self.modalities and not info.modality:
            raise ImageReadError(path, FailureReason.NOT_CHEST_RADIOGRAPH, "no Modality attribute")
        if self.body_parts and info.body_part and info.body_part not in self.body_parts:
            raise ImageReadError(path, FailureReason.NOT_CHEST_RADIOGRAPH,
                                 f"body part {info.body_part} is not a chest")
        if self.views and (view or self.require_view) and view not in self.views:
            raise ImageReadError(path, FailureReason.VIEW_EXCLUDED,
                                 f"view {view or 'missing'} is not one of {','.join(self.views)}")
        return view


@dataclass
class Prepared:
    """One input file, ready for the members: arrays (C x H x W per distinct preprocessing),
    DICOM identifiers and view, or the reason it is not used."""

    index: int
    arrays: list[np.ndarray] | None
    info: dict[str, str]
    reason: str = ""
    detail: str = ""


def read_dicom_film(p: Path, dicom_filter: DicomFilter | None = None, info: dict[str, str] | None = None,
                    min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A DICOM file through the header filter and the full pixel pipeline (modality LUT, VOI
    LUT / window, MONOCHROME1): H x W float32 in [0, 1]. ``info`` (when given) receives the
    identifiers and view as soon as the header is read, so a failure can still name them.
    ``min_hw``: a JPEG-baseline frame may be decoded at a reduced scale keeping this size."""
    from ..data.images import _dcmread, apply_dicom_pipeline, check_dicom_image, decode_dicom

    info = {} if info is None else info
    ds = _dcmread(p)
    dinfo = dicom_info(ds)
    info.update({"sop_instance_uid": dinfo.sop_instance_uid, "study_instance_uid": dinfo.study_instance_uid,
                 "series_instance_uid": dinfo.series_instance_uid, "modality": dinfo.modality,
                 "view": normalise_view(dinfo.view_position) if dinfo.view_position else ""})
    if dicom_filter is not None:
        info["view"] = dicom_filter.check(dinfo, p)
    check_dicom_image(ds, p, dinfo)
    img, _ = apply_dicom_pipeline(decode_dicom(ds, p, dinfo, min_hw), ds, p)
    return img


def read_films(path: str | Path, pres: Sequence[Preprocessing], dicom_filter: DicomFilter | None = None,
               info: dict[str, str] | None = None) -> list[np.ndarray]:
    """The full-size [0, 1] image each preprocessing reads from one file, decoded once: a
    DICOM goes through the header filter and the pixel pipeline a single time, and each
    ``(intensity, colour)`` is made once. Raises :class:`ImageReadError` for a bad file;
    ``info`` receives the DICOM identifiers as soon as the header is read."""
    p = Path(path)
    base: dict[tuple[str, str], np.ndarray] = {}
    # a JPEG (file or JPEG-baseline DICOM frame) may be decoded at a reduced scale: the
    # largest size any member needs, once (by intensity only: an RGB member may reuse a grey
    # member's decode; a DICOM is decoded once for all, at the largest need of any)
    need: dict[str, tuple[int, int]] = {}
    for pre in pres:
        need[pre.intensity] = tuple(max(a, b) for a, b in zip(need.get(pre.intensity, (0, 0)),  # type: ignore
                                                                pre.decode_hw))
    if is_dicom_file(p) and p.exists():
        most = tuple(max(v[i] for v in need.values()) for i in range(2)) if need else None
        base[("auto", "grey")] = read_dicom_film(p, dicom_filter, info, most)  # type: ignore[arg-type]
    out = []
    for pre in pres:
        key = (pre.intensity, pre.colour)
        if key not in base:
            grey = base.get((pre.intensity, "grey"))
            base[key] = (np.repeat(grey[..., None], 3, axis=2) if pre.colour == "rgb" and grey is not None
                         else pre.read_for_model(p, need[pre.intensity]))
        out.append(base[key])
    return out


def prepare_file(index: int, path: str | Path, pres: Sequence[Preprocessing],
                 dicom_filter: DicomFilter | None = None, corrupt: Any = None) -> Prepared:
    """Read one file once and make every member's input; never raises for a bad file.
    ``corrupt`` (a :class:`~cxrkit.data.corrupt.Corruption`) is applied to the decoded [0, 1]
    image, before each member's resize and normalisation (robustness evaluation)."""
    info: dict[str, str] = {}
    try:
        arrays = []
        for pre, img in zip(pres, read_films(path, pres, dicom_filter, info)):
            img = img if corrupt is None else corrupt(img, str(path))
            arrays.append(pre.normalize(pre.resize_image(img)))
        return Prepared(index, arrays, info)
    except ImageReadError as e:
        return Prepared(index, None, info, e.reason.value, e.detail)
    except Exception as e:  # a decoder crash on one file is that file's failure, never the run's
        return Prepared(index, None, info, FailureReason.UNREADABLE.value, f"{type(e).__name__}: {e}")


def shard_of(key: str, n: int) -> int:
    """Stable shard of an input (same on every machine, whatever the listing order)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % n


# ---------------------------------------------------------------------------------------
# predictors
# ---------------------------------------------------------------------------------------


class Predictor:
    """Weighted mean of the members' probabilities (averaged over TTA views), in the spec's
    class order. Subclasses implement :meth:`member_probs`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._cols = []
        for m in spec.members:
            missing = [c for c in spec.classes if c not in m.classes]
            if missing:
                raise ArtifactError(f"member {m.name} lacks classes {missing}")
            self._cols.append([m.classes.index(c) for c in spec.classes])
        total = sum(m.weight for m in spec.members)
        if total <= 0:
            raise ArtifactError("ensemble weights must sum to a positive number")
        self._w = [m.weight / total for m in spec.members]
        # calibration: each member's own (model.json) before the average, the ensemble's
        # (ensemble.json, fitted on the average by `cxrkit calibrate ENSEMBLE`) after it
        from .calibration import check_calibration

        self._cal = [m.meta.get("calibration") for m in spec.members]
        for m, cal in zip(spec.members, self._cal):
            if cal:
                check_calibration(cal, m.classes, str(m.path / MODEL_FILE))
        self._ens_cal = spec.meta.get("calibration") if spec.kind == "ensemble" else None
        if self._ens_cal:
            check_calibration(self._ens_cal, spec.classes, str(spec.path / ENSEMBLE_FILE))

    def drop_own_calibration(self) -> None:
        """Predict without the calibration ``cxrkit calibrate`` would refit: a model's own, or
        an ensemble's whole-ensemble one (its members' stay)."""
        if self.spec.kind == "ensemble":
            self._ens_cal = None
        else:
            self._cal = [None] * len(self._cal)

    @property
    def calibration_method(self) -> str | None:
        """How the probabilities are calibrated (None: raw sigmoid outputs)."""
        parts = sorted({c["method"] for c in self._cal if c})
        if self._ens_cal:
            return self._ens_cal["method"] + (f" (members: {', '.join(parts)})" if parts else "")
        return ", ".join(parts) or None

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.spec.thresholds, dtype=np.float64)

    @property
    def preprocessings(self) -> list[Preprocessing]:
        return self.spec.preprocessings

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version or __version__

    def member_probs(self, i: int, x: Any, views: Sequence[TTAView]) -> np.ndarray:
        raise NotImplementedError

    def predict_inputs(self, inputs: Sequence[Any], tta: str | bool | None = None) -> np.ndarray:
        """``inputs``: one batch (B x C x H x W) per distinct preprocessing -> B x classes."""
        views = tta_views(tta)
        out = None
        from .calibration import apply_calibration

        for i, w in enumerate(self._w):
            p = self.member_probs(i, inputs[self.spec.member_input(i)], views)
            if self._cal[i]:
                p = apply_calibration(p, self._cal[i])
            p = p[:, self._cols[i]]
            out = p * w if out is None else out + p * w
        assert out is not None
        if self._ens_cal:
            out = apply_calibration(out, self._ens_cal)
        # calibrated: float64, since a flattening scale (T > 1) would tie distinct float32
        # scores and so change AUC; raw sigmoid outputs stay float32
        return out if self._ens_cal or any(self._cal) else out.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


def onnx_location(member: MemberSpec) -> Path:
    """Where a member's ONNX file is: in its folder, or (read-only folders) in the cache."""
    local = member.path / ONNX_FILE
    if local.is_file():
        return local
    from ..utils import cache_root

    sha = member.meta.get("weights_sha256", "") or "unknown"
    return cache_root() / "onnx" / f"{sha[:24]}.onnx"


INT8_FILE = "model.int8.onnx"


def int8_location(member: MemberSpec) -> Path:
    """Where a member's int8 ONNX file is: next to its fp32 ONNX file (``model.int8.onnx``)."""
    f = onnx_location(member)
    return f.with_name(INT8_FILE) if f.name == ONNX_FILE else f.with_suffix(".int8.onnx")


def _cpuinfo(field: str) -> str:
    """The value of the first ``field`` line of Linux ``/proc/cpuinfo`` ("" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere). Torch-free, for
    the container; ``cxrkit.inference`` uses it too."""
    return set(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """``GenuineIntel`` / ``AuthenticAMD`` / ... from /proc/cpuinfo (empty elsewhere)."""
    return _cpuinfo("vendor_id")


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, e.g. ``AMD EPYC 9R14`` (empty elsewhere):
    benchmarks name the CPU behind each figure, training keys its precision cache by it."""
    return _cpuinfo("model name")


def cpu_int8_units() -> bool:
    """AMX-INT8 / AVX-512 VNNI / AVX-VNNI: int8 models beat fp32 on them."""
    return bool({"amx_int8", "avx512_vnni", "avx_vnni"} & cpu_flags())


def cpu_has_bf16() -> bool:
    """Hardware bfloat16 matrix units: AMX-BF16 (Sapphire Rapids on) or AVX-512 BF16."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def int8_usable(member: MemberSpec) -> bool:
    """An int8 export is there and passed its accuracy check (sidecar ``accurate``)."""
    f = int8_location(member)
    if not f.is_file():
        return False
    try:
        return bool(json.loads(f.with_name(f.name + ".json").read_text()).get("accurate", False))
    except (OSError, json.JSONDecodeError):
        return False


def _int8_speed_key(spec: ModelSpec, engine: str) -> str:
    """The int8 / fp32 files of every member (name, size, mtime), the CPU and the cores:
    what a speed measurement holds for."""
    parts = [engine, cpu_model_name() or cpu_vendor() or "cpu", str(len(os.sched_getaffinity(0))
                                                                     if hasattr(os, "sched_getaffinity") else os.cpu_count())]
    for m in spec.members:
        for f in (onnx_location(m), int8_location(m)):
            st = f.stat()
            parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _time_batches(spec: ModelSpec, engine: str, batch: int = 8, reps: int = 3) -> tuple[float, float]:
    """Seconds per batch of random inputs through every member, (the precision int8 would
    replace, int8), the best of ``reps`` after a warm-up, the two alternating."""
    import time

    other = "fp32" if engine == "onnx" else ("bf16" if cpu_has_bf16() else "fp32")
    preds = [OnnxPredictor(spec, precision=p) if engine == "onnx" else OpenVinoPredictor(spec, precision=p)
             for p in (other, "int8")]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, m.preprocessing.channels, *m.preprocessing.hw)).astype(np.float32)
          for m in spec.members]
    best = [float("inf"), float("inf")]
    for r in range(reps + 1):
        for k, p in enumerate(preds):
            t0 = time.perf_counter()
            for i in range(len(spec.members)):
                p.member_probs(i, xs[i], [TTAView("none")])
            if r:  # the first round warms up
                best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


def int8_is_faster(spec: ModelSpec, engine: str) -> bool:
    """Whether the int8 export runs faster than what ``auto`` would run otherwise (fp32 on
    onnxruntime; bf16 / fp32 on OpenVINO) on this CPU, measured once on a few batches and
    cached (``~/.cache/cxrkit/int8_speed.json``, keyed by the files, CPU model and cores):
    int8 units do not make every network faster (onnxruntime's int8 depthwise convolutions,
    e.g. EfficientNet's, ran 2.6x slower than fp32 on an AMD EPYC with VNNI)."""
    from ..utils import atomic_write, cache_root

    key = _int8_speed_key(spec, engine)
    cache = cache_root() / "int8_speed.json"
    try:
        table = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    if key not in table:
        other_s, int8_s = _time_batches(spec, engine)
        table[key] = {"engine": engine, "cpu": cpu_model_name(), "other_s": other_s, "int8_s": int8_s,
                      "model": str(spec.path)}
        log.info("measured on this CPU (%s): int8 %.1f ms, without int8 %.1f ms a batch (%s)", cpu_model_name() or
                 "unknown", int8_s * 1e3, other_s * 1e3, engine)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cache) as tmp:
                Path(tmp).write_text(json.dumps(table, indent=1))
        except OSError:  # a read-only cache: measured again next time, nothing else lost
            pass
    e = table[key]
    return float(e["int8_s"]) < float(e["other_s"])


def choose_onnx_precision(spec: ModelSpec, precision: str = "auto") -> str:
    """``fp32`` or ``int8`` for an ONNX predictor. ``auto``: int8 where every member has an
    int8 export and the CPU has int8 units, else fp32 with one log line saying why."""
    if precision not in ("auto", "fp32", "int8"):
        raise CxrkitError(f"ONNX precision must be auto, fp32 or int8 (got {precision!r})")
    if precision != "auto":
        return precision
    have = all(int8_usable(m) for m in spec.members)
    env = os.environ.get("CXRKIT_PRECISION", "").strip().lower()
    if env in ("fp32", "int8"):
        return env if env == "fp32" or have else "fp32"
    if not cpu_int8_units():
        log.info("this CPU has no VNNI / AMX int8 units: running the fp32 ONNX model%s",
                 " (an int8 export is there but would not be faster here)" if have else "")
        return "fp32"
    if not have:
        log.info("no accurate int8 export (cxrkit export MODEL --onnx --int8): running the fp32 ONNX model")
        return "fp32"
    if not int8_is_faster(spec, "onnx"):
        log.info("the int8 export is slower than fp32 on this CPU (measured): running the fp32 ONNX model")
        return "fp32"
    return "int8"


class OnnxPredictor(Predictor):
    """Members exported to ONNX (``model.onnx`` in each member folder, ``model.int8.onnx``
    for ``precision="int8"``), run with onnxruntime on the CPU. TTA views go through the
    network in one batch."""

    def __init__(self, spec: ModelSpec, threads: int | None = None, precision: str = "fp32") -> None:
        super().__init__(spec)
        self.precision = choose_onnx_precision(spec, precision)
        try:
            import onnxruntime as ort
        except ImportError:
            from ..extras import install_hint

            raise CxrkitError(f"the ONNX engine needs onnxruntime: {install_hint('onnx', ['onnxruntime'])}") from None
        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()  # nothing written under $HOME, nothing sent (leaderboards, hospitals)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # idle threads sleep instead of spinning, so decoding workers get the CPU between operators
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = []
        for m in spec.members:
            f = onnx_location(m) if self.precision == "fp32" else int8_location(m)
            if not f.is_file():
                flag = "--onnx" if self.precision == "fp32" else "--onnx --int8"
                raise ArtifactError(f"{m.path}: no {f.name}; run `cxrkit export {spec.path} {flag}` first")
            try:
                s = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for corrupt / foreign files
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ArtifactError(f"{f}: onnxruntime cannot load this ONNX file ({msg[:200]})") from None
            self.sessions.append((s, s.get_inputs()[0].name))

    def member_probs(self, i: int, x: Any, views: Sequence[TTAView]) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        b = x.shape[0]
        if len(views) > 1:
            x = np.ascontiguousarray(apply_tta_numpy(x, views))
        sess, name = self.sessions[i]
        probs = _sigmoid(sess.run(None, {name: x})[0])
        if len(views) > 1:
            probs = probs.reshape(len(views), b, -1).mean(0)
        return probs


def choose_openvino_precision(precision: str = "auto", spec: ModelSpec | None = None) -> str:
    """The OpenVINO engine's precision. ``auto`` (also ``CXRKIT_PRECISION``): ``int8`` where
    every member has an accurate int8 export (``cxrkit export MODEL --onnx --int8``: static
    QDQ quantisation calibrated on the model's validation films, checked against fp32 within
    ``INT8_TOLERANCE``) and the CPU has int8 units (VNNI / AMX), else ``bf16`` where it has
    bf16 units (AMX / AVX-512 BF16), else ``fp32``. ``int8`` / ``fp32`` / ``bf16`` as asked."""
    if precision not in ("auto", "fp32", "bf16", "int8"):
        raise CxrkitError(f"OpenVINO precision must be auto, fp32, bf16 or int8 (got {precision!r})")
    if precision == "int8":
        if spec is not None and not all(int8_location(m).is_file() for m in spec.members):
            raise CxrkitError(f"no int8 export: run cxrkit export {spec.path} --onnx --int8 first")
        return "int8"
    if precision != "auto":
        return precision
    env = os.environ.get("CXRKIT_PRECISION", "").strip().lower()
    have_int8 = spec is not None and all(int8_usable(m) for m in spec.members)
    if env in ("fp32", "bf16"):
        return env
    if env == "int8":
        return "int8" if have_int8 else "fp32"
    if have_int8 and cpu_int8_units() and spec is not None and int8_is_faster(spec, "openvino"):
        return "int8"
    return "bf16" if cpu_has_bf16() else "fp32"


def openvino_installed() -> bool:
    """OpenVINO can be imported, found without importing it (``import openvino`` sends its
    usage event: only :class:`OpenVinoPredictor` imports it, after switching that off)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_preferred() -> bool:
    """OpenVINO installed and an Intel CPU (its kernels are Intel's; on AMD onnxruntime is
    kept). ``CXRKIT_ENGINE=onnx`` / ``openvino`` / ``torch`` overrides."""
    env = os.environ.get("CXRKIT_ENGINE", "").strip().lower()
    if env in ("onnx", "openvino", "torch"):
        return env == "openvino"
    return cpu_vendor() == "GenuineIntel" and openvino_installed()


def no_vendor_telemetry() -> None:
    """Keep OpenVINO's and NNCF's usage telemetry from loading: ``import openvino`` sends an
    "import" event and writes a client id under $HOME (on a read-only HOME it warns on
    stderr), NNCF reports its calls. Both fall back to a no-op without the
    ``openvino_telemetry`` module, which this marks as absent (as onnxruntime's telemetry is
    switched off): nothing is written outside the output folders, nothing is sent."""
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError


class OpenVinoPredictor(Predictor):
    """Members' ONNX exports compiled by OpenVINO for the CPU (optional: ``pip install
    openvino``, or ``pip install -e ".[openvino]"``). ``precision`` (see
    :func:`choose_openvino_precision`): int8 (the calibrated QDQ export, ``model.int8.onnx``,
    which OpenVINO runs with its int8 kernels), bf16 (the default where the CPU has AMX /
    AVX-512 BF16: OpenVINO's own default there) or fp32; TTA views go through the network in
    one batch, as on the ONNX engine."""

    def __init__(self, spec: ModelSpec, threads: int | None = None, precision: str = "auto") -> None:
        super().__init__(spec)
        self.precision = choose_openvino_precision(precision, spec)
        try:
            no_vendor_telemetry()
            import openvino as ov
        except ImportError:
            from ..extras import install_hint

            raise CxrkitError(f"the OpenVINO engine needs openvino: {install_hint('openvino')}") from None
        core = ov.Core()
        # int8: the QDQ export's quantised layers run in int8 (VNNI / AMX), the rest in fp32
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                                  "PERFORMANCE_HINT": "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = []
        for m in spec.members:
            f = int8_location(m) if self.precision == "int8" else onnx_location(m)
            if not f.is_file():
                flag = "--onnx --int8" if self.precision == "int8" else "--onnx"
                raise ArtifactError(f"{m.path}: no {f.name}; run `cxrkit export {spec.path} {flag}` first")
            try:
                model = core.read_model(str(f))
                self.compiled.append(core.compile_model(model, "CPU", config))
            except Exception as e:  # OpenVINO raises its own types for foreign / corrupt files
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ArtifactError(f"{f}: OpenVINO cannot compile this ONNX file ({msg[:200]})") from None

    def member_probs(self, i: int, x: Any, views: Sequence[TTAView]) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        b = x.shape[0]
        if len(views) > 1:
            x = np.ascontiguousarray(apply_tta_numpy(x, views))
        out = self.compiled[i]([x])[self.compiled[i].output(0)]
        probs = _sigmoid(np.asarray(out))
        if len(views) > 1:
            probs = probs.reshape(len(views), b, -1).mean(0)
        return probs


def aggregate_studies(probs: np.ndarray, studies: Sequence[str], views: Sequence[str] | None = None,
                      mode: str = "max", lateral_weight: float = 0.5) -> tuple[list[str], np.ndarray, list[int]]:
    """One row per study: ``max`` over its images (CheXpert's rule), ``mean``, or
    ``view-weighted`` mean (frontal weight 1, lateral ``lateral_weight``, as CXR-LT winners).
    Returns (study ids in first-seen order, probabilities, images per study)."""
    if mode not in ("max", "mean", "view-weighted"):
        raise CxrkitError(f"study aggregation must be max, mean or view-weighted, got {mode!r}")
    order: dict[str, list[int]] = {}
    for i, s in enumerate(studies):
        order.setdefault(str(s), []).append(i)
    out = np.zeros((len(order), probs.shape[1]), dtype=np.float32)
    for k, idx in enumerate(order.values()):
        p = probs[idx]
        if mode == "max":
            out[k] = p.max(0)
        elif mode == "mean":
            out[k] = p.mean(0)
        else:
            w = np.array([lateral_weight if views is not None and str(views[i]).upper() in ("LATERAL", "LL", "RL")
                          else 1.0 for i in idx])
            out[k] = (p * w[:, None]).sum(0) / w.sum()
    return list(order), out, [len(v) for v in order.values()]
