"""Standard codes for the findings cxrkit reports (DICOM SR, FHIR).

``resources/finding_codes.csv`` codes every label of the CheXpert 14, NIH ChestX-ray14 and
CXR-LT 26 label spaces: SNOMED CT where SNOMED has the concept, DICOM's own scheme (DCM,
PS3.16) where DICOM defines it, and a private scheme (``99CXRKIT``, declared in each SR's
Coding Scheme Identification Sequence) where neither does. An optional finding site (e.g.
Lung) qualifies a generic finding (Lesion, Opacity). The ``source`` column says what each
code was checked against: ``DICOM PS3.16`` (the code, its meaning and its scheme are in the
standard's content mapping resource, as shipped in pydicom: a test checks every one),
``SNOMED CT`` (a concept identifier whose Verhoeff check digit and partition a test checks;
not in PS3.16), ``private``.

A user's own labels (or a hospital's preferred codes) come in a CSV file with the same
columns (``label,scheme,code,meaning`` required): ``predict --codes FILE``. Its rows win
over the shipped table; a label found in neither gets a private code made from its name.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import CxrkitError

TABLE = Path(__file__).with_name("resources") / "finding_codes.csv"
PRIVATE_SCHEME = "99CXRKIT"
PRIVATE_SCHEME_NAME = "cxrkit private finding codes"
PRIVATE_SCHEME_ORGANIZATION = "cxrkit"
SNOMED_URI = "http://snomed.info/sct"
#: FHIR system URIs of the schemes (HL7 terminology; DCM per PS3.16 Annex "DICOM in FHIR")
FHIR_SYSTEMS = {"SCT": SNOMED_URI, "DCM": "http://dicom.nema.org/resources/ontology/DCM",
                "LN": "http://loinc.org", "RADLEX": "http://radlex.org", "UCUM": "http://unitsofmeasure.org",
                PRIVATE_SCHEME: "urn:cxrkit:finding-codes"}

REQUIRED = ("label", "scheme", "code", "meaning")


@dataclass(frozen=True)
class Coded:
    scheme: str
    code: str
    meaning: str


@dataclass(frozen=True)
class FindingCode:
    label: str
    finding: Coded
    site: Coded | None = None
    source: str = ""

    @property
    def private(self) -> bool:
        return self.finding.scheme.startswith("99") or (self.site is not None and self.site.scheme.startswith("99"))


def normalise_label(label: str) -> str:
    """``Pleural_Thickening`` and ``pleural thickening`` are the same label."""
    return re.sub(r"[\s_]+", " ", str(label)).strip().lower()


def _check(row: dict[str, str], where: str) -> None:
    for k in REQUIRED:
        if not (row.get(k) or "").strip():
            raise CxrkitError(f"{where}: column {k!r} is empty")
    code, scheme, meaning = row["code"].strip(), row["scheme"].strip(), row["meaning"].strip()
    # DICOM limits: Code Value SH (16), Coding Scheme Designator SH (16), Code Meaning LO (64)
    if len(code) > 16 or len(scheme) > 16 or len(meaning) > 64 or "\\" in code + scheme + meaning:
        raise CxrkitError(f"{where}: code {code!r} / scheme {scheme!r} / meaning {meaning!r} exceed DICOM's "
                          "lengths (16 / 16 / 64 characters, no backslash)")
    if scheme == "SCT" and not snomed_id_valid(code):
        raise CxrkitError(f"{where}: {code!r} is not a valid SNOMED CT concept identifier (check digit / partition)")


def _read(path: Path) -> dict[str, FindingCode]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [k for k in REQUIRED if k not in (reader.fieldnames or [])]
            if missing:
                raise CxrkitError(f"{path}: a code file needs the columns {', '.join(REQUIRED)} "
                                  f"(missing {', '.join(missing)})")
            out: dict[str, FindingCode] = {}
            for i, row in enumerate(reader, start=2):
                _check(row, f"{path}, line {i}")
                site = None
                if (row.get("site_code") or "").strip():
                    site = Coded(row["site_scheme"].strip(), row["site_code"].strip(), row["site_meaning"].strip())
                out[normalise_label(row["label"])] = FindingCode(
                    row["label"].strip(), Coded(row["scheme"].strip(), row["code"].strip(), row["meaning"].strip()),
                    site, (row.get("source") or "").strip())
            return out
    except OSError as e:
        raise CxrkitError(f"{path}: cannot read the code file ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise CxrkitError(f"{path}: not a CSV code file ({e})") from None


@lru_cache(maxsize=1)
def shipped() -> dict[str, FindingCode]:
    return _read(TABLE)


def private_code(label: str) -> FindingCode:
    """A label no table codes: a stable private code made from its name."""
    code = "CXR" + hashlib.sha1(normalise_label(label).encode()).hexdigest()[:8].upper()
    return FindingCode(label, Coded(PRIVATE_SCHEME, code, str(label)[:64]), None, "private (generated)")


def codes_for(labels: list[str], user_file: str | Path | None = None) -> list[FindingCode]:
    """One code per label, in order: the user's file first, then the shipped table, else a
    generated private code."""
    user = _read(Path(user_file)) if user_file else {}
    table = shipped()
    return [user.get(normalise_label(lb)) or table.get(normalise_label(lb)) or private_code(lb) for lb in labels]


def check_code_file(path: str | Path) -> None:
    """Raise a one-line CxrkitError if ``path`` is not a usable code file (before a run)."""
    _read(Path(path))


# Verhoeff's dihedral-group check digit, which SNOMED CT identifiers end with
_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
      [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
      [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
      [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
      [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
      [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def snomed_id_valid(sctid: str) -> bool:
    """A SNOMED CT concept identifier: 6 to 18 digits, no leading zero, a concept partition
    (``00`` international, ``10`` extension) and a valid Verhoeff check digit."""
    if not re.fullmatch(r"[1-9][0-9]{5,17}", sctid or "") or sctid[-3:-1] not in ("00", "10"):
        return False
    c = 0
    for i, ch in enumerate(reversed(sctid)):
        c = _D[c][_P[i % 8][int(ch)]]
    return c == 0
