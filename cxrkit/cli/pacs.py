"""``cxrkit pacs listen / pull / status``: cxrkit as a DICOM node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CxrkitError
from ._common import pacs_app, console, _device, _csv_list


def _check_node_outputs(fhir: bool, codes: Path | None) -> None:
    from ..extras import require

    if fhir:
        require("fhir", "--fhir")
    if codes is not None:
        from ..hospital.codes import check_code_file

        check_code_file(codes)


@pacs_app.command("listen")
def pacs_listen(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    spool: Annotated[Path, typer.Option("--spool", help="Folder for received instances, results, reports and the state database (owner-only).")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "CXRKIT",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = 11112,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    allow_ae: Annotated[Optional[str], typer.Option("--allow-ae", help="Calling AE titles accepted, comma-separated (others are rejected at association); default: any.")] = None,
    send_to: Annotated[Optional[str], typer.Option("--send-to", help="Send each study's SR by C-STORE to AE@host:port.")] = None,
    idle: Annotated[float, typer.Option("--idle", min=0.0, help="Seconds without a new instance after which a study is processed.")] = 10.0,
    engine: Annotated[str, typer.Option("--engine", help="auto, torch, onnx or openvino.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
    modalities: Annotated[Optional[str], typer.Option("--modalities", help="DICOM modalities to predict (default CR,DX).")] = None,
    body_parts: Annotated[Optional[str], typer.Option("--body-parts", help="BodyPartExamined values accepted when present (default CHEST,THORAX,...).")] = None,
    fhir: Annotated[bool, typer.Option("--fhir", help="Also write a FHIR R4 Bundle per study into <spool>/fhir/ (needs fhir.resources).")] = False,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CSV of your labels' codes for the SR and FHIR (see predict --codes).")] = None,
    allow_peer: Annotated[Optional[list[str]], typer.Option("--allow-peer", help="AE@ADDRESS (an IP or a network, e.g. PACS@10.1.2.0/24) allowed to store, repeatable; others are refused (0x0124). An AE title alone is no authentication.")] = None,
    max_backlog: Annotated[int, typer.Option("--max-backlog", min=0, help="Refuse instances (DICOM 'out of resources', the sender retries) while this many received instances wait to be predicted; 0: no cap.")] = 0,
    min_free_mb: Annotated[float, typer.Option("--min-free-mb", min=0.0, help="Refuse instances while the spool's filesystem has less free space than this (MB); 0: no cap.")] = 0.0,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="Listen over TLS (DICOM BCP 195 profile: TLS 1.2+, AEAD suites) with this certificate (PEM); plain associations are then refused.")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="The private key of --tls-cert (PEM), if not in the same file.")] = None,
    tls_ca: Annotated[Optional[Path], typer.Option("--tls-ca", help="CA (PEM) whose certificates senders must present (client certificates are required and verified); with --send-tls, the CA the receiving node's certificate must chain to.")] = None,
    send_tls: Annotated[bool, typer.Option("--send-tls", help="Send the SRs (--send-to) over TLS, presenting --tls-cert and verifying the receiver against --tls-ca.")] = False,
    max_associations: Annotated[int, typer.Option("--max-associations", min=1, help="Associations served at once (senders beyond it are rejected and retry).")] = 32,
) -> None:
    """Receive CR / DX studies over DICOM (a Storage SCP), predict each study once it is
    complete, write the rows and a DICOM SR per study, and optionally send the SR back.

    Example: cxrkit pacs listen runs/nih_hires/model --spool /var/spool/cxrkit --allow-ae PACS --send-to PACS@pacs.local:104"""
    from ..inference.ensemble import load_predictor
    from ..hospital.pacs import Listener, ListenerConfig, parse_peer, parse_target
    from ..inference.runtime import DicomFilter

    if send_to:
        parse_target(send_to)  # checked before the model is loaded
    if send_tls and not send_to:
        raise CxrkitError("--send-tls needs --send-to")
    peers = tuple(parse_peer(p) for p in allow_peer or [])
    tls = dict(tls_cert=str(tls_cert) if tls_cert else None, tls_key=str(tls_key) if tls_key else None,
               tls_ca=str(tls_ca) if tls_ca else None)
    if tls_cert or tls_key:
        from ..hospital.transport import server_context

        server_context(tls["tls_cert"], tls["tls_key"], tls["tls_ca"])  # bad files: one line, before the model loads
    if send_tls:
        from ..hospital.transport import client_context

        client_context(tls["tls_cert"], tls["tls_key"], tls["tls_ca"])
    from ..extras import require

    require("pacs", "cxrkit pacs listen")
    _check_node_outputs(fhir, codes)
    filt = DicomFilter(modalities=_csv_list(modalities, DicomFilter.modalities),
                       body_parts=_csv_list(body_parts, DicomFilter.body_parts))
    pred = load_predictor(model, engine=engine, device=_device(device))
    cfg = ListenerConfig(ae_title=ae_title, host=host, port=port,
                         allow_ae=tuple(a for a in (allow_ae or "").split(",") if a.strip()), send_to=send_to, idle=idle,
                         fhir=fhir, codes_file=str(codes) if codes else None, max_backlog=max_backlog,
                         min_free_mb=min_free_mb, allow_peers=peers, send_tls=send_tls,
                         max_associations=max_associations, **tls)
    lst = Listener(pred, spool, cfg, dicom_filter=filt)
    console.print(f"cxrkit pacs listen: {cfg.ae_title} on {host}:{port}, spool {spool}; Ctrl-C / SIGTERM stops")
    lst.serve_forever()


@pacs_app.command("pull")
def pacs_pull(
    model: Annotated[Path, typer.Argument(help="Saved model or ensemble folder.")],
    dicomweb: Annotated[str, typer.Option("--dicomweb", help="The DICOMweb server's base URL (QIDO / WADO / STOW), e.g. https://pacs/dicom-web.")],
    spool: Annotated[Path, typer.Option("--spool", help="Folder for retrieved instances, results, reports and the state database.")],
    since: Annotated[Optional[str], typer.Option("--since", help="Only studies from this date on (YYYY-MM-DD or YYYYMMDD).")] = None,
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Only this StudyInstanceUID (repeatable); processed even if done before.")] = None,
    stow: Annotated[bool, typer.Option("--stow", help="Store each study's SR back on the server (STOW-RS).")] = False,
    engine: Annotated[str, typer.Option("--engine", help="auto, torch, onnx or openvino.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, ...")] = "auto",
    fhir: Annotated[bool, typer.Option("--fhir", help="Also write a FHIR R4 Bundle per study into <spool>/fhir/ (needs fhir.resources).")] = False,
    codes: Annotated[Optional[Path], typer.Option("--codes", help="CSV of your labels' codes for the SR and FHIR (see predict --codes).")] = None,
    dicomweb_ca: Annotated[Optional[Path], typer.Option("--dicomweb-ca", help="CA (PEM) the server's HTTPS certificate must chain to (default: the system's CAs; verification is always on). Also CXRKIT_DICOMWEB_CA.")] = None,
) -> None:
    """Find CR / DX studies on a DICOMweb server not yet processed in this spool, retrieve
    them, predict, and optionally store the SR back. Credentials from the environment only:
    CXRKIT_DICOMWEB_TOKEN (bearer) or CXRKIT_DICOMWEB_USER and CXRKIT_DICOMWEB_PASSWORD.

    Example: CXRKIT_DICOMWEB_TOKEN=... cxrkit pacs pull runs/nih_hires/model --dicomweb https://pacs/dicom-web --spool spool --since 2026-11-01 --stow"""
    import re

    from ..inference.ensemble import load_predictor
    from ..hospital.pacs import DicomWeb, pull

    DicomWeb(dicomweb, ca=dicomweb_ca)  # the URL and CA are checked before the model is loaded
    if since and not re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", since):
        raise CxrkitError(f"--since must be a date, YYYY-MM-DD (got {since!r})")
    from ..extras import require

    require("pacs", "cxrkit pacs pull", ["highdicom"])
    _check_node_outputs(fhir, codes)
    pred = load_predictor(model, engine=engine, device=_device(device))
    res = pull(pred, spool, dicomweb, since=since, studies=study, stow=stow, fhir=fhir,
               codes_file=str(codes) if codes else None, ca=str(dicomweb_ca) if dicomweb_ca else None)
    console.print(f"{res['found']} study / studies found, {res['processed']} processed, {res['skipped']} already "
                  f"done, {res['failed']} failed; {res['instances']} instance(s) retrieved"
                  + (f"; reports sent: {res['sent']}" if stow else ""))
    for u in res["unsent"]:
        console.print(f"report of study {u['study']} not stored yet: {u['error']} (attempt {u['attempts']})")


@pacs_app.command("rebuild")
def pacs_rebuild(
    spool: Annotated[Path, typer.Option("--spool", help="The listener's spool folder.")],
    send_to: Annotated[Optional[str], typer.Option("--send-to", help="Queue the newest report of every done study again for AE@host:port (the send queue cannot be recovered from files).")] = None,
) -> None:
    """Rebuild a spool's state database from its files after it was damaged or deleted (the
    old file is kept beside it). Done instances and studies are recognised by their rows and
    reports; the rest are predicted by the next listener run, none twice.

    Example: cxrkit pacs rebuild --spool /var/spool/cxrkit"""
    from ..hospital.pacs import rebuild_state

    r = rebuild_state(spool, send_to)
    console.print(f"rebuilt {spool}/state.sqlite: {r['instances']} instance(s) ({r['done']} done), {r['studies']} "
                  f"study / studies ({r['studies_done']} done), {r['unreadable']} unreadable file(s) left; "
                  f"{r['queued']} report(s) queued to send"
                  + (f"; the old database kept as {', '.join(r['moved_aside'])}" if r["moved_aside"] else ""))


@pacs_app.command("status")
def pacs_status(
    spool: Annotated[Path, typer.Option("--spool", help="The listener's spool folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Print a spool's queue: instances, studies and report sends by state, failures with reasons.

    Example: cxrkit pacs status --spool /var/spool/cxrkit"""
    import json as _json

    from ..hospital.pacs import status

    st = status(spool)
    if json_out:
        print(_json.dumps(st, indent=1))
        return
    console.print(f"spool {st['spool']}")
    console.print(f"backlog: {st.get('backlog', 0)} instance(s) received and waiting to be predicted")
    for k in ("instances", "studies", "sends"):
        console.print(f"{k}: " + (", ".join(f"{n} {s}" for s, n in sorted(st[k].items())) or "none"))
    for f in st["failed_studies"]:
        console.print(f"failed study {f['study']}: {f['reason']} (attempts {f['attempts']})")
    if st["not_used"]:
        console.print("instances not used (kind: reason x count, newest first):")
        for e in st["not_used"]:
            console.print(f"  {e['kind']}: {e['reason']} x {e['count']} (newest {e['newest']})", markup=False)
    for e in st["recent_not_used"]:
        console.print(f"  {e['at']} {e['kind']} {e['reason']}: {e['detail']}"
                      + (f" (study {e['study']})" if e["study"] else ""), markup=False, highlight=False)
    for u in st["unsent"]:
        console.print(f"report of study {u['study']} to {u['target']}: {u['status']} after {u['attempts']} "
                      f"attempt(s){': ' + u['error'] if u['error'] else ''}")
