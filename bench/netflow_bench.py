"""NetFlow collector speed, every peer in the same run on the same synthetic datagrams (1400-byte
class: 30 v5 records, or 34 IPFIX records of a 38-byte template).

decode-only   records/s of ``NetflowDecoder.decode_batch`` (batches of 1024 datagrams, as
              ``flowsense collect`` hands them over) and of the ``netflow`` PyPI package's
              ``parse_packet`` (one datagram at a time, its only API), CPU time of this process.
end-to-end    datagrams sent over loopback UDP at a paced rate to ``flowsense collect``, to
              flowsense's reader + decoder alone ("receive": no Parquet, no detectors), nfcapd and
              ``python -m netflow.collector``, one collector at a time: records written (decoded)
              vs sent (loss), and records per CPU-second of the collector process (from the
              child's rusage, minus what it spent starting up).

    .venv/bin/python bench/netflow_bench.py [--datagrams 20000] [--e2e-records 10000000] [--rate 1000000]

The sender is this process: a NumPy-built pool of datagrams (sequence numbers and source
addresses patched per datagram) sent by a tight, paced ``send`` loop, bounded in count.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowsense.decode.netflow import NetflowDecoder

IPFIX_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 8), (1, 8), (152, 8)]  # 38 bytes
V5_RECORDS, IPFIX_RECORDS = 30, 34
BATCH = 1024
EXPORTER = "198.18.0.1"


def _be(values, dtype: str, width: int) -> np.ndarray:
    return np.asarray(values).astype(dtype).view(np.uint8).reshape(-1, width)


def v5_datagrams(first: int, n: int) -> np.ndarray:
    """n v5 datagrams (rows), numbered from ``first``: 30 TCP records each, source addresses
    198.18.x.y distinct per datagram and record, sequence numbers consecutive."""
    k = np.arange(V5_RECORDS)
    rec = np.zeros((V5_RECORDS, 48), np.uint8)
    rec[:, 4:8] = _be(0xC6130000 + k, ">u4", 4)
    rec[:, 12:16] = _be(np.full(V5_RECORDS, 0x00010002), ">u4", 4)   # input/output interface
    rec[:, 16:20] = _be(np.full(V5_RECORDS, 10), ">u4", 4)
    rec[:, 20:24] = _be(np.full(V5_RECORDS, 1500), ">u4", 4)
    rec[:, 24:28], rec[:, 28:32] = _be(np.full(V5_RECORDS, 1000), ">u4", 4), _be(np.full(V5_RECORDS, 2000), ">u4", 4)
    rec[:, 32:34], rec[:, 34:36] = _be(1024 + k, ">u2", 2), _be(np.full(V5_RECORDS, 443), ">u2", 2)
    rec[:, 37], rec[:, 38] = 0x18, 6
    head = np.frombuffer(bytes.fromhex("0005001e") + (5000).to_bytes(4, "big") + (1_700_000_000).to_bytes(4, "big")
                         + bytes(12), np.uint8)
    out = np.tile(np.concatenate([head, rec.ravel()]), (n, 1))
    index = np.arange(first, first + n, dtype=np.int64)
    out[:, 16:20] = _be(index * V5_RECORDS, ">u4", 4)
    src = (0xC6120000 + (index[:, None] * V5_RECORDS + k) % 0x20000).astype(np.int64)  # 198.18.0.0/15
    out[:, 24:24 + 48 * V5_RECORDS].reshape(n, V5_RECORDS, 48)[:, :, 0:4] = _be(src.ravel(), ">u4", 4).reshape(n, -1, 4)
    return out


def ipfix_template() -> bytes:
    template = (256).to_bytes(2, "big") + len(IPFIX_FIELDS).to_bytes(2, "big") + b"".join(
        f.to_bytes(2, "big") + n.to_bytes(2, "big") for f, n in IPFIX_FIELDS)
    sets = (2).to_bytes(2, "big") + (4 + len(template)).to_bytes(2, "big") + template
    return (bytes.fromhex("000a") + (16 + len(sets)).to_bytes(2, "big") + (1_700_000_000).to_bytes(4, "big")
            + bytes(4) + (1).to_bytes(4, "big") + sets)


def ipfix_datagrams(first: int, n: int) -> np.ndarray:
    """n IPFIX data datagrams (rows) for ``ipfix_template``, numbered from ``first``."""
    k = np.arange(IPFIX_RECORDS)
    dtype = np.dtype([("src", ">u4"), ("dst", ">u4"), ("sport", ">u2"), ("dport", ">u2"), ("proto", "u1"),
                      ("flags", "u1"), ("packets", ">u8"), ("bytes", ">u8"), ("start", ">u8")])
    rec = np.zeros(IPFIX_RECORDS, dtype)
    rec["dst"], rec["sport"], rec["dport"], rec["proto"], rec["flags"] = 0xC6130000 + k, 1024 + k, 443, 6, 0x18
    rec["packets"], rec["bytes"], rec["start"] = 10, 1500, 1_700_000_000_000 + k
    body = rec.view(np.uint8)
    size = 16 + 4 + len(body)
    head = np.frombuffer(bytes.fromhex("000a") + size.to_bytes(2, "big") + (1_700_000_000).to_bytes(4, "big")
                         + bytes(4) + (1).to_bytes(4, "big") + (256).to_bytes(2, "big")
                         + (4 + len(body)).to_bytes(2, "big"), np.uint8)
    out = np.tile(np.concatenate([head, body]), (n, 1))
    index = np.arange(first, first + n, dtype=np.int64)
    out[:, 8:12] = _be(index * IPFIX_RECORDS, ">u4", 4)
    src = (0xC6120000 + (index[:, None] * IPFIX_RECORDS + k) % 0x20000).astype(np.int64)
    out[:, 20:].reshape(n, IPFIX_RECORDS, -1)[:, :, 0:4] = _be(src.ravel(), ">u4", 4).reshape(n, -1, 4)
    return out


FORMATS = {"v5": (v5_datagrams, V5_RECORDS, None), "ipfix": (ipfix_datagrams, IPFIX_RECORDS, ipfix_template())}


# ---- decode-only -------------------------------------------------------------------------------

def decode_only(name: str, n: int) -> dict:
    make, _, template = FORMATS[name]
    pool = make(0, n)
    batches = [(np.ascontiguousarray(pool[i:i + BATCH]).ravel(),
                np.arange(0, min(BATCH, n - i) + 1, dtype=np.int64) * pool.shape[1]) for i in range(0, n, BATCH)]
    best = None
    for _ in range(3):
        decoder = NetflowDecoder()
        if template:
            decoder.decode(template, EXPORTER)
        t0, records = time.process_time(), 0
        for buf, bounds in batches:
            records += len(decoder.decode_batch(buf, bounds, np.zeros(len(bounds) - 1, np.int64), [EXPORTER]))
        seconds = time.process_time() - t0
        best = seconds if best is None or seconds < best else best
    return {"records": records, "cpu_s": best, "records_per_s": records / best}


def decode_only_netflow_package(name: str, n: int) -> dict | None:
    try:
        from netflow.utils import parse_packet
    except ImportError:
        return None
    make, _, template = FORMATS[name]
    pool = [bytes(row) for row in make(0, n)]
    templates = {"netflow": {}, "ipfix": {}}
    if template:
        parse_packet(template, templates)
    t0, records = time.process_time(), 0
    for data in pool:
        records += len(parse_packet(data, templates).flows)
    seconds = time.process_time() - t0
    return {"records": records, "cpu_s": seconds, "records_per_s": records / seconds}


# ---- end-to-end ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(port: int, name: str, records: int, rate: float) -> dict:
    """Send ``records`` records (rounded up to whole datagrams) at ``rate`` records/s, paced
    every 16 datagrams; IPFIX repeats its template every 1000 datagrams."""
    make, per, template = FORMATS[name]
    datagrams = -(-records // per)
    per_s = rate / per
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        t0, sent = time.perf_counter(), 0
        for first in range(0, datagrams, 4096):
            pool = make(first, min(4096, datagrams - first))
            for k, row in enumerate(pool):
                if template and (first + k) % 1000 == 0:
                    s.send(template)
                s.send(row)
                sent += 1
                if sent % 16 == 0:
                    ahead = sent / per_s - (time.perf_counter() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        seconds = time.perf_counter() - t0
    return {"records_sent": sent * per, "send_s": seconds, "offered_records_per_s": sent * per / seconds}


def run_collector(args: list[str], port: int, ready, count, name: str, records: int, rate: float, stop_signal) -> dict:
    """Start a collector, send, let it drain, stop it; records written, loss and CPU."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 120
        while not ready() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)
        cpu_start = cpu_seconds(proc.pid)
        sent = send(port, name, records, rate)
        time.sleep(2)
    finally:
        proc.send_signal(stop_signal)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start
    written = count()
    return {**sent, "records_written": written, "loss": 1 - written / sent["records_sent"], "cpu_s": cpu,
            "records_per_cpu_s": written / cpu if cpu > 0 else float("nan"), "exit": proc.returncode}


def e2e_flowsense(tmp: Path, name: str, records: int, rate: float) -> dict:
    out, port = tmp / f"fs-{name}", free_port()
    result = run_collector([sys.executable, "-m", "flowsense", "collect", "--listen", f"127.0.0.1:{port}",
                            "--out", str(out)], port, lambda: (out / "stats.json").exists(),
                           lambda: json.loads((out / "stats.json").read_text())["flows"], name, records, rate,
                           signal.SIGTERM)
    stats = json.loads((out / "stats.json").read_text())
    listener = next(iter(stats["listeners"].values()))
    detection_cpu = stats["detection"]["worker_cpu_s"]  # the detection worker, reaped by the collector
    ingest_cpu = result["cpu_s"] - detection_cpu
    return {**result, "kernel_drops": listener["kernel_drops"], "queue_drops": listener["queue_drops"],
            "receive_buffer_bytes": listener["receive_buffer_bytes"],
            "analysed": stats["detection"]["records_analysed"] / max(result["records_written"], 1),
            "host_share": stats["detection"]["host_share"],
            "detection_cpu_s": detection_cpu, "ingest_cpu_s": ingest_cpu,
            "records_per_ingest_cpu_s": result["records_written"] / ingest_cpu}


def receive_only(port: int, result: Path):
    """flowsense's UDP reader and decoder alone (no Parquet, no detectors), until SIGTERM: the
    socket path's own capacity.  Writes the records decoded and the listener's drop counters."""
    import queue
    import threading

    from flowsense.collect import QUEUE_CHUNKS, Listener

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    inbox: queue.Queue = queue.Queue(QUEUE_CHUNKS)
    listener, decoder, records = Listener("127.0.0.1", port, inbox), NetflowDecoder(), 0
    decoder.decode(ipfix_template(), "127.0.0.2")  # compiled (or loaded from the cache) before "ready"
    result.with_suffix(".ready").touch()
    while not (stop.is_set() and inbox.empty() and not listener.thread.is_alive()):
        if stop.is_set():
            listener.stop.set()
        try:
            owner, chunk = inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        records += len(decoder.decode_batch(*chunk.batch()))
        owner.free.put(chunk)
    result.write_text(json.dumps({"records": records, **listener.stats()}))


def e2e_receive_only(tmp: Path, name: str, records: int, rate: float) -> dict:
    result, port = tmp / f"receive-{name}.json", free_port()
    out = run_collector([sys.executable, __file__, "--receive-only", str(port), str(result)], port,
                        result.with_suffix(".ready").exists, lambda: json.loads(result.read_text())["records"],
                        name, records, rate, signal.SIGTERM)
    stats = json.loads(result.read_text())
    return {**out, "kernel_drops": stats["kernel_drops"], "queue_drops": stats["queue_drops"]}


def e2e_nfcapd(tmp: Path, name: str, records: int, rate: float) -> dict | None:
    if not shutil.which("nfcapd"):
        return None
    folder, port = tmp / f"nfcapd-{name}", free_port()
    folder.mkdir()

    def count() -> int:
        info = subprocess.run(["nfdump", "-R", str(folder), "-I"], capture_output=True, text=True,
                              check=True).stdout
        return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("Flows:")))

    return run_collector(["nfcapd", "-w", str(folder), "-b", "127.0.0.1", "-p", str(port), "-t", "3600",
                          "-B", str(32 << 20)], port, lambda: True, count, name, records, rate, signal.SIGTERM)


def e2e_netflow_package(tmp: Path, name: str, records: int, rate: float) -> dict | None:
    try:
        import netflow  # noqa: F401
    except ImportError:
        return None
    path, port = tmp / f"netflow-{name}.gz", free_port()

    def count() -> int:
        if not path.exists():
            return 0
        with gzip.open(path) as fh:
            return sum(len(flows) for line in fh for entry in json.loads(line).values() for flows in [entry["flows"]])

    return run_collector([sys.executable, "-m", "netflow.collector", "--host", "127.0.0.1", "-p", str(port),
                          "-o", str(path)], port, lambda: True, count, name, records, rate, signal.SIGINT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=20000, help="decode-only: datagrams per format")
    ap.add_argument("--e2e-records", type=int, default=10_000_000,
                    help="end-to-end: records sent per collector (10 s at the default rate: longer than buffers hide)")
    ap.add_argument("--rate", type=float, default=1_000_000, help="end-to-end: records/s offered")
    ap.add_argument("--netflow-package-records", type=int, default=200_000,
                    help="end-to-end records for the (slow) netflow package, at a tenth of --rate")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--only", help="end-to-end: only the peers whose name contains this")
    ap.add_argument("--receive-only", nargs=2, metavar=("PORT", "RESULT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.receive_only:
        receive_only(int(a.receive_only[0]), Path(a.receive_only[1]))
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("decode-only (CPU time of this process, best of 3 for flowsense)")
    for name in FORMATS:
        for peer, fn, n in (("flowsense", decode_only, a.datagrams),
                            ("netflow package", decode_only_netflow_package, min(a.datagrams, 2000))):
            r = fn(name, n)
            if r:
                print(f"  {name:6} {peer:16} {r['records']:>10,} records {r['cpu_s']:7.3f} s "
                      f"{r['records_per_s']:>14,.0f} records/s")
    if a.skip_e2e:
        return
    print(f"end-to-end over loopback UDP (offered {a.rate:,.0f} records/s; the netflow package a tenth of it)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in FORMATS:
            for peer, fn, records, rate in (("flowsense collect", e2e_flowsense, a.e2e_records, a.rate),
                                            ("flowsense receive", e2e_receive_only, a.e2e_records, a.rate),
                                            ("nfcapd", e2e_nfcapd, a.e2e_records, a.rate),
                                            ("netflow package", e2e_netflow_package, a.netflow_package_records,
                                             a.rate / 10)):
                r = fn(Path(tmp), name, records, rate) if not a.only or a.only in peer else None
                if r:
                    extra = "".join(f" {k}={r[k]}" for k in ("kernel_drops", "queue_drops") if k in r)
                    if "analysed" in r:
                        extra += (f"\n{'':29}receive+decode+write {r['ingest_cpu_s']:6.2f} CPU-s "
                                  f"({r['records_per_ingest_cpu_s']:,.0f} records/CPU-s); detectors "
                                  f"{r['detection_cpu_s']:6.2f} CPU-s at idle priority, {r['analysed']:.1%} of "
                                  f"the records analysed (host share at the end {r['host_share']:.1%})")
                    print(f"  {name:6} {peer:18} sent {r['records_sent']:>10,} "
                          f"at {r['offered_records_per_s']:>11,.0f}/s"
                          f"  written {r['records_written']:>10,}  loss {r['loss']:7.2%}  cpu {r['cpu_s']:6.2f} s"
                          f"  {r['records_per_cpu_s']:>12,.0f} records/CPU-s{extra}")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
