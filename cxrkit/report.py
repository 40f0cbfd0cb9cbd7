"""Plots and summaries written into run folders (PNG, matplotlib Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .utils import atomic_write

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728", "undefined": "#999999"}


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
    # a log scale cannot show 0: classes without positives get no bar (their group says undefined)
    ax.bar(x, np.where(pos > 0, pos, np.nan), color=colours, label="positive")
    if unc.any():
        ax.bar(x, np.where(unc > 0, unc, np.nan), bottom=np.where(pos > 0, pos, 0.0), color="#bbbbbb",
               label="uncertain (-1)")
    if unk.any():
        ax.plot(x, np.where(unk > 0, unk, np.nan), "k.", label="unknown (blank)")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7 if len(names) > 30 else 8)
    ax.set_ylabel("images")
    title = f"{summary.get('format', '')}: {summary.get('n_images', 0):,} images, {len(summary['classes'])} classes"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0.5)
    present = [g for g in GROUP_COLOURS if any(c.get("group") == g for c in classes)] or list(GROUP_COLOURS)[:3]
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in present]
    labels = [f"{g} (positives)" if g != "undefined" else "no positives (undefined)" for g in present]
    h, lab = ax.get_legend_handles_labels()
    extra = [(hh, ll) for hh, ll in zip(h, lab) if ll != "positive"]
    # outside the axes, so it never covers a bar
    ax.legend(handles + [e[0] for e in extra], labels + [e[1] for e in extra], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0.0)
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


def plot_roc_pr(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], roc_path: str | Path,
                pr_path: str | Path, max_classes: int = 30) -> tuple[Path, Path]:
    """Per-class ROC and precision-recall curves as small multiples (known labels only)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    n = min(len(classes), max_classes)
    cols = min(5, n)
    rows = int(np.ceil(n / cols))
    figs = {}
    for kind in ("roc", "pr"):
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        figs[kind] = (fig, axes.ravel())
    from .metrics import average_precision, roc_auc

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aucs, aps = roc_auc(targets[:, :n], probs[:, :n]), average_precision(targets[:, :n], probs[:, :n])
    for j in range(n):
        known = ~np.isnan(targets[:, j])
        y, s = targets[known, j], probs[known, j]
        for kind in ("roc", "pr"):
            ax = figs[kind][1][j]
            ax.axis("on")
            score = aucs[j] if kind == "roc" else aps[j]
            label = "AUC" if kind == "roc" else "AP"
            ax.set_title(f"{classes[j][:24]}\n{label} {score:.3f} ({int(np.nansum(y))} pos)" if np.isfinite(score)
                         else f"{classes[j][:24]}\n{label} undefined", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            if len(y) == 0 or y.min() == y.max():
                ax.text(0.5, 0.5, "undefined\n(no positives or\nno negatives)", ha="center", va="center", fontsize=7)
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, lw=1.2)
                ax.plot([0, 1], [0, 1], "k:", lw=0.6)
                ax.set_xlabel("FPR", fontsize=6)
                ax.set_ylabel("TPR", fontsize=6)
            else:
                prec, rec, _ = precision_recall_curve(y, s)
                ax.plot(rec, prec, lw=1.2)
                ax.axhline(y.mean(), color="k", ls=":", lw=0.6)
                ax.set_xlabel("recall", fontsize=6)
                ax.set_ylabel("precision", fontsize=6)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
    for kind, path in (("roc", roc_path), ("pr", pr_path)):
        fig = figs[kind][0]
        fig.suptitle("ROC (validation)" if kind == "roc" else "precision-recall (validation)", fontsize=9)
        fig.tight_layout()
        _save(fig, path)
    return Path(roc_path), Path(pr_path)


def plot_cft_gains(results: Sequence[Any], metric: str, path: str | Path) -> Path:
    """Per-category change of the validation (and held-out) score after CFT, with the
    candidate chosen for each category."""
    plt = _plt()
    names = [r.name for r in results]
    val = np.array([(r.val_after - r.val_before) if np.isfinite(r.val_before) else 0.0 for r in results])
    has_test = any(r.test_before is not None for r in results)
    test = np.array([(r.test_after - r.test_before) if r.test_before is not None and r.test_after is not None
                     else 0.0 for r in results])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.2))
    width = 0.4 if has_test else 0.7
    ax.bar(x - (width / 2 if has_test else 0), 100 * val, width, label="validation (choice)", color="#1f77b4")
    if has_test:
        ax.bar(x + width / 2, 100 * test, width, label="held-out", color="#ff7f0e")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\n[{r.chosen.split('/')[0]}]" if not r.chosen.startswith("original") else n
                        for n, r in zip(names, results)], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(f"{metric.upper()} change (points)")
    ax.set_title(f"CFT: per-category {metric.upper()} change (chosen candidate in brackets)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_cft_curves(results: Sequence[Any], path: str | Path, max_classes: int = 20) -> Path:
    """Learning curves per category: GA best train / validation fitness per generation (the
    CFT paper's Fig. 3), BP validation score per epoch. The chosen candidate is drawn thick
    with its best validation point marked; other candidates thin. Categories beyond
    ``max_classes`` or without curves are named in the figure's footnote."""
    plt = _plt()
    with_curves = [r for r in results if r.curves]
    shown = with_curves[:max_classes]
    left_out = [r.name for r in results if not r.curves] + [r.name for r in with_curves[max_classes:]]
    n = max(1, len(shown))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), shown):
        ax.axis("on")
        for key, cv in r.curves.items():
            chosen = key == r.chosen
            lw, alpha = (2.0, 1.0) if chosen else (0.8, 0.6)
            tag = f"{key}{' (chosen)' if chosen else ''}"
            if "train" in cv and "val" in cv and len(cv["train"]) == len(cv["val"]):  # GA
                ax.plot(cv["train"], "--", lw=lw, alpha=alpha, label=f"{tag} train")
            if "val" in cv and len(cv["val"]):
                line, = ax.plot(cv["val"], "-", lw=lw, alpha=alpha, label=f"{tag} valid")
                if chosen:
                    k = int(np.nanargmax(cv["val"]))
                    ax.plot([k], [cv["val"][k]], "o", color=line.get_color(), ms=6, zorder=5,
                            label=f"best valid {cv['val'][k]:.3f}")
        ax.set_title(f"{r.name[:26]}: {r.chosen}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("generation / epoch (sampled)", fontsize=6)
        ax.set_ylabel("score (AUC / AP)", fontsize=6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, loc="lower right")
    fig.suptitle("CFT learning curves (thick: the chosen candidate, dot: its best validation score)", fontsize=9)
    if left_out:
        fig.text(0.01, 0.005, "not shown: " + ", ".join(left_out[:12]) + (" ..." if len(left_out) > 12 else "")
                 + " (kept their original row or beyond the first " + str(max_classes) + ")", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def plot_corruptions(img: np.ndarray, corruptions: Sequence[Any], path: str | Path, key: str = "",
                     title: str = "") -> Path:
    """Contact sheet: one film clean and under each corruption, so a person can see what a
    robustness score measured (``corruptions``: :class:`~cxrkit.data.corrupt.Corruption`)."""
    plt = _plt()
    panels = [("clean", img)] + [(c.label, c(img, key)) for c in corruptions]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, im) in zip(axes[0], panels):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9, wrap=True)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
