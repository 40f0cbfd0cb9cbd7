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
    # SIGINT back to its default in the child: a test run started in the background (``cmd &``
    # in a script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-m", "cxrkit.cli", "-q", "train", str(tmp_path / "c.yaml"), "--out",
                          str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "checkpoint" / "state.json").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=180)  # generous: a loaded CI machine
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


def test_sr_for_a_de_identified_dicom_without_birth_date_or_study_date(trained_model, tmp_path, capsys):
    pytest.importorskip("highdicom")
    import numpy as np
    import pydicom

    from conftest import run_cli_inprocess
    from dicom_helpers import make_dicom

    img = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    f = make_dicom(tmp_path / "in" / "a.dcm" if (tmp_path / "in").mkdir() is None else None, img, bits_stored=12)
    ds = pydicom.dcmread(f)
    for k in ("PatientBirthDate", "StudyDate", "StudyTime", "PatientSex", "AccessionNumber", "StudyID",
              "ReferringPhysicianName", "PatientName", "PatientID"):
        if k in ds:
            delattr(ds, k)
    ds.save_as(f)
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(tmp_path / "in"), "--out",
                          str(tmp_path / "p.csv"), "--sr", str(tmp_path / "sr"))
    assert r.returncode == 0, r.stderr
    assert "1 report(s)" in " ".join(r.stdout.split()) and "failed" not in r.stdout
    sr = pydicom.dcmread(next((tmp_path / "sr").glob("*.dcm")))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == ds.StudyInstanceUID and sr.PatientBirthDate == ""


def test_a_flat_folder_of_pngs_is_not_one_study(trained_model, tmp_path, caplog):
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import run_predict

    for i in range(3):
        write_png(tmp_path / "in" / f"patient{i}.png" if (tmp_path / "in").mkdir(exist_ok=True) is None else None,
                  film(seed=i))
    pred = load_predictor(trained_model)
    with caplog.at_level("WARNING"):
        run_predict(pred, [tmp_path / "in"], tmp_path / "a.csv", study="max", show_progress=False)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a.studies.csv")))
    assert len(rows) == 3 and all(r["n_images"] == "1" for r in rows)
    assert any("no study information" in m for m in caplog.messages)
    run_predict(pred, [tmp_path / "in"], tmp_path / "b.csv", study="max", show_progress=False, study_key="folder")
    assert len(list(csv.DictReader(open(tmp_path / "b.studies.csv")))) == 1


@pytest.fixture()
def saved_figures(monkeypatch):
    """The matplotlib figures cxrkit saves, so tests can check their artists (not pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    real = plt.Figure.savefig

    def spy(self, *a, **k):
        figs.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    return figs


def test_roc_and_pr_panels_show_each_class_score(tmp_path, saved_figures):
    import numpy as np

    from cxrkit.metrics import average_precision, roc_auc
    from cxrkit.report import plot_roc_pr

    rng = np.random.default_rng(0)
    t = (rng.random((80, 3)) < 0.3).astype(float)
    t[:, 2] = 0.0  # undefined
    s = rng.random((80, 3)) * 0.5 + t * 0.4
    plot_roc_pr(t, s, ["Atelectasis", "Cardiomegaly", "Hernia"], tmp_path / "roc.png", tmp_path / "pr.png")
    roc, pr = saved_figures
    auc, ap = roc_auc(t, s), average_precision(t, s)
    assert f"AUC {auc[0]:.3f}" in roc.axes[0].get_title() and f"AP {ap[1]:.3f}" in pr.axes[1].get_title()
    assert "undefined" in roc.axes[2].get_title()
    assert roc.axes[0].get_xlabel() == "FPR" and pr.axes[0].get_ylabel() == "precision"
    assert [t.get_text() for t in roc.axes[0].get_xticklabels()][:1] != [""]


def test_cft_curves_have_a_legend_labels_and_the_chosen_best_point(tmp_path, saved_figures):
    from types import SimpleNamespace

    from cxrkit.report import plot_cft_curves

    r1 = SimpleNamespace(name="Edema", chosen="bp-asl/ignore", curves={
        "bp-asl/ignore": {"val": [0.6, 0.7, 0.72, 0.71]}, "ga-auc/ignore": {"train": [0.6, 0.65], "val": [0.6, 0.62]}})
    r2 = SimpleNamespace(name="Hernia", chosen="original", curves={})
    plot_cft_curves([r1, r2], tmp_path / "c.png")
    fig = saved_figures[0]
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "bp-asl/ignore (chosen) valid" in labels and "best valid 0.720" in labels
    assert ax.get_xlabel() and ax.get_ylabel() and "bp-asl/ignore" in ax.get_title()
    assert any("not shown: Hernia" in t.get_text() for t in fig.texts)


def test_examples_titles_wrap_instead_of_being_cut(tmp_path, saved_figures):
    import numpy as np

    from cxrkit.data.demo import contact_sheet

    long = "Enlarged Cardiomediastinum, Cardiomegaly, Pleural Effusion, Support Devices"
    contact_sheet([np.zeros((32, 32))] * 2, [long, "-"], tmp_path / "e.png", cols=2)
    title = saved_figures[0].axes[0].get_title()
    assert title.replace("\n", " ") == long and "\n" in title


def test_table_messages_missing_nih_column_and_case_insensitive_columns(tmp_path, capsys):
    from conftest import run_cli_inprocess

    (tmp_path / "a.csv").write_text("Image Index,Patient ID\na.png,1\n")
    line = _one_error_line(run_cli_inprocess(capsys, "data", "inspect", str(tmp_path / "a.csv")))
    assert "missing column(s) ['Finding Labels']" in line
    (tmp_path / "b.csv").write_text("image index,FINDING LABELS,patient id\na.png,No Finding,1\nb.png,Mass|Nodule,2\n")
    r = run_cli_inprocess(capsys, "data", "inspect", str(tmp_path / "b.csv"))
    assert r.returncode == 0 and "nih" in r.stdout and "Mass" in r.stdout


def test_out_under_an_existing_file_says_so(tmp_path, capsys):
    from conftest import run_cli_inprocess

    (tmp_path / "afile").write_text("x")
    line = _one_error_line(run_cli_inprocess(capsys, "data", "demo", str(tmp_path / "afile" / "sub"), "--n-studies",
                                             "10"))
    assert f"{tmp_path / 'afile'} is a file" in line


def test_messages_show_no_numpy_reprs():
    import numpy as np

    from cxrkit.errors import ConfigError
    from cxrkit.losses import build_loss

    assert str(ConfigError(f"got {np.float64(2.0)!r}, {np.int64(3)!r}")) == "got 2.0, 3"
    with pytest.raises(ConfigError) as e:
        build_loss("asl", gamma_neg=np.float64(-2.0))
    assert "np." not in str(e.value) and "-2.0" in str(e.value)
