"""``cxrkit demo``: the main job on the embedded demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import app, console


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("demo-run"),
    n_studies: Annotated[int, typer.Option("--n-studies", min=20, help="Synthetic studies to generate.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data, the training and CFT; the same seed gives the same run.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start clean: remove an earlier demo run in --out first (otherwise its finished stages are reused).")] = False,
) -> None:
    """Run the main job on the embedded SYNTHETIC demo data.

    Stages, in order: generate the data, inspect it, train, evaluate, category-wise
    fine-tuning, predict; all into one run folder. Finishes on a laptop CPU in a few minutes.
    Run again into the same folder, it reuses the finished stages.

    Example: cxrkit demo --out demo-run"""
    from ..demo_job import run_demo

    summary = run_demo(out, n_studies=n_studies, seed=seed, console=console, overwrite=overwrite)
    console.print(f"[bold]demo finished[/bold]: everything is in {summary['out']}")
