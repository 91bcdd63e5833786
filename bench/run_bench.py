"""Measure flowsense against peer flow meters on one synthetic capture, in one run.

    python bench/run_bench.py [--packets 1000000] [--keep] [--json FILE] [--timeout 600]

Every tool runs as its own child process under GNU time (/usr/bin/time, Debian package
`time`), which reports the child's ru_maxrss. Why not os.wait4 from here: Linux carries the
RSS high-water mark of the forking process across exec, so a child of this ~100+ MiB Python
process would never report less than that; GNU time's own ~1 MiB is the floor instead. For a
tool that forks workers (nfstream) the figure is the largest single process, not their sum.
A tool that is missing or fails gets an error row; the run goes on.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
FLOWS, SEED = 50_000, 1
GNU_TIME = "/usr/bin/time"


def dpkt_flows(path):
    """Child: the plain-Python baseline, a dpkt decode feeding a dict of bidirectional 5-tuples."""
    import dpkt

    flows, packets = {}, 0
    with open(path, "rb") as fh:
        for _, frame in dpkt.pcap.Reader(fh):
            packets += 1
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else (0, 0)
            a, b = (ip.src, ports[0]), (ip.dst, ports[1])
            key = (ip.p, a, b) if a <= b else (ip.p, b, a)
            counts = flows.get(key)
            if counts is None:
                flows[key] = [1, len(frame)]
            else:
                counts[0] += 1
                counts[1] += len(frame)
    print(json.dumps({"packets": packets, "flows": len(flows)}))


def nfstream_flows(path):
    """Child: nfstream with its defaults, flows collected into pandas."""
    from nfstream import NFStreamer

    print(json.dumps({"flows": len(NFStreamer(source=path).to_pandas())}))


def steady_rate(path):
    """Child: flowsense's own decode + flow-meter timing, after JIT warm-up."""
    from flowsense.pipeline import measure_steady_rate

    print(json.dumps(measure_steady_rate(path)))


def capture(packets, keep, tmp):
    """Return (path, flows): the cached capture if the same generator made it with the same
    parameters, else a new one (kept in the cache with --keep)."""
    import gen_capture

    params = {"packets": packets, "flows": FLOWS, "seed": SEED,
              "generator": hashlib.sha256(Path(gen_capture.__file__).read_bytes()).hexdigest()}
    label = f"{packets // 1_000_000}M" if packets % 1_000_000 == 0 else f"{packets}"
    cached, meta = CACHE / f"bench-{label}.pcap", CACHE / f"bench-{label}.json"
    if cached.exists() and meta.exists():
        made = json.loads(meta.read_text())
        flows = made.pop("flows_made", None)
        if made == params:
            print(f"reusing {cached}")
            return cached, flows
    out = cached if keep else Path(tmp) / "bench.pcap"
    out.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    buf, flows = gen_capture.generate(packets, FLOWS, SEED)
    out.write_bytes(buf.data)
    print(f"generated {out}: {packets} packets, {flows} flows in {time.perf_counter() - t0:.1f} s")
    if keep:
        meta.write_text(json.dumps(dict(params, flows_made=flows)))
    return out, flows


def child_env():
    """The working tree's flowsense wins over any installed copy."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run(cmd, timeout, stdout=subprocess.DEVNULL, env=None):
    """Run cmd; return (wall seconds, peak RSS MiB, exit code, stderr tail).

    The child leads its own process group, so on timeout its whole tree is killed by that PID."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        proc = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", rss.name, "--", *cmd], stdout=stdout, stderr=err,
                                env=env, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - t0, 0.0, -signal.SIGKILL, f"killed after {timeout:.0f} s timeout"
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
        report = rss.read().split()   # "Command exited with non-zero status N" may come before the figure
    peak_mib = int(report[-1]) / 1024 if report and report[-1].isdigit() else 0.0
    return wall, peak_mib, code, " | ".join(tail)


def python_child(func, path, timeout):
    """Run one of this module's child functions in a fresh interpreter; parse its JSON line."""
    script = f"import sys; sys.path[:0] = [{str(BENCH)!r}]; import run_bench; run_bench.{func}({str(path)!r})"
    with tempfile.TemporaryFile() as out:
        wall, rss, code, err = run([sys.executable, "-c", script], timeout, stdout=out, env=child_env())
        out.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
    if code == 0 and not lines:
        code, err = 1, "printed no result"
    return wall, rss, code, err, json.loads(lines[-1]) if code == 0 else {}


def row(tool, packets, wall, rss, code, err, note=""):
    if code != 0:
        return {"tool": tool, "error": err or f"exit code {code}"}
    return {"tool": tool, "seconds": wall, "packets_per_s": packets / wall, "peak_rss_mib": rss, "note": note}


def softflowd(path, packets, max_flows, timeout, tmp):
    """softflowd exports NetFlow v9 to a local UDP socket of ours that only counts datagrams.

    -m lifts its default 8192-flow table, which would otherwise force-expire most flows here.
    The socket buffer is enlarged so the burst at end of file is not dropped before we count it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)   # the kernel caps this at 2 x rmem_max
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    got, stop = [0], threading.Event()

    def drain():
        while not stop.is_set():
            try:
                sock.recv(65535)
                got[0] += 1
            except socket.timeout:
                pass

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        with tempfile.TemporaryFile("w+") as out:
            result = run(["softflowd", "-r", str(path), "-n", f"127.0.0.1:{sock.getsockname()[1]}", "-c", "none",
                          "-v", "9", "-m", str(max_flows), "-p", f"{tmp}/softflowd.pid"], timeout, stdout=out)
            out.seek(0)
            stats = re.search(r"Flows exported: (\d+) .* in (\d+) packets", out.read())
        time.sleep(0.3)   # let the last datagrams land
    finally:
        stop.set()
        thread.join()
        sock.close()
    flows, sent = stats.groups() if stats else ("?", "?")
    return row("softflowd", packets, *result,
               note=f"{flows} flows in {sent} NetFlow v9 datagrams, {got[0]} received; -m {max_flows}")


def nfpcapd(path, packets, timeout, tmp):
    out = Path(tmp) / "nfpcapd"
    out.mkdir()
    result = run(["nfpcapd", "-r", str(path), "-w", str(out)], timeout)
    stats = subprocess.run(["nfdump", "-R", str(out), "-I"], capture_output=True, text=True, timeout=timeout).stdout
    flows = next((line.split()[1] for line in stats.splitlines() if line.startswith("Flows:")), "?")
    return row("nfpcapd", packets, *result, note=f"{flows} unidirectional flow records")


def measure(path, packets, flows, timeout, tmp):
    """All rows, flowsense first so the others can be expressed against it."""
    fs_out = Path(tmp) / "flowsense-out"
    rows = [row("flowsense analyze", packets, *run(
        [sys.executable, "-m", "flowsense", "analyze", str(path), "--out", str(fs_out), "--quiet", "--no-report"],
        timeout, env=child_env()))]

    wall, rss, code, err, res = python_child("steady_rate", path, timeout)
    steady = row("flowsense steady (in-process)", packets, wall, rss, code, err, note="decode + flow meter only")
    if code == 0:
        steady.update(seconds=res["seconds"], packets_per_s=res["packets"] / res["seconds"])
    rows.append(steady)

    wall, rss, code, err, res = python_child("dpkt_flows", path, timeout)
    rows.append(row("dpkt + dict", packets, wall, rss, code, err, note=f"{res.get('flows')} flows"))
    wall, rss, code, err, res = python_child("nfstream_flows", path, timeout)
    rows.append(row("nfstream", packets, wall, rss, code, err,
                    note=f"{res.get('flows')} flows; RSS = largest single process"))
    rows.append(softflowd(path, packets, 4 * flows, timeout, tmp))
    rows.append(nfpcapd(path, packets, timeout, tmp))
    tshark = ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "ip.src", "-e", "ip.dst",
              "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport", "-e", "udp.dstport"]
    rows.append(row("tshark fields", packets, *run(tshark, timeout)))

    base = rows[0].get("packets_per_s")
    for r in rows:
        if base and "packets_per_s" in r:
            r["ratio"] = base / r["packets_per_s"]
    return rows


def table(rows):
    head = f"{'tool':<30} {'seconds':>8} {'packets/s':>11} {'peak RSS MiB':>12} {'ratio':>7}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['tool']:<30} ERROR: {r['error'][:200]}")
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        lines.append(f"{r['tool']:<30} {r['seconds']:>8.2f} {r['packets_per_s']:>11,.0f} "
                     f"{r['peak_rss_mib']:>12.0f} {ratio:>7}  {r['note']}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help=f"keep the capture in {CACHE} for later runs")
    ap.add_argument("--json", metavar="FILE", help="also save the rows as JSON")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a tool is killed")
    a = ap.parse_args()
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} is missing: apt-get install time")
    sys.path.insert(0, str(BENCH))
    with tempfile.TemporaryDirectory(prefix="flowsense-bench-") as tmp:
        path, flows = capture(a.packets, a.keep, tmp)
        with open(path, "rb") as fh:   # page the capture in so no tool pays for the first disk read
            while fh.read(1 << 24):
                pass
        rows = measure(path, a.packets, flows, a.timeout, tmp)
    print(f"\n{a.packets} packets, {flows} flows; ratio = flowsense analyze packets/s / this row's packets/s\n")
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"packets": a.packets, "flows": flows, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
