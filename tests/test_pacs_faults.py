"""The PACS node's faults (issue 25): the state database damaged or deleted, a full disk on a
real (tmpfs) filesystem, a resend with different bytes; over the node's own code paths and,
where it matters, real associations."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pydicom
import pytest

from conftest import run_cli_inprocess
from test_pacs import c_store, free_port, make_films, wait_for

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from cxrkit.ensemble import load_predictor  # noqa: E402
from cxrkit.hospital.pacs import Listener, ListenerConfig, Node, status, study_key  # noqa: E402


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    return make_films(tmp_path_factory.mktemp("films"))


def _rows(spool: Path, study_uid: str) -> list[dict]:
    p = spool / "results" / f"{study_key(study_uid)}.csv"
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _half_processed(trained_model, films, spool):
    """Study a received and predicted, study b received and not yet predicted."""
    pred = load_predictor(trained_model, engine="torch")
    node = Node(pred, spool, ListenerConfig(idle=0.0))
    for f in films["a"]:
        assert node.store(pydicom.dcmread(f), "PACS") == 0
    node.process_due()
    for f in films["b"]:
        assert node.store(pydicom.dcmread(f), "PACS") == 0
    node.state.close()
    assert len(_rows(spool, films["study_a"])) == 3
    return pred


def _finish(pred, spool, films):
    node = Node(pred, spool, ListenerConfig(idle=0.0))
    try:
        node.process_due()
        st = node.state.summary()
    finally:
        node.state.close()
    assert st["instances"] == {"done": 5} and st["studies"] == {"done": 2}
    a, b = _rows(spool, films["study_a"]), _rows(spool, films["study_b"])
    assert len(a) == 3 and len(b) == 2  # nothing predicted twice, nothing lost
    assert len({r["sop_instance_uid"] for r in a + b}) == 5


def test_a_damaged_state_database_is_one_line_and_rebuilt_from_the_spool(trained_model, films, tmp_path, capsys):
    spool = tmp_path / "spool"
    pred = _half_processed(trained_model, films, spool)
    for suffix in ("-wal", "-shm"):
        (spool / f"state.sqlite{suffix}").unlink(missing_ok=True)
    (spool / "state.sqlite").write_bytes(b"SQLite format 3\0" + os.urandom(8192))  # a torn / overwritten file
    r = run_cli_inprocess(capsys, "pacs", "status", "--spool", str(spool))
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and "damaged" in out and "cxrkit pacs rebuild --spool" in out
    assert len(out.splitlines()) == 1 and "Traceback" not in out
    with pytest.raises(Exception, match="damaged"):
        Node(pred, spool, ListenerConfig())
    r = run_cli_inprocess(capsys, "pacs", "rebuild", "--spool", str(spool))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 instance(s) (3 done), 2 study / studies (1 done)" in r.stdout
    assert any(p.name.startswith("state.sqlite.damaged-") for p in spool.iterdir())  # kept for a post-mortem
    _finish(pred, spool, films)


def test_a_deleted_state_database_is_rebuilt_when_the_node_starts(trained_model, films, tmp_path):
    spool = tmp_path / "spool"
    pred = _half_processed(trained_model, films, spool)
    for suffix in ("", "-wal", "-shm"):
        (spool / f"state.sqlite{suffix}").unlink(missing_ok=True)
    _finish(pred, spool, films)


def test_a_resend_with_other_bytes_keeps_the_first_and_is_recorded(trained_model, films, tmp_path):
    """DICOM says one SOP Instance UID is one object: a resend with different bytes (a
    corrected header sent under the same UID) is answered stored, not kept, and recorded as
    a duplicate with different content, as Orthanc does by default (OverwriteInstances false)."""
    pred = load_predictor(trained_model, engine="torch")
    node = Node(pred, tmp_path / "spool", ListenerConfig(idle=0.0))
    try:
        ds = pydicom.dcmread(films["a"][0])
        assert node.store(ds, "PACS") == 0
        kept = next((tmp_path / "spool" / "studies").rglob("*.dcm")).read_bytes()
        ds.PatientAge = "061Y"
        assert node.store(ds, "PACS") == 0
        assert node.store(pydicom.dcmread(films["a"][0]), "PACS") == 0  # the same bytes again
        assert next((tmp_path / "spool" / "studies").rglob("*.dcm")).read_bytes() == kept
        ev = {(e["kind"], e["reason"]): e["count"] for e in node.state.summary()["not_used"]}
        assert ev == {("duplicate", "received_again_different"): 1, ("duplicate", "received_again"): 1}
    finally:
        node.state.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 3 MB tmpfs: a real filesystem that fills up (needs root and mount; skipped otherwise)."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_full_disk_refuses_instances_and_recovers(trained_model, films, tiny_fs):
    """On a real 3 MB filesystem: instances are acknowledged while they fit; when the disk is
    full the write fails and the sender gets 0xA700 (never success for an instance that is
    not on disk); once space returns the resend is accepted. Nothing acknowledged is lost."""
    pred = load_predictor(trained_model, engine="torch")
    port = free_port()
    spool = tiny_fs / "spool"
    lst = Listener(pred, spool, ListenerConfig(port=port, host="127.0.0.1", idle=3600, poll=0.2))
    lst.start()
    filler = tiny_fs / "filler"
    try:
        free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
        size = os.path.getsize(films["a"][0])
        filler.write_bytes(b"\0" * max(0, free - size - 64 * 1024))  # room for about one film
        codes = c_store(films["a"], port)
        assert codes[0] == 0 and 0xA700 in codes, codes
        acked = [f for f, c in zip(films["a"], codes) if c == 0]
        st = status(spool)
        assert st["instances"].get("received") == len(acked)
        assert any(e["reason"] in ("spool_write_failed", "disk_full") for e in st["not_used"])
        assert not list((spool / "tmp").iterdir())  # no partial file left behind
        filler.unlink()  # space returns
        assert c_store(films["a"], port) == [0, 0, 0]  # the refused ones now kept, the others duplicates
        assert status(spool)["instances"].get("received") == 3
    finally:
        lst.stop()


def _listen_cmd(trained_model, spool, port, *extra):
    import sys

    return [sys.executable, "-m", "cxrkit.cli", "pacs", "listen", str(trained_model), "--spool", str(spool),
            "--port", str(port), "--host", "127.0.0.1", "--engine", "torch", *extra]


def _start(cmd):
    from test_pacs import _answers

    p = subprocess.Popen(cmd, env=dict(os.environ, CXRKIT_QUIET="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: p.poll() is None and _answers(int(cmd[cmd.index("--port") + 1])), timeout=120,
             what="listener up")
    return p


def test_sigterm_while_receiving_stops_gracefully_and_the_restart_resumes(trained_model, films, tmp_path):
    """SIGTERM in the middle of a sender's association: the node exits 0, what it
    acknowledged is in its state, nothing is left half-processed; after a restart the
    sender's retry completes the studies, each instance predicted once."""
    import signal
    import threading
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    port, spool = free_port(), tmp_path / "spool"
    cmd = _listen_cmd(trained_model, spool, port, "--idle", "0.5")
    files = [*films["a"], *films["b"]]
    p = _start(cmd)
    codes: list = []

    def slow_sender():
        ae = AE(ae_title="MODALITY")
        for c in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
            ae.add_requested_context(c, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
        for f in files:
            if not assoc.is_established:
                codes.append(None)
                continue
            st = assoc.send_c_store(pydicom.dcmread(f))
            codes.append(int(st.Status) if st else None)
            time.sleep(0.6)
        if assoc.is_established:
            assoc.release()

    t = threading.Thread(target=slow_sender)
    t.start()
    wait_for(lambda: len(codes) >= 2, timeout=60, what="two instances sent")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=90) == 0
    t.join(60)
    acked = sum(c == 0 for c in codes)
    assert 2 <= acked < len(files) or acked == len(files)
    st = status(spool)
    assert sum(st["instances"].values()) == acked  # every acknowledged instance is recorded
    assert "processing" not in st["studies"]  # nothing left half-way
    p = _start(cmd)
    try:
        assert c_store(files, port, calling="MODALITY") == [0] * len(files)  # the retry
        wait_for(lambda: status(spool)["instances"] == {"done": 5} and status(spool)["studies"] == {"done": 2},
                 timeout=120, what="both studies processed")
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=90) == 0
    sops = [r["sop_instance_uid"] for s in ("study_a", "study_b") for r in _rows(spool, films[s])]
    assert len(sops) == 5 and len(set(sops)) == 5


ORTHANC = "/usr/sbin/Orthanc"


def _orthanc(workdir: Path, http: int, dicom: int):
    import json

    workdir.mkdir(exist_ok=True)
    cfg = {"Name": "cxrkit-restart", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
           "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomCheckCalledAet": False}
    (workdir / "orthanc.json").write_text(json.dumps(cfg))
    log = open(workdir / "orthanc.log", "a")
    p = subprocess.Popen([ORTHANC, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return p


def _orthanc_srs(http: int) -> list[str]:
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{http}/tools/find", method="POST",
                                 data=json.dumps({"Level": "Series", "Query": {"Modality": "SR"},
                                                  "Expand": True}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return [i for s in json.loads(r.read()) for i in s["Instances"]]


def test_reports_pending_while_the_pacs_is_down_arrive_once_when_it_returns(trained_model, films, tmp_path):
    if not os.path.exists(ORTHANC):
        pytest.skip("Orthanc is not installed (bash scripts/test-deps.sh installs it)")
    import time

    http, dicom, port = free_port(), free_port(), free_port()
    orthanc = _orthanc(tmp_path / "orthanc", http, dicom)
    try:
        wait_for(lambda: _up(http), timeout=60, what="Orthanc up")
        pred = load_predictor(trained_model, engine="torch")
        lst = Listener(pred, tmp_path / "spool", ListenerConfig(port=port, host="127.0.0.1", idle=0.3, poll=0.1,
                                                                send_to=f"ORTHANC@127.0.0.1:{dicom}"))
        lst.start()
        try:
            assert c_store(films["a"], port) == [0, 0, 0]
            wait_for(lambda: len(_orthanc_srs(http)) == 1, timeout=60, what="first SR in Orthanc")
            orthanc.terminate()  # the PACS restarts (maintenance)
            orthanc.wait(timeout=30)
            assert c_store(films["b"], port) == [0, 0]
            wait_for(lambda: any(u["attempts"] >= 1 for u in status(lst.spool)["unsent"]), timeout=60,
                     what="a failed send while the PACS is down")
            orthanc = _orthanc(tmp_path / "orthanc", http, dicom)  # back, with its storage
            wait_for(lambda: _up(http), timeout=60, what="Orthanc back")
            wait_for(lambda: status(lst.spool)["sends"] == {"sent": 2}, timeout=90, what="pending SR sent")
            time.sleep(1.0)
            assert len(_orthanc_srs(http)) == 2  # each study's report once
        finally:
            lst.stop()
    finally:
        orthanc.terminate()
        orthanc.wait(timeout=30)


def _up(http: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/system", timeout=2):
            return True
    except OSError:
        return False
