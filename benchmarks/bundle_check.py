"""MONAI Bundle against ``cxrkit predict`` on real films, and what MONAI's own readers would do.

    python benchmarks/bundle_check.py MODEL FILMS [--n 100]

Exports MODEL with ``cxrkit export --bundle``, runs ``python -m monai.bundle run`` on the
first ``--n`` films of FILMS (plus every DICOM in it) and ``cxrkit predict`` on the same
folder, and prints, per input kind: the largest probability difference between the two,
the wall time of each command (the process included: imports, model load), and the
probability change a pure-MONAI preprocessing would cause (``PILReader`` / ``PydicomReader``
read, min-max or / 255 scaling, ``Resized(mode="area")``) against cxrkit's pipeline.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("films")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from monai.data import PILReader, PydicomReader
    from monai.transforms import LoadImage, Resize

    from cxrkit.artifact import load_model
    from cxrkit.bundle import export_bundle, read_predictions
    from cxrkit.data.images import is_dicom_file
    from cxrkit.runtime import prepare_file

    src = sorted(p for p in Path(args.films).rglob("*") if p.is_file())
    dicoms = [p for p in src if is_dicom_file(p)]
    pick = [p for p in src if p not in dicoms][: args.n] + dicoms
    work = Path(tempfile.mkdtemp(prefix="bundle-check-"))
    films = work / "films"
    films.mkdir()
    for i, p in enumerate(pick):
        (films / f"{i:04d}_{p.name}").symlink_to(p.resolve())
    export_bundle(args.model, work / "bundle")

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--dataset_dir", str(films)], cwd=work / "bundle", capture_output=True, text=True)
    t_bundle = time.perf_counter() - t0
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cxrkit", "predict", args.model, str(films), "--out",
                        str(work / "pred.csv"), "--engine", "torch"], capture_output=True, text=True)
    t_pred = time.perf_counter() - t0
    if r.returncode:
        sys.exit(r.stderr[-2000:])

    m = load_model(args.model)
    pre = m.preprocessing
    _, got = read_predictions(work / "bundle" / "eval" / "predictions.csv")
    with open(work / "pred.csv") as f:
        rows = {os.path.abspath(row["path"]): np.array([float(row[c]) for c in m.classes]) for row in csv.DictReader(f)}

    def monai_input(p: Path) -> np.ndarray:
        if is_dicom_file(p):
            a = np.squeeze(np.asarray(LoadImage(reader=PydicomReader(swap_ij=False), image_only=True)(str(p)),
                                      np.float32))
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        else:
            a = np.squeeze(np.asarray(LoadImage(reader=PILReader(reverse_indexing=False), image_only=True)(str(p)),
                                      np.float32))
            a = (a[..., 0] if a.ndim == 3 else a) / (65535.0 if a.max() > 255 else 255.0)
        return pre.normalize(Resize(pre.hw, mode="area")(torch.from_numpy(a)[None]).numpy()[0])

    table: dict[str, dict[str, list[float]]] = {"png/jpeg": {"bundle": [], "monai": []}, "dicom": {"bundle": [],
                                                                                                  "monai": []}}
    for p in sorted(films.iterdir()):
        kind = "dicom" if is_dicom_file(p) else "png/jpeg"
        key = str(p)
        if key not in rows:
            continue
        table[kind]["bundle"].append(float(np.abs(got[key] - rows[key]).max()))
        ours = prepare_file(0, p, [pre], None).arrays[0]
        with torch.no_grad():
            a = m.predict(torch.from_numpy(ours[None]))[0]
            b = m.predict(torch.from_numpy(monai_input(p)[None]))[0]
        table[kind]["monai"].append(float(np.abs(a - b).max()))

    print(f"model {m.name} ({(m.meta.model or {}).get('backbone')}, {pre.hw[0]} x {pre.hw[1]}), {len(rows)} films")
    print(f"{'input':<10} {'films':>5} {'bundle vs predict max':>22} {'pure-MONAI median':>18} {'pure-MONAI max':>15}")
    for kind, v in table.items():
        if v["bundle"]:
            print(f"{kind:<10} {len(v['bundle']):>5} {max(v['bundle']):>22.2e} {np.median(v['monai']):>18.4f} "
                  f"{max(v['monai']):>15.4f}")
    print(f"wall time: monai.bundle run {t_bundle:.1f} s, cxrkit predict {t_pred:.1f} s "
          f"(ratio {t_bundle / t_pred:.2f}x; each includes its process start and imports)")


if __name__ == "__main__":
    main()
