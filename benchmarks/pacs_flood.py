"""Idle connections flooding the DICOM port while a legitimate sender works.

A ``cxrkit pacs listen`` node (in this process, a tiny random model) takes ``--idle``
(default 1,000) TCP connections that never send an A-ASSOCIATE-RQ, opened by another process
(the attacker) as fast as the node accepts them and left open, while a legitimate sender opens an association and stores
a film every 0.5 s. Printed: how long the flood took, the sender's associations made /
tried and their p50 / p95 / max time to establish, the connections the node closed, its
thread count and memory growth, and the same sender's figures without a flood, measured
first in the same run.

    python benchmarks/pacs_flood.py [--idle 1000] [--max-pending 16]
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pacs_load import free_port, make_studies  # noqa: E402


def legit(port: int, film: Path, stop: threading.Event, out: list) -> None:
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(pydicom.uid.ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 30
    ds = pydicom.dcmread(film)
    while not stop.is_set():
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRKIT")
        ok = assoc.is_established
        dt = time.perf_counter() - t0
        stored, why = False, ("rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted
                              else "no answer") if not ok else ""
        if ok:
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            st = assoc.send_c_store(ds)
            stored = bool(st) and int(st.Status) == 0
            why = "" if stored else f"store status {int(st.Status) if st else None}"
            assoc.release()
        out.append((ok and stored, dt, why))
        stop.wait(0.5)


def flood_process(port: int, n: int, report: object, release: object) -> None:
    """The attacker, in its own process (as it would be): n connections opened and held."""
    import resource as res

    soft, hard = res.getrlimit(res.RLIMIT_NOFILE)
    res.setrlimit(res.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    socks = []
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        except OSError:
            break
    report.put((len(socks), time.perf_counter() - t0))  # type: ignore[attr-defined]
    release.wait(600)  # type: ignore[attr-defined]
    for s in socks:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--max-pending", type=int, default=16)
    ap.add_argument("--baseline-s", type=float, default=10.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 256)), hard))

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.ensemble import load_predictor
    from cxrkit.inference.runtime import cpu_model_name
    from cxrkit.models import ModelConfig, build_model
    from cxrkit.pacs import Listener, ListenerConfig

    work = Path(tempfile.mkdtemp())
    cfg = ModelConfig(backbone="tiny-cnn", in_chans=1)
    save_model(work / "model", build_model(cfg, 3, load_weights=False),
               ModelMeta(classes=["a", "b", "c"], preprocessing=Preprocessing(size=64, channels=1).to_dict(),
                         model=cfg.to_dict(), thresholds=[0.5] * 3, name="flood"))
    (work / "films").mkdir()
    film = make_studies(work / "films", 1, 1, "f")[0][0]
    port = free_port()
    lst = Listener(load_predictor(work / "model", engine="torch"), work / "spool",
                   ListenerConfig(port=port, host="127.0.0.1", idle=3600, max_pending=args.max_pending))
    lst.start()

    def run_sender(seconds: float | None, during: threading.Event | None = None) -> list:
        res: list = []
        stop = threading.Event()
        t = threading.Thread(target=legit, args=(port, film, stop, res), daemon=True)
        t.start()
        if during is not None:
            during.wait()
        else:
            time.sleep(seconds or 0)
        stop.set()
        t.join(60)
        return res

    base = run_sender(args.baseline_s)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    threads0 = threading.active_count()
    done = threading.Event()
    socks: list[None] = []
    flood_s = [0.0]

    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    report: mp.Queue = ctx.Queue()
    release = ctx.Event()
    attacker = ctx.Process(target=flood_process, args=(port, args.idle, report, release))
    t0 = time.perf_counter()
    attacker.start()

    def watch() -> None:
        opened, secs = report.get(timeout=1800)
        socks.extend([None] * opened)
        flood_s[0] = secs
        time.sleep(3.0)  # the sender goes on a little while the flood's connections are open
        done.set()

    ft = threading.Thread(target=watch, daemon=True)
    ft.start()
    during = run_sender(None, done)
    threads_peak = threading.active_count()
    release.set()
    attacker.join(60)
    lst.stop()
    _ = t0

    def summary(rs: list) -> str:
        ok = [dt for good, dt, _ in rs if good]
        why = sorted({w for good, _, w in rs if not good})
        if not ok:
            return f"0 / {len(rs)} stored ({', '.join(why)})"
        a = np.array(ok) * 1e3
        return (f"{len(ok)} / {len(rs)} stored{' (not: ' + ', '.join(why) + ')' if why else ''}, association p50 "
                f"{np.percentile(a, 50):.0f} ms, p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms")

    print(f"CPU: {cpu_model_name()}; max pending connections {args.max_pending}")
    print(f"without a flood ({args.baseline_s:.0f} s): {summary(base)}")
    print(f"during {len(socks)} idle connections (opened in {flood_s[0]:.1f} s, "
          f"{len(socks) / max(flood_s[0], 1e-9):.0f} / s): {summary(during)}")
    print(f"connections the node closed: {lst.guard.evicted}; threads in this process {threads0} -> "
          f"{threads_peak} at the end of the flood; max RSS growth "
          f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024:.1f} MB")


if __name__ == "__main__":
    main()
