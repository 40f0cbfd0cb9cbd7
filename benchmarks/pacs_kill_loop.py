"""SIGKILL at random points, over and over: does the PACS node lose, repeat or duplicate
anything?

One spool, one real Orthanc (the PACS the reports go to). ``--runs`` times (default 20):
start ``cxrkit pacs listen`` (a subprocess, ``--send-to`` Orthanc), let two senders push
that run's share of the studies after whatever earlier runs did not get acknowledged (a
modality's retry), and SIGKILL the node at a random moment (seeded, 0.2 to 4 s): while receiving, predicting,
writing reports or sending them. Then one last run without a kill until everything is done
and sent. Printed: instances acknowledged, instances in the state / predicted, rows per
instance (exactly once?), studies reported, report versions the node wrote, SR instances in
Orthanc, SRs duplicated (an SR in Orthanc that is neither the study's current report nor a
version it supersedes through its Predecessor Documents Sequence, a version saying the same
as the one before, the same SOP Instance twice), and the kills by what the node was doing.

    python benchmarks/pacs_kill_loop.py [--runs 20] [--studies 40] [--per-study 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pacs_load import free_port, make_studies, rows_per_instance  # noqa: E402

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def orthanc_srs(http: int) -> list[bytes]:
    """The SR instances Orthanc holds, as DICOM files."""
    def get(method: str, path: str, body: object = None) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{http}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    found = json.loads(get("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True}))
    return [get("GET", f"/instances/{inst}/file") for series in found for inst in series.get("Instances", [])]


def answers(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
    ok = assoc.is_established
    if ok:
        assoc.release()
    return ok


def push(port: int, files: list[Path], acked: set[str], stop: threading.Event, name: str) -> None:
    """Send until acknowledged or the node goes away; what is not acknowledged is resent next run."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=name)
    ae.add_requested_context(pydicom.uid.ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
    except Exception:  # noqa: BLE001 - the node died under us
        return
    if not assoc.is_established:
        return
    try:
        for f in files:
            if stop.is_set() or not assoc.is_established:
                break
            ds = pydicom.dcmread(f)
            if ds.SOPInstanceUID in acked:
                continue
            try:
                st = assoc.send_c_store(ds)
            except Exception:  # noqa: BLE001
                break
            if st and int(st.Status) == 0:
                acked.add(ds.SOPInstanceUID)
            time.sleep(0.15)
        if assoc.is_established:
            assoc.release()
    except Exception:  # noqa: BLE001
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--per-study", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.hospital.pacs import PacsState, status
    from cxrkit.inference.runtime import cpu_model_name
    from cxrkit.models import ModelConfig, build_model

    work = Path(tempfile.mkdtemp())
    orthanc = None
    try:
        cfg = ModelConfig(backbone="resnet18", in_chans=3)
        save_model(work / "model", build_model(cfg, 14, load_weights=False),
                   ModelMeta(classes=[f"class{i}" for i in range(14)], preprocessing=Preprocessing(size=224).to_dict(),
                             model=cfg.to_dict(), thresholds=[0.5] * 14, name="killloop"))
        (work / "films").mkdir()
        studies = make_studies(work / "films", args.studies, args.per_study, "k")
        http, dicom, port = free_port(), free_port(), free_port()
        (work / "orthanc").mkdir()
        (work / "orthanc" / "o.json").write_text(json.dumps(
            {"Name": "killloop", "StorageDirectory": str(work / "orthanc" / "db"),
             "IndexDirectory": str(work / "orthanc" / "db"), "HttpPort": http, "DicomPort": dicom,
             "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False}))
        orthanc = subprocess.Popen([ORTHANC, str(work / "orthanc" / "o.json")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        spool = work / "spool"
        cmd = [sys.executable, "-m", "cxrkit.cli", "pacs", "listen", str(work / "model"), "--spool", str(spool),
               "--port", str(port), "--host", "127.0.0.1", "--idle", "0.5", "--engine", "torch",
               "--send-to", f"ORTHANC@127.0.0.1:{dicom}"]
        env = dict(os.environ, CXRKIT_QUIET="1")
        acked: set[str] = set()
        kills: dict[str, int] = {}
        files = [f for s in studies for f in s]
        print(f"CPU: {cpu_model_name()}; {args.runs} runs killed at random, {len(files)} instances in "
              f"{len(studies)} studies, two senders, reports to a real Orthanc")
        for run in range(args.runs + 1):
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.time()
            while not answers(port):
                if time.time() - t0 > 120:
                    raise SystemExit("the node did not start")
                time.sleep(0.2)
            stop = threading.Event()
            # this run's studies, after anything earlier runs did not get acknowledged (the retry)
            share = max(1, len(studies) // max(args.runs, 1))
            todo = [f for s in studies[:share * (run + 1) if run < args.runs else len(studies)] for f in s]
            senders = [threading.Thread(target=push, args=(port, todo[i::2], acked, stop, f"MOD{i}"))
                       for i in range(2)]
            for s in senders:
                s.start()
            if run < args.runs:
                time.sleep(rnd.uniform(0.2, 4.0))
                st = PacsState(spool)
                doing = st.query("SELECT status, COUNT(*) FROM studies GROUP BY status")
                pend = st.query("SELECT COUNT(*) FROM sends WHERE status = 'pending'")[0][0]
                st.close()
                what = ("predicting" if any(s == "processing" for s, _ in doing) else "sending" if pend
                        else "receiving" if any(t.is_alive() for t in senders) else "idle")
                kills[what] = kills.get(what, 0) + 1
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=30)
                stop.set()
                for s in senders:
                    s.join(30)
                continue
            for s in senders:
                s.join(300)
            t_end = time.time() + 600
            while time.time() < t_end:
                st = status(spool)
                if (st["instances"] == {"done": len(acked)} and set(st["studies"]) == {"done"}
                        and set(st["sends"]) <= {"sent"}):
                    break
                time.sleep(0.5)
            time.sleep(2.0)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=90)
        st = status(spool)
        rows = rows_per_instance(spool)
        import io

        import pydicom

        from cxrkit.hospital.sr import report_content

        # one current report per study (a file in sr/); a new result replaced it as a new version
        # naming the earlier ones in its Predecessor Documents Sequence
        current = {str(pydicom.dcmread(f).SOPInstanceUID) for f in (spool / "sr").rglob("*.dcm")}
        in_pacs = [pydicom.dcmread(io.BytesIO(b)) for b in orthanc_srs(http)]
        by_study: dict[str, list] = {}
        for ds in in_pacs:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        chained, same_as_previous, multi = set(), 0, 0
        for docs in by_study.values():
            docs.sort(key=lambda d: int(d.InstanceNumber))
            multi += len(docs) > 1
            for d in docs:
                for series in getattr(d, "PredecessorDocumentsSequence", [{}])[0].get("ReferencedSeriesSequence", []):
                    chained.update(str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence)
            found = [report_content(d) for d in docs]  # what a version says: images and findings
            same_as_previous += sum(a == b for a, b in zip(found, found[1:]))
        uids = [str(d.SOPInstanceUID) for d in in_pacs]
        stray = [u for u in uids if u not in current and u not in chained]
        dup_uid = len(uids) - len(set(uids))
        print(f"\nkills by what the node was doing: {json.dumps(kills, sort_keys=True)}")
        print(f"instances acknowledged                 {len(acked)} of {len(files)}")
        print(f"instances in the state / predicted     {sum(st['instances'].values())} / "
              f"{st['instances'].get('done', 0)}")
        print(f"rows per instance                      {'exactly once' if all(v == 1 for v in rows.values()) and len(rows) == len(acked) else rows}")
        print(f"studies reported                       {st['studies'].get('done', 0)} of {len(studies)}")
        print(f"SR instances in Orthanc                {len(in_pacs)} for {len(by_study)} studies "
              f"({multi} with an earlier version it supersedes)")
        print(f"SRs duplicated                         {len(stray) + same_as_previous + dup_uid} (neither current "
              f"nor a superseded version: {len(stray)}; a version with the same findings as the one before: "
              f"{same_as_previous}; the same SOP Instance twice: {dup_uid})")
        print(f"sends                                  {st['sends']}")
        lost = set(acked) - set(rows)
        print(f"acknowledged but not predicted (lost)  {len(lost)}")
    finally:
        if orthanc is not None:
            orthanc.terminate()
            orthanc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
