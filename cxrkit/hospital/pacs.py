"""cxrkit as a DICOM node: a Storage SCP that predicts each study it receives and sends the
result back as a DICOM SR (``cxrkit pacs listen``), with its queue in SQLite (``cxrkit pacs
status``).

* The listener (pynetdicom) accepts every storage SOP class in every transfer syntax pydicom
  can decode, from the calling AE titles it is told to allow (others are rejected at
  association): what is used is decided by content, as ``cxrkit predict`` decides. cxrkit's
  own report, objects without pixels (SR, KO, PR, ...) and images that predict's DICOM filter
  leaves out by their header (modality, body part, view) are answered "stored" and not kept;
  every such instance is logged and counted with its reason (``pacs status``). The others are
  written to the spool atomically (temporary file, then rename) and recorded in the state
  database *before* success is answered, so an instance the sender saw stored is never lost.
* A study is processed when no instance of it has arrived for ``idle`` seconds: the same
  rows ``cxrkit predict`` writes (one CSV per study, ``results/``), failures with their
  reason (a colour or corrupt instance gets its row, counted per instance, and the rest of
  the study goes on), and a Comprehensive SR (``sr/``, marked unverified and naming the model
  and version). Instances that arrive after a study was processed are predicted on their own
  (rows are keyed by file, ``predict --resume``): one current report per study, so a late
  instance that changes nothing sends nothing, and a changed result is a new version of the
  report (same series, next instance number, the earlier one in its Predecessor Documents
  Sequence). Every SOPInstanceUID is predicted once.
* With ``send_to``, the SR is sent by C-STORE; a failed send is retried with exponential
  back-off (5 s doubling up to 10 min) and its error and attempts are kept.
* State (``state.sqlite`` in the spool): instances (received / done), studies (open /
  processing / done / failed with reason and attempts), sends (pending / sent / failed). A
  restart after a crash or kill resumes: studies left ``processing`` are processed again,
  rows already written are not repeated.
* Privacy: logs name studies by a short hash of their UID, never by patient data; the
  spool is owner-only (0700 folders, 0600 files).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CxrkitError

log = logging.getLogger(__name__)

STATE_FILE = "state.sqlite"
BACKOFF_START_S = 5.0
BACKOFF_MAX_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, path TEXT NOT NULL, calling_ae TEXT,
    received_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'received');
CREATE INDEX IF NOT EXISTS instances_status ON instances (status);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, status TEXT NOT NULL, last_instance_at REAL NOT NULL,
    processed_at REAL, rows INTEGER DEFAULT 0, failed INTEGER DEFAULT 0, sr_path TEXT,
    reason TEXT, attempts INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT,
    study_uid TEXT, sop_uid TEXT);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, reason);
CREATE TABLE IF NOT EXISTS sends (
    study_uid TEXT NOT NULL, sr_path TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER DEFAULT 0, last_error TEXT, next_try_at REAL NOT NULL, sent_at REAL,
    PRIMARY KEY (study_uid, sr_path, target));
"""


def short(uid: str) -> str:
    """A study / instance named in logs: 10 hex digits of its UID's SHA-256."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def study_key(uid: str) -> str:
    """A study's name in the spool (folders, result files): 20 hex digits of its UID's SHA-256."""
    return hashlib.sha256(uid.encode()).hexdigest()[:20]


def _private_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, 0o700)
    return p


class PacsState:
    """The spool's SQLite database; safe to use from the SCP's and the worker's threads."""

    def __init__(self, spool: str | Path) -> None:
        self.spool = _private_dir(Path(spool))
        self.path = self.spool / STATE_FILE
        self._lock = threading.RLock()
        self.created = not self.path.exists()
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            os.chmod(self.path, 0o600)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            bad = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if bad != "ok":
                raise sqlite3.DatabaseError(str(bad)[:80])
        except sqlite3.DatabaseError as e:
            with contextlib.suppress(Exception):
                self.db.close()
            raise CxrkitError(f"the spool's state database {self.path} is damaged ({str(e).splitlines()[0][:80]}); "
                              f"rebuild it from the spool: cxrkit pacs rebuild --spool {self.spool}") from None

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error), holding
        the lock the SCP's and the worker's threads share."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _tx(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._transaction() as db:
            return db.execute(sql, args).fetchall()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # instances --------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def add_instance(self, sop_uid: str, study_uid: str, path: Path, calling_ae: str) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO instances (sop_uid, study_uid, path, calling_ae, received_at) "
                       "VALUES (?, ?, ?, ?, ?)", (sop_uid, study_uid, str(path), calling_ae, now))
            db.execute("INSERT INTO studies (study_uid, status, last_instance_at) VALUES (?, 'open', ?) "
                       "ON CONFLICT(study_uid) DO UPDATE SET last_instance_at = excluded.last_instance_at, "
                       "status = 'open'", (study_uid, now))

    def backlog(self) -> int:
        """Instances received (durably in the spool) and not yet predicted."""
        return int(self.query("SELECT COUNT(*) FROM instances WHERE status = 'received'")[0][0])

    # studies ----------------------------------------------------------------------------
    def recover(self) -> int:
        """Studies a killed process left ``processing`` are processed again."""
        rows = self._tx("UPDATE studies SET status = 'open' WHERE status = 'processing' RETURNING study_uid")
        return len(rows)

    def due_studies(self, idle: float) -> list[str]:
        cutoff = time.time() - idle
        return [r[0] for r in self.query("SELECT study_uid FROM studies WHERE status = 'open' AND last_instance_at <= ? "
                                         "ORDER BY last_instance_at", (cutoff,))]

    def start_study(self, study_uid: str) -> float:
        """Mark a study processing; returns the arrival time of its newest instance then."""
        rows = self._tx("UPDATE studies SET status = 'processing', attempts = attempts + 1 WHERE study_uid = ? "
                        "RETURNING last_instance_at", (study_uid,))
        return float(rows[0][0]) if rows else 0.0

    def finish_study(self, study_uid: str, started_last: float, ok: bool, rows: int = 0, failed: int = 0,
                     sr_path: str | None = None, reason: str | None = None) -> None:
        """Done / failed; an instance that arrived while it was processing reopens it."""
        with self._transaction() as db:
            (last,) = db.execute("SELECT last_instance_at FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            status = "open" if last > started_last else ("done" if ok else "failed")
            db.execute("UPDATE studies SET status = ?, processed_at = ?, rows = ?, failed = ?, sr_path = ?, "
                       "reason = ? WHERE study_uid = ?", (status, time.time(), rows, failed, sr_path, reason, study_uid))
            db.execute("UPDATE instances SET status = 'done' WHERE study_uid = ? AND received_at <= ?",
                       (study_uid, started_last))

    # events: every instance not used, with its reason ----------------------------------------
    def add_event(self, kind: str, reason: str, detail: str = "", study_uid: str = "", sop_uid: str = "",
                  once: bool = False) -> None:
        """``kind``: ``refused`` (a failure status was answered), ``ignored`` (answered stored,
        not kept: not a chest film, not an image, cxrkit's own report), ``failed`` (kept, not
        predicted: colour, corrupt, ...; ``once`` per instance) or ``duplicate``."""
        with self._transaction() as db:
            if not (once and db.execute("SELECT 1 FROM events WHERE kind = ? AND sop_uid = ?",
                                        (kind, sop_uid)).fetchone()):
                db.execute("INSERT INTO events (at, kind, reason, detail, study_uid, sop_uid) VALUES (?, ?, ?, ?, ?, ?)",
                           (time.time(), kind, reason, detail[:300], study_uid, sop_uid))

    def sop_of_path(self, path: str) -> tuple[str, str]:
        rows = self.query("SELECT sop_uid, study_uid FROM instances WHERE path = ?", (path,))
        return (rows[0][0], rows[0][1]) if rows else ("", "")

    # sends ------------------------------------------------------------------------------
    def queue_send(self, study_uid: str, sr_path: str, target: str) -> None:
        self._tx("INSERT INTO sends (study_uid, sr_path, target, status, next_try_at) VALUES (?, ?, ?, 'pending', ?) "
                 "ON CONFLICT DO UPDATE SET status = 'pending', next_try_at = excluded.next_try_at, attempts = 0",
                 (study_uid, sr_path, target, time.time()))

    def due_sends(self) -> list[tuple[str, str, str, int]]:
        return [tuple(r) for r in self.query("SELECT study_uid, sr_path, target, attempts FROM sends WHERE "
                                             "status = 'pending' AND next_try_at <= ?", (time.time(),))]

    def send_result(self, study_uid: str, sr_path: str, target: str, ok: bool, error: str = "",
                    max_attempts: int = 20) -> None:
        if ok:
            self._tx("UPDATE sends SET status = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL "
                     "WHERE study_uid = ? AND sr_path = ? AND target = ?", (time.time(), study_uid, sr_path, target))
            return
        rows = self.query("SELECT attempts FROM sends WHERE study_uid = ? AND sr_path = ? AND target = ?",
                          (study_uid, sr_path, target))
        attempts = (rows[0][0] if rows else 0) + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (attempts - 1))
        status = "failed" if attempts >= max_attempts else "pending"
        self._tx("UPDATE sends SET status = ?, attempts = ?, last_error = ?, next_try_at = ? "
                 "WHERE study_uid = ? AND sr_path = ? AND target = ?",
                 (status, attempts, error[:300], time.time() + delay, study_uid, sr_path, target))

    def summary(self) -> dict[str, Any]:
        def counts(table: str) -> dict[str, int]:
            return {s: n for s, n in self.query(f"SELECT status, COUNT(*) FROM {table} GROUP BY status")}

        failed = [{"study": short(u), "reason": r, "attempts": a}
                  for u, r, a in self.query("SELECT study_uid, reason, attempts FROM studies WHERE status = 'failed'")]
        sends = [{"study": short(u), "target": t, "status": s, "attempts": a, "error": e}
                 for u, t, s, a, e in self.query("SELECT study_uid, target, status, attempts, last_error FROM sends "
                                                 "WHERE status != 'sent'")]
        events = [{"kind": k, "reason": r, "count": n, "newest": _iso(t)}
                  for k, r, n, t in self.query("SELECT kind, reason, COUNT(*), MAX(at) FROM events "
                                               "GROUP BY kind, reason ORDER BY MAX(at) DESC")]
        recent = [{"at": _iso(t), "kind": k, "reason": r, "detail": d, "study": short(u) if u else ""}
                  for t, k, r, d, u in self.query("SELECT at, kind, reason, detail, study_uid FROM events "
                                                  "WHERE kind != 'duplicate' ORDER BY id DESC LIMIT 10")]
        return {"spool": str(self.spool), "backlog": self.backlog(),
                "instances": counts("instances"), "studies": counts("studies"),
                "sends": counts("sends"), "failed_studies": failed, "unsent": sends, "not_used": events,
                "recent_not_used": recent}


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def parse_target(spec: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE title, host, port)."""
    try:
        ae, rest = spec.split("@", 1)
        host, port = rest.rsplit(":", 1)
        p = int(port)
    except ValueError:
        raise CxrkitError(f"--send-to must be AE@host:port (got {spec!r})") from None
    if not ae or len(ae) > 16 or not host or not 0 < p < 65536:
        raise CxrkitError(f"--send-to must be AE@host:port with an AE title of 1-16 characters (got {spec!r})")
    return ae, host, p


def parse_peer(spec: str) -> tuple[str, str]:
    """``AE@ADDRESS`` (an IP address or a network such as ``10.1.2.0/24``) -> (AE, network)."""
    import ipaddress

    ae, sep, addr = str(spec).rpartition("@")
    if not sep or not ae or not addr:
        raise CxrkitError(f"--allow-peer must be AE@ADDRESS, e.g. PACS@10.1.2.3 or PACS@10.1.2.0/24 (got {spec!r})")
    try:
        net = str(ipaddress.ip_network(addr.strip(), strict=False))
    except ValueError:
        raise CxrkitError(f"--allow-peer {spec!r}: {addr!r} is not an IP address or network") from None
    return _check_ae(ae, "--allow-peer's AE title"), net


def peer_allowed(peers: tuple[tuple[str, str], ...], ae: str, address: str) -> bool:
    """Whether (calling AE title, address) is one of the allowed pairs (none given: all are)."""
    import ipaddress

    if not peers:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ae == a and ip in ipaddress.ip_network(net) for a, net in peers)


def _check_ae(title: str, what: str) -> str:
    t = title.strip()
    if not t or len(t) > 16 or any(ord(c) < 32 or c == "\\" for c in t):
        raise CxrkitError(f"{what} must be 1-16 printable characters (got {title!r})")
    return t


@dataclass
class ListenerConfig:
    ae_title: str = "CXRKIT"
    host: str = "0.0.0.0"
    port: int = 11112
    allow_ae: tuple[str, ...] = ()
    send_to: str | None = None
    idle: float = 10.0
    poll: float = 0.5
    batch_size: int = 16
    fhir: bool = False  # also a FHIR Bundle per study in <spool>/fhir/
    codes_file: str | None = None  # the user's label codes for the SR and FHIR
    # backpressure: answer "out of resources" (0xA700) instead of accepting what cannot be kept
    max_backlog: int = 0  # instances received and not yet predicted (0: no cap)
    # (calling AE title, address or network) pairs allowed to store; empty: any peer
    allow_peers: tuple[tuple[str, str], ...] = ()
    min_free_mb: float = 0.0  # free space the spool's filesystem must keep (0: no cap)
    # TLS (PS3.15 BCP 195 profiles): the listener's certificate / key, and the CA senders'
    # client certificates must chain to (required with a certificate); send_tls: C-STORE the
    # reports over TLS too (the receiving node's certificate verified against tls_ca)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    send_tls: bool = False
    max_associations: int = 32  # associations at once (several modalities and a PACS at peak)
    max_pending: int = 16  # connections without an association request yet (oldest idle one closed)
    dicomweb_ca: str | None = None  # CA (PEM) the DICOMweb server's HTTPS certificate must chain to


def _storage_classes() -> list[Any]:
    """Every storage SOP class: what is used is decided by content (as ``cxrkit predict``
    decides), not by SOP class. A PACS pushes whole studies: Secondary Capture chest films,
    cxrkit's own earlier report, presentation states; refusing a class at association made
    the PACS's whole push fail."""
    from pynetdicom import AllStoragePresentationContexts

    return [c.abstract_syntax for c in AllStoragePresentationContexts]


class Node:
    """What the listener and the DICOMweb puller share: the spool, the state, processing a
    study (rows, failures, SR) and sending its reports."""

    def __init__(self, predictor: Any, spool: str | Path, cfg: ListenerConfig, dicom_filter: Any = None) -> None:
        self.pred = predictor
        self.cfg = cfg
        self._audit_lock = threading.Lock()
        if cfg.send_to and not cfg.send_to.startswith("stow:"):
            parse_target(cfg.send_to)
        self.state = PacsState(spool)
        self.spool = self.state.spool
        if self.state.created and any((self.spool / "studies").glob("*/*.dcm")):
            # the state database was deleted while the spool holds instances: rebuilt from them
            self.state.close()
            (self.spool / STATE_FILE).unlink(missing_ok=True)
            res = rebuild_state(self.spool, cfg.send_to if cfg.send_to else None)
            log.warning("the spool's state database was missing: rebuilt from %d instance(s) in %d study / studies "
                        "(%d to predict)", res["instances"], res["studies"], res["instances"] - res["done"])
            self.state = PacsState(spool)
        for sub in ("studies", "results", "sr", "tmp"):
            _private_dir(self.spool / sub)
        if dicom_filter is None:  # predict's default: CR / DX chest films, PA / AP / lateral
            from ..inference.runtime import DicomFilter

            dicom_filter = DicomFilter()
        self.filter = dicom_filter
        self._stop = threading.Event()  # set by stop(); the listener's worker checks it
        self._server: Any = None
        self._worker: threading.Thread | None = None
        for name in ("pynetdicom", "pydicom"):  # their INFO / DEBUG lines can carry header values
            logging.getLogger(name).setLevel(logging.WARNING)

    def audit(self, event: str, **fields: Any) -> None:
        """One line of ``<spool>/audit.jsonl``: who sent which study when, what was refused or
        reported, what was sent back where (IHE ATNA in spirit). Studies and instances by a
        hash of their UID, never a header value; appended and flushed line by line."""
        import json as _json

        rec = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
               **{k: v for k, v in fields.items() if v not in (None, "")}}
        line = _json.dumps(rec, sort_keys=False) + "\n"
        with self._audit_lock:
            with open(self.spool / "audit.jsonl", "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        try:
            os.chmod(self.spool / "audit.jsonl", 0o600)
        except OSError:
            pass

    def store(self, ds: Any, source: str, address: str = "") -> int:
        """Write one received dataset to the spool and record it; a DIMSE status code."""
        from .sr import valid_uid

        try:
            sop = str(ds.get("SOPInstanceUID", ""))
            study = str(ds.get("StudyInstanceUID", ""))
        except Exception:
            log.warning("an instance could not be parsed; refused")
            return 0xC000
        if not valid_uid(sop) or not valid_uid(study):
            log.warning("an instance without valid SOP / Study Instance UIDs was refused")
            self.state.add_event("refused", "invalid_uid", "SOP or Study Instance UID is not a valid DICOM UID")
            self.audit("refused", calling_ae=source, address=address, reason="invalid_uid")
            return 0xA900
        if self.state.has_instance(sop):
            # one SOP Instance UID is one object (PS3.3): the first copy is kept, a resend with
            # other content (a corrected header under the same UID) is recorded as such
            reason = "received_again" if self._same_as_kept(sop, ds) else "received_again_different"
            log.info("instance %s of study %s received again%s; the first copy is kept and processed once",
                     short(sop), short(study), " with different content" if reason.endswith("different") else "")
            self.state.add_event("duplicate", reason, "", study, sop)
            self.audit("duplicate", calling_ae=source, address=address, study=short(study), instance=short(sop),
                       reason=reason)
            return 0x0000
        skip = self._not_a_film(ds)
        if skip is not None:  # answered stored (the PACS must not resend it), not kept
            reason, detail = skip
            log.info("instance %s of study %s ignored: %s (%s)", short(sop), short(study), reason, detail)
            self.state.add_event("ignored", reason, detail, study, sop)
            self.audit("ignored", calling_ae=source, address=address, study=short(study), instance=short(sop),
                       reason=reason)
            return 0x0000
        full = self._over_capacity()
        if full is not None:  # refused before anything is written: the sender keeps it and retries
            reason, detail = full
            log.warning("instance %s of study %s refused: %s", short(sop), short(study), detail)
            self.state.add_event("refused", reason, detail, study, sop)
            self.audit("refused", calling_ae=source, address=address, study=short(study), instance=short(sop),
                       reason=reason)
            return 0xA700  # Refused: Out of Resources
        folder = _private_dir(self.spool / "studies" / study_key(study))
        target = folder / f"{hashlib.sha256(sop.encode()).hexdigest()[:32]}.dcm"
        tmp = self.spool / "tmp" / f"{target.name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.chmod(tmp, 0o600)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except Exception as e:
            log.warning("instance %s could not be written to the spool (%s)", short(sop), type(e).__name__)
            tmp.unlink(missing_ok=True)
            self.state.add_event("refused", "spool_write_failed", type(e).__name__, study, sop)
            self.audit("refused", calling_ae=source, address=address, study=short(study), instance=short(sop),
                       reason="spool_write_failed")
            return 0xA700  # out of resources
        self.state.add_instance(sop, study, target, source)
        log.info("stored instance %s of study %s", short(sop), short(study))
        self.audit("received", calling_ae=source, address=address, study=short(study), instance=short(sop))
        return 0x0000

    def _same_as_kept(self, sop: str, ds: Any) -> bool:
        """Whether ``ds`` holds the same elements as the copy of ``sop`` in the spool (True
        when that copy cannot be read: not kept, e.g. an ignored instance)."""
        import pydicom

        rows = self.state.query("SELECT path FROM instances WHERE sop_uid = ?", (sop,))
        try:
            return bool(pydicom.dcmread(rows[0][0]) == ds) if rows else True
        except Exception:  # noqa: BLE001 - unreadable: nothing to compare with
            return True

    def _over_capacity(self) -> tuple[str, str] | None:
        """(reason, detail) when a cap of the configuration is reached, else None."""
        cfg = getattr(self, "cfg", None)
        if cfg is None:
            return None
        if cfg.max_backlog:
            n = self.state.backlog()
            if n >= cfg.max_backlog:
                return "backlog_full", f"{n} instance(s) wait to be predicted (--max-backlog {cfg.max_backlog})"
        if cfg.min_free_mb:
            free = shutil.disk_usage(self.spool).free / 1e6
            if free < cfg.min_free_mb:
                return "disk_full", f"{free:.0f} MB free in the spool (--min-free-mb {cfg.min_free_mb:g})"
        return None

    def _not_a_film(self, ds: Any) -> tuple[str, str] | None:
        """(reason, detail) for an instance that is not kept, or None: cxrkit's own report,
        any object without pixels (SR, KO, PR, ...), and images that ``cxrkit predict``'s DICOM
        filter leaves out (modality, body part, view) by their header. Colour and corrupt
        films are kept and get their failure row when predicted, as in a folder."""
        from ..data.images import dicom_info
        from ..errors import ImageReadError

        modality = str(ds.get("Modality", "")).upper()
        if modality == "SR" and str(ds.get("Manufacturer", "")) == "cxrkit":
            return "own_report", "a report cxrkit wrote"
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            return "non_image", f"no pixel data ({_sop_name(ds)})"
        if self.filter is not None:
            try:
                self.filter.check(dicom_info(ds), "<received>")
            except ImageReadError as e:
                return e.reason.value, e.detail
            except Exception as e:  # a header pydicom cannot read: predict gives it its row
                log.debug("header not checked (%s)", type(e).__name__)
        return None

    def process_study(self, study: str) -> None:
        from ..inference.predict import run_predict

        started_last = self.state.start_study(study)
        key = short(study)
        folder = self.spool / "studies" / study_key(study)
        out = self.spool / "results" / f"{study_key(study)}.csv"
        sr_dir = self.spool / "sr" / study_key(study)
        if not folder.is_dir():
            self.state.finish_study(study, started_last, False, reason="no instances in the spool")
            return
        try:
            res = run_predict(self.pred, [folder], out, batch_size=self.cfg.batch_size, show_progress=False,
                              dicom_filter=self.filter, resume=out.exists(), sr_dir=sr_dir,
                              fhir_dir=self.spool / "fhir" / study_key(study) if self.cfg.fhir else None,
                              codes_file=self.cfg.codes_file)
        except CxrkitError as e:
            self.state.finish_study(study, started_last, False, reason=str(e).splitlines()[0][:300])
            log.warning("study %s: nothing predicted (%s)", key, str(e).splitlines()[0][:120])
            return
        self._record_failures(out)
        srs = sorted(str(p) for p in sr_dir.glob("*.dcm"))
        self.state.finish_study(study, started_last, True, rows=res["predicted"] + res["already_done"],
                                failed=res["failed"], sr_path=srs[0] if srs else None)
        changed = res.get("sr_changed") or []
        log.info("study %s: %d row(s), %d failure(s), report %s", key, res["predicted"] + res["already_done"],
                 res["failed"], "written" if changed else "unchanged" if srs else "none")
        self.audit("reported", study=key, rows=res["predicted"] + res["already_done"], failed=res["failed"],
                   report="written" if changed else "unchanged" if srs else "none")
        if self.cfg.send_to and changed:  # one current report: the same result is not sent again
            for p in srs:
                self.state.queue_send(study, p, self.cfg.send_to)

    def _record_failures(self, out: Path) -> None:
        """The study's failure rows (colour, corrupt, ...) as per-instance events, once each."""
        import csv

        from ..inference.predict import failures_path
        from ..utils import CSV_ENCODING

        fp = failures_path(out)
        if not fp.is_file():
            return
        with open(fp, newline="", **CSV_ENCODING) as f:
            for row in csv.DictReader(f):
                sop, study = self.state.sop_of_path(row.get("path", ""))
                key = sop or hashlib.sha256(row.get("path", "").encode()).hexdigest()[:32]
                self.state.add_event("failed", row.get("reason", ""), row.get("detail", ""), study, key, once=True)

    def process_due(self) -> None:
        for study in self.state.due_studies(self.cfg.idle):
            if self._stop.is_set():
                break
            self.process_study(study)

    def send_due(self) -> int:
        """Send the reports that are due; how many went through."""
        return sum(self._send(*job) for job in self.state.due_sends())

    def _send(self, study: str, sr_path: str, target: str, attempts: int) -> bool:
        """Send one report: ``stow:URL`` by STOW-RS, ``AE@host:port`` by C-STORE; the
        outcome (and the back-off after a failure) goes into the state."""
        err = self._stow(sr_path, target[5:]) if target.startswith("stow:") else self._cstore(sr_path, target)
        self.state.send_result(study, sr_path, target, ok=not err, error=err)
        where = "the DICOMweb server" if target.startswith("stow:") else parse_target(target)[0]
        if err:
            log.warning("report of study %s not sent to %s (%s); retried with back-off", short(study), where, err)
        else:
            log.info("report of study %s sent to %s", short(study), where)
        self.audit("send_failed" if err else "sent", study=short(study), target=target, error=err[:200])
        return not err

    def _cstore(self, sr_path: str, target: str) -> str:
        import pydicom
        from pynetdicom import AE

        ae_title, host, port = parse_target(target)
        ae = AE(ae_title=self.cfg.ae_title)
        try:
            ds = pydicom.dcmread(sr_path)
            ae.add_requested_context(ds.SOPClassUID)
            tls = None
            if self.cfg.send_tls:
                from .transport import client_context

                tls = (client_context(self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_ca), host)
            assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls)
            if not assoc.is_established:
                return "association rejected or no answer"
            try:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", 0xC000)) if status else 0xC000
                return "" if code == 0x0000 else f"C-STORE status 0x{code:04X}"
            finally:
                assoc.release()
        except Exception as e:
            import socket

            if isinstance(e, socket.gaierror):
                return f"host {host} not found (name resolution failed)"
            return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__

    def _stow(self, sr_path: str, url: str) -> str:
        try:
            DicomWeb(url, ca=self.cfg.dicomweb_ca).stow([Path(sr_path).read_bytes()])
            return ""
        except CxrkitError as e:
            return str(e)[:200]


class Listener(Node):
    """``cxrkit pacs listen``: the Storage SCP, the study worker and the C-STORE sender."""

    def __init__(self, predictor: Any, spool: str | Path, cfg: ListenerConfig, dicom_filter: Any = None) -> None:
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            from ..extras import install_hint

            raise CxrkitError(f"the DICOM listener needs pynetdicom: {install_hint('pacs', ['pynetdicom'])}") from None
        cfg.ae_title = _check_ae(cfg.ae_title, "--ae-title")
        cfg.allow_ae = tuple(_check_ae(a, "--allow-ae") for a in cfg.allow_ae)
        self._tls = None
        if cfg.tls_cert or cfg.tls_key:
            from .transport import server_context

            self._tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)  # checked before anything starts
        if cfg.send_tls:
            from .transport import client_context

            client_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        self.guard: Any = None
        super().__init__(predictor, spool, cfg, dicom_filter)

    def _on_store(self, event: Any) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception:  # a dataset pydicom cannot parse
            log.warning("an instance could not be parsed; refused")
            return 0xC000
        req = event.assoc.requestor
        ae, address = str(getattr(req, "ae_title", "")).strip(), str(getattr(req, "address", ""))
        if not peer_allowed(self.cfg.allow_peers, ae, address):  # an AE title alone is no proof
            log.warning("a store from an AE title / address pair not on --allow-peer was refused")
            self.state.add_event("refused", "peer_not_allowed", f"calling AE {ae} from {address}")
            self.audit("refused", calling_ae=ae, address=address, reason="peer_not_allowed")
            return 0x0124  # Refused: Not authorized
        return self.store(ds, ae, address)

    def _on_requested(self, event: Any) -> None:
        """An A-ASSOCIATE-RQ arrived: rejected (transient, local limit exceeded: the sender
        retries, as pynetdicom's own limit answers) while ``max_associations`` are established."""
        busy = sum(1 for a in list(self._server.active_associations) if a.is_acceptor and a.is_established)
        if busy >= self.cfg.max_associations:
            log.warning("association refused: %d associations open (--max-associations)", busy)
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)
            event.assoc.kill()  # as pynetdicom's own limit does: the rejection reaches the sender first

    def _on_evict(self, address: str) -> None:
        # a flood of idle connections is one log line every 10 s, not one per connection; each
        # is still counted (pacs status) and audited
        now = time.monotonic()
        self._evicted_quiet = getattr(self, "_evicted_quiet", 0) + 1
        if now - getattr(self, "_evicted_logged", -1e9) >= 10.0:
            log.warning("closed %d idle connection(s) (latest from %s): no association request while %d others "
                        "waited", self._evicted_quiet, address or "?", self.cfg.max_pending)
            self._evicted_logged, self._evicted_quiet = now, 0
        self.state.add_event("refused", "idle_connection", f"from {address}")
        self.audit("refused", address=address, reason="idle_connection")

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        n = self.state.recover()
        if n:
            log.info("%d study / studies left processing by an earlier run will be processed again", n)
        ae = AE(ae_title=self.cfg.ae_title)
        for sop in _storage_classes():
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        if self.cfg.allow_ae:
            ae.require_calling_aet = list(self.cfg.allow_ae)
        # pynetdicom's own limit counts every open connection, even ones that never ask for an
        # association (a burst of junk connections then rejects real senders): it is lifted, and
        # the limit applies to established associations only, when a request arrives
        # (_on_requested); connections that never ask are the guard's
        ae.maximum_associations = 1_000_000
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, ssl_context=self._tls,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                     (evt.EVT_REQUESTED, self._on_requested)])
        from .transport import ConnectionGuard

        self.guard = ConnectionGuard(self._server, self._tls, self.cfg.max_pending, on_evict=self._on_evict)
        self._worker = threading.Thread(target=self._work, name="cxrkit-pacs-worker", daemon=True)
        self._worker.start()
        log.info("listening as %s on %s:%d%s (spool %s)", self.cfg.ae_title, self.cfg.host, self.cfg.port,
                 " over TLS" if self._tls else "", self.spool)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._worker is not None:
            self._worker.join(timeout=60)
        self.state.close()

    def serve_forever(self) -> None:
        import signal

        self.start()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *a: stop.set())
        try:
            while not stop.is_set():
                stop.wait(0.5)
        finally:
            self.stop()

    # the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                if self.guard is not None:
                    self.guard.sweep()
                self.process_due()
                if self.cfg.send_to:
                    self.send_due()
            except Exception as e:  # keep serving: a broken study must not stop the node
                log.error("worker error: %s", type(e).__name__)
            self._stop.wait(self.cfg.poll)


# ---------------------------------------------------------------------------------------
# DICOMweb: QIDO-RS search, WADO-RS retrieve, STOW-RS store
# ---------------------------------------------------------------------------------------


class DicomWeb:
    """A DICOMweb server (PS3.18). Credentials come from the environment only:
    ``CXRKIT_DICOMWEB_TOKEN`` (bearer) or ``CXRKIT_DICOMWEB_USER`` +
    ``CXRKIT_DICOMWEB_PASSWORD`` (basic)."""

    def __init__(self, url: str, timeout: float = 120.0, ca: str | Path | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise CxrkitError(f"--dicomweb must be an http(s) URL (got {url[:80]!r})")
        self.url = url.rstrip("/")
        self.timeout = timeout
        # HTTPS certificates are always verified: against the system's CAs, or ``ca`` (a PEM
        # file, e.g. the hospital's own CA; also CXRKIT_DICOMWEB_CA)
        ca = ca or os.environ.get("CXRKIT_DICOMWEB_CA") or None
        self.ssl_context = None
        if ca:
            import ssl

            if not Path(ca).is_file():
                raise CxrkitError(f"--dicomweb-ca {ca} is not a file")
            try:
                self.ssl_context = ssl.create_default_context(cafile=str(ca))
            except (ssl.SSLError, OSError) as e:
                raise CxrkitError(f"--dicomweb-ca {ca} is not a PEM CA certificate ({e})") from None
        token = os.environ.get("CXRKIT_DICOMWEB_TOKEN")
        user, pw = os.environ.get("CXRKIT_DICOMWEB_USER"), os.environ.get("CXRKIT_DICOMWEB_PASSWORD")
        self.auth = None
        if token:
            self.auth = f"Bearer {token}"
        elif user is not None:
            import base64

            self.auth = "Basic " + base64.b64encode(f"{user}:{pw or ''}".encode()).decode()

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[bytes, str]:
        import urllib.error
        import urllib.request

        h = dict(headers or {})
        if self.auth:
            h["Authorization"] = self.auth
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as r:
                return r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            if e.code == 204:
                return b"", ""
            raise CxrkitError(f"DICOMweb {method} {path.split('?')[0][:60]}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            import ssl

            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise CxrkitError(f"DICOMweb server's certificate not trusted ({reason.verify_message}); give the "
                                  "CA that signed it with --dicomweb-ca (verification stays on)") from None
            raise CxrkitError(f"DICOMweb server not reachable ({type(e).__name__})") from None

    def studies(self, modalities: tuple[str, ...] = ("CR", "DX"), since: str | None = None) -> list[str]:
        """StudyInstanceUIDs of the studies holding any of ``modalities`` (QIDO-RS)."""
        import json
        import urllib.parse

        out: list[str] = []
        for m in modalities:
            q = {"ModalitiesInStudy": m, "includefield": "0020000D"}
            if since:
                q["StudyDate"] = f"{since.replace('-', '')}-"
            raw, _ = self._request("GET", "/studies?" + urllib.parse.urlencode(q),
                                   headers={"Accept": "application/dicom+json"})
            for item in json.loads(raw or b"[]"):
                uid = ((item.get("0020000D") or {}).get("Value") or [""])[0]
                if uid and uid not in out:
                    out.append(uid)
        return out

    def retrieve(self, study_uid: str) -> list[bytes]:
        """The study's instances as DICOM files (WADO-RS, multipart/related)."""
        # transfer-syntax=*: as stored. Without it the server must transcode to Explicit VR
        # Little Endian, and a JPEG film decoded by the server's codec differs from the one
        # cxrkit predict decodes (measured on Orthanc: probabilities 1e-4 apart).
        raw, ctype = self._request("GET", f"/studies/{study_uid}", headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        return _multipart_parts(raw, ctype)

    def stow(self, files: list[bytes]) -> None:
        """Store DICOM files on the server (STOW-RS)."""
        import uuid

        boundary = uuid.uuid4().hex
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                        for f in files) + b"--" + boundary.encode() + b"--\r\n"
        self._request("POST", "/studies", body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})


def _multipart_parts(raw: bytes, ctype: str) -> list[bytes]:
    import re

    m = re.search(r'boundary="?([^";]+)"?', ctype or "")
    if not m:
        raise CxrkitError("DICOMweb: the server's answer is not multipart/related")
    sep = b"--" + m.group(1).encode()
    parts = []
    for chunk in raw.split(sep)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        parts.append(body)
    return parts


def pull(predictor: Any, spool: str | Path, url: str, since: str | None = None, studies: list[str] | None = None,
         stow: bool = False, dicom_filter: Any = None, modalities: tuple[str, ...] = ("CR", "DX"),
         fhir: bool = False, codes_file: str | None = None, ca: str | None = None) -> dict[str, Any]:
    """``cxrkit pacs pull``: find CR / DX studies on a DICOMweb server that this spool has not
    processed (or the given ones), retrieve, predict, and with ``stow`` store each SR back.
    Every state change is in the spool's database, so a killed pull resumes where it was."""
    import io

    import pydicom

    web = DicomWeb(url, ca=ca)
    cfg = ListenerConfig(idle=0.0, send_to=f"stow:{web.url}" if stow else None, fhir=fhir, codes_file=codes_file,
                         dicomweb_ca=ca)
    node = Node(predictor, spool, cfg, dicom_filter)
    node.state.recover()
    todo = list(studies) if studies else web.studies(modalities, since)
    done = {u for (u,) in node.state.query("SELECT study_uid FROM studies WHERE status IN ('done', 'failed')")}
    counts = {"found": len(todo), "skipped": 0, "processed": 0, "failed": 0, "instances": 0}
    for uid in todo:
        if uid in done and not studies:
            counts["skipped"] += 1
            continue
        try:
            files = web.retrieve(uid)
        except CxrkitError as e:
            log.warning("study %s not retrieved (%s)", short(uid), e)
            counts["failed"] += 1
            continue
        for raw in files:
            try:
                ds = pydicom.dcmread(io.BytesIO(raw))
            except Exception:
                log.warning("an instance of study %s could not be parsed", short(uid))
                continue
            sop = str(ds.get("SOPInstanceUID", ""))
            if node.state.has_instance(sop):
                continue
            if node.store(ds, "dicomweb") == 0x0000 and node.state.has_instance(sop):
                counts["instances"] += 1  # kept (our own report and other non-films are not)
        if not node.state.query("SELECT 1 FROM studies WHERE study_uid = ?", (uid,)):
            counts["failed"] += 1  # nothing of it could be stored
            continue
        node.process_study(uid)
        (st,) = node.state.query("SELECT status FROM studies WHERE study_uid = ?", (uid,))[0]
        counts["processed" if st == "done" else "failed"] += 1
    sent = node.send_due() if stow else 0
    summary = node.state.summary()
    node.state.close()
    return dict(counts, sent=sent, sends=summary["sends"], unsent=summary["unsent"])


def _sop_name(ds: Any) -> str:
    try:
        from pydicom.uid import UID

        return UID(str(ds.get("SOPClassUID", ""))).name or "unknown SOP class"
    except Exception:
        return "unknown SOP class"


def rebuild_state(spool: str | Path, send_to: str | None = None) -> dict[str, Any]:
    """A new state database from what the spool holds, after the old one was damaged or
    deleted (the old file is kept beside it as ``state.sqlite.damaged-<time>``).

    Every instance file in ``studies/`` is recorded again; one that already has its row (or
    failure row) in ``results/`` is done, and a study with every instance done and a report
    is done; the rest are open and the worker predicts them (``predict --resume``: no row is
    written twice, and an unchanged report is not sent again). The send queue cannot be
    recovered from files: with ``send_to``, the newest report of every done study is queued
    again (the same SOP Instance UID: a PACS that already has it keeps one copy)."""
    import csv

    import pydicom

    from ..utils import CSV_ENCODING

    p = Path(spool)
    if not (p / "studies").is_dir():
        raise CxrkitError(f"{spool}: no studies/ folder; not a cxrkit pacs spool")
    if send_to and not send_to.startswith("stow:"):
        parse_target(send_to)
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        f = p / f"{STATE_FILE}{suffix}"
        if f.exists():
            dest = p / f"{STATE_FILE}{suffix}.damaged-{stamp}"
            os.replace(f, dest)
            moved.append(dest.name)
    done: set[str] = set()
    for f in (p / "results").glob("*.csv") if (p / "results").is_dir() else []:
        with contextlib.suppress(OSError, csv.Error, UnicodeDecodeError):
            with open(f, newline="", **CSV_ENCODING) as fh:
                done.update(Path(r.get("path") or "").name for r in csv.DictReader(fh))
    st = PacsState(p)
    counts = {"instances": 0, "done": 0, "unreadable": 0, "studies": 0, "studies_done": 0, "queued": 0}
    try:
        studies: dict[str, list[bool]] = {}
        for f in sorted((p / "studies").glob("*/*.dcm")):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
            except Exception:  # a file that is not DICOM: left where it is, counted
                counts["unreadable"] += 1
                continue
            is_done = f.name in done
            with st._transaction() as db:
                db.execute("INSERT OR IGNORE INTO instances (sop_uid, study_uid, path, calling_ae, received_at, status) "
                           "VALUES (?, ?, ?, '', ?, ?)", (sop, study, str(f), f.stat().st_mtime,
                                                          "done" if is_done else "received"))
            studies.setdefault(study, []).append(is_done)
            counts["instances"] += 1
            counts["done"] += is_done
        for study, flags in studies.items():
            srs = sorted((p / "sr" / study_key(study)).glob("*.dcm"), key=lambda q: q.stat().st_mtime)
            complete = all(flags) and bool(srs)
            now = time.time()
            st._tx("INSERT OR REPLACE INTO studies (study_uid, status, last_instance_at, processed_at, rows, sr_path) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (study, "done" if complete else "open", now if not complete else 0.0,
                                                 now if complete else None, sum(flags), str(srs[-1]) if srs else None))
            counts["studies"] += 1
            counts["studies_done"] += complete
            if complete and send_to:
                st.queue_send(study, str(srs[-1]), send_to)
                counts["queued"] += 1
    finally:
        st.close()
    counts["moved_aside"] = moved
    return counts


def status(spool: str | Path) -> dict[str, Any]:
    p = Path(spool)
    if not (p / STATE_FILE).is_file():
        raise CxrkitError(f"{spool}: no {STATE_FILE}; not a cxrkit pacs spool")
    st = PacsState(p)
    try:
        return st.summary()
    finally:
        st.close()
