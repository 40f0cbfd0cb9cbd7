"""FHIR output of the predictions: per study one FHIR R4 ``Bundle`` (type ``collection``)
holding a ``DiagnosticReport``, one ``Observation`` per finding and the model as a
``Device`` (optional: needs ``fhir.resources``, ``pip install -e ".[fhir]"``).

* Observation: status ``preliminary``, category ``imaging``, the finding coded as in the SR
  (SNOMED CT ``http://snomed.info/sct``, DICOM ``http://dicom.nema.org/resources/ontology/DCM``,
  the private ``urn:cxrkit:finding-codes``), the probability as ``valueQuantity`` (UCUM
  ``{probability}``), the call at the model's operating point as ``interpretation`` (HL7
  ObservationInterpretation POS / NEG), the threshold as a component, the finding site as
  ``bodySite``, the model as ``device``.
* DiagnosticReport: status ``preliminary``, category RAD, code LOINC 18748-4 ("Diagnostic
  imaging study"), the study by its StudyInstanceUID (``imagingStudy`` identifier
  ``urn:dicom:uid`` / ``urn:oid:...``), the observations as ``result``, the findings called
  present in ``conclusionCode``.
* Nothing identifying beyond the source DICOM: the subject is the film's Patient ID (as an
  identifier; no name, no birth date), the date its Study Date (a date: DICOM's time has no zone); both only when valid.

Built with ``fhir.resources``' R4B models (the R4 technical correction: DiagnosticReport,
Observation and Device are R4's), which validate every element; written to
``<dir>/<StudyInstanceUID>.json`` atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .codes import FHIR_SYSTEMS
from ..errors import CxrkitError, FailureReason
from .sr import (ReportResult, calibration_text, device_uid, model_serial, operating_point_text, quiet_dicom_libraries,
                 rows_by_study, valid_uid)

log = logging.getLogger(__name__)

UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAG_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
DICOM_UID = "urn:dicom:uid"
PATIENT_ID_SYSTEM = "urn:cxrkit:dicom-patient-id"  # the PACS's own Patient ID, issuer unknown


def _coding(scheme: str, code: str, meaning: str) -> dict[str, str]:
    return {"system": FHIR_SYSTEMS.get(scheme, f"urn:cxrkit:scheme:{scheme}"), "code": code, "display": meaning}


def _study_date(ref: Any) -> str | None:
    """The Study Date as a FHIR date. Only the date: FHIR wants a time zone with a time, and
    DICOM's Study Time has none (the PACS's local time)."""
    d = str(ref.get("StudyDate") or "")
    try:
        return _dt.datetime.strptime(d, "%Y%m%d").date().isoformat() if len(d) == 8 else None
    except ValueError:
        return None


def study_bundle(predictor: Any, rows: list[dict[str, str]], study_uid: str, codes: list[Any],
                 ref: Any = None) -> dict[str, Any]:
    """One study's Bundle as JSON-ready dict, validated by the fhir.resources models."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    classes = predictor.classes
    probs = np.array([[float(r[c]) for c in classes] for r in rows]).max(0)  # study = max over views
    name, version = str(predictor.name), str(predictor.version)
    dev_uid = device_uid(predictor)
    device = Device(id="model", status="active", manufacturer="cxrkit",
                    identifier=[{"system": DICOM_UID, "value": f"urn:oid:{dev_uid}"}],
                    deviceName=[{"name": name, "type": "model-name"}], version=[{"value": version}],
                    serialNumber=model_serial(predictor),
                    note=[{"text": f"AI model; {calibration_text(predictor)}"}])
    subject = None
    pid = str(ref.get("PatientID") or "") if ref is not None else ""
    if pid:
        subject = {"identifier": {"system": PATIENT_ID_SYSTEM, "value": pid}, "type": "Patient"}
    when = _study_date(ref) if ref is not None else None
    issued = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    study_ref = {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}, "type": "ImagingStudy"}
    # references inside the Bundle go by the entries' fullUrl (urn:uuid, stable per study)
    ref_of = {name: f"urn:uuid:{_uuid(study_uid, name)}" for name in
              ["report", "model", *(f"finding-{i}" for i in range(len(classes)))]}
    observations, present = [], []
    for i, (c, p, t, fc) in enumerate(zip(classes, probs, predictor.thresholds, codes)):
        pos = bool(p >= t)
        code = {"coding": [_coding(fc.finding.scheme, fc.finding.code, fc.finding.meaning)], "text": str(c)}
        if pos:
            present.append(code)
        obs: dict[str, Any] = {
            "id": f"finding-{i}", "status": "preliminary",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": code, "issued": issued, "device": {"reference": ref_of["model"]},
            "valueQuantity": {"value": float(round(float(p), 6)), "unit": "probability", "system": UCUM,
                              "code": "{probability}"},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "POS" if pos else "NEG",
                                            "display": "Positive" if pos else "Negative"}]}],
            "component": [{"code": {"coding": [_coding("DCM", "122411", "Threshold Value")]},
                           "valueQuantity": {"value": float(round(float(t), 6)), "unit": "probability",
                                             "system": UCUM, "code": "{probability}"}}],
            "note": [{"text": f"{operating_point_text(predictor, i)}; study probability = maximum over "
                              f"{len(rows)} image(s); AI result, not verified by a physician"}],
            "derivedFrom": [study_ref]}
        if fc.site:
            obs["bodySite"] = {"coding": [_coding(fc.site.scheme, fc.site.code, fc.site.meaning)]}
        if subject:
            obs["subject"] = subject
        if when:
            obs["effectiveDateTime"] = when
        observations.append(Observation.model_validate(obs))
    report: dict[str, Any] = {
        "id": "report", "status": "preliminary",
        "category": [{"coding": [{"system": DIAG_SERVICE, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": "AI results (cxrkit, not verified)"},
        "issued": issued, "imagingStudy": [study_ref],
        "result": [{"reference": ref_of[str(o.id)]} for o in observations],
        "conclusion": ("AI result, not verified by a physician. Present at the model's operating point: "
                       + (", ".join(str(x["text"]) for x in present) or "none of the findings")),
        "conclusionCode": present or None}
    if subject:
        report["subject"] = subject
    if when:
        report["effectiveDateTime"] = when
    dr = DiagnosticReport.model_validate({k: v for k, v in report.items() if v is not None})
    entries = [{"fullUrl": ref_of[str(r.id)], "resource": r} for r in (dr, device, *observations)]
    bundle = Bundle.model_validate({"type": "collection", "timestamp": issued,
                                    "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"},
                                    "entry": entries})
    return json.loads(bundle.model_dump_json(exclude_none=True))


def _uuid(*parts: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_OID, "/".join(parts)))


def write_study_fhir(out_csv: str | Path, fhir_dir: str | Path, predictor: Any,
                     codes_file: str | Path | None = None) -> ReportResult:
    """One FHIR Bundle per study of the rows in ``out_csv`` (see the module docstring); a
    study that fails gets failure entries and the others go on."""
    try:
        import fhir.resources  # noqa: F401
    except ImportError:
        from ..extras import install_hint

        raise CxrkitError(f"FHIR output needs fhir.resources: {install_hint('fhir')}") from None
    from .codes import codes_for
    from .dicom_out import clean_reference, read_source
    from ..utils import atomic_write

    fhir_dir = Path(fhir_dir)
    fhir_dir.mkdir(parents=True, exist_ok=True)
    codes = codes_for(list(predictor.classes), codes_file)
    res = ReportResult(folder=str(fhir_dir))
    for study_uid, rows in rows_by_study(out_csv).items():
        if not valid_uid(study_uid):
            res.failed += 1
            res.failures += [(r["path"], FailureReason.INVALID_UID.value,
                              "StudyInstanceUID is not a valid DICOM UID; no FHIR report written") for r in rows]
            continue
        try:
            with quiet_dicom_libraries():
                try:
                    ref = clean_reference(read_source(rows[0]["path"]))
                except Exception:
                    ref = None  # the film is gone or its header is unusable: no subject, no date
                doc = study_bundle(predictor, rows, study_uid, codes, ref)
            with atomic_write(fhir_dir / f"{study_uid}.json") as tmp:
                tmp.write_text(json.dumps(doc, indent=2) + "\n")
            res.written += 1
            res.changed.append(study_uid)
        except Exception as e:  # one study must not stop the others
            log.debug("FHIR failure", exc_info=True)
            res.failed += 1
            res.failures += [(r["path"], "fhir_failed", f"FHIR report failed ({type(e).__name__})") for r in rows]
            log.warning("FHIR report for study %s failed: %s", study_uid, type(e).__name__)
    return res
