"""Small shared helpers: atomic writes and folders, file digests, seeding, progress bars, JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .errors import ArtifactError, ConfigError

T = TypeVar("T")


# Temporary names carry the writing process's id (``.<name>.<pid>.<random>``), so a later run
# can tell the leftovers of a killed process (pid no longer alive) from a live writer's files.
_TMP_RE = r"\.(?P<name>.+)\.(?P<kind>tmp|stage|old)-(?P<pid>\d+)(?:-[A-Za-z0-9_]+)?(?P<suffix>\.[^.]*)?$"
COMPLETE_MARKER = ".cxrkit-staged-complete"


#: how cxrkit reads and writes its CSV files: UTF-8, and any file name round-trips, even
#: non-UTF-8 bytes
CSV_ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _leftovers(parent: Path, name: str) -> list[tuple[Path, str, int]]:
    """Temporary / staging / old copies of ``parent/name`` left by processes that are dead."""
    import re

    out = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return out
    rx = re.compile(_TMP_RE)
    for e in entries:
        m = rx.match(e.name)
        if m and m.group("name") == name and not _pid_alive(int(m.group("pid"))):
            out.append((e, m.group("kind"), int(m.group("pid"))))
    return out


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def clean_leftovers(path: str | Path) -> None:
    """Remove temporary files next to ``path`` left by killed processes (never a live one's)."""
    path = Path(path)
    for p, kind, _ in _leftovers(path.parent, path.name):
        if kind == "tmp":
            _remove(p)


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    A crash or an exception leaves ``path`` as it was (never half-written); temporary files
    of killed earlier runs are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix or path.suffix or ".tmp",
                                   dir=path.parent)
    except OSError as e:  # name the file the user asked for, not the temporary one
        raise OSError(e.errno, f"cannot write here ({e.strerror})", str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; follow the umask like open()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(folder: str | Path) -> None:
    """Give a folder made with mkdtemp (0700) and its files the modes ``mkdir`` / ``open``
    would have given them under the umask."""
    mask = current_umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def recover_dir(dst: str | Path) -> Path:
    """Resolve what a killed folder swap left next to ``dst`` into exactly one complete folder.

    A swap (:func:`replace_dir`) renames ``dst`` to ``.<name>.old-<pid>`` and then the complete
    staging folder (it holds :data:`COMPLETE_MARKER`) to ``dst``. Killed between the two renames,
    ``dst`` is missing: the complete staging folder is moved into place (or, without one, the old
    folder back). Leftovers of dead processes (incomplete staging folders, old copies) are then
    removed. Called before every staged write and when a model / ensemble is loaded."""
    dst = Path(dst)
    left = _leftovers(dst.parent, dst.name)
    if not left:
        return dst
    if not dst.exists():
        staged = sorted((p for p, k, _ in left if k == "stage" and (p / COMPLETE_MARKER).is_file()),
                        key=lambda p: p.stat().st_mtime)
        olds = sorted((p for p, k, _ in left if k == "old"), key=lambda p: p.stat().st_mtime)
        pick = staged[-1] if staged else (olds[-1] if olds else None)
        if pick is not None:
            try:
                os.replace(pick, dst)
            except OSError:  # a read-only place: leave it for a writer
                return dst
            with contextlib.suppress(OSError):
                (dst / COMPLETE_MARKER).unlink()
    for p, kind, _ in _leftovers(dst.parent, dst.name):
        if dst.exists() or kind != "old":  # an old copy is the last complete one until dst exists
            _remove(p)
    return dst


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing ``dst`` is replaced only afterwards.
    Modes follow the umask (the temporary folder was private while being written).

    Recoverable: ``tmp`` is marked complete before the first rename, so a kill between the
    renames is resolved by :func:`recover_dir` on the next write or load."""
    make_public(tmp)
    dst = Path(dst)
    (tmp / COMPLETE_MARKER).write_bytes(b"")
    old = None
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir() or dst.is_symlink():
            raise ArtifactError(f"{dst}: exists and is not a folder")
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    with contextlib.suppress(OSError):
        (dst / COMPLETE_MARKER).unlink()
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a private temporary folder next to ``dst`` to write into; on success it replaces
    ``dst`` (:func:`replace_dir`), on an exception it is removed and ``dst`` stays as it was.
    What killed earlier writes of ``dst`` left behind is resolved first (:func:`recover_dir`)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dst)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.stage-{os.getpid()}-", dir=dst.parent))
    except OSError as e:
        raise OSError(e.errno, f"cannot write here ({e.strerror})", str(dst)) from None
    try:
        yield tmp
        replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# output folders of commands that replace a whole folder (export --deploy, ensemble, cft)
# ---------------------------------------------------------------------------------------

OUTPUT_MARKER = ".cxrkit-output.json"


def mark_output(folder: str | Path, command: str) -> None:
    """Record in a folder being written which cxrkit command made it (see :func:`check_output_dir`)."""
    (Path(folder) / OUTPUT_MARKER).write_text(json.dumps({"command": command, "pid": os.getpid()}) + "\n")


def output_command(folder: str | Path) -> str | None:
    try:
        return str(json.loads((Path(folder) / OUTPUT_MARKER).read_text()).get("command"))
    except (OSError, ValueError, AttributeError):
        return None


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or lies inside it (both resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_output_dir(out: str | Path, command: str, sources: Iterable[str | Path] = (),
                     overwrite: bool = False) -> Path:
    """Refuse to replace a folder that is not a previous output of ``command``.

    ``out`` may be new, empty, or a folder this command wrote before (its marker file says so);
    anything else needs ``overwrite``. A target that is, contains or lies inside one of the
    ``sources`` (the model being exported, the ensemble's members) is always refused."""
    from .errors import CxrkitError

    out = Path(out)
    for s in sources:
        s = Path(s)
        if _same_or_inside(s, out) or _same_or_inside(out, s):
            raise CxrkitError(f"{out}: is, contains or lies inside the input {s}; choose another output folder")
    recover_dir(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise CxrkitError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and output_command(out) != command and not overwrite:
            raise CxrkitError(f"{out}: exists, is not empty and was not written by `cxrkit {command}`; "
                              "choose another folder or pass --overwrite to replace it")
    return out


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update_with_file_stats(h: Any, paths: Iterable[str | Path]) -> None:
    """Feed each path with its size and modification time (or ``missing``) into the hash
    ``h``: a cheap fingerprint of a set of files for cache keys."""
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())


def replace_fields(obj: T, what: str, **kw: Any) -> T:
    """``dataclasses.replace`` that names unknown fields in a :class:`ConfigError`."""
    names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    bad = sorted(set(kw) - names)
    if bad:
        raise ConfigError(f"unknown {what} option(s) {bad}; valid: {sorted(names)}")
    return dataclasses.replace(obj, **kw)  # type: ignore[type-var]


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values, recursively: NumPy scalars and arrays -> Python numbers and lists,
    NaN / inf -> None, paths -> strings, enums -> their value."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and not isinstance(obj, (str, int, bool)):  # enums
        return obj.value
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "value"):  # enums
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def progress(iterable: Iterable[T], description: str, total: int | None = None, enabled: bool = True,
             count: Any = None) -> Iterator[T]:
    """A rich progress bar over ``iterable`` on stderr; silent when ``enabled`` is false or
    when ``CXRKIT_QUIET`` is set (tests). ``count(item)``: how much one item advances the bar
    (e.g. the images in a batch, so the bar counts images, not batches)."""
    if not enabled or os.environ.get("CXRKIT_QUIET"):
        yield from iterable
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.console import Console

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*cols, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total if total is not None else _len(iterable))
        for item in iterable:
            yield item
            prog.advance(task, count(item) if count is not None else 1)


def _len(x: Any) -> int | None:
    try:
        return len(x)
    except TypeError:
        return None


def cache_root() -> Path:
    """cxrkit's cache folder: ``$CXRKIT_CACHE_DIR/..`` when set (images go directly there),
    else ``$XDG_CACHE_HOME/cxrkit`` or ``~/.cache/cxrkit``."""
    env = os.environ.get("CXRKIT_CACHE_DIR")
    if env:
        return Path(env).parent
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cxrkit"


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Make ``folder`` (and its parents) and prove a file can be written there, before any
    work: an output folder that cannot take the results fails the command at once, in one
    line, not after the whole run. Works for root too (a read-only file system, a path under
    a file), where permission bits say nothing."""
    import errno

    from .errors import CxrkitError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cxrkit-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        blocker = file_in_the_way(folder) if e.errno in (errno.ENOTDIR, errno.EEXIST) else None
        if blocker is not None:
            why = f"{blocker} is a file, not a folder"
        raise CxrkitError(f"{what} {folder}: cannot write there ({why})") from None
    return folder


def file_in_the_way(path: str | Path) -> Path | None:
    """The file (not folder) at ``path`` or above it that stops ``path`` being a folder."""
    path = Path(path)
    return next((q for q in [path, *path.parents] if q.exists() and not q.is_dir()), None)
