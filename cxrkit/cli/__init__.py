"""The ``cxrkit`` command line (typer). Thin: every command calls the library.

One module per command group (``data``; ``train`` with evaluate / calibrate; ``predict`` with
explain; ``models`` with ensemble / export / weights; ``cft``; ``pacs``; ``demo``); what they
share is in ``_common``. User mistakes (missing files, bad tables, unreadable images,
invalid options) end with a one-line ``error: ...`` on stderr and exit code 2; never a
traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import CxrkitError
from . import train, predict, models, cft, data, pacs, demo  # noqa: F401, I001  (each registers its commands, in help order)
from ._common import _ON_INTERRUPT, app, err_console

__all__ = ["app", "main", "hoist_global_flags"]


GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def hoist_global_flags(args: list[str]) -> list[str]:
    """``cxrkit predict MODEL DIR -v`` -> ``cxrkit -v predict MODEL DIR``: the global flags are
    the app's options, which click only takes before the command; users (and the README's
    "-v shows it") put them after. No command has an option of the same name, and nothing
    after a ``--`` is touched."""
    try:
        end = args.index("--")
    except ValueError:
        end = len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def main() -> None:
    """Console-script entry point: one-line errors, exit code 2 for user mistakes."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover
        from click import exceptions as cx

    try:
        rv = app(args=hoist_global_flags(sys.argv[1:]), prog_name="cxrkit",
                 standalone_mode=False)  # cxrkit prints usage errors itself: one line, exit 2
        if rv == 130 and _ON_INTERRUPT:  # typer turns Ctrl-C inside a command into exit code 130
            _interrupted()
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except getattr(cx, "NoArgsIsHelpError", ()) as e:  # `cxrkit` / `cxrkit data` alone: the help
        print(e.ctx.get_help())
        sys.exit(0)
    except cx.UsageError as e:  # missing argument, unknown command or option, bad value
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        err_console.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C inside a command (click turns KeyboardInterrupt into Abort)
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except CxrkitError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # missing / unwritable / existing paths, full disk
        import errno

        where = f"{e.filename}: " if e.filename else ""
        msg = e.strerror or str(e)
        if e.errno == errno.ENOTDIR and e.filename:  # an output path under an existing file
            from ..utils import file_in_the_way

            blocker = file_in_the_way(Path(str(e.filename)).parent)
            if blocker is not None:
                msg = f"cannot be created: {blocker} is a file, not a folder"
        err_console.print(f"error: {where}{msg}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> None:
    """One line on Ctrl-C: where the run stopped and the command that continues it; exit 130."""
    msg = "interrupted"
    if _ON_INTERRUPT:
        try:
            msg = _ON_INTERRUPT[-1]()
        except Exception:  # the message must never hide the interrupt
            pass
    err_console.print(msg, markup=False, highlight=False, soft_wrap=True)
    sys.exit(130)

