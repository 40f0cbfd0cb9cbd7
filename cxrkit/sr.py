"""DICOM Structured Reports of the predictions, one per study (optional: needs highdicom,
``pip install cxrkit[sr]``), so results can go back to a PACS next to the images.

Each report is a Comprehensive SR whose root container ("Imaging report") holds, per
label, the probability (NUM, unit "{probability}"), the threshold and the call (TEXT
"positive" / "negative"), plus the model name and version; the study's source images
are recorded as evidence. Written to ``<dir>/<StudyInstanceUID>.dcm``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CxrkitError

log = logging.getLogger(__name__)


def write_study_reports(out_csv: str | Path, sr_dir: str | Path, predictor: Any) -> str:
    try:
        import highdicom as hd
        import pydicom
        from pydicom.uid import generate_uid
    except ImportError:
        raise CxrkitError("DICOM SR output needs highdicom (pip install cxrkit[sr])") from None
    from .utils import atomic_write

    sr_dir = Path(sr_dir)
    sr_dir.mkdir(parents=True, exist_ok=True)
    classes = predictor.classes
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(out_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("study_instance_uid"):
                by_study[row["study_instance_uid"]].append(row)
    written = 0
    prob_unit = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
    for study_uid, rows in by_study.items():
        try:
            evidence = [pydicom.dcmread(r["path"], stop_before_pixels=True) for r in rows]
            probs = np.array([[float(r[c]) for c in classes] for r in rows]).max(0)  # study = max over views
            root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
            items = [hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
                                           value=f"cxrkit model {predictor.name} {predictor.version}; study "
                                                 f"probability = maximum over {len(rows)} image(s)",
                                           relationship_type="CONTAINS")]
            for c, p, t in zip(classes, probs, predictor.thresholds):
                finding = hd.sr.CodedConcept(_code(c), "99CXRKIT", c[:64])
                items.append(hd.sr.NumContentItem(name=finding, value=float(round(p, 6)), unit=prob_unit,
                                                  relationship_type="CONTAINS"))
                items.append(hd.sr.TextContentItem(name=finding, value=("positive" if p >= t else "negative")
                                                   + f" (threshold {t:.4f})", relationship_type="CONTAINS"))
            root.ContentSequence = items
            sr = hd.sr.ComprehensiveSR(
                evidence=evidence, content=root, series_instance_uid=generate_uid(), series_number=9901,
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer="cxrkit",
                is_complete=True, is_final=False, is_verified=False)
            with atomic_write(sr_dir / f"{study_uid}.dcm") as tmp:
                sr.save_as(tmp, enforce_file_format=True)
            written += 1
        except Exception as e:  # one study's report must not stop the others
            log.warning("structured report for a study failed: %s", type(e).__name__)
    return f"{written} report(s) in {sr_dir}"


def _code(name: str) -> str:
    import hashlib

    return "CXR" + hashlib.sha1(name.encode()).hexdigest()[:8].upper()

