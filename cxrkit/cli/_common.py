"""What every command module of the ``cxrkit`` command line shares: the typer app and its
groups, the consoles, the Ctrl-C hook and small option parsers.

User mistakes (missing files, bad tables, unreadable images, invalid options) end with a
one-line ``error: ...`` on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import CxrkitError

app = typer.Typer(
    name="cxrkit",
    help="cxrkit: long-tailed, multi-label chest X-ray classification with uncertain and missing labels.\n\n"
    "Train models, calibrate them category by category (CFT), ensemble them, ship them as a "
    "leaderboard container and run batch inference on hospital DICOM.\n\n"
    "-v / --verbose and -q / --quiet may come before or after the command (cxrkit predict ... -v).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Label tables and images: demo data, inspect, render, partial labels.", no_args_is_help=True)
app.add_typer(data_app, name="data")
weights_app = typer.Typer(help="Pretrained weight files: convert third-party state dicts for timm.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
pacs_app = typer.Typer(help="cxrkit as a DICOM node: receive studies from a PACS, send results back as SR.", no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("cxrkit")


#: set by long commands: returns the one line printed on Ctrl-C (where the run stopped, how to resume)
_ON_INTERRUPT: list[Any] = []


def _quote_argv(extra: list[str] | None = None, drop: tuple[str, ...] = ()) -> str:
    import shlex

    args = [a for a in sys.argv[1:] if a not in drop]
    return "cxrkit " + " ".join(shlex.quote(a) for a in args + [e for e in (extra or []) if e not in args])


def _version(value: bool) -> None:
    if value:
        console.print(f"cxrkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log info and debug messages to the console.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for h in logging.getLogger().handlers:
        h.setLevel(level)  # the console shows warnings; run folders keep their own INFO logs
    for noisy in ("pydicom", "PIL", "matplotlib", "timm", "monai", "pylibjpeg", "openjpeg", "libjpeg", "rle"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if quiet:
        os.environ["CXRKIT_QUIET"] = "1"


def _device(device: str) -> Any:
    from ..inference.engines import resolve_device

    return resolve_device(device)


def _csv_list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip().upper() for v in value.split(",") if v.strip())


def _parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return (0, 1)
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise CxrkitError(f"--shard {shard!r}: use i/n, e.g. 0/4") from None
    return (i, n)


def _first_table_image(table: Path, images_root: Path | None, format: str | None) -> Any:
    from ..data.tables import load_table, resolve_image_paths

    paths, exists = resolve_image_paths(load_table(table, format=format), images_root)
    return (Path(p) for p, ok in zip(paths, exists) if ok)
