"""Plots and summaries written into run folders (PNG, matplotlib Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .utils import atomic_write

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _plt()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_label_distribution(summary: Mapping[str, Any], path: str | Path, max_classes: int = 80) -> Path:
    """Long-tail bar chart: classes sorted by positives (log scale), coloured by
    head / medium / tail, with uncertain labels stacked on top and unknown shown as a line."""
    plt = _plt()
    classes = sorted(summary["classes"], key=lambda c: -c["positive"])[:max_classes]
    names = [c["name"] for c in classes]
    pos = np.array([c["positive"] for c in classes], dtype=float)
    unc = np.array([c["uncertain"] for c in classes], dtype=float)
    unk = np.array([c["unknown"] for c in classes], dtype=float)
    colours = [GROUP_COLOURS.get(c.get("group", "medium"), "#777777") for c in classes]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    ax.bar(x, np.maximum(pos, 0.8), color=colours, label="positive")
    if unc.any():
        ax.bar(x, unc, bottom=np.maximum(pos, 0.8), color="#bbbbbb", label="uncertain (-1)")
    if unk.any():
        ax.plot(x, np.maximum(unk, 0.8), "k.", label="unknown (blank)")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7 if len(names) > 30 else 8)
    ax.set_ylabel("images")
    title = f"{summary.get('format', '')}: {summary.get('n_images', 0):,} images, {len(summary['classes'])} classes"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    labels = [f"{g} (positives)" for g in GROUP_COLOURS]
    h, lab = ax.get_legend_handles_labels()
    extra = [(hh, ll) for hh, ll in zip(h, lab) if ll != "positive"]
    ax.legend(handles + [e[0] for e in extra], labels + [e[1] for e in extra], loc="upper right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(series: Mapping[str, Sequence[float]], path: str | Path, xlabel: str = "epoch",
                ylabel: str = "", title: str = "") -> Path:
    """Several named series against their index (loss curves, metric curves)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=float)
        if ys.size:
            ax.plot(np.arange(1, ys.size + 1), ys, label=name, marker="." if ys.size < 40 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
