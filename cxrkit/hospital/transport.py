"""The DICOM node's transport: TLS per the DICOM standard's secure transport profiles and a
guard that keeps the listener serving legitimate senders when connections are abused.

* TLS (PS3.15 Annex B.9 / B.10, the BCP 195 profiles): TLS 1.2 or 1.3 only, the BCP 195
  (RFC 9325) recommended AEAD cipher suites with forward secrecy for TLS 1.2 (TLS 1.3's suites
  are all AEAD), certificates verified both ways: the listener requires a client certificate
  signed by ``--tls-ca``; the sender verifies the receiving node's certificate and host name.
* The TLS handshake runs in the association's own thread, not in the accept loop: pynetdicom
  3 wraps accepted sockets (and so performs the handshake) in the thread that accepts
  connections, so one client that opens a TCP connection and never sends its ClientHello
  stalls every later sender until it goes away.
* Connections that have not (yet) asked for an association hold an association slot in
  pynetdicom until its ARTIM timer (30 s) closes them: a few dozen idle connections lock
  every sender out (measured: 40 idle sockets, the 41st connection, a real sender, rejected).
  The guard keeps at most ``max_pending`` such connections and closes the oldest idle one
  (open for at least ``GRACE_S``, nothing received) when a new connection arrives;
  established associations and senders whose request is arriving are never touched.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CxrkitError

log = logging.getLogger(__name__)

#: BCP 195 (RFC 9325, sec. 4.2) recommended TLS 1.2 cipher suites: ECDHE / DHE key exchange,
#: AES-GCM; the DICOM "BCP 195 RFC 8996 TLS Profile" and "Non-downgrading BCP 195" profiles
#: (PS3.15 B.9, B.10) defer to these.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
])

#: connections accepted that have not completed an association, kept at most (the oldest
#: idle one is closed when a new connection arrives)
MAX_PENDING = 16
#: a pre-association connection is closed only once it has been open this long (seconds)
GRACE_S = 0.25


def _check_file(path: str | Path | None, what: str) -> str:
    if not path:
        raise CxrkitError(f"{what} is needed for TLS")
    p = Path(path)
    if not p.is_file():
        raise CxrkitError(f"{what} {p} is not a file")
    return str(p)


def _base_context(purpose: int, cert: str | None, key: str | None, ca: str) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose == 0 else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        if cert:
            ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise CxrkitError(f"TLS certificate / key / CA not usable: {e.reason or e}") from None
    except OSError as e:
        raise CxrkitError(f"TLS file not readable: {e.strerror or e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert: str | Path | None, key: str | Path | None, ca: str | Path | None) -> ssl.SSLContext:
    """The listener's TLS context: its certificate and key (PEM), and the CA whose
    certificates senders must present (client certificates are required and verified)."""
    return _base_context(0, _check_file(cert, "--tls-cert"), _check_file(key, "--tls-key") if key else None,
                         _check_file(ca, "--tls-ca"))


def client_context(cert: str | Path | None, key: str | Path | None, ca: str | Path | None) -> ssl.SSLContext:
    """The sender's TLS context: the receiving node's certificate must chain to ``ca`` and
    name its host; our certificate (when given) is presented as the client certificate."""
    ctx = _base_context(1, _check_file(cert, "--tls-cert") if cert else None,
                        _check_file(key, "--tls-key") if key else None, _check_file(ca, "--tls-ca"))
    ctx.check_hostname = True
    return ctx


class ConnectionGuard:
    """Installed on a running pynetdicom ``AssociationServer``: accepts connections itself
    (wrapping them for TLS without handshaking there) and closes the oldest connection that
    has not completed an association when more than ``max_pending`` of them are open."""

    def __init__(self, server: Any, ssl_context: ssl.SSLContext | None, max_pending: int = MAX_PENDING,
                 on_evict: Any = None) -> None:
        self.server = server
        self.ssl_context = ssl_context
        self.max_pending = max(1, int(max_pending))
        self.on_evict = on_evict
        self.evicted = 0
        self._lock = threading.Lock()
        server.get_request = self.get_request  # the accept loop calls it for every connection

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.server.socket.accept()
        self._evict_idle()
        if self.ssl_context is not None:
            # the handshake happens on the association thread's first read, with its timeouts
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def _pending(self) -> list[Any]:
        """Connections open that have not completed an association (nor been closed here)."""
        return [a for a in list(self.server.active_associations)
                if not getattr(a, "_cxrkit_closed", False)
                and not (a.is_established or a.is_released or a.is_aborted or a.is_rejected)]

    @staticmethod
    def _idle(a: Any) -> bool:
        """Closable: waiting for its A-ASSOCIATE-RQ (state Sta2) with nothing received, or
        already closed by the peer. A sender whose request is on its way (bytes waiting, or
        being negotiated) is never closed, however busy the node is."""
        import socket

        try:
            for q in ("event_queue", "_recv_pdu", "to_user_queue"):  # an event not yet processed: a
                queue = getattr(a.dul, q, None)                     # connection starting, a PDU read
                if queue is not None and not queue.empty():
                    return False
            state = a.dul.state_machine.current_state
            if state == "Sta1":  # nothing queued: the connection is gone, only the thread's wait remains
                return True
            if state != "Sta2":
                return False
            sock = a.dul.socket.socket if a.dul.socket is not None else None
            if sock is None:
                return True
            if hasattr(sock, "pending") and sock.pending():
                return False
            try:  # peek at the TCP bytes (under TLS too): data = a request arriving, b"" = closed
                data = socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True  # nothing received: idle
            return data == b""
        except (OSError, ValueError, AttributeError):
            return True

    def sweep(self) -> None:
        """Close connections their peers already closed (called by the node's worker every
        poll, so a burst of junk does not wait for the next arrival to be cleared)."""
        self._evict_idle(accepting=False)

    @staticmethod
    def _dead(a: Any) -> bool:
        try:
            for q in ("event_queue", "_recv_pdu", "to_user_queue"):
                queue = getattr(a.dul, q, None)
                if queue is not None and not queue.empty():
                    return False
            return a.dul.state_machine.current_state == "Sta1"
        except AttributeError:
            return False

    def _evict_idle(self, accepting: bool = True) -> None:
        # first-seen times and closed marks live on the association objects themselves (an
        # object id can be reused by a new connection once an old one is gone)
        now = time.monotonic()
        with self._lock:
            pending = self._pending()
            for a in pending:
                if getattr(a, "_cxrkit_seen", None) is None:
                    a._cxrkit_seen = now
            excess = len(pending) - self.max_pending + 1 if accepting else 0  # room for the one arriving
            # a connection younger than GRACE_S is never closed: its request may be in flight,
            # or read but not yet processed (pynetdicom changes state only after the whole PDU)
            old = [a for a in pending if now - a._cxrkit_seen >= GRACE_S]
            # gone (closed by the peer, nothing queued): always; idle beyond max_pending: the oldest
            dead = [a for a in old if self._dead(a)]
            idle = [a for a in old if a not in dead and self._idle(a)] if excess > len(dead) else []
            victims = dead + sorted(idle, key=lambda a: a._cxrkit_seen)[:max(excess - len(dead), 0)]
            for a in victims:
                self.evicted += 1
                a._cxrkit_closed = True
                address = str(getattr(getattr(a, "requestor", None), "address", "") or "")
                try:  # no A-ASSOCIATE-RQ yet: nothing to abort; close the connection, end the thread
                    a.dul.socket.close()
                except Exception:  # noqa: BLE001 - already closing
                    pass
                # the association's thread waits up to the ACSE timeout for an A-ASSOCIATE-RQ; an
                # empty primitive is what it gets when that wait times out: it ends now
                a.dul.to_user_queue.put(None)
                if self.on_evict is not None:
                    self.on_evict(address)
