"""Batch inference: inputs (files, folders, label tables, hospital DICOM trees) -> one row per
image (and per study), and every input that is not used -> a reason.

* Each file is read once (DICOM header filters first: modality, body part, view), decoded
  through the DICOM pixel pipeline and prepared for every member of the model / ensemble.
  Decoding runs in worker processes while the model runs.
* Rows are appended and flushed batch by batch: killing the run loses nothing already
  written; ``resume`` skips inputs already in the output or the failures file, so a second
  run never duplicates rows; ``shard=(i, n)`` takes the inputs whose path hashes to i.
* One bad file never stops the run; the run fails only when nothing could be predicted.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file
from .data.tables import LabelTable, load_table, resolve_image_paths
from .errors import CxrkitError, FailureReason
from .runtime import DicomFilter, Predictor, Prepared, aggregate_studies, prepare_file, shard_of

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".json", ".gz", ".tsv"}
ID_COLUMNS = ["sop_instance_uid", "study_instance_uid", "series_instance_uid"]


@dataclass
class InputItem:
    """One image to predict: its path, the id written in the output, and table metadata."""

    path: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    path: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def _is_image_candidate(p: Path) -> bool:
    suf = p.suffix.lower()
    return suf in IMAGE_SUFFIXES or suf in DICOM_SUFFIXES or is_dicom_file(p)


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for fn in sorted(files):
            yield Path(dirpath) / fn


def collect_inputs(inputs: Sequence[str | Path], images_root: str | Path | None = None,
                   table_format: str | None = None) -> tuple[list[InputItem], list[Failure]]:
    """Expand inputs: an image file, a folder (recursive: PNG/JPEG/BMP/TIFF/DICOM, and any
    file carrying the DICOM preamble whatever its name) or a label table (its image paths).
    Every file seen that is not used is returned as a :class:`Failure` with its reason."""
    items: list[InputItem] = []
    failures: list[Failure] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            failures.append(Failure(str(p), FailureReason.MISSING.value, "file or folder not found"))
            continue
        if p.is_dir():
            found = 0
            for f in _walk(p):
                if _is_image_candidate(f):
                    items.append(InputItem(f, str(f)))
                    found += 1
                else:
                    failures.append(Failure(str(f), "unsupported_file", "not an image, DICOM or known suffix"))
            if not found:
                log.warning("%s: no image files found", p)
            continue
        if (p.suffix.lower() in TABLE_SUFFIXES or p.name.lower().endswith(".csv.gz")) and not is_dicom_file(p):
            table = load_table(p, format=table_format)
            items += table_items(table, images_root, failures)
            continue
        items.append(InputItem(p, str(p)))
    return items, failures


def table_items(table: LabelTable, images_root: str | Path | None, failures: list[Failure]) -> list[InputItem]:
    paths, exists = resolve_image_paths(table, images_root)
    out = []
    meta_cols = [c for c in ("study", "view") if c in table.meta.columns]
    for i, (pth, ok) in enumerate(zip(paths, exists)):
        if not ok:
            failures.append(Failure(str(table.paths[i]), FailureReason.MISSING.value, f"image not found ({pth})"))
            continue
        out.append(InputItem(pth, str(table.ids[i]), {c: str(table.meta[c].iloc[i]) for c in meta_cols}))
    return out


# ---------------------------------------------------------------------------------------
# preparing batches
# ---------------------------------------------------------------------------------------

_PREP: dict[str, Any] = {}


def _prepare_task(arg: tuple[int, str]) -> Prepared:
    return prepare_file(arg[0], arg[1], _PREP["pres"], _PREP["filter"])


def prepared_batches(paths: Sequence[Path], pres: Sequence[Any], batch_size: int = 16, workers: int = 0,
                     dicom_filter: DicomFilter | None = None) -> Iterator[list[Prepared]]:
    """Prepared inputs in order, in batches; ``workers`` > 0 decodes in forked processes
    ahead of the model."""
    tasks = [(i, str(p)) for i, p in enumerate(paths)]
    _PREP.update(pres=list(pres), filter=dicom_filter)
    if workers > 0 and len(tasks) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            batch: list[Prepared] = []
            for prep in pool.imap(_prepare_task, tasks, chunksize=max(1, min(8, batch_size // workers or 1))):
                batch.append(prep)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        return
    batch = []
    for t in tasks:
        batch.append(_prepare_task(t))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_batch(predictor: Predictor, batch: list[Prepared], tta: str | bool | None = None
                  ) -> tuple[list[Prepared], np.ndarray]:
    """The readable entries of a batch and their probabilities."""
    good = [p for p in batch if p.arrays is not None]
    if not good:
        return good, np.zeros((0, len(predictor.classes)), np.float32)
    inputs = [np.stack([p.arrays[k] for p in good]) for k in range(len(predictor.preprocessings))]  # type: ignore[index]
    return good, predictor.predict_inputs(inputs, tta=tta)


def predict_paths(predictor: Predictor, paths: Sequence[Path], batch_size: int = 16, workers: int = 0,
                  tta: str | bool | None = None, show_progress: bool = True, description: str = "predicting",
                  dicom_filter: DicomFilter | None = None) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Probabilities of every usable file: (probs n_ok x C, indices into ``paths``, failures)."""
    from .utils import progress

    paths = list(paths)
    failures: list[Failure] = []
    probs, idx = [], []
    n_batches = -(-len(paths) // batch_size) if paths else 0
    for batch in progress(prepared_batches(paths, predictor.preprocessings, batch_size, workers, dicom_filter),
                          description, total=n_batches, enabled=show_progress):
        failures += [Failure(str(paths[p.index]), p.reason, p.detail) for p in batch if p.arrays is None]
        good, pr = predict_batch(predictor, batch, tta)
        if good:
            probs.append(pr)
            idx.extend(p.index for p in good)
    out = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)), np.float32)
    return out, np.asarray(idx, dtype=np.int64), failures


# ---------------------------------------------------------------------------------------
# streaming output
# ---------------------------------------------------------------------------------------


class RowWriter:
    """Appends CSV rows and flushes them to disk batch by batch; on resume, drops a last line
    cut short by a kill and reports the keys already written."""

    def __init__(self, path: Path, columns: list[str], resume: bool) -> None:
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if resume and path.exists() and path.stat().st_size:
            _drop_partial_last_line(path)
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header != columns:
                    raise CxrkitError(f"{path}: was written with other columns (another model?); cannot resume it")
                self.done = {row[0] for row in reader if row}
            self.f = open(path, "a", newline="")
        else:
            self.f = open(path, "w", newline="")
            csv.writer(self.f).writerow(columns)
            self._sync()
        self.w = csv.writer(self.f)

    def write(self, rows: list[list[Any]]) -> None:
        if rows:
            self.w.writerows(rows)
            self._sync()

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _drop_partial_last_line(path: Path) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def failures_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


def studies_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".studies.csv")


def _fmt(p: float) -> str:
    return f"{p:.6f}"


def run_predict(predictor: Predictor, inputs: Sequence[str | Path], out: str | Path, batch_size: int = 16,
                workers: int = 0, tta: str | bool | None = None, images_root: str | Path | None = None,
                show_progress: bool = True, dicom_filter: DicomFilter | None = None, resume: bool = False,
                overwrite: bool = False, shard: tuple[int, int] = (0, 1), study: str | None = None,
                lateral_weight: float = 0.5, sr_dir: str | Path | None = None) -> dict[str, Any]:
    """``cxrkit predict``: collect inputs, predict, stream rows to ``out`` and reasons to
    ``<out>.failures.csv``; with ``study``, also ``<out>.studies.csv``."""
    from .utils import progress

    out = Path(out)
    fpath = failures_path(out)
    if out.exists() and not (resume or overwrite):
        raise CxrkitError(f"{out}: exists; use --resume to continue it or --overwrite to replace it")
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise CxrkitError(f"shard must be i/n with 0 <= i < n (got {i}/{n})")
    items, pre_failures = collect_inputs(inputs, images_root)
    if n > 1:
        items = [it for it in items if shard_of(str(it.path), n) == i]
        pre_failures = [f for f in pre_failures if shard_of(f.path, n) == i]
    classes = predictor.classes
    thr = predictor.thresholds
    columns = (["path", "study", "view", *ID_COLUMNS, "model", "model_version", *classes,
                *(f"threshold:{c}" for c in classes), *(f"call:{c}" for c in classes)])
    writer = RowWriter(out, columns, resume)
    fwriter = RowWriter(fpath, ["path", "reason", "detail"], resume)
    skip = writer.done | fwriter.done
    todo = [it for it in items if it.id not in skip]
    new_failures = [f for f in pre_failures if f.path not in skip]
    fwriter.write([[f.path, f.reason, f.detail] for f in new_failures])
    n_done = n_failed = 0
    try:
        paths = [it.path for it in todo]
        n_batches = -(-len(paths) // batch_size) if paths else 0
        for batch in progress(prepared_batches(paths, predictor.preprocessings, batch_size, workers, dicom_filter),
                              "predicting", total=n_batches, enabled=show_progress):
            bad = [p for p in batch if p.arrays is None]
            fwriter.write([[todo[p.index].id, p.reason, p.detail] for p in bad])
            n_failed += len(bad)
            good, probs = predict_batch(predictor, batch, tta)
            rows = []
            for p, pr in zip(good, probs):
                it = todo[p.index]
                study_id = it.meta.get("study") or p.info.get("study_instance_uid") or str(it.path.parent)
                view = it.meta.get("view") or p.info.get("view", "")
                rows.append([it.id, study_id, view, *(p.info.get(k, "") for k in ID_COLUMNS), predictor.name,
                             predictor.version, *(_fmt(v) for v in pr), *(_fmt(t) for t in thr),
                             *(int(v >= t) for v, t in zip(pr, thr))])
            writer.write(rows)
            n_done += len(rows)
    finally:
        writer.close()
        fwriter.close()
    total_rows = len(writer.done) + n_done
    result: dict[str, Any] = {"predicted": n_done, "already_done": len(writer.done), "failed": n_failed
                              + len(new_failures), "out": str(out), "failures": str(fpath)}
    if study:
        result["studies"] = str(write_studies(out, classes, thr, study, lateral_weight))
    if sr_dir is not None:
        from .sr import write_study_reports

        result["sr"] = write_study_reports(out, sr_dir, predictor)
    if total_rows == 0:
        raise CxrkitError(f"nothing could be predicted ({result['failed']} input(s) not used; see {fpath})")
    return result


def read_rows(out: str | Path, classes: Sequence[str]) -> tuple[list[dict[str, str]], np.ndarray]:
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[c]) for c in classes] for r in rows], dtype=np.float32).reshape(len(rows), len(classes))
    return rows, probs


def write_studies(out: str | Path, classes: Sequence[str], thresholds: np.ndarray, mode: str,
                  lateral_weight: float = 0.5) -> Path:
    """Per-study rows from the per-image output (all rows, resumed ones included)."""
    from .utils import atomic_write

    rows, probs = read_rows(out, classes)
    ids, sp, counts = aggregate_studies(probs, [r["study"] for r in rows], [r["view"] for r in rows], mode,
                                        lateral_weight)
    path = studies_path(out)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "n_images", "aggregation", *classes, *(f"call:{c}" for c in classes)])
        for s, p, k in zip(ids, sp, counts):
            w.writerow([s, k, mode, *(_fmt(v) for v in p), *(int(v >= t) for v, t in zip(p, thresholds))])
    return path
