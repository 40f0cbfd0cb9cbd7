"""The house rules a newcomer relies on: imports flow one way (no circle, lazy imports
included), no function over 100 lines, no CLI module over 400."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PKG = REPO / "cxrkit"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the cxrkit modules it imports anywhere in its body (lazy imports too)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                # a package and its own modules may import each other (re-exports)
                if t in mods and t != m and not (t.startswith(m + ".") or m.startswith(t + ".")):
                    graph[m].add(t)
    return graph


def test_no_import_circles() -> None:
    graph = _imports(_modules())
    seen: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(v: str, path: list[str]) -> None:
        seen[v] = 1
        for w in sorted(graph[v]):
            if seen.get(w) == 1:
                cycles.append(path[path.index(w):] + [w])
            elif w not in seen:
                visit(w, path + [w])
        seen[v] = 2

    for v in sorted(graph):
        if v not in seen:
            visit(v, [v])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_function_over_100_lines() -> None:
    long = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{p.relative_to(REPO)}::{node.name} ({n} lines)")
    assert not long, long


def test_cli_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PKG / "cli").glob("*.py")}
    assert sizes and max(sizes.values()) <= 400, sizes
