"""What cxrkit copies from a source film into the DICOM objects it writes (SR, saliency SC).

Only the identifiers a report needs, and only valid values: a film from the wild carries a
Patient's Age of ``62`` (not ``062Y``), dates like ``20231345``, names over 64 characters,
a Patient's Sex of ``male``. Copied as they are, each becomes a validator error in every
object made from the film. Here each value is checked against its VR (pydicom's validators,
plus dates that exist, PN's five components, enumerated values): a bad type 2 value is
left empty (DICOM's "unknown"), a bad type 3 value is left out. Nothing else of the source
header (private tags, other patient data) reaches the output.

Films without a preamble, in Implicit VR Little Endian, or lacking type 2 attributes are
read (``force=True``) like ``predict`` reads them.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

#: DICOM UID grammar (PS3.5 9.1): components of digits without leading zeros, joined by dots,
#: at most 64 characters. Anything else is refused before it can become a file name.
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid: str) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(UID_RE.match(uid))

#: Patient / study / series attributes an output object takes from its source film, with
#: their DICOM type in the SR and SC IODs (2: present, may be empty; 3: optional)
COPIED = {"PatientName": 2, "PatientID": 2, "PatientBirthDate": 2, "PatientSex": 2, "PatientAge": 3,
          "StudyDate": 2, "StudyTime": 2, "StudyID": 2, "AccessionNumber": 2, "ReferringPhysicianName": 2,
          "StudyDescription": 3}
#: identifiers the output references (must be valid UIDs) and image attributes it may need
REFERENCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
IMAGE = {"Modality": 1, "PatientOrientation": 3, "Laterality": 3, "ImageLaterality": 3, "ViewPosition": 3,
         "BodyPartExamined": 3}
ENUMERATED = {"PatientSex": {"M", "F", "O"}, "Laterality": {"R", "L"}, "ImageLaterality": {"R", "L", "U", "B"},
              "ViewPosition": {"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"}}


def read_source(path: str | Path) -> Any:
    """The header of a source film, however it was written (no preamble, Implicit VR)."""
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)


def _valid_date(v: str) -> bool:
    try:
        _dt.datetime.strptime(v, "%Y%m%d")
        return True
    except ValueError:
        return False


def valid_value(keyword: str, elem: Any) -> bool:
    """Whether a data element's value is valid for its VR and VM 1 (as copied)."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    value = elem.value
    if value is None or value == "":
        return True
    if isinstance(value, (MultiValue, list, tuple)) or isinstance(value, bytes):
        return keyword == "PatientOrientation" and len(value) == 2 and all(str(v).strip() for v in value)
    try:
        validate_value(elem.VR, str(value) if elem.VR == "PN" else value, config.RAISE)
    except Exception:
        return False
    s = str(value)
    if elem.VR == "DA" and not _valid_date(s):
        return False
    if elem.VR == "PN" and (s.count("^") > 4 or "=" in s and s.count("=") > 2):
        return False
    if keyword in ENUMERATED and s not in ENUMERATED[keyword]:
        return False
    return True


def clean_reference(src: Any) -> Any:
    """A new dataset with the source film's references and its valid patient / study values
    (see the module docstring); what highdicom copies into an SR or SC."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for kw in REFERENCE:
        v = str(src.get(kw, "") or "")
        if not valid_uid(v):
            raise ValueError(f"{kw} is not a valid DICOM UID")
        setattr(out, kw, v)
    for kw, typ in {**COPIED, **IMAGE}.items():
        elem = src[kw] if kw in src else None
        ok = elem is not None and elem.value is not None and valid_value(kw, elem)
        if ok:
            out.add_new(elem.tag, elem.VR, elem.value)
        elif typ == 2:
            setattr(out, kw, "")
        elif typ == 1:
            setattr(out, kw, "OT")
    if any(_non_ascii(out.get(kw)) for kw in COPIED):
        out.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: whatever the source's repertoire was
    return out


def _non_ascii(v: Any) -> bool:
    try:
        str(v or "").encode("ascii")
        return False
    except UnicodeEncodeError:
        return True
