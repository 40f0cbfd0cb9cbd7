"""Small shared helpers: atomic writes, seeding, progress bars, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    A crash or an exception leaves ``path`` as it was (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
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
