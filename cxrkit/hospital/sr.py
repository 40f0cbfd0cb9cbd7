"""DICOM Structured Reports of the predictions, one per study (optional: needs highdicom,
``pip install highdicom``, or ``pip install -e ".[sr]"`` in a checkout), so results can go back to a PACS next to the images.

Each report is a TID 1500 Measurement Report (Comprehensive SR) following the IHE AI
Results conventions: the model is the observer device (name, manufacturer "cxrkit", a UID
and a serial number made from its weights), the procedure reported is coded (SNOMED CT "Plain
chest X-ray"), and each finding is one measurement group with

* the finding type in SNOMED CT / DICOM codes (``cxrkit/resources/finding_codes.csv``; a
  private, declared scheme where neither has the concept), with a finding site where the
  code alone is generic (Lesion + Lung);
* the algorithm identification (TID 4019: name, version, the operating point and the
  calibration as parameters);
* the probability (NUM, DCM "Probability", UCUM ``{probability}``) and the decision
  threshold (DCM "Threshold Value");
* the call at the model's operating point as a coded qualitative evaluation (SNOMED CT
  Present / Absent);
* the study's source images.

The probability is the study's maximum over its images (the CSV's per-image values).
Values copied from the source films are checked first (:mod:`cxrkit.dicom_out`). Written to
``<dir>/<StudyInstanceUID>.dcm``; a study reported again gets a new version of the same
document (see :func:`write_study_reports`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_out import UID_RE, valid_uid  # noqa: F401  (UID_RE, valid_uid: re-exported)
from ..errors import CxrkitError, FailureReason

log = logging.getLogger(__name__)


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


#: codes of the report's fixed concepts (all in DICOM PS3.16 but the procedure: SNOMED CT)
PROCEDURE = ("399208008", "SCT", "Plain chest X-ray")
PROBABILITY = ("122157", "DCM", "Probability")
THRESHOLD = ("122411", "DCM", "Threshold Value")
PRESENT = ("52101004", "SCT", "Present")
ABSENT = ("272519000", "SCT", "Absent")
PROB_UNIT = ("{probability}", "UCUM", "probability")
#: Coding Scheme Identification Sequence entries (HL7 OIDs) for the schemes a report uses
SCHEME_UIDS = {"SCT": ("2.16.840.1.113883.6.96", "SNOMED CT", "IHTSDO"),
               "DCM": ("1.2.840.10008.2.16.4", "DICOM Controlled Terminology", "NEMA"),
               "UCUM": ("2.16.840.1.113883.6.8", "Unified Code for Units of Measure", "Regenstrief Institute")}


def _weights_shas(predictor: Any) -> list[str]:
    return [str(m.meta.get("weights_sha256", "")) for m in getattr(getattr(predictor, "spec", None), "members", [])]


def device_uid(predictor: Any) -> str:
    """The model's DeviceObserverUID: the same for the same weights, on every machine."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["cxrkit-model", predictor.name, *_weights_shas(predictor)])


def model_serial(predictor: Any) -> str:
    """The exact model, as a serial number: 16 hex digits of its weights' SHA-256 (of all
    members' for an ensemble)."""
    import hashlib

    return hashlib.sha256("".join(_weights_shas(predictor)).encode()).hexdigest()[:16]


def operating_point_text(predictor: Any, i: int) -> str:
    """How class ``i``'s threshold was chosen, in words (for the SR's algorithm parameters)."""
    op = (getattr(getattr(predictor, "spec", None), "meta", {}) or {}).get("operating_point") or {}
    cls = (op.get("classes") or {}).get(predictor.classes[i]) if op else None
    if not cls:
        method = (getattr(getattr(predictor, "spec", None), "meta", {}) or {}).get("threshold_method", "f1")
        return f"threshold chosen by {method} on validation"
    txt = f"operating point {op.get('target', '')} on validation"
    if cls.get("sensitivity") is not None:
        txt += f": sensitivity {cls['sensitivity']:.3f}, specificity {cls['specificity']:.3f}"
    return txt


def calibration_text(predictor: Any) -> str:
    cal = getattr(predictor, "calibration_method", None)
    return f"probabilities calibrated ({cal})" if cal else "probabilities not calibrated"


def _concept(t: tuple[str, str, str]) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(t[0], t[1], t[2])


def build_report(predictor: Any, rows: list[dict[str, str]], evidence: list[Any], study_uid: str,
                 codes: list[Any], prev: Any = None) -> Any:
    """One study's TID 1500 Measurement Report (see the module docstring)."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes as dcm_codes
    from pydicom.uid import generate_uid

    classes = predictor.classes
    probs = np.array([[float(r[c]) for c in classes] for r in rows]).max(0)  # study = max over views
    name = str(predictor.name)[:64] or "model"
    version = str(predictor.version)[:64] or "0"
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(predictor), name=name, manufacturer_name="cxrkit", model_name=name,
            serial_number=model_serial(predictor)))
    sources = [hd.sr.SourceImageForMeasurementGroup(str(e.SOPClassUID), str(e.SOPInstanceUID)) for e in evidence]
    groups = []
    for i, (c, p, t, fc) in enumerate(zip(classes, probs, predictor.thresholds, codes)):
        finding = hd.sr.CodedConcept(fc.finding.code, fc.finding.scheme, fc.finding.meaning)
        algo = hd.sr.AlgorithmIdentification(
            name=name, version=version, manufacturer="cxrkit",
            parameters=[operating_point_text(predictor, i), calibration_text(predictor),
                        f"study probability = maximum over {len(rows)} image(s)"])
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[study_uid, c]),
                                                         identifier=str(c)[:64]),
            finding_type=finding, algorithm_id=algo,
            finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept(fc.site.code, fc.site.scheme, fc.site.meaning))]
            if fc.site else None,
            measurements=[hd.sr.Measurement(name=_concept(PROBABILITY), value=float(round(float(p), 6)),
                                            unit=_concept(PROB_UNIT)),
                          hd.sr.Measurement(name=_concept(THRESHOLD), value=float(round(float(t), 6)),
                                            unit=_concept(PROB_UNIT))],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=finding, value=_concept(PRESENT if p >= t else ABSENT))],
            source_images=sources))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=_concept(PROCEDURE), imaging_measurements=groups)
    # one current report per study: a new result is a new version of the same document
    # (same series, next instance number, the earlier version in its Predecessor Documents
    # Sequence, as DICOM amends a report)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0],
        series_instance_uid=str(prev.SeriesInstanceUID) if prev is not None else generate_uid(),
        series_number=9901, sop_instance_uid=generate_uid(),
        instance_number=int(prev.get("InstanceNumber") or 1) + 1 if prev is not None else 1,
        manufacturer="cxrkit", is_complete=True, is_final=False, is_verified=False,
        previous_versions=[prev] if prev is not None else None)
    sr.SeriesDescription = "AI results (cxrkit, not verified)"
    sr.ManufacturerModelName = name
    sr.SoftwareVersions = version
    schemes = []
    used = {fc.finding.scheme for fc in codes} | {fc.site.scheme for fc in codes if fc.site} | {"SCT", "DCM", "UCUM"}
    for s in sorted(used):
        item = Dataset()
        item.CodingSchemeDesignator = s
        if s in SCHEME_UIDS:
            item.CodingSchemeUID, item.CodingSchemeName, item.CodingSchemeResponsibleOrganization = SCHEME_UIDS[s]
        else:
            from .codes import PRIVATE_SCHEME_NAME, PRIVATE_SCHEME_ORGANIZATION

            item.CodingSchemeName = PRIVATE_SCHEME_NAME if s.startswith("99") else s
            item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
        schemes.append(item)
    sr.CodingSchemeIdentificationSequence = schemes
    if any(getattr(e, "SpecificCharacterSet", None) for e in evidence[:1]):
        sr.SpecificCharacterSet = evidence[0].SpecificCharacterSet
    return sr


def read_report(path_or_ds: Any) -> dict[str, dict[str, Any]]:
    """A cxrkit report parsed back with highdicom: per finding (its tracking identifier, the
    label) the probability, threshold, call (True = present), finding code and site."""
    import highdicom as hd
    import pydicom

    ds = path_or_ds if isinstance(path_or_ds, pydicom.Dataset) else pydicom.dcmread(path_or_ds)
    sr = hd.sr.ComprehensiveSR.from_dataset(ds, copy=True)
    report = hd.sr.MeasurementReport.from_sequence(sr.ContentSequence and [sr])
    out: dict[str, dict[str, Any]] = {}
    for g in report.get_image_measurement_groups():
        vals = {m.name.value: float(m.value) for m in g.get_measurements()}
        quals = g.get_qualitative_evaluations()
        site = [s.value for s in g.finding_sites] if g.finding_sites else []
        out[str(g.tracking_identifier)] = {
            "probability": float(vals[PROBABILITY[0]]), "threshold": float(vals[THRESHOLD[0]]),
            "present": quals[0].value.value == PRESENT[0] if quals else None,
            "code": (g.finding_type.scheme_designator, g.finding_type.value) if g.finding_type else None,
            "site": site[0] if site else None}
    return out


def rows_by_study(out_csv: str | Path) -> dict[str, list[dict[str, str]]]:
    """The rows of ``predict``'s CSV grouped by ``study_instance_uid``, in file order (rows
    without one, e.g. PNG films, are left out): one report per study, for SR and FHIR alike."""
    from ..utils import CSV_ENCODING

    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(out_csv, newline="", **CSV_ENCODING) as f:
        for row in csv.DictReader(f):
            if row.get("study_instance_uid"):
                by_study[row["study_instance_uid"]].append(row)
    return by_study


def write_study_reports(out_csv: str | Path, sr_dir: str | Path, predictor: Any,
                        codes_file: str | Path | None = None) -> ReportResult:
    """One TID 1500 report per study of the rows in ``out_csv``; a study whose UID is not a
    valid DICOM UID, or whose report fails, gets a failure entry (named by UID, never by
    patient data) and the other studies go on. ``codes_file``: the user's label codes
    (:func:`cxrkit.codes.codes_for`)."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        from ..extras import install_hint

        raise CxrkitError(f"DICOM SR output needs highdicom: {install_hint('sr')}") from None
    from .codes import codes_for
    from .dicom_out import clean_reference, read_source
    from ..utils import atomic_write

    sr_dir = Path(sr_dir)
    sr_dir.mkdir(parents=True, exist_ok=True)
    root_dir = sr_dir.resolve()
    codes = codes_for(list(predictor.classes), codes_file)
    res = ReportResult(folder=str(sr_dir))
    for study_uid, rows in rows_by_study(out_csv).items():
        target = sr_dir / f"{study_uid}.dcm"
        if not valid_uid(study_uid) or target.resolve().parent != root_dir:
            res.failed += 1
            detail = "StudyInstanceUID is not a valid DICOM UID (digits and dots, at most 64 characters); no report written"
            res.failures += [(r["path"], FailureReason.INVALID_UID.value, detail) for r in rows]
            log.warning("structured report skipped: a study's StudyInstanceUID is not a valid DICOM UID")
            continue
        try:
            with quiet_dicom_libraries():
                evidence = [clean_reference(read_source(r["path"])) for r in rows]
                prev = previous_report(target)
                sr = build_report(predictor, rows, evidence, study_uid, codes, prev)
                if prev is not None and report_content(prev) == report_content(sr):
                    res.unchanged += 1
                    continue
                with atomic_write(target) as tmp:
                    sr.save_as(tmp, enforce_file_format=True)
            res.written += 1
            res.changed.append(study_uid)
        except Exception as e:  # one study's report must not stop the others
            log.debug("report failure", exc_info=True)
            res.failed += 1
            detail = f"structured report failed ({type(e).__name__})"
            res.failures += [(r["path"], "sr_failed", detail) for r in rows]
            log.warning("structured report for study %s failed: %s", study_uid, type(e).__name__)
    return res

