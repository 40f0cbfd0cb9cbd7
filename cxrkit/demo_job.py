"""``cxrkit demo``: the main job on the embedded synthetic data.

Generates the data, inspects it, trains the demo recipe (``DEMO_RECIPE``, the same as
``configs/demo.yaml``), evaluates the model on the validation split and predicts a few
files, writing everything into one run folder with a ``summary.json``.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

from .utils import write_json

#: The recipe `cxrkit demo` trains; configs/demo.yaml holds the same with relative data paths.
DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "label_space": "chexpert",
    "data": {
        "train": {"table": "demo-data/train.csv"},
        "valid": {"table": "demo-data/valid.csv"},
        "label_policy": {"uncertain": "ones-lsr", "unknown": "negative"},
        "cache": "memory",
        "workers": 0,
    },
    "preprocessing": {"size": 64, "channels": 1, "mean": [0.5], "std": [0.25]},
    "augmentation": {"name": "chexpert"},
    "model": {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [16, 32, 64, 128]}},
    "loss": {"name": "bce", "params": {"reduction": "mean"}},
    "optim": {"name": "adam", "lr": 0.003, "weight_decay": 0.0001},
    "schedule": {"name": "onecycle", "pct_start": 0.2},
    "train": {"epochs": 12, "batch_size": 32, "monitor": "mAUC", "threshold_method": "f1", "seed": 0},
}


#: CFT in the demo: greedy over CFT-BP-ASL and CFT-GA-AUC x U-Ignore / U-Ones / U-Zeros,
#: chosen per category on valid.csv, reported on the held-out test.csv.
DEMO_CFT: dict[str, Any] = {"method": "greedy", "preset": "chexpert", "policies": ["ignore", "ones", "zeros"],
                            "candidates": ["bp-asl", "ga-auc"], "ga": {"generations": 300, "patience": 100},
                            "bp": {"epochs": 300, "lr": 1e-3, "patience": 100}}


#: what a demo run writes into its folder (``--overwrite`` removes exactly these)
DEMO_OUTPUTS = ("data", "train", "model-cft", "cache", "label_distribution.json", "label_distribution.png",
                "examples.png", "evaluation.json", "predictions.csv", "predictions.failures.csv", "summary.json")


def run_demo(out: str | Path, n_studies: int = 600, seed: int = 0, console: Any = None,
             epochs: int | None = None, cft: dict[str, Any] | None = None, workers: int | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Run every stage into ``out``. A second run into the same folder reuses the stages that
    finished (the trained model, the CFT model, the predictions) and completes the rest;
    ``overwrite`` starts clean (it removes only what a demo run writes)."""
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(out)
    previous = _prepare_out(out, n_studies, seed, overwrite, say)
    t0 = time.time()
    stages: dict[str, Any] = {}
    summary: dict[str, Any] = {"out": str(out), "seed": seed, "n_studies": n_studies, "stages": stages}
    say("[bold]1/6 synthetic data[/bold]")
    ds = _stage_data(out, n_studies, seed, stages)
    say("[bold]2/6 inspect[/bold]")
    _stage_inspect(out, ds, stages)
    say("[bold]3/6 train[/bold]")
    model_dir = _stage_train(out, ds, seed, epochs, console, stages)
    say("[bold]4/6 evaluate[/bold]")
    _stage_evaluate(out, ds, model_dir, say, stages)
    say("[bold]5/6 category-wise fine-tuning[/bold]")
    cft_dir = _stage_cft(out, ds, model_dir, seed, cft, workers, previous, console, say, stages)
    say("[bold]6/6 predict[/bold] (with the fine-tuned model)")
    from .inference.ensemble import load_predictor
    from .inference.predict import run_predict

    test_dir = out / "data" / "synthetic-cxr-demo" / ("test" if ds.test_csv else "valid")
    pr = run_predict(load_predictor(cft_dir), [test_dir], out / "predictions.csv", show_progress=False, overwrite=True)
    say(f"predicted {pr['predicted']} images -> {pr['out']}")
    stages["predict"] = pr
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(out / "summary.json", summary)
    return summary


def _prepare_out(out: Path, n_studies: int, seed: int, overwrite: bool, say: Any) -> dict[str, Any] | None:
    """The output folder: new, an earlier demo run to complete (its summary is returned), or,
    with ``overwrite``, an earlier demo run removed. Anything else is refused."""
    import json
    import shutil

    from .errors import CxrkitError

    if out.exists() and not out.is_dir():
        raise CxrkitError(f"{out}: exists and is not a folder")
    previous = None
    if out.is_dir() and any(out.iterdir()):
        ours = all(p.name in DEMO_OUTPUTS or p.name.startswith(".") for p in out.iterdir())
        if not ours:
            raise CxrkitError(f"{out}: holds files a demo run did not write; choose another --out")
        if overwrite:
            say(f"--overwrite: removing the earlier demo run in {out} and starting clean")
            for name in DEMO_OUTPUTS:
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        else:
            try:
                previous = json.loads((out / "summary.json").read_text())
            except (OSError, ValueError):
                previous = None
            if previous is not None and (previous.get("seed") != seed or previous.get("n_studies", n_studies)
                                         != n_studies):
                raise CxrkitError(f"{out}: holds a demo run with another --seed / --n-studies; pass --overwrite "
                                  "to replace it or choose another --out")
            say(f"{out} holds an earlier demo run: reusing its finished stages"
                f"{' (it had finished)' if previous else ''}; pass --overwrite to start clean")
    out.mkdir(parents=True, exist_ok=True)
    return previous


def _stage_data(out: Path, n_studies: int, seed: int, stages: dict[str, Any]) -> Any:
    from .data.demo import generate_demo

    ds = generate_demo(out / "data", n_studies=n_studies, seed=seed)
    stages["data"] = {"train_csv": str(ds.train_csv), "valid_csv": str(ds.valid_csv),
                      "n_train": ds.n_train_images, "n_valid": ds.n_valid_images}
    return ds


def _stage_inspect(out: Path, ds: Any, stages: dict[str, Any]) -> None:
    """The label distribution (JSON + PNG) and a contact sheet of training films."""
    from .data.demo import contact_sheet
    from .data.preprocess import Preprocessing
    from .data.tables import load_table, summarize
    from .report import plot_label_distribution

    train_table = load_table(ds.train_csv)
    s = summarize(train_table)
    write_json(out / "label_distribution.json", s)
    plot_label_distribution(s, out / "label_distribution.png")
    pre = Preprocessing(size=128)
    rows = list(range(min(12, len(train_table))))
    imgs = [pre.load(out / "data" / train_table.paths[i]) for i in rows]
    titles = [", ".join(c for c, v in zip(train_table.classes, train_table.labels[i]) if v == 1) or "-"
              for i in rows]
    contact_sheet(imgs, titles, out / "examples.png")
    stages["inspect"] = {"json": str(out / "label_distribution.json"),
                         "plot": str(out / "label_distribution.png"), "examples": str(out / "examples.png")}


def _stage_train(out: Path, ds: Any, seed: int, epochs: int | None, console: Any, stages: dict[str, Any]) -> Path:
    """The demo recipe trained into ``out/train`` (resumed when a checkpoint is there)."""
    from .train.config import load_config
    from .train.trainer import fit

    recipe = copy.deepcopy(DEMO_RECIPE)
    recipe["data"]["train"]["table"] = str(ds.train_csv)
    recipe["data"]["valid"]["table"] = str(ds.valid_csv)
    recipe["train"]["seed"] = seed
    if epochs is not None:
        recipe["train"]["epochs"] = epochs
    cfg = load_config(raw=recipe)
    run_dir = out / "train"
    res = fit(cfg, run_dir, resume=(run_dir / "checkpoint").exists(), console=console)
    stages["train"] = {"run": str(run_dir), "model": str(res.model_dir), "best_epoch": res.best_epoch,
                       "valid_mAUC": res.best_metrics.get("mAUC"), "valid_mAP": res.best_metrics.get("mAP")}
    return Path(res.model_dir)


def _stage_evaluate(out: Path, ds: Any, model_dir: Path, say: Any, stages: dict[str, Any]) -> None:
    from .inference.ensemble import load_predictor
    from .inference.evaluate import evaluate_table

    model = load_predictor(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_table(model, ds.valid_csv)
        ev_test = evaluate_table(model, ds.test_csv) if ds.test_csv else None
    write_json(out / "evaluation.json", {"valid": ev, "test": ev_test})
    comp = (ev.get("subsets") or {}).get("competition", {})
    say(f"valid: mAUC {ev['mAUC']:.4f}, mAP {ev['mAP']:.4f}; CheXpert competition 5: mAUC {comp.get('mAUC', 0):.4f}")
    if ev_test:
        say(f"test (held out): mAUC {ev_test['mAUC']:.4f}, mAP {ev_test['mAP']:.4f}")
    stages["evaluate"] = {"json": str(out / "evaluation.json"), "mAUC": ev["mAUC"], "mAP": ev["mAP"],
                          "competition_mAUC": comp.get("mAUC"), "test_mAUC": ev_test["mAUC"] if ev_test else None}


def _stage_cft(out: Path, ds: Any, model_dir: Path, seed: int, cft: dict[str, Any] | None, workers: int | None,
               previous: dict[str, Any] | None, console: Any, say: Any, stages: dict[str, Any]) -> Path:
    """CFT of the trained model into ``out/model-cft`` (the earlier run's, when it tuned the
    same weights)."""
    from .cft.pipeline import run_cft
    from .cft.runner import CFTConfig, cpu_count

    c = dict(DEMO_CFT, **(cft or {}))
    c["workers"] = workers or min(2, cpu_count())
    c["seed"] = seed
    cft_dir = out / "model-cft"
    prev_cft = (previous or {}).get("stages", {}).get("cft")
    if prev_cft and (cft_dir / "cft" / "summary.json").is_file() and prev_cft.get("source_sha256") == _sha(model_dir):
        cres = prev_cft
        say("reusing the fine-tuned model of the earlier run")
    else:
        cres = run_cft(model_dir, ds.train_csv, ds.valid_csv, cft_dir, CFTConfig(**c), test_table=ds.test_csv,
                       cache_dir=out / "cache" / "features", console=console, overwrite=True)
        cres = dict(cres, source_sha256=_sha(model_dir))
    vb, va = cres["valid_before"], cres["valid_after"]
    say(f"CFT changed {cres['changed']} of {cres['categories']} categories; valid {_change(vb, va)}"
        + (f"; test (held out) {_change(cres['test_before'], cres['test_after'])}" if "test_after" in cres else ""))
    stages["cft"] = {"model": str(cft_dir), "report": str(cft_dir / "cft" / "report.csv"),
                     "gains_plot": str(cft_dir / "cft" / "gains.png"), **cres}
    return cft_dir


def _change(b: dict[str, Any], a: dict[str, Any]) -> str:
    comp = ""
    if b.get("competition_mAUC") is not None and a.get("competition_mAUC") is not None:
        comp = f", competition-5 mAUC {b['competition_mAUC']:.4f} -> {a['competition_mAUC']:.4f}"
    return f"mAUC {b['mAUC']:.4f} -> {a['mAUC']:.4f}, mAP {b['mAP']:.4f} -> {a['mAP']:.4f}{comp}"


def _sha(model_dir: Path) -> str:
    import json

    try:
        return str(json.loads((Path(model_dir) / "model.json").read_text()).get("weights_sha256", ""))
    except (OSError, ValueError):
        return ""

