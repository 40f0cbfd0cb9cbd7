"""The DICOM node under abuse and over TLS (issue 25), over real sockets on localhost: idle
and malformed connections do not lock senders out, TLS per the BCP 195 profile with client
certificates verified both ways, DICOMweb over HTTPS with verification always on."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_helpers import make_dicom

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
x509 = pytest.importorskip("cryptography.x509")

from cxrkit.ensemble import load_predictor  # noqa: E402
from cxrkit.errors import CxrkitError  # noqa: E402
from cxrkit.pacs import Listener, ListenerConfig, status  # noqa: E402
from test_pacs import c_store, free_port, wait_for  # noqa: E402

# ---------------------------------------------------------------------------------------
# certificates the test creates: a hospital CA, the node's and a sender's certificates,
# and a stranger's CA with its own client certificate
# ---------------------------------------------------------------------------------------


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn, key, issuer_cn, issuer_key, ca=False, san=None):
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress

        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _cert("Hospital CA", ca_key, "Hospital CA", ca_key, ca=True)
    other = _cert("Stranger CA", other_key, "Stranger CA", other_key, ca=True)
    node_key, sender_key, stranger_key = _key(), _key(), _key()
    return {
        "ca": _write(d / "ca.pem", ca),
        "other_ca": _write(d / "other-ca.pem", other),
        "node": _write(d / "node.pem", _cert("cxrkit-node", node_key, "Hospital CA", ca_key, san=True), node_key),
        "sender": _write(d / "sender.pem", _cert("pacs", sender_key, "Hospital CA", ca_key, san=True), sender_key),
        "stranger": _write(d / "stranger.pem", _cert("intruder", stranger_key, "Stranger CA", other_key, san=True),
                           stranger_key),
    }


def _client_ctx(cert: Path | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    return ctx


def tls_store(files, port, ctx, calling="TESTPACS"):
    """C-STORE over TLS; None when no association came up."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    for c in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
        ae.add_requested_context(c, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT", tls_args=(ctx, "localhost"))
    except (ssl.SSLError, OSError):
        return None
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    rng = np.random.default_rng(0)
    arr = (rng.random((256, 256)) * 200 + 20).astype(np.uint8)
    return make_dicom(tmp_path_factory.mktemp("film") / "f.dcm", arr, modality="CR")


@pytest.fixture
def listener(trained_model, tmp_path):
    made = []

    def start(**kw):
        port = free_port()
        lst = Listener(load_predictor(trained_model, engine="torch"), tmp_path / f"spool{len(made)}",
                       ListenerConfig(port=port, host="127.0.0.1", idle=60, poll=0.2, **kw))
        lst.start()
        made.append(lst)
        return lst, port

    yield start
    for lst in made:
        lst.stop()


# ---------------------------------------------------------------------------------------
# abuse on the listening port
# ---------------------------------------------------------------------------------------


def test_idle_connections_do_not_lock_senders_out(listener, film, caplog):
    """Regression: pynetdicom counts connections that never ask for an association against
    its association limit until their 30 s ARTIM timer ends; 60 of them locked every sender
    out. The guard closes the oldest idle ones; established associations are untouched."""
    lst, port = listener(max_associations=8, max_pending=4)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    try:
        time.sleep(0.5)
        t0 = time.time()
        assert c_store([film], port) == [0]
        assert time.time() - t0 < 10
        assert lst.guard.evicted >= 50
        closed = 0
        time.sleep(0.5)
        for s in idle:
            s.settimeout(0.05)
            try:
                closed += s.recv(16) == b""
            except (socket.timeout, OSError):
                pass
        assert closed >= 50  # the server closed them (empty read = EOF)
        # bounded: the pending few (max_pending; a connection whose first event the node has not
        # processed yet is closed at the next arrival instead), not the 60
        wait_for(lambda: len(lst._server.active_associations) <= 12, timeout=10, what="evicted threads gone")
    finally:
        for s in idle:
            s.close()
    st = status(lst.spool)
    assert any(e["reason"] == "idle_connection" for e in st["not_used"])
    audit = [json.loads(line) for line in (lst.spool / "audit.jsonl").read_text().splitlines()]
    assert sum(a.get("reason") == "idle_connection" for a in audit) >= 50
    assert "SECRET" not in (lst.spool / "audit.jsonl").read_text()
    closed_lines = [r for r in caplog.records if "idle connection" in r.getMessage()]
    assert 1 <= len(closed_lines) <= 3  # a flood is a line every 10 s, not a line per connection


def _send_raw(port: int, data: bytes, wait: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            if not wait:
                return b""
            s.settimeout(1.0)
            return s.recv(64)
        except (socket.timeout, OSError):
            return b""


def test_malformed_traffic_is_dropped_and_senders_still_served(listener, film, caplog):
    lst, port = listener(max_pending=4)
    rng = np.random.default_rng(1)
    assoc_rq_absurd = b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00\x01" + b"\x00" * 20
    pdata_huge = b"\x04\x00" + struct.pack(">I", 0x7FFFFFFF) + b"\x00" * 64
    attacks = {
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated PDU header": b"\x01\x00\x00",
        "A-ASSOCIATE-RQ with an absurd length": assoc_rq_absurd,
        "P-DATA claiming 2 GB before any association": pdata_huge,
        "HTTP on the DICOM port": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    threads_before = threading.active_count()
    for name, data in attacks.items():
        _send_raw(port, data)
        assert c_store([film], port) == [0], name  # the next legitimate sender is served
    for _ in range(100):  # a burst of short-lived junk connections
        _send_raw(port, rng.integers(0, 256, 64, dtype=np.uint8).tobytes(), wait=False)
    assert c_store([film], port) == [0]
    wait_for(lambda: threading.active_count() <= threads_before + 6, timeout=40, what="junk connections ended")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET" not in text and "Traceback" not in text


def test_an_instance_claiming_gigabytes_is_not_buffered_and_fails_in_its_row(listener, film, tmp_path):
    """A dataset whose Pixel Data element claims 2 GB while 130 KB follow: the node reads
    what arrives (nothing like 2 GB in memory) and either refuses the instance or keeps what
    arrived and predicts it once; the next sender is served."""
    import resource

    lst, port = listener()
    lst.cfg.idle = 0.3
    ds = pydicom.dcmread(film)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "liar.dcm")
    data = bytearray((tmp_path / "liar.dcm").read_bytes())
    tag = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) Pixel Data, explicit VR OW + 4-byte length
    i = data.rfind(tag)
    assert i > 0
    data[i + 8:i + 12] = struct.pack("<I", 0x7FFFFFF0)
    (tmp_path / "liar.dcm").write_bytes(bytes(data))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ae = AE(ae_title="TESTPACS")
    ae.add_requested_context(ComputedRadiographyImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
    assert assoc.is_established
    try:
        st = assoc.send_c_store(tmp_path / "liar.dcm")  # the file's bytes as they are
    finally:
        assoc.release()
    assert st and int(st.Status) in (0x0000, 0xC000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: nothing like 2 GB
    if int(st.Status) == 0:  # what was read is what arrived (the real pixels): kept and predicted once
        wait_for(lambda: status(lst.spool)["instances"].get("done") == 1, timeout=60, what="processed")
        kept = next((lst.spool / "studies").rglob("*.dcm"))
        assert kept.stat().st_size < 2 * len(data)
    assert c_store([film], port) == [0]


# ---------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------


def test_tls_listener_accepts_verified_senders_and_refuses_the_rest(listener, film, pki):
    lst, port = listener(tls_cert=str(pki["node"]), tls_ca=str(pki["ca"]))
    assert tls_store([film], port, _client_ctx(pki["sender"], pki["ca"])) == [0]
    assert c_store([film], port) is None  # plain DICOM on the TLS port
    assert tls_store([film], port, _client_ctx(None, pki["ca"])) is None  # no client certificate
    assert tls_store([film], port, _client_ctx(pki["stranger"], pki["ca"])) is None  # another CA's
    # the sender checks the node too: a sender trusting only the stranger CA refuses the node
    assert tls_store([film], port, _client_ctx(pki["sender"], pki["other_ca"])) is None
    old = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    old.load_cert_chain(str(pki["sender"]))
    old.maximum_version = ssl.TLSVersion.TLSv1_1  # below BCP 195's floor
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert tls_store([film], port, old) is None
    assert tls_store([film], port, _client_ctx(pki["sender"], pki["ca"])) == [0]
    assert status(lst.spool)["instances"].get("received", 0) + status(lst.spool)["instances"].get("done", 0) == 1


def test_an_idle_tcp_connection_does_not_stall_the_tls_listener(listener, film, pki):
    """Regression: pynetdicom performs the TLS handshake in its accept loop, so one client
    that connects and never says hello stalled every later sender (here it would wait for
    ever); the handshake now runs in the association's own thread."""
    lst, port = listener(tls_cert=str(pki["node"]), tls_ca=str(pki["ca"]))
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        time.sleep(0.3)
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            tls_store([film], port, _client_ctx(pki["sender"], pki["ca"]))), daemon=True)
        t.start()
        t.join(20)
        assert result == [[0]]
    finally:
        silent.close()


def test_reports_are_sent_over_tls_to_a_tls_receiver(listener, film, pki, tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage, EnhancedSRStorage

    got = []
    rport = free_port()
    ae = AE(ae_title="PACS")
    for c in (ComprehensiveSRStorage, EnhancedSRStorage, "1.2.840.10008.5.1.4.1.1.88.34"):
        ae.add_supported_context(c)
    srv_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    srv_ctx.load_cert_chain(str(pki["sender"]))
    srv_ctx.verify_mode = ssl.CERT_REQUIRED
    srv = ae.start_server(("127.0.0.1", rport), block=False, ssl_context=srv_ctx,
                          evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(e.dataset.SOPClassUID) or 0x0000)])
    try:
        lst, port = listener(tls_cert=str(pki["node"]), tls_ca=str(pki["ca"]), send_tls=True,
                             send_to=f"PACS@127.0.0.1:{rport}")
        lst.cfg.idle = 0.3
        assert tls_store([film], port, _client_ctx(pki["sender"], pki["ca"])) == [0]
        wait_for(lambda: got, timeout=60, what="SR received over TLS")
        # the receiver has it before the node records the answer: wait for the record
        wait_for(lambda: status(lst.spool)["sends"] == {"sent": 1}, timeout=30, what="send recorded")
        assert len(got) == 1
    finally:
        srv.shutdown()


def test_tls_options_fail_in_one_line(trained_model, tmp_path, pki, capsys):
    from conftest import run_cli_inprocess

    base = ["pacs", "listen", str(trained_model), "--spool", str(tmp_path / "s")]
    for extra, msg in ((["--tls-cert", str(pki["node"])], "--tls-ca is needed"),
                       (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-ca", str(pki["ca"])], "is not a file"),
                       (["--tls-cert", str(pki["ca"]), "--tls-ca", str(pki["ca"])], "not usable"),
                       (["--send-tls", "--tls-ca", str(pki["ca"])], "--send-tls needs --send-to")):
        r = run_cli_inprocess(capsys, *base, *extra)
        out = r.stdout + r.stderr
        assert r.returncode == 2 and msg in out, (extra, out)
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# DICOMweb over HTTPS: verification always on
# ---------------------------------------------------------------------------------------


def test_dicomweb_https_verifies_the_server_certificate(pki, tmp_path):
    from cxrkit.hospital.pacs import DicomWeb

    class Qido(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Qido)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki["node"]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://localhost:{httpd.server_address[1]}/dicom-web"
    try:
        assert DicomWeb(url, ca=str(pki["ca"])).studies() == []
        with pytest.raises(CxrkitError, match="certificate not trusted"):
            DicomWeb(url).studies()  # the system CAs do not know the hospital's CA
        with pytest.raises(CxrkitError, match="certificate not trusted"):
            DicomWeb(url, ca=str(pki["other_ca"])).studies()
        os.environ["CXRKIT_DICOMWEB_CA"] = str(pki["ca"])
        try:
            assert DicomWeb(url).studies() == []
        finally:
            del os.environ["CXRKIT_DICOMWEB_CA"]
        with pytest.raises(CxrkitError, match="is not a file"):
            DicomWeb(url, ca=str(tmp_path / "missing.pem"))
    finally:
        httpd.shutdown()


def test_max_associations_counts_established_associations_only(listener, film):
    """--max-associations: a sender beyond the limit is rejected (transient, local limit
    exceeded: it retries), junk connections do not count, a freed slot is reused."""
    from pynetdicom import AE

    lst, port = listener(max_associations=2, max_pending=4)
    junk = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]  # not associations
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", port, ae_title="CXRKIT") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
        assert third.is_rejected and not third.is_established
        held.pop().release()
        wait_for(lambda: sum(a.is_established for a in lst._server.active_associations) <= 1, timeout=10,
                 what="slot freed")
        assert c_store([film], port) == [0]
    finally:
        for a in held:
            a.release()
        for s in junk:
            s.close()
