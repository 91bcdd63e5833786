"""End-to-end detection lab: real tools in network namespaces -> capture + deny log + labels -> flowsense.

Runs ``tests/e2e/run_lab.py`` once (about 2 minutes: ptunnel-ng, iodine, dns2tcp, a beacon, nmap,
masscan, a sustained upload, a blocked C2 that falls back to another port and ICMP, and benign hosts,
each from its own LAN address), then ``flowsense analyze`` on the capture with the deny log.

Two kinds of tests, so a broken lab is told apart from a detector miss:
- ``test_lab_*``: the lab itself (labels, capture, deny log) without flowsense's detectors;
- ``test_alert_*`` / ``test_no_alert_*`` / ``test_deny_log_parsed``: flowsense's output against the labels.

    sudo .venv/bin/python -m pytest -m e2e tests/e2e -q

Set FLOWSENSE_E2E_LAB=DIR to reuse the outputs of an earlier ``run_lab.py DIR`` instead of running the lab.
Needs root and a usable ``ip netns`` (skips otherwise) and the tools of ``scripts/setup.sh --test``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lab as labmod
from conftest import require_netns

pytestmark = pytest.mark.e2e

LAB_TIMEOUT = 300  # s: bound on the whole lab run
ANALYZE_TIMEOUT = 300
SLACK = timedelta(seconds=5)
TOOLS = {"ip": "iproute2", "nft": "nftables", "ulogd": "ulogd2", "tcpdump": "tcpdump", "ethtool": "ethtool",
         "ptunnel-ng": "ptunnel-ng", "iodine": "iodine", "iodined": "iodine", "dns2tcpc": "dns2tcp",
         "dns2tcpd": "dns2tcp", "nmap": "nmap", "masscan": "masscan", "hping3": "hping3", "ping": "iputils-ping",
         "dig": "bind9-dnsutils", "timeout": "coreutils"}
MALICIOUS = [s for s in labmod.SCENARIOS if not s.benign]
BENIGN = [s for s in labmod.SCENARIOS if s.benign]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} missing)"


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory) -> Path:
    reuse = os.environ.get("FLOWSENSE_E2E_LAB")
    if reuse:
        out = Path(reuse)
        assert (out / "labels.jsonl").exists(), f"FLOWSENSE_E2E_LAB={reuse}: no labels.jsonl there"
        return out
    require_netns()
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    assert not missing, f"lab tools not installed: {', '.join(missing)}; run scripts/setup.sh --test"
    out = tmp_path_factory.mktemp("e2e-lab")
    proc = subprocess.Popen([sys.executable, str(HERE / "run_lab.py"), str(out), "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=LAB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)  # run_lab.py tears the lab down on SIGTERM
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate(timeout=10)
        pytest.fail(f"lab did not finish in {LAB_TIMEOUT} s\n{output}\n{_tail(out / 'lab.log')}")
    # 3 = the lab ran but some scenario did not complete cleanly: test_lab_labels says which
    assert proc.returncode in (0, 3), f"run_lab.py -> {proc.returncode}\n{output}\n{_tail(out / 'lab.log')}"
    return out


@pytest.fixture(scope="module")
def labels(lab_dir) -> dict[str, dict]:
    rows = [json.loads(line) for line in (lab_dir / "labels.jsonl").read_text().splitlines() if line.strip()]
    return {row["story"]: row for row in rows}


def _qname(msg: bytes) -> str | None:
    """The first question's name (latin-1, lower case): iodine's labels are raw 8-bit, not UTF-8."""
    if len(msg) < 13:
        return None
    off, labels = 12, []
    while off < len(msg) and msg[off]:
        n = msg[off]
        if n & 0xC0 or off + 1 + n > len(msg):
            return None
        labels.append(msg[off + 1:off + 1 + n])
        off += 1 + n
    return b".".join(labels).decode("latin-1").lower()


@pytest.fixture(scope="module")
def capture(lab_dir) -> dict:
    """The capture, digested per source address with dpkt (no flowsense code)."""
    import dpkt

    per = defaultdict(lambda: {"syn_ports": defaultdict(set), "synack": Counter(), "rst_from": Counter(),
                               "icmp_echo": Counter(), "icmp_reply": Counter(), "ptunnel_magic": 0,
                               "dns_q": Counter(), "udp": Counter(), "tcp_payload": Counter(),
                               "first": None, "last": None})
    total = 0
    with open(lab_dir / "capture.pcap", "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            total += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            h = per[src]
            h["first"] = ts if h["first"] is None else h["first"]
            h["last"] = ts
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP):
                syn, ack, rst = l4.flags & dpkt.tcp.TH_SYN, l4.flags & dpkt.tcp.TH_ACK, l4.flags & dpkt.tcp.TH_RST
                if syn and not ack:
                    h["syn_ports"][dst].add(l4.dport)
                elif syn and ack:
                    h["synack"][(dst, l4.sport)] += 1
                if rst:
                    h["rst_from"][(dst, l4.sport)] += 1
                if l4.data:
                    h["tcp_payload"][(dst, l4.dport)] += len(l4.data)
            elif isinstance(l4, dpkt.icmp.ICMP):
                payload = bytes(l4.data)  # Echo: id(2) seq(2) data
                if l4.type == 8:
                    h["icmp_echo"][dst] += 1
                    if payload[4:8] == labmod.PTUNNEL_MAGIC.to_bytes(4, "big"):
                        h["ptunnel_magic"] += 1
                elif l4.type == 0:
                    h["icmp_reply"][dst] += 1
            elif isinstance(l4, dpkt.udp.UDP):
                h["udp"][(dst, l4.dport)] += 1
                if l4.dport == 53:
                    name = _qname(bytes(l4.data))
                    if name is not None:
                        h["dns_q"][name] += 1
    return {"total": total, "hosts": per}


@pytest.fixture(scope="module")
def analysis(lab_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("e2e-analyze")
    cmd = [sys.executable, "-m", "flowsense", "analyze", str(lab_dir / "capture.pcap"),
           "--deny-log", str(lab_dir / "deny.log"), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=ANALYZE_TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    alerts_path = out / "alerts.jsonl"
    alerts = [json.loads(line) for line in alerts_path.read_text().splitlines() if line.strip()] \
        if alerts_path.exists() else []
    return {"out": out, "alerts": alerts, "stats": json.loads((out / "stats.json").read_text())}


def _window(label: dict) -> tuple[datetime, datetime]:
    return _ts(label["start"]) - SLACK, _ts(label["end"]) + SLACK


def _describe(alerts: list[dict]) -> str:
    return "\n".join(f"  {a['rule']['id']:<18} {a['source']['ip']:>15} -> {a['destination']['ip']}:"
                     f"{a['destination'].get('port')} {a['event']['start']}..{a['event']['end']} "
                     f"{a['rule'].get('name', '')}" for a in alerts) or "  (no alerts)"


# ---------------------------------------------------------------------------------------------- the lab itself

def test_lab_labels(labels):
    """Every scenario ran to completion and has a well-formed label."""
    assert sorted(labels) == sorted(s.story for s in labmod.SCENARIOS)
    bad = {k: v.get("error", "not ok") for k, v in labels.items() if not v["ok"]}
    assert not bad, f"scenarios that did not complete: {bad} (see lab.log / logs/)"
    for s in labmod.SCENARIOS:
        row = labels[s.story]
        assert (row["src"], row["dst"], row["rule"], row["analytics"]) == (s.src, s.dst, s.rule, list(s.analytics))
        start, end = _ts(row["start"]), _ts(row["end"])
        assert start < end and end - start < timedelta(minutes=5), row


def test_lab_capture_complete(lab_dir, capture):
    summary = json.loads((lab_dir / "summary.json").read_text())
    assert summary["tcpdump"].get("dropped_by_kernel") == 0, summary["tcpdump"]
    assert capture["total"] == summary["tcpdump"]["captured"] > 10_000


def _src(story: str) -> str:
    return labmod.BY_STORY[story].src


def _check_icmp_tunnel(h, lab_dir):
    assert h["icmp_echo"][labmod.PT] > 500, f"echo requests to the ptunnel-ng proxy: {h['icmp_echo']}"
    assert h["ptunnel_magic"] > 500, f"echo requests with ptunnel-ng's magic: {h['ptunnel_magic']}"
    assert h["tcp_payload"] == Counter(), "the tunnelled TCP must not appear in the clear"


def _check_dns_tunnel(domain, server):
    def check(h, lab_dir):
        tunnel = {n: c for n, c in h["dns_q"].items() if n.endswith(domain)}
        assert sum(tunnel.values()) > 200, f"DNS queries under {domain}: {sum(tunnel.values())}"
        assert len(tunnel) > 100, f"distinct names under {domain}: {len(tunnel)}"
        assert {d for d, _ in h["udp"]} == {server}, f"UDP destinations: {h['udp']}"
    return check


def _check_beacon(h, lab_dir):
    syns = h["syn_ports"][labmod.C2_BEACON]
    assert syns == {443}
    conns = h["tcp_payload"][(labmod.C2_BEACON, 443)]
    assert conns > 30 * 150, f"payload bytes to the C2: {conns}"
    assert h["last"] - h["first"] > 60


def _check_scan(target):
    def check(h, lab_dir):
        ports = h["syn_ports"][target]
        assert len(ports) > 500, f"SYNs to {len(ports)} distinct ports of {target}"
    return check


def _check_upload(h, lab_dir):
    sent = h["tcp_payload"][(labmod.UPLOAD_SINK, labmod.UPLOAD_PORT)]
    assert sent > 20_000_000, f"bytes uploaded: {sent}"
    assert h["last"] - h["first"] > 60


def _check_fallback(h, lab_dir):
    c2 = labmod.C2_FALLBACK
    assert h["syn_ports"][c2] == {443, labmod.FALLBACK_PORT}, h["syn_ports"][c2]
    assert h["icmp_echo"][c2] >= 5, f"ICMP echo to the C2: {h['icmp_echo'][c2]}"
    assert h["tcp_payload"][(c2, labmod.FALLBACK_PORT)] > 5 * 100


def _check_benign(kind):
    def check(h, lab_dir):
        if kind == "dns":
            assert sum(h["dns_q"].values()) >= 20 and all(n.count(".") <= 3 for n in h["dns_q"]), h["dns_q"]
        elif kind == "ping":
            assert h["icmp_echo"][labmod.PING_TARGET] == 5
        elif kind == "monitor":
            assert h["icmp_echo"][labmod.PING_TARGET] >= labmod.PHASE - 5
        elif kind in ("web", "update"):
            assert h["syn_ports"][labmod.WEB] == {80} and h["tcp_payload"][(labmod.WEB, 80)] > 0
        elif kind == "ntp":
            assert h["udp"][(labmod.NTP, 123)] == 8
        assert h["ptunnel_magic"] == 0
    return check


SANITY = {
    "icmp_tunnel": _check_icmp_tunnel,
    "dns_tunnel_iodine": _check_dns_tunnel(labmod.IODINE_DOMAIN, labmod.IODINE_NS),
    "dns_tunnel_dns2tcp": _check_dns_tunnel(labmod.D2T_DOMAIN, labmod.D2T_NS),
    "beacon": _check_beacon,
    "scan_nmap": _check_scan(labmod.NMAP_TARGET),
    "scan_masscan": _check_scan(labmod.MASSCAN_TARGET),
    "sustained_upload": _check_upload,
    "blocked_fallback": _check_fallback,
    "benign_dns": _check_benign("dns"),
    "benign_ping": _check_benign("ping"),
    "benign_monitor": _check_benign("monitor"),
    "benign_web": _check_benign("web"),
    "benign_ntp": _check_benign("ntp"),
    "benign_update": _check_benign("update"),
}


@pytest.mark.parametrize("story", [s.story for s in labmod.SCENARIOS])
def test_lab_capture_holds_scenario(story, capture, labels, lab_dir):
    """The capture holds the scenario's traffic, from its own address, inside its label window."""
    h = capture["hosts"].get(_src(story))
    assert h is not None, f"no packet from {_src(story)} in the capture"
    SANITY[story](h, lab_dir)
    lo, hi = _window(labels[story])
    first = datetime.fromtimestamp(h["first"], timezone.utc)
    last = datetime.fromtimestamp(h["last"], timezone.utc)
    assert lo <= first and last <= hi, f"packets {first}..{last} outside the label window {lo}..{hi}"


def test_lab_deny_log(lab_dir, labels):
    """ulogd wrote the firewall's rejects of the fallback host's TCP 443 attempts, inside its window."""
    lines = (lab_dir / "deny.log").read_text(errors="replace").splitlines()
    src, dst = _src("blocked_fallback"), labmod.C2_FALLBACK
    hits = [ln for ln in lines if labmod.DENY_PREFIX in ln and f"SRC={src} " in ln and f"DST={dst} " in ln
            and "PROTO=TCP" in ln and " DPT=443 " in ln]
    assert len(hits) >= 3, "\n".join(lines)
    # LOGEMU stamps are "Mon DD HH:MM:SS" (UTC: ulogd runs with TZ=UTC)
    lo, hi = _window(labels["blocked_fallback"])
    for ln in hits:
        stamp = datetime.strptime(f"{lo.year} {ln[:15]}", "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc)
        assert lo - timedelta(seconds=1) <= stamp <= hi, ln
    # nothing but the lab's rules: every line names one of them
    assert all(labmod.DENY_PREFIX in ln or "FSLAB-LEGACY-DROP" in ln for ln in lines if ln.strip())


# ---------------------------------------------------------------------------------------------- flowsense

def test_deny_log_parsed(analysis):
    denylog = analysis["stats"]["denylog"]
    assert denylog, "stats.json has no denylog section"
    assert denylog["vendors"].get("iptables", {}).get("parsed", 0) > 0, denylog
    assert denylog["vendors"]["iptables"]["failed"] == 0, denylog


@pytest.mark.parametrize("story", [s.story for s in MALICIOUS])
def test_alert_for_malicious(story, analysis, labels):
    label = labels[story]
    lo, hi = _window(label)
    mine = [a for a in analysis["alerts"] if a["source"]["ip"] == label["src"]]
    hits = [a for a in mine if a["rule"]["id"] == label["rule"]
            and _parse_iso(a["event"]["start"]) <= hi and _parse_iso(a["event"]["end"]) >= lo]
    assert hits, (f"no {label['rule']!r} alert (analytics {label['analytics']}) from {label['src']} overlapping "
                  f"{label['start']}..{label['end']} (+-{SLACK.seconds} s); alerts from that source:\n{_describe(mine)}")


@pytest.mark.parametrize("story", [s.story for s in BENIGN])
def test_no_alert_for_benign(story, analysis, labels):
    label = labels[story]
    mine = [a for a in analysis["alerts"] if a["source"]["ip"] == label["src"]]
    assert not mine, f"alerts from benign {story} host {label['src']}:\n{_describe(mine)}"
