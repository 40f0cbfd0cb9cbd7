"""Issue 12: a newcomer's first hour. Each test reproduces what that person hit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile_files import film, write_png


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, CXRKIT_QUIET="1"))


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "╭" not in r.stderr and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["trainx"], "No such command 'trainx'"),
    (["predict"], "Missing argument"),
    (["data", "demo", "x", "--size", "5"], "--size"),
    (["train", "c.yaml", "--bogus"], "No such option"),
])
def test_typer_argument_errors_are_one_line_and_exit_2(args, needle, capsys):
    from conftest import run_cli_inprocess

    assert needle in _one_error_line(run_cli_inprocess(capsys, *args))


@pytest.mark.parametrize("opt", [["--tta", "flipp"], ["--study", "maxx"], ["--shard", "3/2"]])
def test_predict_checks_options_before_any_work_and_leaves_no_output(trained_model, tmp_path, opt, capsys):
    from conftest import run_cli_inprocess

    write_png(tmp_path / "a.png", film())
    out = tmp_path / "preds.csv"
    _one_error_line(run_cli_inprocess(capsys, "predict", str(trained_model), str(tmp_path / "a.png"), "--out",
                                      str(out), *opt))
    assert not out.exists() and not (tmp_path / "preds.failures.csv").exists()
    r = run_cli_inprocess(capsys, "-q", "predict", str(trained_model), str(tmp_path / "a.png"), "--out", str(out))
    assert r.returncode == 0 and out.is_file()


def test_predict_on_an_empty_folder_leaves_no_empty_csv(trained_model, tmp_path, capsys):
    from conftest import run_cli_inprocess

    (tmp_path / "empty").mkdir()
    line = _one_error_line(run_cli_inprocess(capsys, "predict", str(trained_model), str(tmp_path / "empty"), "--out",
                                             str(tmp_path / "p.csv")))
    assert "no image files" in line and "empty" in line
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.failures.csv").exists()


def test_ctrl_c_during_train_says_where_it_stopped_and_how_to_resume(demo_data, tmp_path):
    import signal
    import time

    import yaml

    cfg = {"name": "ctrlc", "label_space": "chexpert",
           "data": {"train": {"table": str(demo_data / "train.csv")}, "valid": {"table": str(demo_data / "valid.csv")},
                    "cache": "memory", "workers": 0},
           "preprocessing": {"size": 32, "channels": 1}, "model": {"backbone": "tiny-cnn", "in_chans": 1},
           "train": {"epochs": 400, "batch_size": 32}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.Popen([sys.executable, "-m", "cxrkit.cli", "-q", "train", str(tmp_path / "c.yaml"), "--out",
                          str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "checkpoint" / "state.json").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130, err
    assert len(lines) == 1 and "complete epoch(s) of 400" in lines[0], err
    assert lines[0].rstrip().endswith("--resume") and str(tmp_path / "c.yaml") in lines[0]


def test_head_medium_tail_ties_share_a_group_and_zero_positives_are_undefined():
    from cxrkit.labels import frequency_groups, head_medium_tail

    # NIH-like counts: Nodule and Consolidation both 20 must share a group; Hernia 0 is undefined
    counts = [400, 300, 150, 80, 20, 20, 14, 9, 3, 0]
    g = head_medium_tail(counts)
    assert g[4] == g[5] and g[9] == "undefined" and "undefined" not in g[:9]
    assert g[0] == "head" and g[8] == "tail"
    assert frequency_groups([5, 5, 5, 5, 5], 5).tolist() == [0, 0, 0, 0, 0]
    assert head_medium_tail([0, 10, 20], head_min=15, tail_max=10) == ["undefined", "tail", "head"]


def test_g1_to_g5_omitted_on_a_fully_labelled_table_and_with_few_classes():
    import numpy as np

    from cxrkit.metrics import summarize

    rng = np.random.default_rng(0)
    t = (rng.random((50, 6)) < 0.3).astype(float)
    rep = summarize(t, rng.random((50, 6)), list("abcdef"))
    assert not any(k.startswith("G") for k in rep["groups"]) and "fully labelled" in rep["groups_note"]
    rep = summarize(t[:, :3], rng.random((50, 3)), list("abc"))
    assert "fewer than 5" in rep["groups_note"]
    t[rng.random(t.shape) < 0.3] = np.nan
    rep = summarize(t, rng.random((50, 6)), list("abcdef"))
    assert "G1" in rep["groups"]


def test_label_distribution_plot_draws_no_zero_bars_and_keeps_the_legend_outside(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrkit.report import plot_label_distribution

    summary = {"format": "nih", "n_images": 10, "classes": [
        {"name": "A", "positive": 50, "uncertain": 0, "unknown": 0, "group": "head"},
        {"name": "B", "positive": 5, "uncertain": 0, "unknown": 0, "group": "tail"},
        {"name": "Hernia", "positive": 0, "uncertain": 0, "unknown": 0, "group": "undefined"}]}
    captured = {}
    real_save = plt.Figure.savefig

    def spy(self, *a, **k):
        captured["fig"] = self
        return real_save(self, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot_label_distribution(summary, tmp_path / "d.png")
    finally:
        plt.Figure.savefig = real_save
    ax = captured["fig"].axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert not any(h == 0 or (h < 1 and h == h) for h in heights)  # no 0 bar and no fake 0.8 bar
    leg = ax.get_legend()
    assert leg is not None and "no positives (undefined)" in [t.get_text() for t in leg.get_texts()]
    assert leg.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1  # right of the axes
    assert ax.get_ylabel() == "images"
