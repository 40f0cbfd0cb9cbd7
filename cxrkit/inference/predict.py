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

from ..data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file
from ..data.tables import LabelTable, load_table, resolve_image_paths
from ..errors import CxrkitError, FailureReason
from .runtime import DicomFilter, Predictor, Prepared, aggregate_studies, prepare_file, shard_of

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".json", ".gz", ".tsv"}
ID_COLUMNS = ["sop_instance_uid", "study_instance_uid", "series_instance_uid"]


@dataclass
class InputItem:
    """One image to predict: its path, the id written in the output, table metadata, and the
    key that assigns it to a shard (independent of where the share is mounted)."""

    path: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass
class Failure:
    path: str
    reason: str
    detail: str
    key: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def _is_image_candidate(p: Path) -> bool:
    suf = p.suffix.lower()
    return suf in IMAGE_SUFFIXES or suf in DICOM_SUFFIXES or is_dicom_file(p)


def _walk(folder: Path, failures: list[Failure], root_key: str) -> Iterator[Path]:
    """Files under ``folder`` in a stable order, following symlinked folders; a link that leads
    back into a folder being walked (a loop) or that is broken becomes a failure row."""
    seen: set[tuple[int, int]] = set()

    def walk(d: Path, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            st = d.stat()
        except OSError as e:
            failures.append(Failure(str(d), FailureReason.UNREADABLE.value, f"cannot open folder ({e.strerror or e})",
                                    _key(d, folder, root_key)))
            return
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors or ident in seen:
            failures.append(Failure(str(d), FailureReason.SYMLINK_LOOP.value,
                                    "symlinked folder leads to a folder already walked; not followed",
                                    _key(d, folder, root_key)))
            return
        seen.add(ident)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            failures.append(Failure(str(d), FailureReason.UNREADABLE.value, f"cannot list folder ({e.strerror or e})",
                                    _key(d, folder, root_key)))
            return
        for e in entries:
            p = Path(e.path)
            try:
                is_dir = e.is_dir(follow_symlinks=True)
                is_file = e.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                yield from walk(p, ancestors | {ident})
            elif is_file:
                yield p
            elif e.is_symlink():
                failures.append(Failure(str(p), FailureReason.MISSING.value, "broken symbolic link",
                                        _key(p, folder, root_key)))
            else:
                failures.append(Failure(str(p), "unsupported_file", "not a regular file", _key(p, folder, root_key)))

    yield from walk(folder, frozenset())


def _key(p: Path, root: Path, root_key: str) -> str:
    """Shard key: the path relative to the input folder it was found in, prefixed by that
    folder's name, so two machines that mount the share at different places agree."""
    try:
        rel = p.relative_to(root).as_posix()
    except ValueError:
        rel = p.name
    return f"{root_key}/{rel}" if rel != "." else root_key


def _real(p: Path) -> str:
    try:
        return os.path.realpath(p)
    except OSError:
        return str(p)


def collect_inputs(inputs: Sequence[str | Path], images_root: str | Path | None = None,
                   table_format: str | None = None) -> tuple[list[InputItem], list[Failure]]:
    """Expand inputs: an image file, a folder (recursive: PNG/JPEG/BMP/TIFF/DICOM, and any
    file carrying the DICOM preamble whatever its name; symlinked folders are followed, loops
    reported) or a label table (its image paths). Every file seen that is not used is returned
    as a :class:`Failure` with its reason; a file reached twice (the same argument given twice,
    a folder and a file inside it, two links to one file) is used once, by its real path."""
    items: list[InputItem] = []
    failures: list[Failure] = []
    seen: set[str] = set()

    def add(item: InputItem) -> None:
        real = _real(item.path)
        if real not in seen:
            seen.add(real)
            items.append(item)

    def fail(f: Failure) -> None:
        real = _real(Path(f.path))
        if real not in seen:
            seen.add(real)
            failures.append(f)

    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            fail(Failure(str(p), FailureReason.MISSING.value, "file or folder not found", p.name))
            continue
        if p.is_dir():
            found = 0
            walk_failures: list[Failure] = []
            root_key = p.resolve().name or "/"
            for f in _walk(p, walk_failures, root_key):
                if _is_image_candidate(f):
                    add(InputItem(f, str(f), key=_key(f, p, root_key)))
                    found += 1
                else:
                    fail(Failure(str(f), "unsupported_file", "not an image, DICOM or known suffix",
                                 _key(f, p, root_key)))
            for f in walk_failures:
                fail(f)
            if not found and len(inputs) > 1:  # alone, the run's own error says it
                log.warning("%s: no image files found", p)
            continue
        if (p.suffix.lower() in TABLE_SUFFIXES or p.name.lower().endswith(".csv.gz")) and not is_dicom_file(p):
            table = load_table(p, format=table_format)
            for it in table_items(table, images_root, failures):
                add(it)
            continue
        add(InputItem(p, str(p), key=p.name))
    return items, failures


def table_items(table: LabelTable, images_root: str | Path | None, failures: list[Failure]) -> list[InputItem]:
    paths, exists = resolve_image_paths(table, images_root)
    out = []
    meta_cols = [c for c in ("study", "view") if c in table.meta.columns]
    for i, (pth, ok) in enumerate(zip(paths, exists)):
        if not ok:
            failures.append(Failure(str(table.paths[i]), FailureReason.MISSING.value, f"image not found ({pth})",
                                    str(table.paths[i])))
            continue
        out.append(InputItem(pth, str(table.ids[i]), {c: str(table.meta[c].iloc[i]) for c in meta_cols},
                             key=str(table.paths[i])))
    return out


# ---------------------------------------------------------------------------------------
# preparing batches
# ---------------------------------------------------------------------------------------

_PREP: dict[str, Any] = {}


def _prepare_task(arg: tuple[int, str]) -> Prepared:
    return prepare_file(arg[0], arg[1], _PREP["pres"], _PREP["filter"], _PREP.get("corrupt"))


def _decode_worker(tasks: list[tuple[int, str]], queue: Any, current: Any, parent: int) -> None:
    """A decoding process: prepares its share of the tasks in order and puts each result on
    its own bounded queue (no lock shared with another worker). ``current`` holds the index of
    the file being prepared (-1 between files), so a crash is pinned on its file. Ctrl-C is
    the main process's to handle (SIGINT ignored here); the process ends by itself when the
    main one is gone."""
    import queue as _queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for t in tasks:
        current.value = t[0]
        item = _prepare_task(t)
        current.value = -1
        while True:
            try:
                queue.put(item, timeout=1.0)
                break
            except _queue.Full:
                if os.getppid() != parent:  # the main process died: nobody will read this
                    os._exit(0)
    queue.close()
    queue.join_thread()


class DecodePool:
    """``n`` forked decoding processes; task ``k`` goes to process ``k % n`` and results come
    back in task order, each process at most ``ahead`` results ahead of the model.

    Built for interruption: a process shares no lock with another (a process of
    ``multiprocessing.Pool`` killed while holding its queue's lock left the pool's
    ``terminate`` waiting forever: Ctrl-C hung ``predict --workers 2``), the processes ignore
    SIGINT, and :meth:`close` ends them with SIGTERM, then SIGKILL, within seconds. A process
    that dies (a decoder crash) costs only the file it was on: that file gets a failure row
    and a new process takes over the rest of its share (results it had not handed over yet
    are prepared again)."""

    MAX_RESTARTS_OFF_FILE = 3  # deaths between files in a row before the next file is given up

    def __init__(self, tasks: Sequence[tuple[int, str]], n: int, ahead: int = 4) -> None:
        import multiprocessing as mp

        self._ctx = mp.get_context("fork")
        self.n = max(1, min(n, len(tasks)))
        self.ahead = max(1, ahead)
        self.shares = [list(tasks[w::self.n]) for w in range(self.n)]
        self.pos = [0] * self.n  # results taken from each share
        self.crashed: dict[int, str] = {}  # task index -> why its process died on it
        self.off_file = [0] * self.n
        self.procs: list[Any] = [None] * self.n
        self.queues: list[Any] = [None] * self.n
        self.current: list[Any] = [None] * self.n
        self._spawn(range(self.n))

    def _spawn(self, which: Any) -> None:
        import signal

        # no SIGINT between fork and the worker's own handler: Ctrl-C goes to the main process only
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for w in which:
                todo = [t for t in self.shares[w][self.pos[w]:] if t[0] not in self.crashed]
                q = self._ctx.Queue(maxsize=self.ahead)
                cur = self._ctx.Value("q", -1, lock=False)
                p = self._ctx.Process(target=_decode_worker, args=(todo, q, cur, os.getpid()), daemon=True,
                                      name=f"cxrkit-decode-{w}")
                p.start()
                self.procs[w], self.queues[w], self.current[w] = p, q, cur
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def __iter__(self) -> Iterator[Prepared]:
        total = sum(len(s) for s in self.shares)
        for k in range(total):
            yield self._next(k % self.n)

    def _next(self, w: int) -> Prepared:
        """The next result of share ``w``; a failure row for a file its process died on."""
        import queue as _queue

        while True:
            idx = self.shares[w][self.pos[w]][0]
            if idx in self.crashed:
                self.pos[w] += 1
                return Prepared(idx, None, {}, FailureReason.UNREADABLE.value,
                                f"the decoding process died on this file ({self.crashed[idx]})")
            try:
                item = self.queues[w].get(timeout=0.5)
            except _queue.Empty:
                if self.procs[w].is_alive():
                    continue
                try:  # it may have handed its result over just before it died
                    item = self.queues[w].get(timeout=0.2)
                except _queue.Empty:
                    self._restart(w)
                    continue
            self.pos[w] += 1
            self.off_file[w] = 0
            return item

    def _restart(self, w: int) -> None:
        """Process ``w`` died: pin it on the file it was preparing, start another for the rest."""
        import signal

        code = self.procs[w].exitcode
        why = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        on = int(self.current[w].value)
        if on < 0:  # between two files: nothing to blame; give up the next file after a few tries
            self.off_file[w] += 1
            if self.off_file[w] >= self.MAX_RESTARTS_OFF_FILE:
                on = self.shares[w][self.pos[w]][0]
        if on >= 0:
            self.crashed[on] = why
            self.off_file[w] = 0
            log.warning("a decoding process died (%s) on one file; that file gets a failure row and the rest goes on",
                        why)
        self.queues[w].cancel_join_thread()
        self.queues[w].close()
        self._spawn([w])

    def close(self) -> None:
        """End every process: SIGTERM, then SIGKILL after 2 s; reaps them (no zombies)."""
        import time

        for p in self.procs:
            if p is not None and p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 2.0
        for p in self.procs:
            if p is not None:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join(2.0)
        for q in self.queues:
            if q is not None:
                q.cancel_join_thread()
                q.close()


def prepared_batches(paths: Sequence[Path], pres: Sequence[Any], batch_size: int = 16, workers: int = 0,
                     dicom_filter: DicomFilter | None = None, corrupt: Any = None) -> Iterator[list[Prepared]]:
    """Prepared inputs in order, in batches; ``workers`` > 0 decodes in forked processes
    (:class:`DecodePool`) ahead of the model. ``corrupt``: a corruption applied to each
    decoded image."""
    tasks = [(i, str(p)) for i, p in enumerate(paths)]
    _PREP.update(pres=list(pres), filter=dicom_filter, corrupt=corrupt)
    if workers > 0 and len(tasks) > 1:
        pool = DecodePool(tasks, workers, ahead=max(2, (2 * batch_size) // workers))
        try:
            batch: list[Prepared] = []
            for prep in pool:
                batch.append(prep)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:  # also on Ctrl-C, an error, or a consumer that stops early
            pool.close()
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
                  dicom_filter: DicomFilter | None = None, corrupt: Any = None
                  ) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Probabilities of every usable file: (probs n_ok x C, indices into ``paths``, failures)."""
    from ..utils import progress

    paths = list(paths)
    failures: list[Failure] = []
    probs, idx = [], []
    for batch in progress(prepared_batches(paths, predictor.preprocessings, batch_size, workers, dicom_filter,
                                           corrupt), description, total=len(paths), enabled=show_progress, count=len):
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


from ..utils import CSV_ENCODING  # noqa: E402  (re-exported: callers import it from here too)


class RowWriter:
    """Appends CSV rows and flushes them to disk batch by batch; on resume, drops a last row cut
    short by a kill (whatever it holds: a quoted file name with a newline in it included) and
    reports the keys already written. Fields are quoted by the csv module, so every row,
    whatever its file name, reads back as written."""

    def __init__(self, path: Path, columns: list[str], resume: bool) -> None:
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if resume and path.exists() and path.stat().st_size:
            rows = _complete_rows(path, columns)
            self.done = {row[0] for row in rows}
            self.f = open(path, "a", newline="", **CSV_ENCODING)
        else:
            self.f = open(path, "w", newline="", **CSV_ENCODING)
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


def _complete_rows(path: Path, columns: list[str]) -> list[list[str]]:
    """The complete rows of a streamed CSV; a torn last row (no final newline, or fewer fields,
    e.g. a kill inside a quoted name) is cut off the file, which is rewritten atomically."""
    import io

    from ..utils import atomic_write

    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise CxrkitError(f"{path}: cannot be read back to resume it ({e})") from None
    if not rows or rows[0] != columns:
        raise CxrkitError(f"{path}: was written with other columns (another model?); cannot resume it")
    body = rows[1:]
    torn = bool(body) and (not text.endswith(("\n", "\r")) or len(body[-1]) != len(columns))
    if torn:
        body = body[:-1]
    if any(len(r) != len(columns) for r in body):
        raise CxrkitError(f"{path}: has rows with a wrong number of fields; cannot resume it")
    if torn or (text and not text.endswith(("\n", "\r"))):
        with atomic_write(path) as tmp, open(tmp, "w", newline="", **CSV_ENCODING) as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(body)
    return body


def failures_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


def studies_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".studies.csv")


def _fmt(p: float) -> str:
    return f"{p:.6f}"


@dataclass
class PredictOptions:
    """Everything ``cxrkit predict`` can be asked, as one object checked once
    (:meth:`check`) before any image is read or any file written."""

    batch_size: int = 16
    workers: int = 0
    tta: str | bool | None = None
    images_root: str | Path | None = None
    show_progress: bool = True
    dicom_filter: DicomFilter | None = None
    resume: bool = False
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    study: str | None = None
    lateral_weight: float = 0.5
    sr_dir: str | Path | None = None
    study_key: str = "auto"
    fhir_dir: str | Path | None = None
    codes_file: str | Path | None = None

    def check(self) -> PredictOptions:
        check_predict_options(tta=self.tta, study=self.study, shard=self.shard, lateral_weight=self.lateral_weight,
                              batch_size=self.batch_size, study_key=self.study_key)
        return self


def run_predict(predictor: Predictor, inputs: Sequence[str | Path], out: str | Path,
                options: PredictOptions | None = None, **kwargs: Any) -> dict[str, Any]:
    """``cxrkit predict``: collect inputs, predict, stream rows to ``out`` and reasons to
    ``<out>.failures.csv``; with ``study``, also ``<out>.studies.csv``; then the per-study
    outputs (SR, FHIR). ``options`` (or its fields as keyword arguments)."""
    o = (options or PredictOptions(**kwargs)).check()
    out = Path(out)
    fpath = failures_path(out)
    if out.exists() and not (o.resume or o.overwrite):
        raise CxrkitError(f"{out}: exists; use --resume to continue it or --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise CxrkitError(f"{out}: is a folder; --out is the CSV file to write")
    existed = {p: p.exists() for p in (out, fpath)}
    items, pre_failures = _shard_inputs(inputs, o)
    run = _predict_rows(predictor, items, pre_failures, out, fpath, o)
    result: dict[str, Any] = {"predicted": run["done"], "already_done": run["already"],
                              "failed": run["failed"], "out": str(out), "failures": str(fpath)}
    if o.study:
        if run["inferred"]:
            log.warning("%d image(s) carry no study information (no DICOM StudyInstanceUID, no study column): %s",
                        run["inferred"], "grouped into studies by their folder (--study-key folder)"
                        if o.study_key == "folder" else
                        "each is its own study; --study-key folder groups the images of a folder")
        result["studies"] = str(write_studies(out, predictor.classes, predictor.thresholds, o.study, o.lateral_weight))
    result.update(_study_documents(predictor, out, fpath, o))
    if run["done"] + run["already"] == 0:
        _nothing_predicted(inputs, existed, out, fpath, result["failed"])
    return result


def _shard_inputs(inputs: Sequence[str | Path], o: PredictOptions) -> tuple[list[InputItem], list[Failure]]:
    """The inputs found, and those not usable, of this shard (by the mount-independent key:
    the path relative to the input folder / the table's path)."""
    items, pre_failures = collect_inputs(inputs, o.images_root)
    i, n = o.shard
    if n > 1:
        items = [it for it in items if shard_of(it.key or str(it.path), n) == i]
        pre_failures = [f for f in pre_failures if shard_of(f.key or f.path, n) == i]
    return items, pre_failures


def _predict_rows(predictor: Predictor, items: list[InputItem], pre_failures: list[Failure], out: Path,
                  fpath: Path, o: PredictOptions) -> dict[str, int]:
    """Predict what is not in the output or failures file yet, streaming rows batch by batch."""
    from ..utils import progress

    classes, thr = predictor.classes, predictor.thresholds
    columns = (["path", "study", "view", *ID_COLUMNS, "model", "model_version", *classes,
                *(f"threshold:{c}" for c in classes), *(f"call:{c}" for c in classes)])
    writer = RowWriter(out, columns, o.resume)
    fwriter = RowWriter(fpath, ["path", "reason", "detail"], o.resume)
    skip = writer.done | fwriter.done
    todo = [it for it in items if it.id not in skip]
    new_failures = [f for f in pre_failures if f.path not in skip]
    fwriter.write([[f.path, f.reason, f.detail] for f in new_failures])
    n = {"done": 0, "failed": len(new_failures), "inferred": 0, "already": len(writer.done)}
    try:
        paths = [it.path for it in todo]
        for batch in progress(prepared_batches(paths, predictor.preprocessings, o.batch_size, o.workers,
                                               o.dicom_filter),
                              "predicting (images)", total=len(paths), enabled=o.show_progress, count=len):
            bad = [p for p in batch if p.arrays is None]
            fwriter.write([[todo[p.index].id, p.reason, p.detail] for p in bad])
            n["failed"] += len(bad)
            good, probs = predict_batch(predictor, batch, o.tta)
            rows = []
            for p, pr in zip(good, probs):
                it = todo[p.index]
                study_id = it.meta.get("study") or p.info.get("study_instance_uid")
                if not study_id:  # no study information: its own study, or its folder when asked
                    n["inferred"] += 1
                    study_id = str(it.path.parent) if o.study_key == "folder" else it.id
                view = it.meta.get("view") or p.info.get("view", "")
                rows.append([it.id, study_id, view, *(p.info.get(k, "") for k in ID_COLUMNS), predictor.name,
                             predictor.version, *(_fmt(v) for v in pr), *(_fmt(t) for t in thr),
                             *(int(v >= t) for v, t in zip(pr, thr))])
            writer.write(rows)
            n["done"] += len(rows)
    finally:
        writer.close()
        fwriter.close()
    return n


def _study_documents(predictor: Predictor, out: Path, fpath: Path, o: PredictOptions) -> dict[str, Any]:
    """The per-study documents asked for (DICOM SR, FHIR), their failures added to the run's."""
    result: dict[str, Any] = {}
    if o.sr_dir is not None:
        from ..hospital.sr import write_study_reports

        rep = write_study_reports(out, o.sr_dir, predictor, o.codes_file)
        _add_failures(fpath, rep.failures)
        result.update(sr=str(rep), sr_written=rep.written, sr_failed=rep.failed, sr_changed=rep.changed)
    if o.fhir_dir is not None:
        from ..hospital.fhir import write_study_fhir

        frep = write_study_fhir(out, o.fhir_dir, predictor, o.codes_file)
        _add_failures(fpath, frep.failures)
        result.update(fhir=str(frep), fhir_written=frep.written, fhir_failed=frep.failed)
    return result


def _nothing_predicted(inputs: Sequence[str | Path], existed: dict[Path, bool], out: Path, fpath: Path,
                       failed: int) -> None:
    """A run that predicted nothing leaves no empty CSV behind (the failures file stays when
    it has rows) and says why."""
    for p, was in existed.items():
        if not was and p.exists() and (p == out or failed == 0):
            p.unlink()
    if failed == 0:
        raise CxrkitError(f"nothing to predict: {', '.join(str(i) for i in inputs)[:200]} hold(s) no image files")
    raise CxrkitError(f"nothing could be predicted ({failed} input(s) not used; see {fpath})")


def _add_failures(fpath: Path, failures: list[tuple[str, str, str]]) -> None:
    if failures:
        fw = RowWriter(fpath, ["path", "reason", "detail"], resume=True)
        try:
            fw.write([list(f) for f in failures])
        finally:
            fw.close()


def check_predict_options(tta: str | bool | None = None, study: str | None = None, shard: tuple[int, int] = (0, 1),
                          lateral_weight: float = 0.5, batch_size: int = 16, study_key: str = "auto") -> None:
    """Every option of ``predict`` is checked before any image is read or any file written."""
    from ..data.augment import tta_views

    tta_views(tta)
    if study_key not in ("auto", "folder"):
        raise CxrkitError(f"--study-key must be auto or folder, got {study_key!r}")
    if study is not None and study not in ("max", "mean", "view-weighted"):
        raise CxrkitError(f"--study must be max, mean or view-weighted, got {study!r}")
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise CxrkitError(f"shard must be i/n with 0 <= i < n (got {i}/{n})")
    if not 0 <= lateral_weight <= 1:
        raise CxrkitError(f"--lateral-weight must be in [0, 1], got {lateral_weight}")
    if batch_size < 1:
        raise CxrkitError("--batch-size must be at least 1")


def read_rows(out: str | Path, classes: Sequence[str]) -> tuple[list[dict[str, str]], np.ndarray]:
    with open(out, newline="", **CSV_ENCODING) as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[c]) for c in classes] for r in rows], dtype=np.float32).reshape(len(rows), len(classes))
    return rows, probs


def write_studies(out: str | Path, classes: Sequence[str], thresholds: np.ndarray, mode: str,
                  lateral_weight: float = 0.5) -> Path:
    """Per-study rows from the per-image output (all rows, resumed ones included)."""
    from ..utils import atomic_write

    rows, probs = read_rows(out, classes)
    ids, sp, counts = aggregate_studies(probs, [r["study"] for r in rows], [r["view"] for r in rows], mode,
                                        lateral_weight)
    path = studies_path(out)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", **CSV_ENCODING) as f:
        w = csv.writer(f)
        w.writerow(["study", "n_images", "aggregation", *classes, *(f"call:{c}" for c in classes)])
        for s, p, k in zip(ids, sp, counts):
            w.writerow([s, k, mode, *(_fmt(v) for v in p), *(int(v >= t) for v, t in zip(p, thresholds))])
    return path
