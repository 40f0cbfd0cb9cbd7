"""Issue 9: hostile inputs and crashes. One test per fault, named after it; each failed on the
code before its fix."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dicom_helpers import make_dicom
from hostile_files import PHI, dead_pid, film, png_bomb, write_png

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, CXRKIT_QUIET="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "cxrkit.cli", *args], capture_output=True, text=True, cwd=cwd, env=e)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def _predict(model: Path, inputs: list, out: Path, **kw):
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import run_predict

    return run_predict(load_predictor(model), inputs, out, show_progress=False, **kw)


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _dcm(path: Path, seed: int = 0, **el) -> Path:
    img = (np.random.default_rng(seed).random((64, 64)) * 4000).astype(np.uint16)
    return make_dicom(path, img, bits_stored=12, **el)


# ---------------------------------------------------------------------------------------
# writes outside the folder the user named
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["../../escaped", "/tmp/cxrkit-abs-escape", "1.2.03.4", "1." + "2" * 70])
def test_sr_file_name_from_hostile_study_uid_is_refused(trained_model, tmp_path, uid):
    pytest.importorskip("highdicom")
    box = tmp_path / "box"
    (box / "in").mkdir(parents=True)
    _dcm(box / "in" / "bad.dcm", StudyInstanceUID=uid)
    _dcm(box / "in" / "good.dcm", seed=1)
    before = _files_under(tmp_path) | set(Path("/tmp").glob("cxrkit-abs-escape*"))
    res = _predict(trained_model, [box / "in"], box / "out" / "preds.csv", sr_dir=box / "out" / "sr")
    new = (_files_under(tmp_path) | set(Path("/tmp").glob("cxrkit-abs-escape*"))) - before
    assert all(box / "out" in p.parents for p in new), new
    srs = sorted((box / "out" / "sr").iterdir())
    assert len(srs) == 1 and srs[0].suffix == ".dcm"  # the good study only
    fails = _rows(box / "out" / "preds.failures.csv")
    assert [(Path(f["path"]).name, f["reason"]) for f in fails] == [("bad.dcm", "invalid_uid")]
    assert res["sr_written"] == 1 and res["sr_failed"] == 1


def test_ensemble_member_paths_leaving_the_folder_are_refused(trained_model, tmp_path):
    from cxrkit.ensemble import build_ensemble
    from cxrkit.errors import ArtifactError
    from cxrkit.runtime import read_spec

    ens = build_ensemble([trained_model], tmp_path / "ens", show_progress=False)
    meta = json.loads((ens / "ensemble.json").read_text())
    shutil.copytree(trained_model, tmp_path / "other")
    for bad in ("../other", str(tmp_path / "other"), "members/../../other"):
        meta["members"][0]["path"] = bad
        (ens / "ensemble.json").write_text(json.dumps(meta))
        with pytest.raises(ArtifactError, match="leaves the ensemble folder"):
            read_spec(ens)
    # a symlink inside the folder that points outside is refused too
    os.symlink(tmp_path / "other", ens / "members" / "link")
    meta["members"][0]["path"] = "members/link"
    (ens / "ensemble.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="leaves the ensemble folder"):
        read_spec(ens)


def test_gc_inputs_json_relative_path_outside_input_is_refused(tmp_path, capsys):
    from cxrkit.submit import _gc_inputs

    root = tmp_path / "input"
    (root / "images" / "cxr").mkdir(parents=True)
    write_png(root / "images" / "cxr" / "a.png", film())
    write_png(tmp_path / "secret.png", film(seed=1))
    (root / "inputs.json").write_text(json.dumps([
        {"interface": {"relative_path": "../secret.png"}},
        {"interface": {"relative_path": str(tmp_path / "secret.png")}},
        {"interface": {"relative_path": "images/cxr"}}]))
    found = _gc_inputs(root)
    assert found == [root / "images" / "cxr" / "a.png"]
    assert capsys.readouterr().err.count("leaves the input folder") == 2


# ---------------------------------------------------------------------------------------
# outputs that are destroyed
# ---------------------------------------------------------------------------------------


def test_export_deploy_into_the_model_itself_is_refused(trained_model, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "selfdep"
    shutil.copytree(trained_model, model)
    r = _cli("export", str(model), "--onnx", "--deploy", str(model))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "inside the input" in r.stderr
    assert (model / "model.safetensors").is_file() and (model / "model.json").is_file()
    r = _cli("export", str(model), "--onnx", "--deploy", str(model / "deploy"))
    assert r.returncode == 2 and (model / "model.safetensors").is_file()


def test_export_deploy_ensemble_and_cft_refuse_a_foreign_non_empty_folder(trained_model, demo_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from cxrkit.cft.pipeline import run_cft
    from cxrkit.cft.runner import CFTConfig
    from cxrkit.ensemble import build_ensemble
    from cxrkit.errors import CxrkitError
    from cxrkit.export import deployment_copy

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CxrkitError, match="--overwrite"):
        deployment_copy(trained_model, precious)
    with pytest.raises(CxrkitError, match="--overwrite"):
        build_ensemble([trained_model], precious, show_progress=False)
    with pytest.raises(CxrkitError, match="--overwrite"):
        run_cft(trained_model, demo_data / "train.csv", demo_data / "valid.csv", precious,
                CFTConfig(method="bp-asl"), show_progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"
    # a previous output of the same command is replaced without --overwrite
    dep = tmp_path / "deploy"
    deployment_copy(trained_model, dep)
    deployment_copy(trained_model, dep)
    assert sorted(p.name for p in dep.iterdir() if not p.name.startswith(".")) == ["model.json", "model.onnx"]
    ens = build_ensemble([trained_model], tmp_path / "ens", show_progress=False)
    build_ensemble([trained_model], ens, show_progress=False)
    with pytest.raises(CxrkitError):  # an ensemble folder is not an export --deploy output
        deployment_copy(trained_model, ens)
    deployment_copy(trained_model, precious, overwrite=True)
    assert not (precious / "thesis.tex").exists() and (precious / "model.onnx").is_file()


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import cxrkit.utils as u
    real = os.replace
    calls = []
    def replace(a, b):
        real(a, b)
        calls.append(a)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    u.os.replace = replace
    dst = Path(sys.argv[1])
    with u.staged_dir(dst) as tmp:
        (tmp / "model.json").write_text("new")
        (tmp / "weights").write_text("new weights")
""")


def test_replace_dir_killed_between_the_renames_is_recovered(tmp_path):
    from cxrkit.utils import recover_dir, staged_dir

    dst = tmp_path / "model"
    with staged_dir(dst) as tmp:
        (tmp / "model.json").write_text("old")
    r = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(dst)], capture_output=True)
    assert r.returncode == -9
    assert not dst.exists()  # neither folder at its name: this is what the kill leaves
    assert len(list(tmp_path.iterdir())) == 2  # the old copy and the complete staging folder
    recover_dir(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (dst / "model.json").read_text() == "new" and (dst / "weights").read_text() == "new weights"


def test_model_load_recovers_a_swap_killed_between_the_renames(trained_model, tmp_path):
    from cxrkit.artifact import load_model
    from cxrkit.runtime import read_spec

    dst = tmp_path / "m"
    shutil.copytree(trained_model, dst)
    script = KILL_BETWEEN_RENAMES.replace('(tmp / "model.json").write_text("new")\n', "").replace(
        '(tmp / "weights").write_text("new weights")',
        f'import shutil; shutil.copytree({str(trained_model)!r}, tmp, dirs_exist_ok=True)')
    r = subprocess.run([sys.executable, "-c", script, str(dst)], capture_output=True)
    assert r.returncode == -9 and not dst.exists()
    assert read_spec(dst).classes and load_model(dst).classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_cft_killed_while_writing_its_report_leaves_no_half_output(trained_model, demo_data, tmp_path, monkeypatch):
    import cxrkit.report as report
    from cxrkit.cft.pipeline import run_cft
    from cxrkit.cft.runner import CFTConfig

    out = tmp_path / "cft"

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill after the gains plot, before curves / summary

    monkeypatch.setattr(report, "plot_cft_curves", boom)
    cfg = CFTConfig(method="bp-asl", bp={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_cft(trained_model, demo_data / "train.csv", demo_data / "valid.csv", out, cfg, show_progress=False)
    assert not out.exists()  # before the fix: a model folder without report / summary
    monkeypatch.undo()
    run_cft(trained_model, demo_data / "train.csv", demo_data / "valid.csv", out, CFTConfig(method="bp-asl",
            bp={"epochs": 3}), show_progress=False)
    names = {p.name for p in (out / "cft").iterdir()}
    assert {"report.csv", "report.json", "gains.png", "curves.png", "summary.json"} <= names
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cft"]  # no staging folders left


def test_train_resume_finishes_a_final_report_killed_midway(demo_data, tmp_path, monkeypatch):
    import cxrkit.train.trainer as trainer
    from conftest import tiny_config

    cfg = tiny_config(demo_data, **{"train.epochs": 2})
    real = trainer._final_report

    def killed(out, *a, **k):
        (out / "plots").mkdir(exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_final_report", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(cfg, tmp_path, show_progress=False)
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.setattr(trainer, "_final_report", real)
    said = []

    class Console:
        def print(self, *a, **k):
            said.append(" ".join(str(x) for x in a))

    res = trainer.fit(cfg, tmp_path, resume=True, show_progress=False, console=Console())
    assert res.completed and (tmp_path / "summary.json").is_file()
    assert {"loss.png", "metrics.png", "roc.png", "pr.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}
    assert not any("resuming from epoch 3" in s for s in said)
    assert any("finishing the final report" in s for s in said)
    assert not (tmp_path / ".best_valid_probs.npy").exists()


def test_leftovers_of_killed_processes_are_cleaned_up(trained_model, tmp_path):
    from cxrkit.ensemble import build_ensemble
    from cxrkit.utils import atomic_write

    pid = dead_pid()
    stale_stage = tmp_path / f".ens.stage-{pid}-abc123"
    (stale_stage / "members" / "00-x").mkdir(parents=True)
    (stale_stage / "members" / "00-x" / "model.safetensors").write_bytes(b"x" * 1000)
    stale_old = tmp_path / f".ens.old-{pid}"
    stale_old.mkdir()
    stale_onnx = tmp_path / f".model.onnx.tmp-{pid}-xyz.onnx"
    stale_onnx.write_bytes(b"partial")
    live = tmp_path / f".model.onnx.tmp-{os.getpid()}-live.onnx"  # a live writer's file stays
    live.write_bytes(b"in use")
    build_ensemble([trained_model], tmp_path / "ens", show_progress=False)
    with atomic_write(tmp_path / "model.onnx") as t:
        t.write_bytes(b"onnx")
    assert not stale_stage.exists() and not stale_old.exists() and not stale_onnx.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ens", "model.onnx", live.name])


def test_resume_after_a_kill_inside_a_row_with_a_newline_in_its_file_name(tmp_path):
    from cxrkit.predict import RowWriter

    cols = ["path", "p"]
    out = tmp_path / "preds.csv"
    w = RowWriter(out, cols, resume=False)
    w.write([["dir/a\nb.png", "0.1"], ["dir/c,\"d\".png", "0.2"]])
    w.close()
    with open(out, "a", newline="") as f:
        f.write('"dir/torn\n')  # killed inside the quoted name of the next row
    w = RowWriter(out, cols, resume=True)
    assert w.done == {"dir/a\nb.png", 'dir/c,"d".png'}
    w.write([["dir/torn\nname.png", "0.3"]])
    w.close()
    rows = _rows(out)
    assert [(r["path"], r["p"]) for r in rows] == [("dir/a\nb.png", "0.1"), ('dir/c,"d".png', "0.2"),
                                                  ("dir/torn\nname.png", "0.3")]
    with open(out, "a", newline="") as f:
        f.write('"dir/x.png",0.')  # torn inside the last field, no newline
    assert RowWriter(out, cols, resume=True).done == {r["path"] for r in rows}
    assert len(_rows(out)) == 3


def test_predict_resume_with_newline_file_names_end_to_end(trained_model, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(["plain.png", "new\nline.png", "com,ma \"q\".png"]):
        write_png(d / name, film(seed=i))
    out = tmp_path / "preds.csv"
    _predict(trained_model, [d], out)
    with open(out, "rb+") as f:  # kill inside the last row's file name
        data = f.read()
        f.truncate(data.rfind(b"\n", 0, len(data) - 1) + 3)
    res = _predict(trained_model, [d], out, resume=True)
    rows = _rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(["plain.png", "new\nline.png", "com,ma \"q\".png"])
    assert res["predicted"] == 1 and res["already_done"] == 2


# ---------------------------------------------------------------------------------------
# memory and degenerate images
# ---------------------------------------------------------------------------------------


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.runtime import prepare_file

    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    code = ("import re, sys; from cxrkit.runtime import prepare_file; "
            "from cxrkit.data.preprocess import Preprocessing; "
            "r = prepare_file(0, sys.argv[1], [Preprocessing(size=32, channels=1)]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(r.reason, hwm)")  # VmHWM: this process's peak (ru_maxrss would include pytest's)
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True)
    reason, rss_kb = r.stdout.split()
    assert reason == "too_large"
    assert int(rss_kb) < 600_000  # the process never held the 400-megapixel image
    p = prepare_file(0, bomb, [Preprocessing(size=32, channels=1)])
    assert "400 megapixels" in p.detail


def test_pixel_limit_is_configurable(tmp_path):
    from cxrkit.data import images
    from cxrkit.data.images import read_image, set_limits
    from cxrkit.errors import ImageReadError

    write_png(tmp_path / "f.png", film(200))
    old = (images.LIMITS.max_pixels, images.LIMITS.min_size, images.LIMITS.min_range)
    try:
        set_limits(max_pixels=10_000)
        with pytest.raises(ImageReadError) as e:
            read_image(tmp_path / "f.png")
        assert e.value.reason.value == "too_large"
    finally:
        set_limits(*old)
    assert read_image(tmp_path / "f.png").shape == (200, 200)


@pytest.mark.parametrize("name,arr,reason", [
    ("black.png", np.zeros((256, 256), np.uint8), "empty"),
    ("white.png", np.full((256, 256), 255, np.uint8), "empty"),
    ("nearly.png", None, "empty"),
    ("one.png", np.full((1, 1), 7, np.uint8), "too_small"),
    ("tiny.png", None, "too_small"),
])
def test_blank_constant_and_tiny_images_are_refused(trained_model, tmp_path, name, arr, reason):
    if name == "nearly.png":
        arr = np.full((256, 256), 128, np.uint8)
        arr[::50, ::50] = 255  # 36 bright pixels: < 0.1 %
    if name == "tiny.png":
        arr = film(16)
    write_png(tmp_path / name, arr)
    write_png(tmp_path / "real.png", film())
    res = _predict(trained_model, [tmp_path / name, tmp_path / "real.png"], tmp_path / "out.csv")
    assert res["predicted"] == 1
    fails = _rows(tmp_path / "out.failures.csv")
    assert [(Path(f["path"]).name, f["reason"]) for f in fails] == [(name, reason)]


def test_dicom_rows_smaller_than_pixel_data_is_unexpected_pixel_length(tmp_path):
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.runtime import prepare_file

    _dcm(tmp_path / "a.dcm", Rows=32)
    p = prepare_file(0, tmp_path / "a.dcm", [Preprocessing(size=32, channels=1)])
    assert p.reason == "unexpected_pixel_length"


def test_dicom_pixel_data_longer_than_the_file_is_truncated(tmp_path):
    import struct

    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.runtime import prepare_file

    raw = _dcm(tmp_path / "a.dcm").read_bytes()
    i = raw.rfind(b"\xe0\x7f\x10\x00OW")
    n = struct.unpack("<I", raw[i + 8:i + 12])[0]
    (tmp_path / "b.dcm").write_bytes(raw[:i + 8] + struct.pack("<I", n * 10) + raw[i + 12:])
    p = prepare_file(0, tmp_path / "b.dcm", [Preprocessing(size=32, channels=1)])
    assert p.reason == "truncated"
    _dcm(tmp_path / "huge.dcm", Rows=20000, Columns=20000)
    assert prepare_file(0, tmp_path / "huge.dcm", [Preprocessing(size=32, channels=1)]).reason == "too_large"


# ---------------------------------------------------------------------------------------
# input walking
# ---------------------------------------------------------------------------------------


def test_symlinked_folders_are_followed_and_loops_reported(tmp_path):
    from cxrkit.predict import collect_inputs

    real = tmp_path / "elsewhere"
    real.mkdir()
    write_png(real / "linked.png", film())
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    write_png(root / "sub" / "own.png", film(seed=2))
    os.symlink(real, root / "link")
    os.symlink(root, root / "sub" / "loop")  # leads back up
    os.symlink(tmp_path / "gone", root / "dangling")
    items, fails = collect_inputs([root])
    assert sorted(p.path.name for p in items) == ["linked.png", "own.png"]
    assert sorted((Path(f.path).name, f.reason) for f in fails) == [("dangling", "missing"),
                                                                    ("loop", "symlink_loop")]


def test_the_same_file_given_twice_gives_one_row(trained_model, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    write_png(d / "x.png", film())
    write_png(d / "y.png", film(seed=3))
    os.symlink(d / "x.png", tmp_path / "alias.png")
    res = _predict(trained_model, [d, d / "x.png", d, tmp_path / "alias.png", Path(str(d) + "/./x.png")],
                   tmp_path / "out.csv")
    rows = _rows(tmp_path / "out.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["x.png", "y.png"] and res["predicted"] == 2


def test_shards_do_not_depend_on_the_mount_point(tmp_path):
    from cxrkit.predict import collect_inputs
    from cxrkit.runtime import shard_of

    share = tmp_path / "nas" / "share"
    (share / "a" / "b").mkdir(parents=True)
    for i in range(24):
        write_png(share / ("a" if i % 2 else "a/b") / f"img{i}.png", film(seed=i))
    (tmp_path / "mnt" / "x").mkdir(parents=True)
    os.symlink(tmp_path / "nas", tmp_path / "mnt" / "x" / "nas")  # the same share, mounted elsewhere
    other = tmp_path / "mnt" / "x" / "nas" / "share"
    a, _ = collect_inputs([share])
    b, _ = collect_inputs([other])
    assert str(a[0].path) != str(b[0].path)
    shard_a = {it.path.name: shard_of(it.key, 3) for it in a}
    shard_b = {it.path.name: shard_of(it.key, 3) for it in b}
    assert shard_a == shard_b and set(shard_a.values()) == {0, 1, 2}


# ---------------------------------------------------------------------------------------
# privacy
# ---------------------------------------------------------------------------------------


def _phi_dicom(path: Path, seed: int = 0, **el) -> Path:
    return _dcm(path, seed=seed, **PHI, **el)


def test_no_patient_identifying_value_reaches_stdout_stderr_or_a_log(trained_model, tmp_path):
    pytest.importorskip("highdicom")
    pytest.importorskip("onnxruntime")
    d = tmp_path / "in"
    d.mkdir()
    _phi_dicom(d / "a.dcm")
    _phi_dicom(d / "b.dcm", seed=1, Modality="CT")  # a skipped one
    _phi_dicom(d / "c.dcm", seed=2, Rows=32)  # a failing one
    _phi_dicom(d / "d.dcm", seed=3, StudyInstanceUID="../bad")
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    outputs = []
    runs = [["predict", str(model), str(d), "--out", str(tmp_path / "p1.csv"), "--sr", str(tmp_path / "sr")],
            ["-v", "predict", str(model), str(d), "--out", str(tmp_path / "p1.csv"), "--study", "max",
             "--workers", "1", "--sr", str(tmp_path / "sr2"), "--overwrite"],
            ["-v", "predict", str(model), str(d), "--out", str(tmp_path / "p3.csv"), "--engine", "onnx", "--tta",
             "flip", "--no-filter", "--shard", "0/1"]]
    for args in runs:
        r = _cli(*args)
        assert r.returncode == 0, r.stderr
        outputs += [r.stdout, r.stderr]
    (tmp_path / "inputs.csv").write_text("dicom_id,path\n" + "".join(f"{p.stem},{p}\n" for p in sorted(d.iterdir())))
    sub = [[sys.executable, "-m", "cxrkit.submit", "--model", str(model), "cxr-lt", str(tmp_path / "inputs.csv"),
            str(tmp_path / "lt")],
           [sys.executable, "-m", "cxrkit.submit", "--model", str(model), "gc", "--input", str(d), "--output",
            str(tmp_path / "gc")]]
    for cmd in sub:
        r = subprocess.run(cmd, capture_output=True, text=True)
        outputs += [r.stdout, r.stderr]
    logs = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    text = "\n".join(outputs + logs)
    for key, value in PHI.items():
        for part in {value, *value.split("^")} - {"", "Dr", "III"}:
            assert part not in text, f"{key} value {part!r} leaked"
    assert len(list((tmp_path / "sr").glob("*.dcm"))) == 1


# ---------------------------------------------------------------------------------------
# reproducibility and errors
# ---------------------------------------------------------------------------------------


def test_model_safetensors_is_byte_identical_for_identical_tensors(tmp_path):
    import hashlib

    import torch

    from cxrkit.artifact import ModelMeta, load_meta, save_model

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    shas = set()
    for i in range(8):
        meta = ModelMeta(classes=["a", "b"], preprocessing={}, model={}, thresholds=[0.5, 0.5], created="x")
        save_model(tmp_path / f"m{i}", net, meta)
        shas.add(hashlib.sha256((tmp_path / f"m{i}" / "model.safetensors").read_bytes()).hexdigest())
        assert load_meta(tmp_path / f"m{i}").weights_sha256 in shas
    assert len(shas) == 1


def _config(tmp_path: Path, demo_data: Path, **extra: object) -> Path:
    import yaml

    cfg = {"name": "bad", "data": {"train": {"table": str(demo_data / "train.csv")},
                                   "valid": {"table": str(demo_data / "valid.csv")}, "cache": "memory", "workers": 0},
           "preprocessing": {"size": 32, "channels": 1},
           "model": {"backbone": "tiny-cnn", "in_chans": 1}, "train": {"epochs": 1}}
    for k, v in extra.items():
        node = cfg
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("extra,needle", [
    ({"optim.lr": 0}, "optim.lr must be a positive number"),
    ({"optim.lr": -0.001}, "optim.lr must be a positive number"),
    ({"loss.name": "focall"}, "unknown loss 'focall'"),
    ({"loss.params": {"gamma_negg": 4}, "loss.name": "asl"}, "invalid parameters for loss 'asl'"),
    ({"model.backbone_kwargs": {"widthss": [4]}}, "could not build backbone 'tiny-cnn'"),
    ({"model.backbone": "resnet18", "model.in_chans": 1, "model.backbone_kwargs": {"drop_ratte": 0.1}},
     "could not build backbone 'resnet18'"),
    ({"model.arch": "nope"}, "unknown architecture 'nope'"),
])
def test_bad_training_configs_fail_in_one_line_before_any_image_is_decoded(demo_data, tmp_path, extra, needle,
                                                                          capsys):
    from conftest import run_cli_inprocess

    r = run_cli_inprocess(capsys, "train", str(_config(tmp_path, demo_data, **extra)), "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not (tmp_path / "run" / "data_failures.csv").exists()  # stopped before the data was read


def test_checkpoint_path_that_is_not_a_weights_file_is_one_line(demo_data, tmp_path, capsys):
    from conftest import run_cli_inprocess

    (tmp_path / "notes.pth").write_bytes(b"this is not a checkpoint\n" * 10)
    r = run_cli_inprocess(capsys, "train", str(_config(tmp_path, demo_data, **{"model.backbone": "resnet18",
                                                          "model.backbone_kwargs": {"checkpoint_path":
                                                                                    str(tmp_path / "notes.pth")}})),
             "--out", str(tmp_path / "run"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "not a weights file" in lines[0], r.stderr


def test_onnx_file_onnxruntime_refuses_is_one_line(trained_model, tmp_path, capsys):
    from conftest import run_cli_inprocess

    pytest.importorskip("onnxruntime")
    m = tmp_path / "m"
    shutil.copytree(trained_model, m)
    (m / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    (m / "model.safetensors").unlink()  # an ONNX-only deployment folder
    write_png(tmp_path / "a.png", film())
    r = run_cli_inprocess(capsys, "predict", str(m), str(tmp_path / "a.png"), "--engine", "onnx", "--out",
                          str(tmp_path / "o.csv"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "onnxruntime cannot load" in lines[0], r.stderr


def test_a_class_with_only_unknown_labels_gets_a_warning_naming_it(demo_data, tmp_path, caplog):
    import pandas as pd

    from conftest import tiny_config
    from cxrkit.train.trainer import fit

    t = pd.read_csv(demo_data / "train.csv")
    t["Fracture"] = np.nan
    t.to_csv(tmp_path / "train.csv", index=False)
    for p in demo_data.iterdir():
        if p.is_dir():
            os.symlink(p, tmp_path / p.name)
    cfg = tiny_config(demo_data, **{"data.train.table": str(tmp_path / "train.csv"), "train.epochs": 1})
    with caplog.at_level("WARNING"):
        fit(cfg, tmp_path / "run", show_progress=False)
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("Fracture" in m and "train" in m and "unknown" in m for m in msgs), msgs
