"""Write docs/cli.md: every command of ``cxrkit`` with its arguments and options, from the
typer app itself (so it cannot drift: tests/test_docs.py checks it is current).

    python scripts/gen_cli_reference.py            # rewrite docs/cli.md
    python scripts/gen_cli_reference.py --check    # exit 1 when docs/cli.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _click():
    """typer >= 0.20 carries its own copy of click; older typer uses click itself."""
    try:
        import typer._click.core as core
    except ImportError:  # pragma: no cover
        import click.core as core
    return core


def _commands(cmd, path):
    """(command path, click command) for every command, depth first, in help order."""
    core = _click()
    yield path, cmd
    if hasattr(cmd, "list_commands"):  # a group
        for name in cmd.list_commands(core.Context(cmd)):
            yield from _commands(cmd.get_command(core.Context(cmd), name), f"{path} {name}")


def _cell(text: str) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render() -> str:
    import typer

    from cxrkit.cli import app

    click = _click()

    root = typer.main.get_command(app)
    out = ["# Command reference", "",
           "Generated from the `cxrkit` command itself (`python scripts/gen_cli_reference.py`); the",
           "[commands guide](commands.md) explains them with examples. `-v` / `-q` may also come",
           "after the command.", ""]
    for path, cmd in _commands(root, "cxrkit"):
        ctx = click.Context(cmd, info_name=path)
        out += [f"## `{path}`", ""]
        doc = (cmd.help or "").strip().split("\n\n")
        if doc and doc[0]:
            out += [" ".join(doc[0].split()), ""]
        out += ["```text", " ".join(cmd.collect_usage_pieces(ctx)).join([f"{path} ", ""]).strip(), "```", ""]
        examples = [p for p in doc[1:] if p.strip().startswith("Example")]
        if examples:
            out += ["```bash", examples[0].strip().split(":", 1)[1].strip(), "```", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if hasattr(cmd, "list_commands"):
            names = cmd.list_commands(ctx)
            out += ["Commands: " + ", ".join(f"`{path} {n}`" for n in names), ""]
        if params:
            out += ["| argument / option | type | default | what |", "|---|---|---|---|"]
            for p in params:
                option = p.param_type_name == "option"
                names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts]) if option else f"`{p.name.upper()}`"
                kind = "flag" if option and getattr(p, "is_flag", False) else _cell(
                    str(p.display_type(ctx) if hasattr(p, "display_type") else p.type.name).strip("<>"))
                default = "" if p.default is None or not option or callable(p.default) \
                    else _cell(repr(p.default) if isinstance(p.default, str) else p.default)
                help_ = _cell(getattr(p, "help", "") or ("required" if p.required else ""))
                out.append(f"| {names} | {kind} | {default} | {help_} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    text = render()
    if "--check" in sys.argv[1:]:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: python scripts/gen_cli_reference.py", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
