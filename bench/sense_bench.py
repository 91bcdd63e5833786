"""The highest replay rate each live capturer takes with zero loss on a veth pair, in one run.

    python bench/sense_bench.py [--packets 200000] [--rates 50000,100000,...] [--json FILE]

Needs root (a network namespace is created and removed), tcpreplay and tcpdump.  tcpreplay plays the
synthetic benchmark capture (bench/gen_capture.py) into one end of a veth pair at each rate of the
ladder; on the other end listens, one after the other, `flowsense sense`, `tcpdump -w` and nfstream
(NFStreamer on the live interface).  A rate is taken when the capturer accounts for every packet
tcpreplay sent: flowsense by its stats (packets, kernel drops), tcpdump by its own "received by filter" and
"dropped by kernel" lines, nfstream by the packets in its flows.  First, tcpreplay's own ceiling
through the veth (--topspeed) is measured: no capturer can take more than that, and on 2 cores the
capturer and tcpreplay share the CPU, so each capturer's CPU seconds during the replay are also
measured: packets per CPU-second is its capacity whatever the sender manages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
NS = f"fs-bench-{os.getpid()}"
LADDER = "25000,50000,100000,200000,300000,400000,max"   # max: tcpreplay --topspeed


def sh(*cmd, check=True, **kw):
    return subprocess.run(["ip", "netns", "exec", NS, *map(str, cmd)], check=check, capture_output=True, text=True,
                          **kw)


def setup():
    subprocess.run(["ip", "netns", "add", NS], check=True)
    for cmd in ("ip link add va type veth peer name vb", "ip link set va up", "ip link set vb up",
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1", "ethtool -K va tso off gso off gro off tx off",
                "ethtool -K vb tso off gso off gro off tx off"):
        sh(*cmd.split())


def replay(capture: Path, rate: int | None) -> tuple[int, float]:
    """Packets sent and the rate tcpreplay reports (packets/s)."""
    out = sh("tcpreplay", "-q", "-i", "va", *(["--pps", rate] if rate else ["--topspeed"]), capture, timeout=900).stdout
    sent = int(re.search(r"Successful packets:\s+(\d+)", out).group(1))
    pps = float(re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out).group(1))
    return sent, pps


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (nfstream meters in children)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def wait_for(predicate, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.1)


def flowsense_run(capture: Path, rate: int, tmp: Path) -> dict:
    out = tmp / f"fs-{rate or 'max'}"
    t0 = time.time()
    proc = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "flowsense", "sense", "--iface", "vb",
                             "--out", out, "--metrics", ""], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def ready():
        try:
            return json.loads((out / "stats.json").read_text())["started"] >= t0
        except (OSError, ValueError):
            return False
    wait_for(ready)
    warm = replay(REPO / "pcaps" / "demo-egress.pcap", 20000)[0]   # first calls load every kernel: not measured
    time.sleep(1.0)
    cpu0 = cpu_s(proc.pid)
    sent, pps = replay(capture, rate)
    time.sleep(0.5)
    cpu = cpu_s(proc.pid) - cpu0
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=300)
    stats = json.loads((out / "stats.json").read_text())
    vb = stats["interfaces"]["vb"]
    return {"sent": sent, "replay_pps": pps, "got": vb["packets"] - warm, "dropped": vb["kernel_drops"], "cpu_s": cpu}


def tcpdump_run(capture: Path, rate: int, tmp: Path) -> dict:
    proc = subprocess.Popen(["ip", "netns", "exec", NS, "tcpdump", "-i", "vb", "-w", tmp / "td.pcap", "-s", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp / "td.pcap").exists())
    cpu0 = cpu_s(proc.pid)
    sent, pps = replay(capture, rate)
    time.sleep(0.5)
    cpu = cpu_s(proc.pid) - cpu0
    os.kill(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    got = int(re.search(r"(\d+) packets received by filter", err).group(1))
    dropped = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
    return {"sent": sent, "replay_pps": pps, "got": got, "dropped": dropped, "cpu_s": cpu}


PUSHER = "198.18.255.254"   # source of the frames that drive nfstream's clock (not counted)
NFSTREAM_CHILD = f"""
from nfstream import NFStreamer
packets = 0
for flow in NFStreamer(source="vb", idle_timeout=1, active_timeout=5):
    if flow.src_ip == "{PUSHER}":
        print("push", flush=True)
        continue
    packets += flow.bidirectional_packets
    print(packets, flush=True)
"""


def pusher_capture(path: Path, frames: int = 200) -> Path:
    """One-packet UDP flows from PUSHER: nfstream expires idle flows only when later packets arrive."""
    import socket

    import dpkt

    with path.open("wb") as fh:
        out = dpkt.pcap.Writer(fh)
        for k in range(frames):
            udp = dpkt.udp.UDP(sport=10000 + k, dport=9, data=b"push")
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=socket.inet_aton(PUSHER), dst=socket.inet_aton("198.18.255.253"), p=17, data=udp)
            ip.len = len(ip)
            out.writepkt(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x02\x01" * 3, data=ip), ts=k * 0.001)
    return path


def nfstream_run(capture: Path, rate: int, tmp: Path) -> dict:
    """nfstream prints its running packet total per exported flow; it has no clean stop on a live
    interface, so its whole process group is killed once the measured flows are out."""
    import threading

    proc = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", NFSTREAM_CHILD],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen, pushed = [0], [0]

    def read():
        for line in proc.stdout:
            if line.startswith("push"):
                pushed[0] += 1
            else:
                seen[0] = int(line)
    threading.Thread(target=read, daemon=True).start()
    pusher = pusher_capture(tmp / "pusher.pcap")
    try:
        for _ in range(30):                   # until nfstream's metering processes take packets
            replay(pusher, 1000)
            time.sleep(2.0)
            if pushed[0]:
                break
        cpu0 = cpu_s(proc.pid)
        sent, pps = replay(capture, rate)
        time.sleep(2.0)
        cpu = cpu_s(proc.pid) - cpu0
        for _ in range(3):                    # later packets expire the measured flows
            replay(pusher, 1000)
            time.sleep(2.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return {"sent": sent, "replay_pps": pps, "got": seen[0], "dropped": max(sent - seen[0], 0), "cpu_s": cpu}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--rates", default=LADDER, help="packets/s to try, in order; max = --topspeed")
    ap.add_argument("--tools", default="flowsense,tcpdump,nfstream")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    import gen_capture

    tmp = Path(tempfile.mkdtemp(prefix="fs-sense-bench-"))
    capture = tmp / "bench.pcap"
    buf, _ = gen_capture.generate(a.packets, min(50_000, a.packets // 20), 1)
    capture.write_bytes(buf.data)
    setup()
    results = {"packets": a.packets, "runs": {}}
    try:
        sent, ceiling = replay(capture, None)
        results["tcpreplay_topspeed_pps"] = ceiling
        print(f"tcpreplay --topspeed through the veth: {ceiling:,.0f} packets/s ({sent:,} packets)", flush=True)
        runners = {"flowsense": flowsense_run, "tcpdump": tcpdump_run, "nfstream": nfstream_run}
        for tool in a.tools.split(","):
            best, runs = 0.0, []
            for rate in (None if r == "max" else int(r) for r in a.rates.split(",")):
                r = runners[tool](capture, rate, tmp)
                runs.append({"rate": rate, **r})
                # nfstream meters flows, and leaves a couple of this capture's frames out at any rate
                slack = int(r["sent"] * 1e-4) if tool == "nfstream" else 0
                lossless = r["dropped"] <= slack and r["got"] >= r["sent"] - slack
                print(f"  {tool:10} {rate or 'max':>9} pps asked, {r['replay_pps']:>11,.0f} played: {r['got']:,} of "
                      f"{r['sent']:,} taken, {r['dropped']:,} dropped, {r['cpu_s']:.2f} CPU s", flush=True)
                if not lossless:
                    break
                best = max(best, r["replay_pps"])
            per_cpu = max((r["got"] / r["cpu_s"] for r in runs if r["cpu_s"] > 0), default=0.0)
            results["runs"][tool] = {"best_lossless_pps": best, "packets_per_cpu_s": per_cpu, "ladder": runs}
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    print("\n| capturer | highest lossless replay rate (packets/s) | ratio | packets per CPU-second | ratio |\n"
          "|---|---:|---:|---:|---:|")
    fs = results["runs"].get("flowsense", {})
    for tool, r in results["runs"].items():
        ratio = fs.get("best_lossless_pps", 0) / r["best_lossless_pps"] if r["best_lossless_pps"] else float("inf")
        cpu_ratio = fs.get("packets_per_cpu_s", 0) / r["packets_per_cpu_s"] if r["packets_per_cpu_s"] else float("inf")
        print(f"| {tool} | {r['best_lossless_pps']:,.0f} | {ratio:.2f} | {r['packets_per_cpu_s']:,.0f} | {cpu_ratio:.2f} |")
    print(f"| tcpreplay --topspeed alone (the sender's ceiling) | {results['tcpreplay_topspeed_pps']:,.0f} | | | |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
