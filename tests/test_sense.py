"""`flowsense sense` on real traffic: a veth pair inside a network namespace the test creates and
removes; tcpreplay plays the bundled and corpus captures into one end at a fixed rate while the sensor
(and tcpdump, as the reference recording) listen on the other.

After SIGTERM the sensor's flows and alerts must equal what `flowsense analyze` gives for tcpdump's
recording of the same packets (same kernel timestamps, nanosecond precision); a burst into a tiny ring
while the sensor is stopped must show up as kernel drops that account for every missing packet; a soak
at a steady rate must keep memory flat.  Every process is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CORPUS, PCAPS, require_netns, run_cli

pytestmark = pytest.mark.netns
DEMO = PCAPS / "demo-egress.pcap"
CORPUS_REPLAYS = ("pcap/tunnels/iodine-dns-tunnel_ndpi-elastic.pcap", "pcap/scans/masscan-tcp-0-1000_esnet.pcap")
SOAK_S = float(os.environ.get("FLOWSENSE_SOAK_S", "120"))
WARM_UP_S = 45  # first detection windows, Parquet row groups and allocator arenas reach their working size


@pytest.fixture(scope="module")
def ns():
    require_netns()
    for tool in ("tcpreplay", "tcpdump", "ethtool"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.fail(f"{tool} is not installed: run `sh scripts/setup.sh --test`")
    name = f"fs-sense-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in ("ip link add va type veth peer name vb", "ip link set va up", "ip link set vb up",
                    "ip link set lo up", "sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
                    "ethtool -K va tso off gso off gro off tx off", "ethtool -K vb tso off gso off gro off tx off"):
            subprocess.run(["ip", "netns", "exec", name, *cmd.split()], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(ns: str, *cmd) -> list[str]:
    return ["ip", "netns", "exec", ns, *map(str, cmd)]


def _wait(predicate, what: str, timeout_s: float = 60, proc=None):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _stop(proc, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _started_since(stats: Path, t0: float) -> bool:
    try:
        return json.loads(stats.read_text())["started"] >= t0
    except (OSError, ValueError, KeyError):
        return False


def _start_sensor(ns: str, out: Path, *extra) -> subprocess.Popen:
    """The sensor, once its rings are open (its first stats.json of this run is written after that)."""
    t0 = time.time()
    proc = subprocess.Popen(_in(ns, sys.executable, "-m", "flowsense", "sense", "--iface", "vb", "--out", out,
                                "--metrics", "127.0.0.1:0", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: _started_since(out / "stats.json", t0), "the sensor's first stats.json", proc=proc)
    return proc


def _replay(ns: str, capture: Path, pps: int, *extra) -> int:
    """Play a capture into va; returns the packets tcpreplay sent."""
    done = subprocess.run(_in(ns, "tcpreplay", "-i", "va", "--pps", pps, *extra, capture),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    sent = [line for line in done.stdout.splitlines() if "Successful packets" in line]
    return int(sent[0].split()[-1])


def _flows(folder: Path, pattern: str) -> list[tuple]:
    import duckdb

    return duckdb.sql(f"SELECT community_id, orig_pkts, resp_pkts, orig_bytes, resp_bytes, conn_state, app, "
                      f"epoch_ns(ts) FROM read_parquet('{folder}/{pattern}') ORDER BY ALL").fetchall()


def _alerts(folder: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (folder / "alerts.jsonl").read_text().splitlines() if line.strip()]
    return sorted((a["flowsense"]["identifier"], a["flowsense"]["score"], a["event"]["start"]) for a in rows)


SYSLOG_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 29514))
s.settimeout(float(sys.argv[2]))
with open(sys.argv[1], "w") as out:
    print("ready", flush=True)
    try:
        while True:
            out.write(s.recv(65535).decode() + "\\n")
            out.flush()
    except TimeoutError:
        pass
"""


def test_live_capture_equals_analyze_of_the_same_packets(ns, tmp_path):
    """Also: alerts are forwarded as CEF over syslog and as JSON lines on stdout."""
    out, recording, received = tmp_path / "sense", tmp_path / "reference.pcap", tmp_path / "syslog.txt"
    config = tmp_path / "forward.toml"
    config.write_text('[alerts]\nforward_syslog = "127.0.0.1:29514"\nforward_stdout = true\n')
    sink = subprocess.Popen(_in(ns, sys.executable, "-c", SYSLOG_SINK, received, 120), stdout=subprocess.PIPE,
                            text=True)
    assert sink.stdout.readline().strip() == "ready"
    sensor = _start_sensor(ns, out, "-c", config)
    tcpdump = subprocess.Popen(_in(ns, "tcpdump", "-i", "vb", "-w", recording, "-U", "--time-stamp-precision=nano",
                                   "-s", "0"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: recording.exists() and recording.stat().st_size > 0, "tcpdump to start", proc=tcpdump)
        sent = _replay(ns, DEMO, 3000)
        for name in CORPUS_REPLAYS:
            sent += _replay(ns, CORPUS / name, 3000)
        time.sleep(1.0)
    finally:
        _stop(tcpdump, signal.SIGINT)
        assert _stop(sensor) == 0, sensor.stderr.read()
    stats = json.loads((out / "stats.json").read_text())
    vb = stats["interfaces"]["vb"]
    assert vb["kernel_drops"] == 0 and vb["packets"] == vb["kernel_packets"] == stats["packets"] == sent
    stdout = sensor.stdout.read()
    assert "flowsense sense:" in stdout
    reference = tmp_path / "analyze"
    result = run_cli("analyze", recording, "--out", reference, "--no-report")
    assert result.returncode == 0, result.stderr
    assert json.loads((reference / "stats.json").read_text())["packets"] == sent
    live, replayed = _flows(out, "flows-*.parquet"), _flows(reference, "flows.parquet")
    assert len(live) > 1000 and live == replayed
    live_alerts, replayed_alerts = _alerts(out), _alerts(reference)
    assert {a[0].split(":")[0] for a in live_alerts} >= {"icmp_tunnel", "dns_tunnel", "scan", "deny_fallback"}
    assert live_alerts == replayed_alerts
    printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert sorted(a["flowsense"]["identifier"] for a in printed) == [a[0] for a in live_alerts]
    _stop(sink)
    cef = [line for line in received.read_text().splitlines() if line]
    assert len(cef) == len(live_alerts) and all(" flowsense - alert - CEF:0|flowsense|flowsense|" in c for c in cef)
    assert any("|icmp_tunnel|ICMP tunnel" in c and "cs1=AN1258" in c and "src=198.18.10.51" in c for c in cef)
    assert stats["detection"]["forwarded"]["sent"] == len(live_alerts)
    report = run_cli("report", out)                    # the sensor's folder gets the same report
    assert report.returncode == 0, report.stderr
    assert "live capture on vb" in (out / "report.html").read_text()
    import duckdb
    dns_live = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/dns-*.parquet')").fetchall()[0][0]
    assert dns_live == json.loads((reference / "stats.json").read_text())["dns_messages"] > 600


def test_a_burst_beyond_capacity_is_counted_as_kernel_drops(ns, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("[sense]\nring_block_kib = 64\nring_blocks = 2\nblock_timeout_ms = 10\n")
    out = tmp_path / "burst"
    sensor = _start_sensor(ns, out, "-c", config)
    try:
        os.kill(sensor.pid, signal.SIGSTOP)          # the sensor stalls: the ring fills, then the kernel drops
        sent = _replay(ns, DEMO, 20000)
        os.kill(sensor.pid, signal.SIGCONT)
        time.sleep(1.0)
    finally:
        os.kill(sensor.pid, signal.SIGCONT)
        assert _stop(sensor) == 0, sensor.stderr.read()
    vb = json.loads((out / "stats.json").read_text())["interfaces"]["vb"]
    assert vb["kernel_drops"] > sent // 2 and vb["ring_fill_max"] == 1.0
    assert vb["packets"] + vb["kernel_drops"] == vb["kernel_packets"] == sent   # every packet accounted for


def test_metrics_reload_and_restart_append(ns, tmp_path):
    out, config = tmp_path / "live", tmp_path / "sensor.toml"
    config.write_text("[sense]\nstats_every_s = 0.5\n")
    sensor = _start_sensor(ns, out, "-c", config)
    try:
        _replay(ns, DEMO, 5000)
        _wait(lambda: json.loads((out / "stats.json").read_text())["packets"] > 2900, "stats to show the replay")
        address = json.loads((out / "stats.json").read_text())["metrics"]
        fetch = subprocess.run(_in(ns, sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                   f"'http://{address}/metrics', timeout=10).read().decode())"),
                               capture_output=True, text=True, timeout=60)
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in fetch.stdout.splitlines()
                   if line and not line.startswith("#")}
        assert metrics['flowsense_packets_total{iface="vb"}'] > 2900
        assert metrics['flowsense_kernel_drops_total{iface="vb"}'] == 0
        assert 0 <= metrics["flowsense_flow_table_load_ratio"] < 1 and "flowsense_uptime_seconds" in metrics
        config.write_text("[sense]\nstats_every_s = 0.5\n[allowlist]\nhosts = [\"198.18.10.0/24\"]\n")
        os.kill(sensor.pid, signal.SIGHUP)
        _wait(lambda: json.loads((out / "stats.json").read_text())["config_reloads"]["count"] == 1, "the reload")
        config.write_text("[sense]\nno_such_knob = 1\n")
        os.kill(sensor.pid, signal.SIGHUP)
        _wait(lambda: json.loads((out / "stats.json").read_text())["config_reloads"]["last_error"], "a refused reload")
        assert "no_such_knob" in json.loads((out / "stats.json").read_text())["config_reloads"]["last_error"]
        assert sensor.poll() is None
    finally:
        assert _stop(sensor) == 0, sensor.stderr.read()
    # the allowlist reloaded before the detection ran: the demo's hosts raise nothing
    assert (out / "alerts.jsonl").read_text() == ""
    first_files = sorted(out.glob("flows-*.parquet"))
    sensor = _start_sensor(ns, out)                      # same --out: files are added, nothing overwritten
    try:
        _replay(ns, DEMO, 5000)
        time.sleep(1.0)
    finally:
        assert _stop(sensor) == 0
    assert set(first_files) < set(out.glob("flows-*.parquet"))
    assert len(_flows(out, "flows-*.parquet")) >= 2 * 770 and len(_alerts(out)) >= 4


def test_operator_mistakes_are_one_line_errors(ns, tmp_path):
    result = subprocess.run(_in(ns, sys.executable, "-m", "flowsense", "sense", "--iface", "nope0", "--out",
                                tmp_path / "x"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "no such interface" in result.stderr and len(result.stderr.splitlines()) == 1
    result = subprocess.run(_in(ns, sys.executable, "-m", "flowsense", "sense", "--iface", "vb", "--bpf", "port",
                                "--out", tmp_path / "x"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "BPF filter" in result.stderr
    shared = Path(tempfile.mkdtemp(prefix="fs-sense-nobody-", dir="/tmp"))   # reachable by an unprivileged user
    try:
        shared.chmod(0o777)
        result = subprocess.run(_in(ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                    "-m", "flowsense", "sense", "--iface", "vb", "--out", shared / "out"),
                                capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(shared)
    assert result.returncode == 3 and "CAP_NET_RAW" in result.stderr and "setcap" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_soak_keeps_memory_flat(ns, tmp_path):
    """Minutes of steady traffic (FLOWSENSE_SOAK_S, default 120 s) with a detection window every 10 s:
    after the warm-up, resident memory must not keep growing, and nothing is dropped."""
    import psutil

    config = tmp_path / "soak.toml"
    config.write_text("[sense]\ndetect_every_s = 10.0\nstats_every_s = 1.0\n[flows]\nidle_timeout_s = 5.0\n")
    out = tmp_path / "soak"
    sensor = _start_sensor(ns, out, "-c", config)
    replay = subprocess.Popen(_in(ns, "tcpreplay", "-i", "va", "--pps", 4000, "--duration", int(SOAK_S), "--loop",
                                  0, DEMO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    try:
        started = time.monotonic()
        while replay.poll() is None and time.monotonic() - started < SOAK_S + 30:
            samples.append((time.monotonic() - started, psutil.Process(sensor.pid).memory_info().rss))
            time.sleep(1.0)
    finally:
        if replay.poll() is None:
            _stop(replay)
        assert _stop(sensor) == 0, sensor.stderr.read()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interfaces"]["vb"]["kernel_drops"] == 0 and stats["packets"] > 3000 * SOAK_S
    assert stats["detection"]["windows"] >= SOAK_S / 10 - 2
    settled = [rss for t, rss in samples if t >= WARM_UP_S]
    growth_mib = (max(settled[len(settled) // 2:]) - max(settled[: len(settled) // 2])) / 2**20
    assert growth_mib < 16, f"resident memory grew {growth_mib:.1f} MiB after the warm-up: {samples[::10]}"


def test_container_entrypoint_runs_every_source_the_config_names(ns, tmp_path):
    """docker/entrypoint.sh, run on the host as the image runs it: `run` starts the sensor on the
    configured interface and a NetFlow collector beside it; SIGTERM stops both cleanly."""
    entrypoint = Path(__file__).resolve().parent.parent / "docker" / "entrypoint.sh"
    config, out = tmp_path / "sensor.toml", tmp_path / "out"
    config.write_text('[sense]\ninterfaces = ["vb"]\nmetrics_listen = ""\nnetflow_listen = ["127.0.0.1:29955"]\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FLOWSENSE_CONFIG": str(config), "FLOWSENSE_OUT": str(out)}
    t0 = time.time()
    proc = subprocess.Popen(_in(ns, "sh", entrypoint), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait(lambda: _started_since(out / "stats.json", t0), "the sensor", proc=proc)
        _wait(lambda: (out / "netflow" / "stats.json").exists(), "the collector", proc=proc)
        _replay(ns, DEMO, 5000)
        time.sleep(1.0)
    finally:
        assert _stop(proc) == 0, proc.stderr.read()
    assert "flowsense run:" in proc.stdout.read()
    assert json.loads((out / "stats.json").read_text())["packets"] > 2900 and list(out.glob("flows-*.parquet"))
    assert "127.0.0.1:29955" in json.loads((out / "netflow" / "stats.json").read_text())["listeners"]
    missing = subprocess.run(["sh", entrypoint], env={**env, "FLOWSENSE_CONFIG": str(tmp_path / "none.toml")},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "FLOWSENSE_CONFIG" in missing.stderr
    passthrough = subprocess.run(["sh", entrypoint, "config", "show", "-c", config], env=env, capture_output=True,
                                 text=True, timeout=120)
    assert passthrough.returncode == 0 and 'interfaces = ["vb"]' in passthrough.stdout


def test_fanout_shares_an_interface_by_flow(ns, tmp_path):
    """Two sensors in one PACKET_FANOUT group: each packet reaches exactly one, and each flow stays whole."""
    config = tmp_path / "fanout.toml"
    config.write_text("[sense]\nfanout_group = 42\n")
    outs = [tmp_path / "a", tmp_path / "b"]
    sensors = [_start_sensor(ns, out, "-c", config) for out in outs]
    try:
        sent = _replay(ns, DEMO, 5000)
        time.sleep(1.0)
    finally:
        codes = [_stop(s) for s in sensors]
    assert codes == [0, 0]
    taken = [json.loads((out / "stats.json").read_text())["packets"] for out in outs]
    assert min(taken) > 0 and sum(taken) == sent
    flows = [_flows(out, "flows-*.parquet") for out in outs]
    keys = [{row[0] for row in rows} for rows in flows]     # community ids: one per 5-tuple
    assert not keys[0] & keys[1] and len(flows[0]) + len(flows[1]) == 776


def test_vlan_tags_the_kernel_strips_are_restored(ns, tmp_path):
    """The kernel moves 802.1Q tags out of received frames; the sensor puts them back, so flows keep
    their VLAN and the decoder sees the frame tcpdump would have written."""
    from scapy.all import IP, UDP, Dot1Q, Ether, wrpcap

    capture = tmp_path / "vlan.pcap"
    frames = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42, prio=5) /
              IP(src="198.18.42.1", dst="198.19.42.2") / UDP(sport=40000 + k % 4, dport=53) / (b"x" * 20)
              for k in range(40)]
    for k, f in enumerate(frames):
        f.time = 1_700_000_000 + k * 0.01
    wrpcap(str(capture), frames)
    out = tmp_path / "vlan"
    sensor = _start_sensor(ns, out)
    try:
        assert _replay(ns, capture, 1000) == 40
        time.sleep(1.0)
    finally:
        assert _stop(sensor) == 0
    import duckdb

    rows = duckdb.sql(f"SELECT vlan, orig_pkts, resp_p FROM read_parquet('{out}/flows-*.parquet') ORDER BY ALL").fetchall()
    assert rows == [(42, 10, 53)] * 4
    assert json.loads((out / "stats.json").read_text())["weird"]["truncated_IP"] == 0
