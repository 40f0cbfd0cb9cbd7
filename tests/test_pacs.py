"""cxrkit as a DICOM node (issue 14), against a real Orthanc started here and against
pynetdicom as the sending PACS: push -> rows + SR back in the same study, AE allow-list,
kill and restart with every instance processed once, bad instances get failure rows."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import shared
from dicom_helpers import make_dicom

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from cxrkit.ensemble import load_predictor  # noqa: E402
from cxrkit.pacs import Listener, ListenerConfig, PacsState, status, study_key  # noqa: E402
from cxrkit.predict import run_predict  # noqa: E402

ORTHANC = shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=60.0, step=0.2, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return make_films(tmp_path_factory.mktemp("films"))


def make_films(out: Path) -> dict:
    """Two studies of real films: the shared chest DICOMs (one study each would be one
    instance), and DICOMs made from nih_hires PNGs, 3 in one study, 2 in another."""
    pngs = sorted(shared("nih_hires", "images").glob("*.png"))[:5]
    study_a, study_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    files = []
    for i, p in enumerate(pngs):
        arr = np.asarray(Image.open(p).convert("L"))
        files.append(make_dicom(out / f"nih{i}.dcm", arr, modality="DX" if i % 2 else "CR",
                                StudyInstanceUID=study_a if i < 3 else study_b, PatientName="SECRET^PATIENT"))
    real = sorted(shared("dicom").glob("*.dcm"))
    return {"a": files[:3], "b": files[3:], "real": real, "study_a": study_a, "study_b": study_b}


def c_store(files, port, calling="TESTPACS", called="CXRKIT"):
    """Send files as a PACS would; returns the status codes (None = association refused)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                      SecondaryCaptureImageStorage)

    ae = AE(ae_title=calling)
    for c in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage):
        ae.add_requested_context(c, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    codes = []
    try:
        for f in files:
            st = assoc.send_c_store(pydicom.dcmread(f))
            codes.append(int(st.Status) if st else None)
    finally:
        assoc.release()
    return codes


def assert_rows_are_predicts(rows, pred, files, ref):
    """The rows (one per SOP instance) carry cxrkit predict's probabilities on ``files``."""
    run_predict(pred, files, ref, show_progress=False, overwrite=True)
    with open(ref, newline="") as f:
        want = {r["sop_instance_uid"]: r for r in csv.DictReader(f)}
    assert {r["sop_instance_uid"] for r in rows} == set(want)
    for r in rows:
        for c in pred.classes:
            assert float(r[c]) == pytest.approx(float(want[r["sop_instance_uid"]][c]), abs=1e-6)


def _rows(spool, study_uid):
    p = Path(spool) / "results" / f"{study_key(study_uid)}.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_listener_predicts_each_study_once_and_writes_its_sr(trained_model, films, tmp_path):
    pred = load_predictor(trained_model, engine="torch")
    port = free_port()
    spool = tmp_path / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=0.5, poll=0.1,
                                               allow_ae=("TESTPACS",), fhir=True))
    lst.start()
    try:
        assert c_store(films["a"], port) == [0, 0, 0]
        assert c_store(films["a"][:1], port) == [0]  # sent twice: accepted, processed once
        assert c_store(films["a"], port, calling="INTRUDER") is None  # not on the allow-list
        wait_for(lambda: status(spool)["studies"].get("done") == 1, what="study processed")
    finally:
        lst.stop()
    rows = _rows(spool, films["study_a"])
    assert len(rows) == 3 and len({r["sop_instance_uid"] for r in rows}) == 3
    # the same probabilities as cxrkit predict on the same files
    assert_rows_are_predicts(rows, pred, films["a"], tmp_path / "ref.csv")
    srs = list((spool / "sr" / study_key(films["study_a"])).glob("*.dcm"))
    assert len(srs) == 1
    sr = pydicom.dcmread(srs[0])
    assert sr.StudyInstanceUID == films["study_a"] and sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED"
    # a TID 1500 Measurement Report with the model as its observer device, one group per finding
    from cxrkit.sr import read_report

    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    observer = {str(i.ConceptNameCodeSequence[0].CodeMeaning): str(i.get("TextValue", "")) for i in sr.ContentSequence}
    assert observer["Device Observer Name"] == pred.name and observer["Device Observer Manufacturer"] == "cxrkit"
    assert list(read_report(sr)) == pred.classes
    # --fhir: the study's FHIR Bundle beside it, with the same probabilities
    from fhir.resources.R4B.bundle import Bundle

    fj = list((spool / "fhir" / study_key(films["study_a"])).glob("*.json"))
    assert [p.stem for p in fj] == [films["study_a"]]
    b = Bundle.model_validate_json(fj[0].read_text())
    got = {e.resource.code.text: float(e.resource.valueQuantity.value) for e in b.entry[2:]}
    assert got == pytest.approx({c: v["probability"] for c, v in read_report(sr).items()}, abs=1e-6)
    # the spool is private and the log names no patient
    assert (spool.stat().st_mode & 0o077) == 0 and (spool / "state.sqlite").stat().st_mode & 0o077 == 0
    st = status(spool)
    assert st["instances"] == {"done": 3} and st["studies"] == {"done": 1}


def test_bad_instances_get_failure_rows_and_the_study_goes_on(trained_model, films, tmp_path):
    pred = load_predictor(trained_model, engine="torch")
    study = films["study_b"]
    bad = tmp_path / "bad"
    bad.mkdir()
    hand = make_dicom(bad / "hand.dcm", np.random.default_rng(0).integers(0, 4000, (256, 256)), body_part="HAND",
                      StudyInstanceUID=study)
    colour = make_dicom(bad / "rgb.dcm", np.zeros((64, 64), np.uint8), StudyInstanceUID=study)
    ds = pydicom.dcmread(colour)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8).tobytes()
    ds.save_as(colour, enforce_file_format=True)
    corrupt = make_dicom(bad / "short.dcm", np.random.default_rng(2).integers(0, 4000, (256, 256)),
                         StudyInstanceUID=study)
    ds = pydicom.dcmread(corrupt)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(corrupt, enforce_file_format=True)
    port = free_port()
    spool = tmp_path / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=0.5, poll=0.1))
    lst.start()
    try:
        codes = c_store([*films["b"], hand, colour, corrupt], port)
        wait_for(lambda: status(spool)["studies"].get("done") == 1, what="study processed")
    finally:
        lst.stop()
    assert len(_rows(spool, study)) == 2  # the two good films
    with open(spool / "results" / f"{study_key(study)}.failures.csv", newline="") as f:
        reasons = sorted(r["reason"] for r in csv.DictReader(f))
    assert codes[2:] == [0, 0, 0]  # answered stored (a PACS must not be told to resend them)
    assert reasons == ["colour", "truncated"]  # kept, and given their rows as predict gives them
    # every instance not used is counted with its reason: the hand by its header, not even kept
    nu = {(e["kind"], e["reason"]): e["count"] for e in status(spool)["not_used"]}
    assert nu == {("ignored", "not_chest_radiograph"): 1, ("failed", "colour"): 1, ("failed", "truncated"): 1}
    assert len(list((spool / "studies" / study_key(study)).glob("*.dcm"))) == 4


def test_killed_listener_resumes_without_losing_or_repeating(trained_model, films, tmp_path):
    """SIGKILL mid-study, restart: every instance is predicted exactly once."""
    port = free_port()
    spool = tmp_path / "spool"
    cmd = [sys.executable, "-m", "cxrkit.cli", "pacs", "listen", str(trained_model), "--spool", str(spool),
           "--port", str(port), "--host", "127.0.0.1", "--idle", "1.5", "--engine", "torch"]
    env = dict(os.environ, CXRKIT_QUIET="1")

    def start():
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: _answers(port), timeout=120, what="listener up")
        return p

    files = [*films["a"], *films["b"]]
    p = start()
    try:
        assert c_store(files[:2], port) == [0, 0]
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    st = PacsState(spool)
    assert len(st.query("SELECT sop_uid FROM instances")) == 2  # both acknowledged instances are in the spool
    st.close()
    p = start()
    try:
        assert c_store(files[1:], port) == [0, 0, 0, 0]  # files[1] again, then the rest
        wait_for(lambda: status(spool)["studies"].get("done") == 2 and status(spool)["instances"] == {"done": 5},
                 timeout=120, what="both studies processed")
    finally:
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0]
    rows = _rows(spool, films["study_a"]) + _rows(spool, films["study_b"])
    sops = [r["sop_instance_uid"] for r in rows]
    assert len(sops) == 5 and len(set(sops)) == 5
    assert "SECRET" not in out  # nothing patient-identifying in the log


def _answers(port) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
    ok = assoc.is_established
    if ok:
        assoc.release()
    return ok


# ---------------------------------------------------------------------------------------
# a real Orthanc
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not ORTHANC:
        pytest.skip("Orthanc is not installed (bash scripts/test-deps.sh installs it)")
    d = tmp_path_factory.mktemp("orthanc")
    http, dicom, listener = free_port(), free_port(), free_port()
    cfg = {
        "Name": "cxrkit-test", "StorageDirectory": str(d / "db"), "IndexDirectory": str(d / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {"cxrkit": "test-secret"},
        "DicomModalities": {"cxrkit": ["CXRKIT", "127.0.0.1", listener]},
        "Plugins": [DICOMWEB_PLUGIN] if os.path.exists(DICOMWEB_PLUGIN) else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1, "HttpTimeout": 30,
    }
    (d / "orthanc.json").write_text(json.dumps(cfg))
    log = open(d / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(d / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    api = Orthanc(f"http://127.0.0.1:{http}", "cxrkit", "test-secret")
    try:
        wait_for(lambda: proc.poll() is None and api.alive(), timeout=60, what="Orthanc up")
        yield {"api": api, "dicom_port": dicom, "listener_port": listener, "dir": d}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Orthanc:
    """Orthanc's REST API, as an administrator's script would use it."""

    def __init__(self, url, user, password):
        import base64

        self.url = url
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(self, method, path, body=None, ctype="application/json"):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": self.auth, "Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def alive(self):
        try:
            return bool(self.call("GET", "/system"))
        except OSError:
            return False


def test_orthanc_pushes_a_study_and_gets_the_sr_back(trained_model, films, orthanc, tmp_path):
    api = orthanc["api"]
    ids = [api.call("POST", "/instances", Path(f).read_bytes(), "application/dicom")["ParentStudy"]
           for f in films["a"]]
    assert len(set(ids)) == 1
    oid = ids[0]
    pred = load_predictor(trained_model, engine="torch")
    spool = tmp_path / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=orthanc["listener_port"], host="127.0.0.1", idle=1.0, poll=0.2,
                                               allow_ae=("ORTHANC",),
                                               send_to=f"ORTHANC@127.0.0.1:{orthanc['dicom_port']}"))
    lst.start()
    try:
        job = api.call("POST", "/modalities/cxrkit/store", {"Resources": [oid], "Synchronous": True})
        assert job.get("FailedInstancesCount", 0) == 0 if isinstance(job, dict) else True
        wait_for(lambda: status(spool)["sends"].get("sent") == 1, timeout=90, what="SR sent back")
    finally:
        lst.stop()
    series = api.call("GET", f"/studies/{oid}/series?expand")
    sr = [s for s in series if s["MainDicomTags"].get("Modality") == "SR"]
    assert len(sr) == 1, [s["MainDicomTags"].get("Modality") for s in series]
    inst = sr[0]["Instances"][0]
    raw = api.call("GET", f"/instances/{inst}/file")
    ds = pydicom.dcmread(__import__("io").BytesIO(raw))
    assert ds.StudyInstanceUID == films["study_a"] and ds.VerificationFlag == "UNVERIFIED"
    # the probabilities in the SR are cxrkit predict's study maximum
    ref = tmp_path / "ref.csv"
    run_predict(pred, films["a"], ref, show_progress=False)
    with open(ref, newline="") as f:
        rows = list(csv.DictReader(f))
    want = {c: max(float(r[c]) for r in rows) for c in pred.classes}
    from cxrkit.sr import read_report

    got = {c: v["probability"] for c, v in read_report(ds).items()}
    for c in pred.classes:
        assert got[c] == pytest.approx(want[c], abs=1e-5)


def test_unreachable_send_target_is_retried_and_reported(trained_model, films, tmp_path):
    pred = load_predictor(trained_model, engine="torch")
    port, dead = free_port(), free_port()
    spool = tmp_path / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=0.3, poll=0.1,
                                               send_to=f"NOBODY@127.0.0.1:{dead}"))
    lst.start()
    try:
        assert c_store(films["b"], port) == [0, 0]
        wait_for(lambda: status(spool)["unsent"] and status(spool)["unsent"][0]["attempts"] >= 1, timeout=60,
                 what="a failed send")
    finally:
        lst.stop()
    u = status(spool)["unsent"][0]
    assert u["status"] == "pending" and u["error"] and u["target"].startswith("NOBODY@")
    st = PacsState(spool)
    (next_try,) = st.query("SELECT next_try_at FROM sends")[0]
    st.close()
    assert next_try > time.time()  # backed off, not hammering the PACS


def test_pull_from_orthanc_dicomweb_and_stow_the_sr_back(trained_model, films, orthanc, tmp_path, capsys):
    from conftest import run_cli_inprocess

    if not os.path.exists(DICOMWEB_PLUGIN):
        pytest.skip("Orthanc's DICOMweb plugin is not installed")
    api = orthanc["api"]
    oid = [api.call("POST", "/instances", Path(f).read_bytes(), "application/dicom")["ParentStudy"]
           for f in films["b"]][0]
    real = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID: f for f in films["real"]}
    real_ids = {u: api.call("POST", "/instances", Path(f).read_bytes(), "application/dicom")["ParentStudy"]
                for u, f in real.items()}  # the shared real chest DICOMs, a study each
    url = api.url + "/dicom-web"
    spool = tmp_path / "spool"
    os.environ["CXRKIT_DICOMWEB_USER"], os.environ["CXRKIT_DICOMWEB_PASSWORD"] = "cxrkit", "test-secret"
    try:
        r = run_cli_inprocess(capsys, "pacs", "pull", str(trained_model), "--dicomweb", url, "--spool", str(spool),
                              "--study", films["study_b"], "--stow", "--engine", "torch")
        assert r.returncode == 0, r.stderr
        assert "1 processed" in r.stdout and "reports sent: 1" in r.stdout
        rows = _rows(spool, films["study_b"])
        assert len(rows) == 2
        series = api.call("GET", f"/studies/{oid}/series?expand")
        assert [s["MainDicomTags"].get("Modality") for s in series].count("SR") == 1
        # a second pull of everything finds the study done and adds no rows, no second report
        r = run_cli_inprocess(capsys, "pacs", "pull", str(trained_model), "--dicomweb", url, "--spool", str(spool),
                              "--stow", "--engine", "torch")
        assert r.returncode == 0, r.stderr
        import re

        found, processed = (int(x) for x in re.search(r"(\d+) study / studies found, (\d+) processed",
                                                       r.stdout).groups())
        # the new studies' reports (the two real ones at least), not the first one's again
        assert processed >= 2 and f"reports sent: {processed}" in r.stdout.replace("\n", " ")
        r = run_cli_inprocess(capsys, "pacs", "pull", str(trained_model), "--dicomweb", url, "--spool", str(spool),
                              "--stow", "--engine", "torch")
        out = r.stdout.replace("\n", " ")
        assert f"{found} already done" in out and "reports sent: 0" in out  # it said "sent: {found}" before
        assert len(_rows(spool, films["study_b"])) == 2
        assert [s["MainDicomTags"].get("Modality") for s in api.call("GET", f"/studies/{oid}/series?expand")
                ].count("SR") == 1
        # ... and the real films it had not seen, each with its SR back in its own study
        for u, f in real.items():
            got = _rows(spool, u)
            assert len(got) == 1, u
            pred = load_predictor(trained_model, engine="torch")
            run_predict(pred, [f], tmp_path / "real.csv", show_progress=False, overwrite=True)
            with open(tmp_path / "real.csv", newline="") as fh:
                want = next(csv.DictReader(fh))
            assert all(float(got[0][c]) == pytest.approx(float(want[c]), abs=1e-6) for c in pred.classes)
            mods = [s["MainDicomTags"].get("Modality") for s in api.call("GET", f"/studies/{real_ids[u]}/series?expand")]
            assert mods.count("SR") == 1, mods
        # wrong credentials: a one-line error, no traceback
        os.environ["CXRKIT_DICOMWEB_PASSWORD"] = "wrong"
        r = run_cli_inprocess(capsys, "pacs", "pull", str(trained_model), "--dicomweb", url, "--spool",
                              str(tmp_path / "s2"), "--engine", "torch")
        assert r.returncode != 0 and "HTTP 401" in r.stderr and "Traceback" not in r.stderr
    finally:
        os.environ.pop("CXRKIT_DICOMWEB_USER", None)
        os.environ.pop("CXRKIT_DICOMWEB_PASSWORD", None)
    # the probabilities are cxrkit predict's
    pred = load_predictor(trained_model, engine="torch")
    assert_rows_are_predicts(rows, pred, films["b"], tmp_path / "ref.csv")


# ---------------------------------------------------------------------------------------
# issue 20: what a hospital's Orthanc pushed that the listener refused, or answered twice
# ---------------------------------------------------------------------------------------


def _fresh_uids(src, dst, study=None):
    """A copy of a real DICOM file as a new study (new UIDs), pixels and transfer syntax kept."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study or pydicom.uid.generate_uid()
    ds.PatientID = "CXRKIT-TEST"  # Orthanc keys a study by patient and study UID
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _sr_instances(api, oid):
    out = []
    for s in api.call("GET", f"/studies/{oid}/series?expand"):
        if s["MainDicomTags"].get("Modality") == "SR":
            for inst in s["Instances"]:
                out.append(pydicom.dcmread(__import__("io").BytesIO(api.call("GET", f"/instances/{inst}/file"))))
    return sorted(out, key=lambda d: int(d.InstanceNumber))


def _listener_for(orthanc, pred, spool):
    return Listener(pred, spool, ListenerConfig(port=orthanc["listener_port"], host="127.0.0.1", idle=0.8, poll=0.1,
                                                allow_ae=("ORTHANC",),
                                                send_to=f"ORTHANC@127.0.0.1:{orthanc['dicom_port']}"))


def test_orthanc_pushes_secondary_capture_films_and_then_the_study_with_our_report(trained_model, films, orthanc,
                                                                                   tmp_path):
    """Both real shared DICOMs are Secondary Capture chest films (which predict accepts): the
    listener refused their SOP class, Orthanc's push failed with HTTP 500 and nothing was
    logged. A second push of the study, which now holds cxrkit's SR, failed the whole job."""
    api = orthanc["api"]
    study = pydicom.uid.generate_uid()
    copies = [_fresh_uids(f, tmp_path / f"sc{i}.dcm", study) for i, f in enumerate(films["real"])]
    oid = {api.call("POST", "/instances", Path(f).read_bytes(), "application/dicom")["ParentStudy"] for f in copies}
    assert len(oid) == 1
    oid = oid.pop()
    pred = load_predictor(trained_model, engine="torch")
    spool = tmp_path / "spool"
    lst = _listener_for(orthanc, pred, spool)
    lst.start()
    try:
        api.call("POST", "/modalities/cxrkit/store", {"Resources": [oid], "Synchronous": True})  # HTTP 500 before
        wait_for(lambda: status(spool)["sends"].get("sent") == 1, timeout=90, what="SR sent back")
        assert len(_rows(spool, study)) == 2
        assert len(_sr_instances(api, oid)) == 1
        # the same study again, now with cxrkit's own report in it: accepted, the report ignored
        api.call("POST", "/modalities/cxrkit/store", {"Resources": [oid], "Synchronous": True})
        wait_for(lambda: any(e["reason"] == "own_report" for e in status(spool)["not_used"]), what="report ignored")
        time.sleep(2.0)  # time for a (wrong) second report to be made and sent
    finally:
        lst.stop()
    st = status(spool)
    nu = {(e["kind"], e["reason"]): e["count"] for e in st["not_used"]}
    assert nu == {("ignored", "own_report"): 1, ("duplicate", "received_again"): 2}
    assert st["sends"] == {"sent": 1} and len(_sr_instances(api, oid)) == 1
    assert_rows_are_predicts(_rows(spool, study), pred, copies, tmp_path / "ref.csv")


def test_a_late_instance_sends_a_new_version_only_when_the_result_changes(trained_model, films, orthanc, tmp_path):
    """One current report per study: a late instance that is not used changes nothing (a second,
    identical SR was sent before); one that changes the result is a new version of the report
    (same series, next instance number, the first in its Predecessor Documents Sequence)."""
    api = orthanc["api"]
    study = pydicom.uid.generate_uid()
    first = [_fresh_uids(f, tmp_path / f"a{i}.dcm", study) for i, f in enumerate(films["a"][:2])]
    late_hand = make_dicom(tmp_path / "hand.dcm", np.random.default_rng(3).integers(0, 4000, (256, 256)),
                           body_part="HAND", StudyInstanceUID=study)
    late_film = _fresh_uids(films["a"][2], tmp_path / "late.dcm", study)
    pred = load_predictor(trained_model, engine="torch")
    spool = tmp_path / "spool"
    lst = _listener_for(orthanc, pred, spool)
    lst.start()
    try:
        assert c_store(first, orthanc["listener_port"], calling="ORTHANC") == [0, 0]
        wait_for(lambda: status(spool)["sends"].get("sent") == 1, timeout=90, what="first report sent")
        oid = api.call("POST", "/tools/lookup", study.encode(), "text/plain")[0]["ID"]
        assert len(_sr_instances(api, oid)) == 1
        assert c_store([late_hand], orthanc["listener_port"], calling="ORTHANC") == [0]
        time.sleep(2.5)  # idle 0.8 s: a second report would have been made and sent by now
        assert len(_sr_instances(api, oid)) == 1 and status(spool)["sends"] == {"sent": 1}
        assert c_store([late_film], orthanc["listener_port"], calling="ORTHANC") == [0]
        wait_for(lambda: len(_sr_instances(api, oid)) == 2, timeout=90, what="new version in Orthanc")
    finally:
        lst.stop()
    v1, v2 = _sr_instances(api, oid)
    assert v1.SeriesInstanceUID == v2.SeriesInstanceUID and int(v2.InstanceNumber) == 2
    pred_refs = [i.ReferencedSOPInstanceUID for st in v2.PredecessorDocumentsSequence
                 for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence]
    assert pred_refs == [v1.SOPInstanceUID]
    if shutil.which("dciodvfy"):  # the new version, as Orthanc holds it, passes dicom3tools' validator
        v2.save_as(tmp_path / "v2.dcm", enforce_file_format=True)
        out = subprocess.run(["dciodvfy", str(tmp_path / "v2.dcm")], capture_output=True, text=True)
        assert "Error" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert len(_rows(spool, study)) == 3
    nu = {(e["kind"], e["reason"]): e["count"] for e in status(spool)["not_used"]}
    assert nu == {("ignored", "not_chest_radiograph"): 1}


def test_backpressure_refuses_what_it_cannot_keep(trained_model, films, tmp_path, monkeypatch):
    """With --max-backlog N the SCP answers 0xA700 (out of resources) once N received instances
    wait to be predicted, writes nothing for the refused one (the sender keeps and resends
    it), shows the backlog in pacs status, and accepts again once the backlog is predicted;
    --min-free-mb does the same for the spool's free space. Over real DICOM associations."""
    import shutil as _shutil

    from cxrkit.pacs import Node

    pred = load_predictor(trained_model, engine="torch")
    port = free_port()
    spool = tmp_path / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=3600, poll=0.1, max_backlog=2))
    lst.start()
    try:
        assert c_store(films["a"], port) == [0x0000, 0x0000, 0xA700]  # the third waits for room
        st = status(spool)
        assert st["backlog"] == 2 and st["instances"] == {"received": 2}
        assert [e["reason"] for e in st["not_used"]] == ["backlog_full"]
        stored = list((spool / "studies").rglob("*.dcm"))
        assert len(stored) == 2 and not list((spool / "tmp").glob("*"))
        lst.process_study(films["study_a"])  # the worker catches up
        assert status(spool)["backlog"] == 0
        assert c_store(films["a"][2:], port) == [0x0000]  # the resend is accepted
    finally:
        lst.stop()
    # the audit log: who sent what when, what was refused and reported; no patient data
    text = (spool / "audit.jsonl").read_text()
    lines = [json.loads(ln) for ln in text.splitlines()]
    assert [x["event"] for x in lines] == ["received", "received", "refused", "reported", "received"]
    assert lines[2]["reason"] == "backlog_full" and lines[3]["rows"] == 2
    assert all(x["calling_ae"] == "TESTPACS" and x["address"] == "127.0.0.1" for x in lines if "calling_ae" in x)
    assert all(len(x["study"]) == 10 for x in lines) and films["study_a"] not in text
    assert "SECRET" not in text and "PATIENT" not in text
    assert (spool / "audit.jsonl").stat().st_mode & 0o077 == 0
    # the spool's filesystem: refused while less than --min-free-mb is free
    node = Node(pred, tmp_path / "spool2", ListenerConfig(min_free_mb=10.0))
    monkeypatch.setattr(_shutil, "disk_usage", lambda p: _shutil._ntuple_diskusage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    assert node.store(pydicom.dcmread(films["b"][0]), "TESTPACS") == 0xA700
    assert node.state.summary()["not_used"][0]["reason"] == "disk_full"
    monkeypatch.undo()
    assert node.store(pydicom.dcmread(films["b"][0]), "TESTPACS") == 0x0000
    node.state.close()


def test_allow_peer_pairs_ae_title_and_address(trained_model, films, tmp_path, capsys):
    """An AE title is no proof: --allow-peer AE@ADDRESS (or a network) lets only those pairs
    store; the right AE from another address is refused (0x0124, counted, audited)."""
    from conftest import run_cli_inprocess

    from cxrkit.pacs import parse_peer, peer_allowed

    assert parse_peer("PACS@10.1.2.0/24") == ("PACS", "10.1.2.0/24")
    assert peer_allowed((("PACS", "10.1.2.0/24"),), "PACS", "10.1.2.77")
    assert not peer_allowed((("PACS", "10.1.2.0/24"),), "PACS", "10.1.3.1")
    assert not peer_allowed((("PACS", "10.1.2.0/24"),), "OTHER", "10.1.2.77")
    assert peer_allowed((), "ANY", "1.2.3.4")
    r = run_cli_inprocess(capsys, "pacs", "listen", str(trained_model), "--spool", str(tmp_path / "x"),
                          "--allow-peer", "PACS-at-nowhere")
    assert r.returncode == 2 and "AE@ADDRESS" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    pred = load_predictor(trained_model, engine="torch")
    for peers, want in (((("TESTPACS", "127.0.0.2"),), 0x0124), ((("TESTPACS", "127.0.0.0/8"),), 0x0000)):
        port = free_port()
        spool = tmp_path / f"spool-{want}"
        lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=3600, allow_peers=peers))
        lst.start()
        try:
            assert c_store(films["a"][:1], port) == [want]
        finally:
            lst.stop()
        if want:
            assert status(spool)["not_used"][0]["reason"] == "peer_not_allowed"
            assert not list((spool / "studies").rglob("*.dcm"))
            assert '"reason": "peer_not_allowed"' in (spool / "audit.jsonl").read_text()
