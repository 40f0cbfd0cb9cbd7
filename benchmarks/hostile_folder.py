"""A hostile hospital folder through ``cxrkit predict --sr``: is every file accounted for once,
is memory bounded, is nothing written outside the output folder?

The folder holds pydicom's whole test corpus, real chest DICOMs (../shared/data/dicom when
present), truncated / zero-byte / random files, a 20000 x 20000 PNG decompression bomb, a
DICOM declaring 20000 x 20000 pixels, blank, near-constant and 1 x 1 images, DICOMs whose
StudyInstanceUID is a path (``../../escape``, ``/tmp/...``), a symlinked folder, a symlink
loop, and the same folder and files given twice on the command line. The model is a
randomly initialised ResNet-18 at 224 px (memory does not depend on the weights).

    python benchmarks/hostile_folder.py [--keep DIR]

Prints one table; every figure but rows and failures must be 0 (peak memory under 1.5 GB).
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import warnings

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from dicom_helpers import make_dicom  # noqa: E402
from hostile_files import film, png_bomb, write_png  # noqa: E402

PEAK = ("import atexit, re, runpy, sys\n"
        "out = sys.argv.pop(1)\n"
        "atexit.register(lambda: open(out, 'w').write(re.search(r'VmHWM:\\s+(\\d+)', "
        "open('/proc/self/status').read()).group(1)))\n"
        "sys.argv[0] = 'cxrkit'\n"
        "runpy.run_module('cxrkit.cli', run_name='__main__')\n")


def build_folder(root: Path) -> tuple[Path, list[str]]:
    """The hostile tree; returns it and the extra command-line arguments (duplicates)."""
    import pydicom

    d = root / "hospital"
    (d / "pydicom").mkdir(parents=True)
    corpus = Path(pydicom.__file__).parent / "data" / "test_files"  # the files shipped in the wheel (no download)
    for i, p in enumerate(sorted(corpus.rglob("*"))):
        if p.is_file() and not p.name.endswith((".py", ".pyc")):
            shutil.copy(p, d / "pydicom" / f"{i:03d}-{p.name}")
    real = REPO / ".." / "shared" / "data" / "dicom"
    (d / "chest").mkdir()
    if real.is_dir():
        for f in sorted(real.glob("*.dcm")):
            shutil.copy(f, d / "chest" / f.name)
    img = (np.random.default_rng(0).random((256, 256)) * 4000).astype(np.uint16)
    make_dicom(d / "chest" / "made.dcm", img, bits_stored=12)
    bad = d / "bad"
    bad.mkdir()
    (bad / "zero.dcm").write_bytes(b"")
    (bad / "random.dcm").write_bytes(np.random.default_rng(1).bytes(4096))
    (bad / "random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(4096))
    raw = (d / "chest" / "made.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    png_bomb(bad / "bomb.png")
    make_dicom(bad / "bomb.dcm", img, Rows=20000, Columns=20000)
    write_png(bad / "black.png", np.zeros((512, 512), np.uint8))
    near = np.full((512, 512), 128, np.uint8)
    near[::60, ::60] = 255
    write_png(bad / "near_constant.png", near)
    write_png(bad / "one_pixel.png", np.full((1, 1), 9, np.uint8))
    write_png(bad / "new\nline.png", film(128))
    warnings.filterwarnings("ignore", message=".*VR UI")  # pydicom warns about the hostile UIDs it writes
    for k, uid in enumerate(("../../escape-rel", "/tmp/cxrkit-hostile-escape", "1.2.3.04", "1." + "9" * 80)):
        make_dicom(bad / f"hostile_uid_{k}.dcm", img, StudyInstanceUID=uid)
    outside = root / "elsewhere"
    outside.mkdir()
    write_png(outside / "linked_film.png", film(256, seed=5))
    os.symlink(outside, d / "linked_folder")
    os.symlink(d, d / "bad" / "loop")
    os.symlink(root / "gone", d / "dangling")
    return d, [str(d / "chest"), str(d / "chest" / "made.dcm"), str(d)]


def reachable(folder: Path) -> set[str]:
    """Every real file under ``folder``, following symlinked folders once."""
    seen: set[str] = set()
    dirs: set[str] = set()
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        rp = os.path.realpath(dirpath)
        if rp in dirs:
            dirnames[:] = []
            continue
        dirs.add(rp)
        for fn in files:
            p = os.path.join(dirpath, fn)
            if os.path.isfile(p):
                seen.add(os.path.realpath(p))
    return seen


def snapshot(root: Path) -> set[str]:
    files = {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    return files | {str(p) for p in Path("/tmp").glob("cxrkit-hostile-escape*")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="build the folder here and keep it")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hostile-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    work = root / "work"
    work.mkdir()
    folder, extra = build_folder(work)
    model = root / "model"
    subprocess.run([sys.executable, "-c", (
        "import sys; from cxrkit.artifact import ModelMeta, save_model; from cxrkit.models import build_model; "
        "cfg = {'backbone': 'resnet18', 'in_chans': 1}; m = build_model(cfg, 14, load_weights=False); "
        "save_model(sys.argv[1], m, ModelMeta(classes=[f'c{i}' for i in range(14)], "
        "preprocessing={'size': 224, 'channels': 1, 'mean': [0.5], 'std': [0.25]}, "
        "model=dict(cfg, arch='classifier'), thresholds=[0.5] * 14, name='hostile-bench'))"), str(model)],
        check=True)
    out = work / "out"
    before = snapshot(work)
    peak_file = root / "peak_kb"
    cmd = [sys.executable, "-c", PEAK, str(peak_file), "predict", str(model), *extra, "--out", str(out / "preds.csv"),
           "--sr", str(out / "sr"), "--batch-size", "16"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, CXRKIT_QUIET="1"))
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
    after = snapshot(work)
    written_outside = sorted(p for p in after - before if not p.startswith(str(out) + os.sep))

    def rows_of(p: Path) -> list[dict[str, str]]:
        with open(p, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return list(csv.DictReader(f))

    rows = rows_of(out / "preds.csv")
    fails = rows_of(out / "preds.failures.csv")
    files = reachable(folder)
    used = collections.Counter(os.path.realpath(r["path"]) for r in rows)
    failed = collections.Counter(os.path.realpath(f["path"]) for f in fails if f["reason"] not in ("invalid_uid",))
    duplicates = sum(c - 1 for c in used.values() if c > 1) + sum(c - 1 for c in failed.values() if c > 1)
    both = sum(1 for k in used if k in failed)
    missing = sorted(files - set(used) - set(failed))
    peak_mb = int(peak_file.read_text()) / 1024 if peak_file.is_file() else float("nan")
    by_reason = collections.Counter(f["reason"] for f in fails)
    print(f"\nhostile folder: {folder} (+ {len(extra) - 1} duplicate arguments)")
    print(f"{'figure':<38}{'value':>12}  must be")
    print("-" * 60)
    table = [("files in (real files reachable)", len(files), "-"), ("rows (predicted)", len(rows), "> 0"),
             ("failure rows", len(fails), "> 0"), ("duplicate rows", duplicates + both, "0"),
             ("missing (no row, no failure)", len(missing), "0"),
             ("files written outside --out", len(written_outside), "0"),
             ("peak memory of predict (MB)", f"{peak_mb:.0f}", "< 1536"), ("wall time (s)", f"{seconds:.1f}", "-"),
             ("exit code", r.returncode, "0")]
    for name, value, must in table:
        print(f"{name:<38}{value!s:>12}  {must}")
    print("\nfailures by reason:")
    for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<32}{n:>6}")
    for p in missing[:10]:
        print(f"missing: {p}")
    for p in written_outside[:10]:
        print(f"written outside: {p}")
    ok = (not missing and not written_outside and duplicates + both == 0 and peak_mb < 1536 and r.returncode == 0
          and rows and fails)
    print("\nresult:", "PASS" if ok else "FAIL")
    for p in Path("/tmp").glob("cxrkit-hostile-escape*"):
        p.unlink()
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
