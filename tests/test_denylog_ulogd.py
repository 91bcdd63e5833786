"""End to end with the real tools: nftables log rules -> NFLOG -> ulogd2 (LOGEMU text and JSON)
-> flowsense's deny-log decoders (iptables for the LOGEMU text, ulogd_json for the JSON).

Two network namespaces joined by a veth pair (198.18.0.0/30, fd00:f5::/64, no route out); the
client's output hook logs to NFLOG group 7 and drops / rejects / accepts; ulogd2 runs inside the
client namespace.  Every process, table and namespace made here is removed in ``finally``.
Needs root and a usable ``ip netns``; skips only when those are missing.
"""

from __future__ import annotations

import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import require_netns

from flowsense.denylog import iptables, ulogd_json
from flowsense.denylog.base import Deny, Skip
from flowsense.denylog.framing import TimeContext
from flowsense.denylog.reader import parse_line

VENDORS = (iptables, ulogd_json)
WAIT = 10.0  # seconds: the bound on every wait in this test

PID = os.getpid()
NS_C, NS_S = f"fsul-c-{PID}", f"fsul-s-{PID}"
IF_C, IF_S = "fsul-c0", "fsul-s0"  # created inside the namespaces: never seen in the host's
TABLE = f"fsul_{PID}"
C4, S4 = "198.18.0.1", "198.18.0.2"
C6, S6 = "fd00:f5::1", "fd00:f5::2"
GROUP = 7
DEVICE = "fs-lab"

# prefix -> (src, dst, proto, dport, action); ICMP: type 8 in sport, code 0 in dport
EXPECTED = {
    "fs-drop-tcp443": (C4, S4, 6, 443, "drop"),
    "fs-reject": (C4, S4, 6, 8443, "reject"),
    "fs-drop-udp5353": (C4, S4, 17, 5353, "drop"),
    "fs-drop-icmp": (C4, S4, 1, 0, "drop"),
    "fs-drop-tcp6-443": (C6, S6, 6, 443, "drop"),
}
ACCEPT = "fs-accept"

RULES = f"""
table inet {TABLE} {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {S4} tcp dport 443 log group {GROUP} prefix "fs-drop-tcp443 " drop
        ip daddr {S4} tcp dport 8443 log group {GROUP} prefix "fs-reject " reject with tcp reset
        ip daddr {S4} tcp dport 80 log group {GROUP} prefix "{ACCEPT} " accept
        ip daddr {S4} udp dport 5353 log group {GROUP} prefix "fs-drop-udp5353 " drop
        ip daddr {S4} icmp type echo-request log group {GROUP} prefix "fs-drop-icmp " drop
        ip6 daddr {S6} tcp dport 443 log group {GROUP} prefix "fs-drop-tcp6-443 " drop
    }}
}}
"""

LISTENER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(({S4!r}, 80))
s.listen(4)
s.settimeout({WAIT})
print("ready", flush=True)
try:
    c, _ = s.accept()
    c.close()
except OSError:
    pass
"""

CLIENT = f"""
import json, socket, struct
out = {{}}
for name, fam, addr, port in (("tcp443", socket.AF_INET, {S4!r}, 443), ("tcp8443", socket.AF_INET, {S4!r}, 8443),
                              ("tcp80", socket.AF_INET, {S4!r}, 80), ("tcp6_443", socket.AF_INET6, {S6!r}, 443)):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((addr, port))
        out[name] = "connected"
    except OSError as err:
        out[name] = type(err).__name__
    finally:
        s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"flowsense", ({S4!r}, 5353))
    out["udp5353"] = "sent"
except OSError as err:
    out["udp5353"] = type(err).__name__
finally:
    u.close()
if {{icmp_raw}}:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x4653, 1) + b"flowsense!"
    total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    body = body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        r.sendto(body, ({S4!r}, 0))
        out["icmp"] = "sent"
    except OSError as err:
        out["icmp"] = type(err).__name__
    finally:
        r.close()
print(json.dumps(out))
"""


def _run(*cmd, check=True, timeout=WAIT) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _stop(proc: subprocess.Popen):
    """SIGTERM, then SIGKILL after a bounded wait; only this PID."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def _plugin_dir() -> Path:
    for cand in sorted(glob.glob("/usr/lib/*/ulogd")) + ["/usr/lib/ulogd", "/usr/local/lib/ulogd"]:
        if Path(cand, "ulogd_output_JSON.so").exists():
            return Path(cand)
    raise AssertionError("ulogd2 JSON output plugin not found: install packages ulogd2 and ulogd2-json")


def _ulogd_conf(tmp: Path) -> Path:
    plugins = _plugin_dir()
    names = ("inppkt_NFLOG", "raw2packet_BASE", "filter_IFINDEX", "filter_IP2STR", "filter_PRINTPKT",
             "filter_HWHDR", "output_LOGEMU", "output_JSON")
    conf = tmp / "ulogd.conf"
    conf.write_text(
        "[global]\n"
        f'logfile="{tmp / "ulogd.log"}"\n'
        "loglevel=3\n"
        + "".join(f'plugin="{plugins}/ulogd_{n}.so"\n' for n in names)
        # both stacks share the one NFLOG instance (log1) bound to the group
        + "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON\n"
        f"[log1]\ngroup={GROUP}\nnetlink_qthreshold=1\n"
        f'[emu1]\nfile="{tmp / "logemu.log"}"\nsync=1\n'
        f'[json1]\nfile="{tmp / "ulogd.json"}"\nsync=1\ndevice="{DEVICE}"\n')
    return conf


def _wait_for(predicate, what: str, timeout: float = WAIT, dead=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if dead is not None and dead.poll() is not None:
            raise AssertionError(f"{what}: process {dead.pid} exited with {dead.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []


@pytest.mark.netns
def test_nft_nflog_ulogd_logemu_and_json(tmp_path):
    require_netns()
    for tool, pkg in (("nft", "nftables"), ("ulogd", "ulogd2")):
        assert shutil.which(tool), f"{tool} not installed (Debian package {pkg})"

    made_ns: list[str] = []
    procs: list[subprocess.Popen] = []
    table_loaded = False
    try:
        add = _run("ip", "netns", "add", NS_C, check=False)
        if add.returncode != 0:
            require_netns(f"'ip netns add' not usable here: {add.stderr.strip()}")
        made_ns.append(NS_C)
        _run("ip", "netns", "add", NS_S)
        made_ns.append(NS_S)

        # the veth pair is created inside the client namespace, its peer moved straight into the server's
        _run("ip", "-n", NS_C, "link", "add", IF_C, "type", "veth", "peer", "name", IF_S, "netns", NS_S)
        for ns, dev, a4, a6 in ((NS_C, IF_C, C4, C6), (NS_S, IF_S, S4, S6)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{a4}/30", "dev", dev)
            _run("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            _run("ip", "-n", ns, "link", "set", dev, "up")
            if shutil.which("ethtool"):
                _run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                     "tx", "off")

        rules = tmp_path / "rules.nft"
        rules.write_text(RULES)
        _run("ip", "netns", "exec", NS_C, "nft", "-f", str(rules))
        table_loaded = True

        conf = _ulogd_conf(tmp_path)
        ulogd_out = (tmp_path / "ulogd.stdout").open("w")
        ulogd = subprocess.Popen(["ip", "netns", "exec", NS_C, "ulogd", "-c", str(conf)],  # ip execs: PID is ulogd's
                                 stdin=subprocess.DEVNULL, stdout=ulogd_out, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, TZ="UTC"))
        ulogd_out.close()
        procs.append(ulogd)
        ulogd_log = tmp_path / "ulogd.log"
        _wait_for(lambda: ulogd_log.exists() and "entering main loop" in ulogd_log.read_text(errors="replace"),
                  "ulogd to bind NFLOG group 7", dead=ulogd)

        listener = subprocess.Popen(["ip", "netns", "exec", NS_S, sys.executable, "-c", LISTENER],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        procs.append(listener)
        ready, _, _ = select.select([listener.stdout], [], [], WAIT)
        if not (ready and listener.stdout.readline().strip() == "ready"):
            err = listener.stderr.read() if listener.poll() is not None else "no 'ready' line"
            raise AssertionError(f"TCP listener in {NS_S} did not start: {err}")

        t0 = time.time_ns()
        ping = shutil.which("ping")
        client = _run("ip", "netns", "exec", NS_C, sys.executable, "-c",
                      CLIENT.replace("{icmp_raw}", "False" if ping else "True"))
        if ping:
            done = _run("ip", "netns", "exec", NS_C, ping, "-n", "-c", "1", "-W", "1", S4, check=False)
            assert done.returncode in (0, 1), f"ping failed to run: {done.stderr.strip()}"
        outcome = json.loads(client.stdout.strip().splitlines()[-1])
        assert outcome["tcp80"] == "connected", outcome          # the accept rule lets it through
        assert outcome["tcp8443"] == "ConnectionRefusedError", outcome  # the reject rule's TCP reset
        assert outcome["tcp443"] != "connected" and outcome["tcp6_443"] != "connected", outcome

        emu_path, json_path = tmp_path / "logemu.log", tmp_path / "ulogd.json"

        def complete() -> bool:
            emu, js = "\n".join(_lines(emu_path)), "\n".join(_lines(json_path))
            return all(f"{p} " in emu and f'"{p} "' in js for p in (*EXPECTED, ACCEPT))

        _wait_for(complete, "every rule's line in both ulogd outputs", dead=ulogd)
        t1 = time.time_ns()
        _stop(ulogd)
        _stop(listener)

        ctx = TimeContext(datetime.now(timezone.utc).year)
        emu_lines, json_lines = _lines(emu_path), _lines(json_path)
        dump = "\n--- LOGEMU\n" + "\n".join(emu_lines) + "\n--- JSON\n" + "\n".join(json_lines)
        per_format = {}
        for name, lines, vendor in (("LOGEMU", emu_lines, "iptables"), ("JSON", json_lines, "ulogd_json")):
            denies: dict[str, set] = {}
            skips = 0
            for line in lines:
                got_vendor, result, hdr = parse_line(line, ctx, VENDORS)
                assert got_vendor == vendor and isinstance(result, (Deny, Skip)), \
                    f"{name} line decoded as {got_vendor}: {result}\n{line}{dump}"
                if isinstance(result, Skip):
                    assert ACCEPT in line and result.reason == "accept", f"{name}: unexpected skip {result}\n{line}"
                    skips += 1
                    continue
                assert ACCEPT not in line, f"{name}: accept line became a deny: {result}\n{line}"
                assert result.rule in EXPECTED, f"{name}: unexpected rule {result.rule!r}\n{line}"
                src, dst, proto, dport, action = EXPECTED[result.rule]
                assert (result.src, result.dst, result.proto, result.action) == (src, dst, proto, action), \
                    f"{name}: {result}\n{line}"
                if proto == 1:
                    assert (result.sport, result.dport) == (8, 0), f"{name}: ICMP echo type/code {result}\n{line}"
                else:
                    assert result.dport == dport and 0 < result.sport < 65536, f"{name}: ports {result}\n{line}"
                ts = result.ts if result.ts is not None else hdr.ts
                assert ts is not None and t0 - 2 * 10**9 <= ts <= t1 + 10**9, f"{name}: time {ts} not in run\n{line}"
                if name == "JSON":
                    assert result.ts is not None and result.device == DEVICE, f"JSON: ts/device {result}\n{line}"
                else:
                    assert hdr.host and hdr.ts is not None, f"LOGEMU: framing {hdr}\n{line}"
                denies.setdefault(result.rule, set()).add(
                    (result.src, result.dst, result.proto, result.sport, result.dport, result.action))
            assert set(denies) == set(EXPECTED), f"{name}: rules seen {sorted(denies)}{dump}"
            assert skips >= 1, f"{name}: no accept line{dump}"
            per_format[name] = denies
        # the two outputs of one ulogd describe the same packets
        assert per_format["LOGEMU"] == per_format["JSON"], per_format
    finally:
        for proc in procs:
            try:
                _stop(proc)
            except Exception:  # keep cleaning up
                pass
        for proc in procs:
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        if table_loaded:
            subprocess.run(["ip", "netns", "exec", NS_C, "nft", "delete", "table", "inet", TABLE],
                           capture_output=True, timeout=WAIT)
        for ns in reversed(made_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=WAIT)
