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


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    A crash or an exception leaves ``path`` as it was (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
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
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing ``dst`` is replaced only afterwards.
    Modes follow the umask (the temporary folder was private while being written)."""
    make_public(tmp)
    dst = Path(dst)
    old = None
    if dst.exists():
        if not dst.is_dir():
            raise ArtifactError(f"{dst}: exists and is not a folder")
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a private temporary folder next to ``dst`` to write into; on success it replaces
    ``dst`` (:func:`replace_dir`), on an exception it is removed and ``dst`` stays as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    except OSError as e:
        raise OSError(e.errno, f"cannot write here ({e.strerror})", str(dst)) from None
    try:
        yield tmp
        replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def progress(iterable: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """A rich progress bar over ``iterable`` on stderr; silent when ``enabled`` is false or
    when ``CXRKIT_QUIET`` is set (tests)."""
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
            prog.advance(task)


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
