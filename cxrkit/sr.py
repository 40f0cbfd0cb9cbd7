"""DICOM Structured Reports of the predictions, one per study (optional: needs highdicom,
``pip install highdicom``, or ``pip install -e ".[sr]"`` in a checkout), so results can go back to a PACS next to the images.

Each report is a Comprehensive SR whose root container ("Imaging report") holds, per
label, the probability (NUM, unit "{probability}"), the threshold and the call (TEXT
"positive" / "negative"), plus the model name and version; the study's source images
are recorded as evidence. Written to ``<dir>/<StudyInstanceUID>.dcm``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CxrkitError, FailureReason

log = logging.getLogger(__name__)


#: DICOM UID grammar (PS3.5 9.1): components of digits without leading zeros, joined by dots,
#: at most 64 characters. Anything else is refused before it can become a file name.
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: type 2 attributes highdicom copies from the first evidence image: present but empty is
#: what DICOM allows when the value is unknown (de-identified films often lack them)
TYPE2_DEFAULTS = {"PatientID": "", "PatientName": "", "PatientBirthDate": "", "PatientSex": "",
                  "AccessionNumber": "", "StudyID": "", "StudyDate": "", "StudyTime": "",
                  "ReferringPhysicianName": ""}


def valid_uid(uid: str) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(UID_RE.match(uid))


@dataclass
class ReportResult:
    written: int = 0
    failed: int = 0
    folder: str = ""
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)
    unchanged: int = 0  # studies whose report already said the same: not written again
    changed: list[str] = field(default_factory=list)  # StudyInstanceUIDs whose report was (re)written

    def __str__(self) -> str:
        return (f"{self.written} report(s) in {self.folder}" + (f", {self.unchanged} unchanged" if self.unchanged else "")
                + (f", {self.failed} failed" if self.failed else ""))


def report_content(ds: Any) -> tuple:
    """What a report says, for comparing two versions: its source images and every content
    item's concept, value and unit (UIDs, dates and the free-text comment aside)."""

    def items(seq: Any) -> list[tuple]:
        out = []
        for it in seq or []:
            name = it.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "NUM":
                mv = it.MeasuredValueSequence[0]
                val: Any = (str(mv.NumericValue), mv.MeasurementUnitsCodeSequence[0].CodeValue)
            elif it.ValueType == "CODE":
                val = it.ConceptCodeSequence[0].CodeValue
            elif it.ValueType == "TEXT":
                val = "" if name == "121106" else str(it.TextValue)  # the comment names the version
            else:
                val = ""
            out.append((it.ValueType, name, val, tuple(items(it.get("ContentSequence")))))
        return out

    refs = sorted(str(inst.ReferencedSOPInstanceUID)
                  for st in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                  for se in st.ReferencedSeriesSequence for inst in se.ReferencedSOPSequence)
    return tuple(refs), tuple(items(ds.get("ContentSequence")))


def previous_report(target: Path) -> Any:
    """The report written earlier at ``target`` (its previous version), or None."""
    import pydicom

    if not target.is_file():
        return None
    try:
        ds = pydicom.dcmread(target)
        return ds if ds.get("Modality") == "SR" else None
    except Exception:
        return None


@contextlib.contextmanager
def quiet_dicom_libraries() -> Iterator[None]:
    """No library may print header values: highdicom and pydicom warn with patient names
    (e.g. on a name that breaks the PN rules). Their warnings and log records are dropped."""
    loggers = [logging.getLogger(n) for n in ("highdicom", "pydicom")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def write_study_reports(out_csv: str | Path, sr_dir: str | Path, predictor: Any) -> ReportResult:
    """One Comprehensive SR per study of the rows in ``out_csv``; a study whose UID is not a
    valid DICOM UID, or whose report fails, gets a failure entry (named by UID, never by
    patient data) and the other studies go on."""
    try:
        import highdicom as hd
        import pydicom
        from pydicom.uid import generate_uid
    except ImportError:
        from .extras import install_hint

        raise CxrkitError(f"DICOM SR output needs highdicom: {install_hint('sr')}") from None
    from .predict import CSV_ENCODING
    from .utils import atomic_write

    sr_dir = Path(sr_dir)
    sr_dir.mkdir(parents=True, exist_ok=True)
    root_dir = sr_dir.resolve()
    classes = predictor.classes
    res = ReportResult(folder=str(sr_dir))
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(out_csv, newline="", **CSV_ENCODING) as f:
        for row in csv.DictReader(f):
            if row.get("study_instance_uid"):
                by_study[row["study_instance_uid"]].append(row)
    prob_unit = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
    for study_uid, rows in by_study.items():
        target = sr_dir / f"{study_uid}.dcm"
        if not valid_uid(study_uid) or target.resolve().parent != root_dir:
            res.failed += 1
            detail = "StudyInstanceUID is not a valid DICOM UID (digits and dots, at most 64 characters); no report written"
            res.failures += [(r["path"], FailureReason.INVALID_UID.value, detail) for r in rows]
            log.warning("structured report skipped: a study's StudyInstanceUID is not a valid DICOM UID")
            continue
        try:
            with quiet_dicom_libraries():
                evidence = []
                for r in rows:
                    ds = pydicom.dcmread(r["path"], stop_before_pixels=True)
                    for k, v in TYPE2_DEFAULTS.items():
                        if k not in ds or ds.get(k) is None:
                            setattr(ds, k, v)
                    evidence.append(ds)
                probs = np.array([[float(r[c]) for c in classes] for r in rows]).max(0)  # study = max over views
                root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
                items = [hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
                                               value=f"Result of an AI model, not verified by a physician: cxrkit "
                                                     f"model {predictor.name} {predictor.version}; study probability "
                                                     f"= maximum over {len(rows)} image(s)"[:1024],
                                               relationship_type="CONTAINS")]
                for c, p, t in zip(classes, probs, predictor.thresholds):
                    finding = hd.sr.CodedConcept(_code(c), "99CXRKIT", c[:64])
                    items.append(hd.sr.NumContentItem(name=finding, value=float(round(p, 6)), unit=prob_unit,
                                                      relationship_type="CONTAINS"))
                    items.append(hd.sr.TextContentItem(name=finding, value=("positive" if p >= t else "negative")
                                                       + f" (threshold {t:.4f})", relationship_type="CONTAINS"))
                root.ContentSequence = items
                # one current report per study: a new result is a new version of the same
                # document (same series, next instance number, the earlier version in its
                # Predecessor Documents Sequence, as DICOM amends a report); the same result
                # is not written, or sent, twice
                prev = previous_report(target)
                sr = hd.sr.ComprehensiveSR(
                    evidence=evidence, content=root,
                    series_instance_uid=str(prev.SeriesInstanceUID) if prev is not None else generate_uid(),
                    series_number=9901, sop_instance_uid=generate_uid(),
                    instance_number=int(prev.get("InstanceNumber") or 1) + 1 if prev is not None else 1,
                    manufacturer="cxrkit", is_complete=True, is_final=False, is_verified=False,
                    previous_versions=[prev] if prev is not None else None)
                if prev is not None and report_content(prev) == report_content(sr):
                    res.unchanged += 1
                    continue
                with atomic_write(target) as tmp:
                    sr.save_as(tmp, enforce_file_format=True)
            res.written += 1
            res.changed.append(study_uid)
        except Exception as e:  # one study's report must not stop the others
            res.failed += 1
            detail = f"structured report failed ({type(e).__name__})"
            res.failures += [(r["path"], "sr_failed", detail) for r in rows]
            log.warning("structured report for study %s failed: %s", study_uid, type(e).__name__)
    return res


def _code(name: str) -> str:
    import hashlib

    return "CXR" + hashlib.sha1(name.encode()).hexdigest()[:8].upper()

