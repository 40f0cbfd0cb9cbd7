"""``cxrkit demo``: the main job on the embedded synthetic data.

Generates the data, inspects it and runs every stage that exists, writing everything into
one run folder with a ``summary.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .utils import write_json


def run_demo(out: str | Path, n_studies: int = 400, seed: int = 0, console: Any = None) -> dict[str, Any]:
    from .data.demo import contact_sheet, generate_demo
    from .data.preprocess import Preprocessing
    from .data.tables import load_table, summarize
    from .report import plot_label_distribution

    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    summary: dict[str, Any] = {"out": str(out), "seed": seed, "stages": {}}

    say("[bold]1/2 synthetic data[/bold]")
    data_dir = out / "data"
    ds = generate_demo(data_dir, n_studies=n_studies, seed=seed)
    summary["stages"]["data"] = {"train_csv": str(ds.train_csv), "valid_csv": str(ds.valid_csv),
                                 "n_train": ds.n_train_images, "n_valid": ds.n_valid_images}

    say("[bold]2/2 inspect[/bold]")
    train = load_table(ds.train_csv)
    s = summarize(train)
    write_json(out / "label_distribution.json", s)
    plot_label_distribution(s, out / "label_distribution.png")
    pre = Preprocessing(size=128)
    rows = list(range(min(12, len(train))))
    imgs = [pre.load(data_dir / train.paths[i]) for i in rows]
    titles = [", ".join(c for c, v in zip(train.classes, train.labels[i]) if v == 1)[:40] or "-" for i in rows]
    contact_sheet(imgs, titles, out / "examples.png")
    summary["stages"]["inspect"] = {"json": str(out / "label_distribution.json"),
                                    "plot": str(out / "label_distribution.png"),
                                    "examples": str(out / "examples.png")}
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(out / "summary.json", summary)
    return summary
