"""Regenerate challenge/test/cxrlt2026/: a CXR-LT 2026 task-1 case for do_test_run.sh. A tiny
untrained model over the 30 task-1 classes (a plumbing test, not a clinical model), PadChest-
style 16-bit PNG films (SYNTHETIC: cxrkit's demo generator), the test table, the task-1
sample submission (header and row order) and the expected submission, computed here with
cxrkit-submit outside the container.

    .venv/bin/python challenge/make_test_assets_2026.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "test" / "cxrlt2026"


def main() -> None:
    import torch

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.demo import render_frontal
    from cxrkit.export import deployment_copy
    from cxrkit.labels import CXR_LT_2026_TASK1
    from cxrkit.models import build_model

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    ids = []
    for i in range(6):  # 16-bit films, 12 bits used, as PadChest's
        film = render_frontal({"Cardiomegaly": 0.8} if i % 2 else {}, np.random.default_rng(100 + i), size=96)
        image_id = f"2168401113669640138295431665120133381357{i:05d}_02-094-102.png"
        assert cv2.imwrite(str(OUT / "images" / image_id), (film * 4095).astype(np.uint16))
        ids.append(image_id)
    (OUT / "test.csv").write_text("ImageID\n" + "\n".join(ids) + "\n")
    order = list(reversed(ids))
    (OUT / "sample_task1.csv").write_text(",".join(["ImageID", *CXR_LT_2026_TASK1]) + "\n"
                                          + "".join(f"{i}," + ",".join(["0"] * 30) + "\n" for i in order))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [4, 8]}}
        torch.manual_seed(2026)
        save_model(Path(tmp) / "model", build_model(cfg, 30),
                   ModelMeta(classes=list(CXR_LT_2026_TASK1), model=cfg, thresholds=[0.5] * 30,
                             name="cxrlt2026-test-model", label_space="cxr-lt-2026",
                             preprocessing={"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}))
        deployment_copy(Path(tmp) / "model", OUT / "model")
    (OUT / "expected").mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "cxrkit.submit", "--model", str(OUT / "model"), "cxr-lt", "test.csv",
                        tmp, "--sample-submission", "sample_task1.csv", "--images-root", "images", "--csv-only"],
                       cwd=OUT, check=True)
        shutil.copy(Path(tmp) / "submission.csv", OUT / "expected" / "submission.csv")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
