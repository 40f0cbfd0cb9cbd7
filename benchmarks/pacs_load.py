"""The PACS node under a morning peak: N concurrent senders push real films while the node
predicts and sends each study's SR to a real Orthanc.

For each N in ``--senders`` (default 1, 4, 16) the same ``--studies`` studies of
``--per-study`` films (NIH films made DICOM, CR, 256 px; fresh UIDs per N) are split over N
sender processes (pynetdicom, one association each, all started together, at the lowest CPU
priority: real modalities are other machines, here they share the node's cores) to a fresh
``cxrkit pacs listen`` node (in this process, spool on disk) whose ``--send-to`` is an Orthanc
started here. Printed per N: instances sent / acknowledged (0x0000) / stored in the spool /
predicted, rows written per instance (exactly once?), studies reported, SRs Orthanc holds for
those studies and duplicates among them, p50 / p95 seconds from a study's last
acknowledged instance to its SR being in Orthanc, the node's peak memory (this process's
max RSS), and throughput (instances acknowledged and studies with their SR in Orthanc per
second, from the first send to the last SR) against 1 sender.

    python benchmarks/pacs_load.py [--senders 1,4,16] [--studies 32] [--per-study 3]
                                   [--backbone resnet18] [--size 224] [--idle 1.0]

Needs Orthanc (``bash scripts/test-deps.sh`` installs it) and the shared NIH films (else
synthetic films). The model has random weights (the node's behaviour does not depend on them).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, workdir: Path, node_port: int) -> None:
        self.http, self.dicom = free_port(), free_port()
        self._uids: dict[str, str] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {"Name": "cxrkit-load", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
               "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
               "AuthenticationEnabled": True, "RegisteredUsers": {"bench": "bench"},
               "DicomModalities": {"cxrkit": ["CXRKIT", "127.0.0.1", node_port]}, "StableAge": 1}
        (workdir / "orthanc.json").write_text(json.dumps(cfg))
        self.log = open(workdir / "orthanc.log", "w")
        self.proc = subprocess.Popen([ORTHANC, str(workdir / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                self.call("GET", "/system")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def call(self, method: str, path: str, body: object = None) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": "Basic " + base64.b64encode(b"bench:bench").decode()})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def sr_studies(self) -> dict[str, int]:
        """StudyInstanceUID -> number of SR instances Orthanc holds in it."""
        found = self.call("POST", "/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True})
        out: dict[str, int] = {}
        for series in found:  # type: ignore[union-attr]
            parent = series["ParentStudy"]
            if parent not in self._uids:
                self._uids[parent] = self.call("GET", f"/studies/{parent}")["MainDicomTags"]["StudyInstanceUID"]
            uid = self._uids[parent]
            out[uid] = out.get(uid, 0) + len(series.get("Instances", []))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def make_studies(folder: Path, n_studies: int, per_study: int, tag: str) -> list[list[Path]]:
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pngs = sorted((Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih_hires" / "images")
                  .glob("*.png"))
    rng = np.random.default_rng(0)
    studies = []
    k = 0
    for s in range(n_studies):
        study, files = generate_uid(), []
        for i in range(per_study):
            arr = (np.asarray(Image.open(pngs[k % len(pngs)]).convert("L")) if pngs
                   else rng.integers(0, 255, (256, 256), dtype=np.uint8))
            k += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            f = folder / f"{tag}-{s:03d}-{i}.dcm"
            ds = FileDataset(str(f), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
            ds.PatientID, ds.PatientName = f"LOAD{s:04d}", "LOAD^TEST"
            ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
            ds.Rows, ds.Columns = arr.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = arr.astype(np.uint8).tobytes()
            ds.save_as(f, enforce_file_format=True)
            files.append(f)
        studies.append(files)
    return studies


def rows_per_instance(spool: Path) -> dict[str, int]:
    """SOPInstanceUID -> number of rows the node wrote for it in ``results/`` (failure rows aside)."""
    rows: dict[str, int] = {}
    for f in (spool / "results").glob("*.csv"):
        if f.name.endswith(".failures.csv"):
            continue
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                rows[r["sop_instance_uid"]] = rows.get(r["sop_instance_uid"], 0) + 1
    return rows


def sender(name: str, port: int, studies: list[list[str]], ready: mp.Queue, go: object, out: mp.Queue) -> None:
    """One modality: one association, its studies in order; per study the time its last
    instance was acknowledged, per instance the status."""
    import pydicom
    from pynetdicom import AE

    os.nice(19)  # the modalities are other machines: their CPU is not the node's (2 cores here)
    ae = AE(ae_title=name)
    ae.add_requested_context(pydicom.uid.ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    ready.put(name)
    go.wait()  # type: ignore[attr-defined]
    statuses, last_ack = [], {}
    assoc = None
    for _ in range(50):  # a sender rejected at association (limit reached) retries, as modalities do
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
        if assoc.is_established:
            break
        time.sleep(0.2)
    if assoc is None or not assoc.is_established:
        out.put((name, [None] * sum(len(s) for s in studies), {}))
        return
    for files in studies:
        study = ""
        for f in files:
            ds = pydicom.dcmread(f)
            study = ds.StudyInstanceUID
            st = assoc.send_c_store(ds)
            statuses.append(int(st.Status) if st else None)
        last_ack[study] = time.time()
    assoc.release()
    out.put((name, statuses, last_ack))


def run_phase(n_senders: int, args: argparse.Namespace, pred: object, work: Path) -> dict:
    from cxrkit.pacs import Listener, ListenerConfig, status

    node_port = free_port()
    orthanc = Orthanc(work / f"orthanc{n_senders}", node_port)
    films = work / f"films{n_senders}"
    films.mkdir()
    studies = make_studies(films, args.studies, args.per_study, f"n{n_senders}")
    uids = set()
    import pydicom

    for s in studies:
        uids.add(pydicom.dcmread(s[0], stop_before_pixels=True).StudyInstanceUID)
    spool = work / f"spool{n_senders}"
    lst = Listener(pred, spool, ListenerConfig(port=node_port, host="127.0.0.1", idle=args.idle, poll=0.1,
                                               send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom}",
                                               max_associations=max(32, n_senders)))
    lst.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    ready: mp.Queue = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=sender, args=(f"MOD{i:02d}", node_port, [[str(f) for f in s] for s in
                                                                         studies[i::n_senders]], ready, go, q))
             for i in range(n_senders)]
    for p in procs:
        p.start()
    for _ in procs:  # every sender started and imported: all push at once
        ready.get(timeout=300)
    start_at = time.time()
    go.set()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    acked_at = max(t for _, _, la in results for t in la.values()) if results else start_at
    last_ack = {k: v for _, _, la in results for k, v in la.items()}
    sr_seen: dict[str, float] = {}
    t_end = time.time() + args.timeout
    while time.time() < t_end and len(sr_seen) < len(uids):
        for uid, _ in orthanc.sr_studies().items():
            if uid in uids and uid not in sr_seen:
                sr_seen[uid] = time.time()
        time.sleep(0.2)
    time.sleep(2 * args.idle + 1)  # anything sent twice would arrive now
    srs = {u: c for u, c in orthanc.sr_studies().items() if u in uids}
    lst.stop()
    st = status(spool)
    statuses = [s for _, ss, _ in results for s in ss]
    rows = rows_per_instance(spool)
    lat = np.array([sr_seen[u] - last_ack[u] for u in sr_seen if u in last_ack])
    orthanc.stop()
    return {
        "senders": n_senders, "sent": len(statuses), "acked": sum(s == 0 for s in statuses),
        "stored": sum(st["instances"].values()), "predicted": st["instances"].get("done", 0),
        "rows": sum(rows.values()), "rows_once": all(v == 1 for v in rows.values()) and len(rows) == len(statuses),
        "studies": len(uids), "reported": st["studies"].get("done", 0), "srs": sum(srs.values()),
        "dup_srs": sum(c - 1 for c in srs.values() if c > 1), "studies_with_sr": len(srs),
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_growth_mb": (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
        "ack_per_s": sum(s == 0 for s in statuses) / max(acked_at - start_at, 1e-9),
        "sr_per_s": len(sr_seen) / max((max(sr_seen.values()) if sr_seen else start_at) - start_at, 1e-9),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--senders", default="1,4,16")
    ap.add_argument("--studies", type=int, default=32)
    ap.add_argument("--per-study", type=int, default=3)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the SRs of one phase")
    args = ap.parse_args()
    if not os.path.exists(ORTHANC):
        raise SystemExit("Orthanc is not installed: bash scripts/test-deps.sh")

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.ensemble import load_predictor
    from cxrkit.inference.runtime import cpu_model_name
    from cxrkit.models import ModelConfig, build_model

    work = Path(tempfile.mkdtemp())
    try:
        cfg = ModelConfig(backbone=args.backbone, in_chans=3)
        classes = [f"class{i}" for i in range(14)]
        save_model(work / "model", build_model(cfg, len(classes), load_weights=False),
                   ModelMeta(classes=classes, preprocessing=Preprocessing(size=args.size).to_dict(),
                             model=cfg.to_dict(), thresholds=[0.5] * len(classes), name="bench"))
        pred = load_predictor(work / "model", engine="auto")
        print(f"CPU: {cpu_model_name()}, {os.cpu_count()} cores; {args.studies} studies x {args.per_study} CR films "
              f"per phase, {args.backbone} at {args.size} px ({type(pred).__name__}), --idle {args.idle} s, "
              "SRs sent to a real Orthanc")
        res = [run_phase(int(n), args, pred, work) for n in args.senders.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = (f"{'senders':>7} {'sent':>5} {'acked':>5} {'stored':>6} {'predicted':>9} {'rows':>5} {'once':>5} "
            f"{'studies':>7} {'reported':>8} {'SRs in PACS':>11} {'dup SRs':>7} {'p50 s':>6} {'p95 s':>6} "
            f"{'max RSS MB':>10} {'inst/s':>7} {'studies/s':>9} {'vs 1':>5}")
    print("\n" + head)
    base = res[0]["sr_per_s"] if res else 1.0
    for r in res:
        print(f"{r['senders']:>7} {r['sent']:>5} {r['acked']:>5} {r['stored']:>6} {r['predicted']:>9} {r['rows']:>5} "
              f"{'yes' if r['rows_once'] else 'NO':>5} {r['studies']:>7} {r['reported']:>8} {r['srs']:>11} "
              f"{r['dup_srs']:>7} {r['p50']:6.2f} {r['p95']:6.2f} {r['rss_mb']:10.0f} {r['ack_per_s']:7.1f} "
              f"{r['sr_per_s']:9.2f} {r['sr_per_s'] / base:4.2f}x")
    print("\n(inst/s: instances acknowledged per second of pushing; studies/s: studies with their SR in Orthanc "
          "per second from the first send; vs 1: studies/s against one sender; max RSS: this process, which "
          "holds the node and the model)")


if __name__ == "__main__":
    main()
