"""Ctrl-C during ``cxrkit predict`` (issue 20, fault 1): with decoding workers, an interrupt at
any moment ends the run promptly with exit code 130 and the resume hint, leaves no process
behind, and the rows written so far resume cleanly. ``multiprocessing.Pool`` hung here in 3 of
16 tries (a worker killed while holding its queue's lock)."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.predict import DecodePool, prepared_batches


@pytest.fixture(scope="module")
def big_films(tmp_path_factory):
    """Films large enough that decoding takes a while: 160 grey PNGs of 1024 px."""
    d = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024]
    base = (120 + 60 * np.sin(xx / 40.0) * np.cos(yy / 55.0)).astype(np.float32)
    noise = rng.normal(0, 25, (1024 + 160, 1024)).astype(np.float32)
    for i in range(160):
        img = np.clip(base + noise[i:i + 1024], 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"film{i:03d}.png")
    return d


def _leftovers(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (the run's unique output path)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _rows(out):
    """Rows of a predictions CSV, after checking that no image appears twice."""
    with open(out, newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert len(paths) == len(set(paths))
    return len(paths)


def _predict(model, films, out, workers):
    # its own process group, as a terminal's foreground job: Ctrl-C reaches the decoding
    # processes too (what made multiprocessing.Pool hang). SIGINT back to its default in the
    # child: a suite started in the background inherits it ignored
    return subprocess.Popen([sys.executable, "-m", "cxrkit.cli", "-q", "predict", str(model), str(films), "--out",
                             str(out), "--workers", str(workers), "--batch-size", "4", "--engine", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: (os.setsid(), signal.signal(signal.SIGINT, signal.SIG_DFL)))


def test_ctrl_c_at_random_moments_with_two_workers_exits_promptly(trained_model, big_films, tmp_path):
    rnd = random.Random(20)
    landed = 0
    resumed = False
    for trial in range(10):
        out = tmp_path / f"run{trial}" / "preds.csv"
        out.parent.mkdir()
        p = _predict(trained_model, big_films, out, workers=2)
        t0 = time.time()
        while not out.exists() and p.poll() is None and time.time() - t0 < 120:  # the model is loaded
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 1.2))
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        t_sig = time.time()
        try:
            _, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail(f"trial {trial}: predict --workers 2 did not exit within 20 s of Ctrl-C")
        took = time.time() - t_sig
        if p.returncode in (0, -signal.SIGINT) and _rows(out) == 160:  # finished before the signal arrived
            continue
        landed += 1
        assert p.returncode == 130, err
        assert took < 10, f"trial {trial}: {took:.1f} s to stop"
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "continue with:" in lines[0] and lines[0].rstrip().endswith("--resume"), err
        time.sleep(0.5)
        assert _leftovers(str(out)) == [], f"trial {trial}: decoding processes left behind"
        if resumed:
            continue
        resumed = True  # once: the rows so far resume to a complete, duplicate-free output
        r = subprocess.run([sys.executable, "-m", "cxrkit.cli", "-q", "predict", str(trained_model), str(big_films),
                            "--out", str(out), "--resume", "--engine", "torch"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert _rows(out) == 160
    assert landed >= 5, f"only {landed} of 10 interrupts landed during the run"


def test_decoding_processes_ignore_the_terminals_ctrl_c(big_films):
    """Ctrl-C reaches every process of the terminal's foreground group: the decoding processes
    must leave it to the main one (a Pool worker died of it, and its pool could then hang)."""
    from cxrkit import predict as pr
    from cxrkit.data.preprocess import Preprocessing

    pr._PREP.update(pres=[Preprocessing(size=32)], filter=None, corrupt=None)
    tasks = [(i, str(p)) for i, p in enumerate(sorted(big_films.glob("*.png"))[:12])]
    pool = DecodePool(tasks, 2, ahead=2)
    try:
        it = iter(pool)
        first = next(it)
        for p in pool.procs:
            os.kill(p.pid, signal.SIGINT)
        time.sleep(0.3)
        assert all(p.is_alive() or p.exitcode == 0 for p in pool.procs)
        rest = list(it)
    finally:
        pool.close()
    got = [first, *rest]
    assert [p.index for p in got] == list(range(12)) and all(p.arrays is not None for p in got)


def _crash_on(path: str) -> None:
    if path.endswith("film003.png"):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_decoding_process_that_dies_costs_only_its_file(big_films, monkeypatch):
    """A decoder crash (a native library killing the process) is one failure row; the rest is
    prepared, in order, by a process started in its place."""
    from cxrkit import predict as pr
    from cxrkit.data.preprocess import Preprocessing

    real = pr.prepare_file

    def crashing(index, path, *a, **k):
        _crash_on(str(path))
        return real(index, path, *a, **k)

    monkeypatch.setattr(pr, "prepare_file", crashing)
    paths = sorted(big_films.glob("*.png"))[:10]
    got = [p for b in prepared_batches(paths, [Preprocessing(size=32)], batch_size=3, workers=2) for p in b]
    assert [p.index for p in got] == list(range(10))
    bad = [p for p in got if p.arrays is None]
    assert [p.index for p in bad] == [3] and "decoding process died" in bad[0].detail and "SIGKILL" in bad[0].detail


def test_closing_the_pool_early_ends_its_processes(big_films):
    from cxrkit import predict as pr
    from cxrkit.data.preprocess import Preprocessing

    pr._PREP.update(pres=[Preprocessing(size=32)], filter=None, corrupt=None)
    tasks = [(i, str(p)) for i, p in enumerate(sorted(big_films.glob("*.png"))[:40])]
    pool = DecodePool(tasks, 2, ahead=2)
    it = iter(pool)
    next(it)
    procs = list(pool.procs)
    t0 = time.time()
    pool.close()
    assert time.time() - t0 < 5
    assert all(not p.is_alive() and p.exitcode is not None for p in procs)
