"""The manual: a short README with the two commands first, every page of docs/ in the site's
navigation, the site builds with ``mkdocs build --strict`` (a broken link, anchor or API
reference fails), and the command reference holds every command and option that
``cxrkit --help`` shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        for v in (item.values() if isinstance(item, dict) else [item]):
            out += _nav_pages(v) if isinstance(v, list) else [v]
    return out


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = text.split("```")[1]
    assert "cxrkit demo" in first_block and "pytest" in first_block
    assert text.index("```") < 40  # right under the title


def test_every_page_is_in_the_navigation_and_the_readme_sections_moved() -> None:
    cfg = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = set(_nav_pages(cfg["nav"]))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages - nav == set(), f"pages not reachable from the site's navigation: {sorted(pages - nav)}"
    assert nav - pages == set()
    docs = {p: (REPO / "docs" / p).read_text() for p in pages}
    for heading, page in (("Quickstart, in order", "hospital-folders.md"), ("grand-challenge.org", "leaderboards.md"),
                          ("Connect to a PACS", "pacs.md"), ("Training details", "training.md"),
                          ("Category-wise Fine-Tuning", "cft-guide.md"), ("Label tables", "labels.md"),
                          ("Export a MONAI Bundle", "bundles.md"), ("What is in the demo", "getting-started.md")):
        assert re.search(rf"^#+ {re.escape(heading)}", docs[page], flags=re.M), (heading, page)


def test_the_command_reference_is_current() -> None:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_reference.py"), "--check"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_every_command_and_option_of_help_is_in_the_reference() -> None:
    from typer.testing import CliRunner

    from cxrkit.cli import app

    ref = (REPO / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## `|\Z)", ref, flags=re.M | re.S))
    runner = CliRunner()
    todo, seen, n_options = [[]], 0, 0
    while todo:
        path = todo.pop()
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
        assert r.exit_code == 0, (path, r.output)
        name = " ".join(["cxrkit", *path])
        assert name in sections, f"{name} is not in docs/cli.md"
        panels = "".join(re.findall(r"╭─ (?:Options|Arguments)[^\n]*\n(.*?)╰", r.output, flags=re.S))
        options = {o for line in panels.splitlines() for o in re.findall(r"^│\s+(--[a-z][a-z0-9-]*)", line)} - {"--help"}
        n_options += len(options)
        missing = [o for o in options if f"`{o}`" not in sections[name]]
        assert not missing, (name, missing)
        m = re.search(r"Commands ─+╮\n(.*?)╰", r.output, flags=re.S)
        for line in (m.group(1).splitlines() if m else []):
            sub = re.match(r"│ (\S+)", line)
            if sub:
                todo.append([*path, sub.group(1)])
        seen += 1
    assert seen >= 20 and n_options >= 100  # the help panels were read


def test_the_manual_builds_strict(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=REPO, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                                                   "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "cxrkit.inference.runtime.Predictor" in api and "read_report" in api  # mkdocstrings ran
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
