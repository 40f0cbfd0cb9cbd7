"""Rebuild a film subset of NIH ChestX-ray14 from the official release, as the configs use it
(``cxrkit data nih-subset``): the subset's file list with its split (shipped next to the
config, e.g. ``configs/nih_hires.files.csv``), the official label table
(``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``, as released, gzip or not) and the
release's image folders (``images_001/images/...`` or one ``images/`` folder) ->
``OUT/labels.csv`` (``Image Index, split``, then the official columns) and ``OUT/images/*.png``
(8-bit grey, shrunk to ``size`` with Lanczos, as the subset was made).

A film named in the list but absent from the release is recorded in ``OUT/missing.csv`` and
the others are written; every file is written atomically, ``labels.csv`` last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CxrkitError

LABEL_COLUMNS = ["Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
TABLE_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
               "Data_Entry_2017.csv.gz")


@dataclass
class SubsetResult:
    written: int
    reused: int
    missing: list[str]
    labels: Path


def _read_list(path: Path) -> "list[tuple[str, str]]":
    import pandas as pd

    if not path.is_file():
        raise CxrkitError(f"{path}: file list not found")
    try:
        t = pd.read_csv(path, comment="#", dtype=str)
    except Exception as e:
        raise CxrkitError(f"{path}: not a CSV file list ({str(e).splitlines()[0][:120]})") from None
    if "Image Index" not in t.columns:
        raise CxrkitError(f"{path}: needs an 'Image Index' column (and optionally 'split')")
    split = t["split"] if "split" in t.columns else [""] * len(t)
    return [(str(n).strip(), str(s).strip()) for n, s in zip(t["Image Index"], split)]


def find_table(release: Path, table: Path | None) -> Path:
    if table is not None:
        if not table.is_file():
            raise CxrkitError(f"{table}: label table not found")
        return table
    for name in TABLE_NAMES:
        if (release / name).is_file():
            return release / name
    raise CxrkitError(f"{release}: no official label table ({' or '.join(TABLE_NAMES[::2])}); give it with --table")


def _index_images(release: Path, wanted: set[str]) -> dict[str, Path]:
    """Where each wanted file name is under the release folder (one walk, links followed)."""
    found: dict[str, Path] = {}
    for root, _dirs, files in os.walk(release, followlinks=True):
        for f in files:
            if f in wanted and f not in found:
                found[f] = Path(root) / f
    return found


def build_subset(files: str | Path, release: str | Path, out: str | Path, table: str | Path | None = None,
                 size: int = 256, show_progress: bool = True) -> SubsetResult:
    import cv2
    import pandas as pd

    from ..utils import atomic_write, progress

    files, release, out = Path(files), Path(release), Path(out)
    if not release.is_dir():
        raise CxrkitError(f"{release}: not a folder (the unpacked NIH ChestX-ray14 release)")
    if size < 16:
        raise CxrkitError(f"--size must be at least 16 (got {size})")
    wanted = _read_list(files)
    tpath = find_table(release, Path(table) if table else None)
    official = pd.read_csv(tpath, dtype=str)
    lacking = [c for c in ["Image Index", *LABEL_COLUMNS] if c not in official.columns]
    if lacking:
        raise CxrkitError(f"{tpath}: not the official NIH table (no {', '.join(lacking)} column)")
    official = official.drop_duplicates("Image Index").set_index("Image Index")
    unknown = [n for n, _ in wanted if n not in official.index]
    if unknown:
        raise CxrkitError(f"{files}: {len(unknown)} file name(s) are not in {tpath.name}, e.g. {unknown[0]}")
    where = _index_images(release, {n for n, _ in wanted})
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    written = reused = 0
    for name, split in progress(wanted, "NIH films", total=len(wanted), enabled=show_progress):
        src = where.get(name)
        if src is None:
            missing.append(name)
            continue
        dst = out / "images" / name
        if not (dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime):  # a rerun redoes only what changed
            img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            if img is None:
                missing.append(name)
                continue
            if img.shape != (size, size):
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LANCZOS4)
            with atomic_write(dst) as tmp:
                if not cv2.imwrite(str(tmp), img):
                    raise CxrkitError(f"{dst}: could not write PNG")
            written += 1
        else:
            reused += 1
        r = official.loc[name]
        rows.append([name, split, *(r[c] for c in LABEL_COLUMNS)])
    if not rows:
        raise CxrkitError(f"none of the {len(wanted)} films of {files.name} is under {release}")
    if missing:
        with atomic_write(out / "missing.csv") as tmp:
            pd.DataFrame({"Image Index": missing}).to_csv(tmp, index=False)
    else:
        (out / "missing.csv").unlink(missing_ok=True)
    labels = out / "labels.csv"
    with atomic_write(labels) as tmp:
        pd.DataFrame(rows, columns=["Image Index", "split", *LABEL_COLUMNS]).to_csv(tmp, index=False)
    return SubsetResult(written, reused, missing, labels)
