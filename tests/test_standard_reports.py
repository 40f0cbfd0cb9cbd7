"""What a hospital receives: TID 1500 SRs in standard codes, saliency Secondary Captures and
FHIR Bundles, checked with the real validators (dicom3tools' dciodvfy, dcmtk's dsrdump), read
back with highdicom / fhir.resources, made from real DICOMs (../shared/data/dicom, pydicom's
CR test films), DICOMs made from NIH films, and films with broken or missing attributes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import SHARED_DATA, run_cli_inprocess
from dicom_helpers import make_dicom

DCIODVFY = shutil.which("dciodvfy")
DSRDUMP = shutil.which("dsrdump")
needs_validators = pytest.mark.skipif(not (DCIODVFY and DSRDUMP),
                                      reason="dicom3tools / dcmtk missing (bash scripts/test-deps.sh installs them)")


def _body(seed: int = 0, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (1500 + 800 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 60, shape)).clip(0, 4095).astype(np.uint16)


#: attributes of real-world films that are invalid for their VR, each in its own film
BROKEN = {
    "age_62": {"PatientAge": "62"},                                   # AS needs 062Y
    "bad_date": {"StudyDate": "20231345", "PatientBirthDate": "1950"},  # no 13th month; DA is 8 digits
    "long_name": {"PatientName": "A" * 70 + "^B"},                     # PN component over 64
    "sex_word": {"PatientSex": "male"},                                # CS enumerated M / F / O
    "long_ids": {"StudyID": "S" * 20, "AccessionNumber": "A" * 20, "PatientID": "P" * 70},  # SH 16, LO 64
    "empty": {"PatientName": "", "PatientID": "", "StudyDate": "", "ReferringPhysicianName": ""},
    "non_ascii": {"PatientName": "Müller^Jürgen", "SpecificCharacterSet": "ISO_IR 100"},
}


def _write_implicit_no_preamble(src: Path, dst: Path) -> Path:
    """A film as some CR modalities write it: no preamble, no file meta, Implicit VR LE."""
    ds = pydicom.dcmread(src)
    ds.file_meta = None
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(dst, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = dst.read_bytes()
    assert raw[128:132] != b"DICM"
    return dst


def _films(root: Path, demo_data: Path) -> Path:
    d = root / "films"
    d.mkdir()
    for i, (name, attrs) in enumerate(BROKEN.items()):
        make_dicom(d / f"{name}.dcm", _body(i), bits_stored=12, **attrs)
    # missing type 2 attributes altogether (a de-identified film)
    f = make_dicom(d / "deidentified.dcm", _body(20), bits_stored=12)
    ds = pydicom.dcmread(f)
    for k in ("PatientName", "PatientID", "ViewPosition"):
        delattr(ds, k)
    ds.save_as(f)
    _write_implicit_no_preamble(make_dicom(root / "tmp.dcm", _body(21), modality="DX", bits_stored=12,
                                           PatientAge="45"), d / "implicit_no_preamble.dcm")
    # two views of one study
    study = pydicom.uid.generate_uid()
    make_dicom(d / "two_views_pa.dcm", _body(22), bits_stored=12, StudyInstanceUID=study)
    make_dicom(d / "two_views_ll.dcm", _body(23), bits_stored=12, view="LL", StudyInstanceUID=study)
    # real films
    for f in sorted((SHARED_DATA / "dicom").glob("*.dcm")) if (SHARED_DATA / "dicom").is_dir() else []:
        shutil.copy(f, d / f.name)
    try:
        from pydicom.data import get_testdata_file

        for n in ("RG1_UNCI.dcm", "RG1_J2KR.dcm"):  # pydicom's CR chest films (pydicom-data)
            p = get_testdata_file(n, download=False)
            if p:
                shutil.copy(p, d / n)
    except Exception:
        pass
    # NIH films as CR DICOMs (8-bit, as a PACS export of the PNGs)
    nih = sorted((SHARED_DATA / "nih_hires" / "images").glob("*.png"))[:2]
    for p in nih:
        arr = np.asarray(Image.open(p).convert("L"))
        make_dicom(d / f"nih_{p.stem}.dcm", arr, PatientAge="058Y", PatientSex="F")
    # and cxrkit's own demo-dicom films
    from cxrkit.data.demo import demo_to_dicom

    demo_to_dicom(demo_data, root / "demo_dicom")
    for f in sorted((root / "demo_dicom").rglob("*.dcm"))[:2]:
        shutil.copy(f, d / f"demo_{f.parent.name}_{f.name}")
    return d


@pytest.fixture(scope="module")
def hospital(trained_model: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hospital")
    films = _films(root, demo_data)
    r = subprocess.run([sys.executable, "-m", "cxrkit", "predict", str(trained_model), str(films), "--out",
                        str(root / "p.csv"), "--no-filter", "--sr", str(root / "sr"), "--fhir", str(root / "fhir"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(root / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "p.failures.csv", newline="") as f:
        failures = list(csv.DictReader(f)) if (root / "p.failures.csv").stat().st_size else []
    return {"root": root, "films": films, "rows": rows, "failures": failures, "model": trained_model}


def _errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def test_every_readable_film_gets_its_report(hospital: dict) -> None:
    """No preamble / Implicit VR / de-identified / broken attributes: each study predicted has
    its SR and its FHIR Bundle (before: the Implicit VR film failed with InvalidDicomError)."""
    rows, films = hospital["rows"], hospital["films"]
    names = {Path(r["path"]).name for r in rows}
    assert "implicit_no_preamble.dcm" in names and "deidentified.dcm" in names
    assert all(f"{n}.dcm" in names for n in BROKEN)
    assert not [f for f in hospital["failures"] if f["reason"] in ("sr_failed", "fhir_failed")], hospital["failures"]
    studies = {r["study_instance_uid"] for r in rows}
    by_name = {Path(r["path"]).name: r["study_instance_uid"] for r in rows}
    assert by_name["two_views_pa.dcm"] == by_name["two_views_ll.dcm"]  # one report for both views
    assert {p.stem for p in (hospital["root"] / "sr").glob("*.dcm")} == studies
    assert {p.stem for p in (hospital["root"] / "fhir").glob("*.json")} == studies
    assert len(list(films.glob("*.dcm"))) == len(rows)


@needs_validators
def test_reports_pass_dciodvfy_and_dsrdump(hospital: dict) -> None:
    for sr in sorted((hospital["root"] / "sr").glob("*.dcm")):
        assert _errors(sr) == [], (sr.name, _errors(sr))
        out = subprocess.run([DSRDUMP, str(sr)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Imaging Measurement Report" in out.stdout, out.stderr
        assert '(8186001,SCT,"Cardiomegaly")' in out.stdout  # the finding in SNOMED CT, not a private code
        assert '(52101004,SCT,"Present")' in out.stdout or '(272519000,SCT,"Absent")' in out.stdout
        assert "Device Observer Name" in out.stdout and "Algorithm Version" in out.stdout


def test_report_values_equal_predicts_csv(hospital: dict) -> None:
    """highdicom parses each report back; probability = the study's maximum in the CSV, the
    call = probability >= the model's threshold; the source films are referenced."""
    from cxrkit.sr import read_report

    classes = json.loads((hospital["model"] / "model.json").read_text())["classes"]
    thr = json.loads((hospital["model"] / "model.json").read_text())["thresholds"]
    by_study: dict[str, list[dict]] = {}
    for r in hospital["rows"]:
        by_study.setdefault(r["study_instance_uid"], []).append(r)
    for study, rows in by_study.items():
        ds = pydicom.dcmread(hospital["root"] / "sr" / f"{study}.dcm")
        got = read_report(ds)
        assert list(got) == classes
        for c, t in zip(classes, thr):
            p = max(float(r[c]) for r in rows)
            assert got[c]["probability"] == pytest.approx(p, abs=1e-6)
            assert got[c]["threshold"] == pytest.approx(t, abs=1e-6)
            assert got[c]["present"] == (p >= t)
        refs = {str(i.ReferencedSOPInstanceUID) for s in ds.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert refs == {r["sop_instance_uid"] for r in rows}
        schemes = {str(s.CodingSchemeDesignator) for s in ds.CodingSchemeIdentificationSequence}
        assert {"SCT", "DCM", "UCUM", "99CXRKIT"} <= schemes  # the private scheme is declared
        assert got["Cardiomegaly"]["code"] == ("SCT", "8186001")


def test_invalid_source_values_are_not_copied(hospital: dict) -> None:
    """Patient's Age "62" and its kin: left out (type 3) or left empty (type 2), never copied."""
    by_name = {Path(r["path"]).name: r["study_instance_uid"] for r in hospital["rows"]}
    sr = lambda n: pydicom.dcmread(hospital["root"] / "sr" / f"{by_name[n]}.dcm")  # noqa: E731
    assert "PatientAge" not in sr("age_62.dcm")
    ds = sr("bad_date.dcm")
    assert ds.StudyDate == "" and ds.PatientBirthDate == ""
    assert sr("long_name.dcm").PatientName == ""
    assert sr("sex_word.dcm").PatientSex == ""
    ds = sr("long_ids.dcm")
    assert ds.StudyID == "" and ds.AccessionNumber == "" and ds.PatientID == ""
    ds = sr("nih_" + next(n for n in by_name if n.startswith("nih_"))[4:]) if any(
        n.startswith("nih_") for n in by_name) else None
    if ds is not None:  # valid values are copied
        assert ds.PatientAge == "058Y" and ds.PatientSex == "F"
    ds = sr("non_ascii.dcm")
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")


@needs_validators
def test_broken_films_give_valid_reports_before_and_after(hospital: dict, tmp_path: Path) -> None:
    """Regression: the SR of a film with Patient's Age "62" had a validator error in every
    report; the same film now gives none."""
    by_name = {Path(r["path"]).name: r["study_instance_uid"] for r in hospital["rows"]}
    for n in ("age_62.dcm", "bad_date.dcm", "long_ids.dcm", "implicit_no_preamble.dcm", "deidentified.dcm"):
        assert _errors(hospital["root"] / "sr" / f"{by_name[n]}.dcm") == [], n
    # the validator does see the source's fault (the test's film is as broken as meant)
    assert any("Patient's Age" in e or "AS" in e for e in _errors(hospital["films"] / "age_62.dcm"))


def test_fhir_bundles_validate_and_carry_the_same_values(hospital: dict) -> None:
    from fhir.resources.R4B.bundle import Bundle

    classes = json.loads((hospital["model"] / "model.json").read_text())["classes"]
    by_study: dict[str, list[dict]] = {}
    for r in hospital["rows"]:
        by_study.setdefault(r["study_instance_uid"], []).append(r)
    for study, rows in by_study.items():
        text = (hospital["root"] / "fhir" / f"{study}.json").read_text()
        b = Bundle.model_validate_json(text)
        kinds = [e.resource.get_resource_type() for e in b.entry]
        assert kinds[:2] == ["DiagnosticReport", "Device"] and kinds.count("Observation") == len(classes)
        dr = b.entry[0].resource
        assert dr.imagingStudy[0].identifier.value == f"urn:oid:{study}" and dr.status == "preliminary"
        obs = {o.resource.code.text: o.resource for o in b.entry[2:]}
        for c in classes:
            p = max(float(r[c]) for r in rows)
            assert float(obs[c].valueQuantity.value) == pytest.approx(p, abs=1e-6)
            assert obs[c].valueQuantity.system == "http://unitsofmeasure.org"
            call = obs[c].interpretation[0].coding[0].code
            assert call == ("POS" if p >= float(rows[0][f"threshold:{c}"]) else "NEG")
        assert obs["Cardiomegaly"].code.coding[0].system == "http://snomed.info/sct"
        assert obs["Cardiomegaly"].code.coding[0].code == "8186001"
        assert "SECRET^PATIENT" not in text and "PATIENT" not in text  # no name, only the ID the film had
    # a film without a Patient ID: no subject at all
    name = {Path(r["path"]).name: r["study_instance_uid"] for r in hospital["rows"]}["deidentified.dcm"]
    assert '"subject"' not in (hospital["root"] / "fhir" / f"{name}.json").read_text()


@needs_validators
def test_saliency_secondary_captures_pass_dciodvfy(hospital: dict, tmp_path: Path) -> None:
    """predict --explain's DICOM Secondary Captures from broken and real films: 0 errors."""
    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.explain import explain

    films = hospital["films"]
    pick = [films / n for n in ("age_62.dcm", "bad_date.dcm", "long_ids.dcm", "implicit_no_preamble.dcm",
                                "deidentified.dcm", "non_ascii.dcm")]
    pick += sorted(p for p in films.glob("*.dcm") if p.name.startswith(("RG1", "nih_", "siim", "nih_dx")))[:3]
    res = explain(hospital["model"], pick, tmp_path / "ex", labels=["Cardiomegaly"], dicom_sc=True,
                  show_progress=False)
    scs = sorted((tmp_path / "ex").rglob("*.sc.dcm"))
    assert len(scs) == len(pick) == res["images"]
    for sc in scs:
        assert _errors(sc) == [], (sc, _errors(sc))
        assert "PatientAge" not in pydicom.dcmread(sc) or pydicom.dcmread(sc).PatientAge != "62"


def test_code_table_is_checked_against_its_sources() -> None:
    """Every label of CheXpert 14, NIH 14 and CXR-LT 26 has a row; DICOM PS3.16 rows are in
    the standard's content mapping resource (pydicom's copy) with the same meaning; SNOMED CT
    identifiers pass the Verhoeff check digit and partition; private codes are declared as such."""
    import pydicom.sr._concepts_dict as cd

    from cxrkit.codes import normalise_label, shipped, snomed_id_valid
    from cxrkit.labels import CHEXPERT_14, CXR_LT_26, NIH_14

    table = shipped()
    for lb in (*CHEXPERT_14, *NIH_14, *CXR_LT_26):
        assert normalise_label(lb) in table, lb
    meanings: dict[tuple[str, str], set[str]] = {}
    for scheme, d in cd.concepts.items():
        for v in d.values():
            for code, (meaning, _) in v.items():
                meanings.setdefault((scheme, code), set()).add(meaning.lower())
    n_ps316 = 0
    for fc in table.values():
        for c in (fc.finding, fc.site):
            if c is None or c.scheme.startswith("99"):
                continue
            if c.scheme == "SCT":
                assert snomed_id_valid(c.code), c
            if fc.source == "DICOM PS3.16" or c is fc.site:
                assert c.meaning.lower() in meanings.get((c.scheme, c.code), set()), c
                n_ps316 += 1
        if fc.source == "private":
            assert fc.finding.scheme == "99CXRKIT"
    assert n_ps316 >= 15
    assert not snomed_id_valid("8186002") and snomed_id_valid("8186001")  # one digit off fails


def test_user_code_file(tmp_path: Path, trained_model: Path, capsys: pytest.CaptureFixture) -> None:
    from cxrkit.codes import codes_for
    from cxrkit.errors import CxrkitError

    f = tmp_path / "codes.csv"
    f.write_text("label,scheme,code,meaning\nSupport Devices,SCT,260787004,Physical object\nMy Finding,99LOCAL,X1,Mine\n")
    got = codes_for(["Support Devices", "My Finding", "Cardiomegaly", "Unknown Thing"], f)
    assert (got[0].finding.scheme, got[0].finding.code) == ("SCT", "260787004")
    assert (got[1].finding.scheme, got[1].finding.code) == ("99LOCAL", "X1")
    assert got[2].finding.code == "8186001"
    assert got[3].finding.scheme == "99CXRKIT" and got[3].finding.code.startswith("CXR")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,scheme,code,meaning\nCardiomegaly,SCT,8186002,Cardiomegaly\n")
    with pytest.raises(CxrkitError, match="not a valid SNOMED CT"):
        codes_for(["Cardiomegaly"], bad)
    r = run_cli_inprocess(capsys, "predict", str(trained_model), str(tmp_path), "--out", str(tmp_path / "p.csv"),
                          "--sr", str(tmp_path / "sr"), "--codes", str(bad))
    assert r.returncode != 0 and "not a valid SNOMED CT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fhir_references_resolve_inside_the_bundle(hospital: dict) -> None:
    doc = json.loads(next((hospital["root"] / "fhir").glob("*.json")).read_text())
    urls = {e["fullUrl"] for e in doc["entry"]}
    assert all(u.startswith("urn:uuid:") for u in urls) and len(urls) == len(doc["entry"])
    report = doc["entry"][0]["resource"]
    assert {r["reference"] for r in report["result"]} == urls - {doc["entry"][0]["fullUrl"], doc["entry"][1]["fullUrl"]}
    assert all(e["resource"]["device"]["reference"] == doc["entry"][1]["fullUrl"] for e in doc["entry"][2:])
