"""End-to-end detection lab: real tools in network namespaces, one LAN host per scenario.

Topology (every name carries this process's PID; nothing routes outside the lab)::

    LAN hosts (one netns each)          router netns ("fw")                  internet
    198.18.1.11 .. 198.18.1.106  eth0 ---- lXX -+ brl 198.18.1.1             srv netns: 198.19.0.2 and the
      route 198.19.0.0/16 via .1.1              |   nftables forward chain     server addresses below
                                                |   -> NFLOG group -> ulogd2   pt netns: 198.19.0.10
                                                |   tcpdump -i brl             (ptunnel-ng proxy, kernel
                                                + brw 198.19.0.1 ---- ws/wp     echo replies off)

No NAT: LAN source addresses are preserved, so alerts can be told apart by ``source.ip``.  The capture is
taken on the router's LAN bridge (``brl``), so it holds every LAN<->internet packet once.  Denies are
logged by nftables (``log group``) to ulogd2's LOGEMU plugin (kernel-LOG-style text, UTC stamps).

Every process is started through :meth:`Lab.spawn` (``ip netns exec NS timeout -k 5 LIFE CMD``: a
hard lifetime even if the lab itself is killed), is tracked by PID and stopped in :meth:`Lab.close`;
the namespaces are deleted there too (also on Ctrl-C / SIGTERM via ``run_lab.py``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENTS = HERE / "agents.py"
PID = os.getpid()
WAIT = 15.0  # bound on every readiness wait
LIFE = 400  # hard lifetime (s) of every process the lab starts

ROUTER_LAN, ROUTER_WAN = "198.18.1.1", "198.19.0.1"
LAN_NET, WAN_NET = "198.18.1.0/24", "198.19.0.0/16"
ROUTER_MAC = "02:00:c6:12:01:01"
NFLOG_GROUP = 11
DENY_PREFIX = "FSLAB-C2-443-REJECT"

# internet-side addresses (all in the srv namespace except PT)
PING_TARGET = "198.19.0.2"
PT = "198.19.0.10"            # ptunnel-ng proxy (own namespace: kernel echo replies off)
IODINE_NS = "198.19.0.20"     # iodined, authoritative for IODINE_DOMAIN
D2T_NS = "198.19.0.21"        # dns2tcpd, authoritative for D2T_DOMAIN
C2_BEACON = "198.19.0.30"     # HTTPS-ish C2 on 443
NMAP_TARGET = "198.19.0.40"
MASSCAN_TARGET = "198.19.0.41"
UPLOAD_SINK = "198.19.0.50"   # uncommon port UPLOAD_PORT
C2_FALLBACK = "198.19.0.60"   # 443 rejected by the firewall, 8443 and ICMP allowed
RESOLVER = "198.19.0.53"      # benign DNS resolver
WEB = "198.19.0.80"           # benign web server / update server
NTP = "198.19.0.123"
SRV_ADDRS = [PING_TARGET, IODINE_NS, D2T_NS, C2_BEACON, NMAP_TARGET, MASSCAN_TARGET, UPLOAD_SINK, C2_FALLBACK,
             RESOLVER, WEB, NTP]
UPLOAD_PORT = 9001
FALLBACK_PORT = 8443
IODINE_DOMAIN, D2T_DOMAIN = "t.lab.test", "d2t.lab.test"
IODINE_NET, IODINE_SERVER_TUN = "198.18.200.1/27", "198.18.200.1"
PTUNNEL_MAGIC = 0xDEADC0DE   # ptunnel-ng's default magic (first 4 bytes of its ICMP payload)

PHASE = 75.0  # seconds of traffic for the long-running scenarios


@dataclass(frozen=True)
class Scenario:
    story: str
    src: str
    dst: str | None
    analytics: tuple[str, ...]
    rule: str | None
    accept: tuple[str, ...] = ()   # side findings that are true of this traffic (see flowsense.evaluate)

    @property
    def benign(self) -> bool:
        return self.rule is None


SCENARIOS = [
    Scenario("icmp_tunnel", "198.18.1.11", PT, ("AN1258",), "icmp_tunnel"),
    Scenario("dns_tunnel_iodine", "198.18.1.12", IODINE_NS, (), "dns_tunnel"),
    Scenario("dns_tunnel_dns2tcp", "198.18.1.13", D2T_NS, (), "dns_tunnel"),
    Scenario("beacon", "198.18.1.14", C2_BEACON, ("AN0597",), "beacon", ("port_pairing",)),  # plain HTTP on 443
    Scenario("scan_nmap", "198.18.1.15", NMAP_TARGET, ("AN0081",), "scan"),
    Scenario("scan_masscan", "198.18.1.16", MASSCAN_TARGET, ("AN0081",), "scan"),
    Scenario("sustained_upload", "198.18.1.17", UPLOAD_SINK, ("AN0081",), "egress_sustained",
             ("port_pairing",)),  # raw bytes to port 9001
    Scenario("blocked_fallback", "198.18.1.18", C2_FALLBACK, ("AN1376", "AN1377"), "deny_fallback",
             ("icmp_tunnel", "port_pairing", "beacon")),  # ICMP carrying a file; 8443 retried every 3 s
    Scenario("benign_dns", "198.18.1.101", RESOLVER, (), None),
    Scenario("benign_ping", "198.18.1.102", PING_TARGET, (), None),
    Scenario("benign_monitor", "198.18.1.103", PING_TARGET, (), None),
    Scenario("benign_web", "198.18.1.104", WEB, (), None),
    Scenario("benign_ntp", "198.18.1.105", NTP, (), None),
    Scenario("benign_update", "198.18.1.106", WEB, (), None),
]
BY_STORY = {s.story: s for s in SCENARIOS}


class LabClosed(Exception):
    """The lab is shutting down: no new processes."""


def utc_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _mac(addr: str) -> str:
    a, b, c, d = (int(x) for x in addr.split("."))
    return f"02:00:{a - 190:02x}:{b:02x}:{c:02x}:{d:02x}"


class Lab:
    """Builds the topology on enter, tears everything down on exit (also after errors / Ctrl-C)."""

    def __init__(self, outdir: Path | str, log: logging.Logger | None = None):
        self.out = Path(outdir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = self.out / "work"
        self.work.mkdir(exist_ok=True)
        self.logs = self.out / "logs"
        self.logs.mkdir(exist_ok=True)
        self.log = log or logging.getLogger("lab")
        self.router = f"fse-fw-{PID}"
        self.srv = f"fse-srv-{PID}"
        self.pt = f"fse-pt-{PID}"
        self.hosts = {s.story: f"fse-h{s.src.rsplit('.', 1)[1]}-{PID}" for s in SCENARIOS}
        self.table = f"fslab_{PID}"
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.exit_codes: dict[str, int | None] = {}
        self.tcpdump: subprocess.Popen | None = None
        self.ulogd: subprocess.Popen | None = None
        self.tcpdump_stats: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closing = False
        self.capture = self.out / "capture.pcap"
        self.deny_log = self.out / "deny.log"
        self.labels_path = self.out / "labels.jsonl"

    # ------------------------------------------------------------------------------ process handling

    def sh(self, *cmd: str, ns: str | None = None, check: bool = True, timeout: float = WAIT):
        """A short command (setup/teardown), waited for with a bound."""
        full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
        proc = subprocess.run(full, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} -> {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def spawn(self, ns: str, cmd: list[str], name: str, stdin=None, life: float = LIFE) -> subprocess.Popen:
        """Start CMD in NS (tracked; output to logs/NAME.log; hard lifetime LIFE s via timeout(1))."""
        full = ["ip", "netns", "exec", ns, "timeout", "-k", "5", str(int(life)), *cmd]
        with self._lock:
            if self._closing:
                raise LabClosed(name)
            with open(self.logs / f"{name}.log", "ab") as logf:
                proc = subprocess.Popen(full, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=dict(os.environ, TZ="UTC", PYTHONUNBUFFERED="1"))
            self.procs.append((name, proc))
        self.log.info("start %-28s pid %-7d in %s: %s", name, proc.pid, ns, " ".join(cmd))
        return proc

    def run(self, ns: str, cmd: list[str], name: str, timeout: float, stdin=None) -> int | None:
        """Spawn and wait (bounded); returns the exit code (None if it had to be stopped)."""
        proc = self.spawn(ns, cmd, name, stdin=stdin, life=timeout + 5)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log.warning("%s still running after %.0f s: stopping it", name, timeout)
            self.stop(proc, name)
            rc = None
        self.exit_codes[name] = rc
        self.log.info("exit  %-28s rc=%s%s", name, rc, self._summary_line(name))
        return rc

    def _summary_line(self, name: str) -> str:
        """The JSON summary an agent prints last, if any."""
        path = self.logs / f"{name}.log"
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f"  {lines[-1]}" if lines and lines[-1].startswith("{") else ""

    def stop(self, proc: subprocess.Popen, name: str = "", sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or SIG) to this PID only, then SIGKILL after a bounded wait."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            except ProcessLookupError:
                pass
        if name and name not in self.exit_codes:
            self.exit_codes[name] = proc.returncode
        return proc.returncode

    def wait_log(self, name: str, pattern: str, proc: subprocess.Popen | None = None, timeout: float = WAIT) -> bool:
        """Wait (bounded) until logs/NAME.log matches PATTERN; False on timeout or if PROC died."""
        path, rx = self.logs / f"{name}.log", re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self._closing:
            if path.exists() and rx.search(path.read_text(errors="replace")):
                return True
            if proc is not None and proc.poll() is not None:
                self.log.error("%s exited with %s while waiting for %r", name, proc.returncode, pattern)
                return False
            time.sleep(0.1)
        self.log.error("timed out after %.0f s waiting for %r in %s.log", timeout, pattern, name)
        return False

    def agent(self, ns: str, name: str, *args: str, timeout: float | None = None, life: float = LIFE):
        """Run (timeout given) or start (server) one agents.py KIND."""
        cmd = [sys.executable, str(AGENTS), "--life", str(int(timeout + 5 if timeout else life)), *args]
        if timeout is not None:
            return self.run(ns, cmd, name, timeout)
        proc = self.spawn(ns, cmd, name, life=life)
        if not self.wait_log(name, r"^ready$|\nready", proc):
            raise RuntimeError(f"server {name} did not start (see logs/{name}.log)")
        return proc

    # ------------------------------------------------------------------------------ topology

    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _ns_add(self, name: str):
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.sh("ip", "link", "set", "lo", "up", ns=name)
        # IPv4 only: no router solicitations / MLD noise in the capture
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            self.sh("sysctl", "-qw", f"{key}=1", ns=name, check=False)

    def _offloads_off(self, ns: str, dev: str):
        if shutil.which("ethtool"):
            r = self.sh("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", ns=ns,
                        check=False)
            if r.returncode != 0:
                self.log.warning("ethtool -K %s in %s: %s", dev, ns, r.stderr.strip())

    def _veth(self, ns: str, dev: str, peer: str, bridge: str, mac: str | None = None):
        """veth DEV in NS with its PEER in the router, enslaved to BRIDGE."""
        self.sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", self.router)
        if mac:
            self.sh("ip", "-n", ns, "link", "set", dev, "address", mac)
        self.sh("ip", "-n", self.router, "link", "set", peer, "master", bridge)
        for n, d in ((ns, dev), (self.router, peer)):
            self._offloads_off(n, d)
            self.sh("ip", "-n", n, "link", "set", d, "up")

    def build(self):
        t0 = time.monotonic()
        for tool in ("ip", "nft", "ulogd", "tcpdump", "timeout"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} not installed (run scripts/setup.sh --test)")
        self.log.info("building lab (pid %d) in %s", PID, self.out)
        for ns in (self.router, self.srv, self.pt, *self.hosts.values()):
            self._ns_add(ns)
        r = self.router
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        # bridged (LAN<->LAN) frames need not pass through nftables; routed traffic always does
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                    "net.bridge.bridge-nf-call-arptables"):
            self.sh("sysctl", "-qw", f"{key}=0", ns=r, check=False)
        self.sh("ip", "-n", r, "link", "add", "brl", "address", ROUTER_MAC, "type", "bridge")
        self.sh("ip", "-n", r, "link", "add", "brw", "address", "02:00:c6:13:00:01", "type", "bridge")
        for br in ("brl", "brw"):
            self._offloads_off(r, br)
            self.sh("ip", "-n", r, "link", "set", br, "up")
        self.sh("ip", "-n", r, "addr", "add", f"{ROUTER_LAN}/24", "dev", "brl")
        self.sh("ip", "-n", r, "addr", "add", f"{ROUTER_WAN}/16", "dev", "brw")

        for s in SCENARIOS:
            ns, last = self.hosts[s.story], s.src.rsplit(".", 1)[1]
            self._veth(ns, "eth0", f"l{last}", "brl", _mac(s.src))
            self.sh("ip", "-n", ns, "addr", "add", f"{s.src}/24", "dev", "eth0")
            self.sh("ip", "-n", ns, "route", "add", WAN_NET, "via", ROUTER_LAN)

        self._veth(self.srv, "eth0", "ws", "brw", "02:00:c6:13:00:02")
        for i, addr in enumerate(SRV_ADDRS):
            self.sh("ip", "-n", self.srv, "addr", "add", f"{addr}/16" if i == 0 else f"{addr}/32", "dev", "eth0")
        self._veth(self.pt, "eth0", "wp", "brw", "02:00:c6:13:00:0a")
        self.sh("ip", "-n", self.pt, "addr", "add", f"{PT}/16", "dev", "eth0")
        self.sh("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1", ns=self.pt)
        for ns in (self.srv, self.pt):
            self.sh("ip", "-n", ns, "route", "add", "198.18.0.0/15", "via", ROUTER_WAN)

        self._firewall()
        self._ulogd()
        self._servers()
        self._check_reachability()
        self._tcpdump()
        self.log.info("lab ready in %.1f s", time.monotonic() - t0)

    def _firewall(self):
        rules = self.work / "rules.nft"
        rules.write_text(f"""
table inet {self.table} {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ip saddr {LAN_NET} ip daddr {C2_FALLBACK} tcp dport 443 counter log group {NFLOG_GROUP} prefix "{DENY_PREFIX} " reject with tcp reset
        ip saddr {LAN_NET} tcp dport {{ 23, 445 }} counter log group {NFLOG_GROUP} prefix "FSLAB-LEGACY-DROP " drop
    }}
}}
""")
        self.sh("nft", "-f", str(rules), ns=self.router)

    def _ulogd(self):
        plugins = None
        for cand in sorted(Path("/usr/lib").glob("*/ulogd")) + [Path("/usr/lib/ulogd"), Path("/usr/local/lib/ulogd")]:
            if (cand / "ulogd_output_LOGEMU.so").exists():
                plugins = cand
                break
        if plugins is None:
            raise RuntimeError("ulogd2 LOGEMU plugin not found (package ulogd2)")
        names = ("inppkt_NFLOG", "raw2packet_BASE", "filter_IFINDEX", "filter_IP2STR", "filter_PRINTPKT",
                 "output_LOGEMU")
        conf = self.work / "ulogd.conf"
        ulogd_log = self.logs / "ulogd-internal.log"
        conf.write_text(
            "[global]\n"
            f'logfile="{ulogd_log}"\n'
            "loglevel=3\n"
            + "".join(f'plugin="{plugins}/ulogd_{n}.so"\n' for n in names)
            + "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
            f"[log1]\ngroup={NFLOG_GROUP}\nnetlink_qthreshold=1\n"
            f'[emu1]\nfile="{self.deny_log}"\nsync=1\n')
        self.deny_log.touch()
        self.ulogd = self.spawn(self.router, ["ulogd", "-c", str(conf)], "ulogd")
        end = time.monotonic() + WAIT
        while not (ulogd_log.exists() and "entering main loop" in ulogd_log.read_text(errors="replace")):
            if self.ulogd.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"ulogd did not start (see {ulogd_log} and logs/ulogd.log)")
            time.sleep(0.1)

    def _servers(self):
        s, a = self.srv, self.agent
        www = self.work / "www"
        (www / "static").mkdir(parents=True, exist_ok=True)
        rnd = random.Random(7)
        (www / "index.html").write_text("<html><head><title>lab</title></head><body>"
                                        + "<p>hello</p>" * 200 + "</body></html>\n")
        (www / "news.html").write_text("<html><body>" + "".join(f"<li>item {i}</li>" for i in range(900)) + "</body></html>\n")
        (www / "static" / "app.js").write_bytes(bytes(rnd.randrange(32, 127) for _ in range(60_000)))
        (www / "static" / "logo.png").write_bytes(rnd.randbytes(24_000))
        (www / "update.json").write_text(json.dumps({"version": "1.4.2", "channel": "stable",
                                                     "notes": "x" * 600}) + "\n")
        a(s, "srv-web", "web-server", WEB, "80", "--root", str(www))
        a(s, "srv-dns", "dns-server", RESOLVER, "--answer", WEB)
        a(s, "srv-ntp", "ntp-server", NTP)
        a(s, "srv-c2-beacon", "tcp-server", C2_BEACON, "443", "--mode", "http", "--reply", "320")
        a(s, "srv-c2-fallback", "tcp-server", C2_FALLBACK, f"443,{FALLBACK_PORT}", "--mode", "http", "--reply", "200")
        a(s, "srv-nmap-target", "tcp-server", NMAP_TARGET, "22,80,443,3306", "--mode", "banner")
        a(s, "srv-masscan-target", "tcp-server", MASSCAN_TARGET, "22,80,443", "--mode", "banner")
        a(s, "srv-upload-sink", "tcp-server", UPLOAD_SINK, str(UPLOAD_PORT), "--mode", "sink",
          "--reply", "64", "--every", str(1 << 20))
        # iodined (creates dns0 with IODINE_SERVER_TUN) and a sink behind the tunnel
        iod = self.spawn(s, ["iodined", "-f", "-c", "-l", IODINE_NS, "-P", "labsecret", IODINE_NET, IODINE_DOMAIN],
                         "srv-iodined")
        if not self.wait_log("srv-iodined", r"Listening to dns", iod):
            raise RuntimeError("iodined did not start (see logs/srv-iodined.log)")
        a(s, "srv-iodine-sink", "tcp-server", IODINE_SERVER_TUN, "5001", "--mode", "sink", "--reply", "256",
          "--every", "4096")
        # dns2tcpd with one resource: a sink on the server's loopback
        a(s, "srv-dns2tcp-sink", "tcp-server", "127.0.0.1", "5002", "--mode", "sink", "--reply", "256",
          "--every", "4096")
        conf = self.work / "dns2tcpd.conf"
        conf.write_text(f"listen = {D2T_NS}\nport = 53\nuser = nobody\nchroot = /tmp\ndomain = {D2T_DOMAIN}\n"
                        "resources = sink:127.0.0.1:5002\n")
        d2t = self.spawn(s, ["dns2tcpd", "-F", "-d", "1", "-f", str(conf)], "srv-dns2tcpd")
        time.sleep(0.5)
        if d2t.poll() is not None:
            raise RuntimeError("dns2tcpd exited at start (see logs/srv-dns2tcpd.log)")
        # ptunnel-ng proxy in its own namespace, forwarding only to its local sink
        a(self.pt, "pt-sink", "tcp-server", "127.0.0.1", "2223", "--mode", "sink", "--reply", "1024",
          "--every", "8192")
        ptd = self.spawn(self.pt, ["ptunnel-ng", "-r127.0.0.1", "-R2223", "-v", "1"], "pt-ptunnel-ng")
        time.sleep(0.5)
        if ptd.poll() is not None:
            raise RuntimeError("ptunnel-ng proxy exited at start (see logs/pt-ptunnel-ng.log)")

    def _check_reachability(self):
        """Router -> every host and server (before the capture starts: primes ARP, proves forwarding)."""
        targets = [s.src for s in SCENARIOS] + [PING_TARGET]
        for t in targets:
            r = self.sh("ping", "-n", "-q", "-c", "1", "-W", "2", t, ns=self.router, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"router cannot reach {t}: {r.stdout.strip()}")
        # one host end to end through the forward chain (the srv answers pings; the pt namespace does not)
        host = self.hosts["benign_ping"]
        r = self.sh("ping", "-n", "-q", "-c", "1", "-W", "2", PING_TARGET, ns=host, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"LAN host cannot reach {PING_TARGET} through the router: {r.stdout.strip()}")

    def _tcpdump(self):
        self.tcpdump = self.spawn(self.router, ["tcpdump", "-i", "brl", "-n", "-s", "0", "-U", "-B", "16384",
                                                "-Z", "root", "-w", str(self.capture)], "tcpdump")
        if not self.wait_log("tcpdump", r"listening on brl", self.tcpdump):
            raise RuntimeError("tcpdump did not start (see logs/tcpdump.log)")
        time.sleep(0.5)

    def finish_capture(self):
        """Stop tcpdump (flushes) and ulogd; record tcpdump's packet counters."""
        if self.tcpdump is not None:
            self.stop(self.tcpdump, "tcpdump")
            text = (self.logs / "tcpdump.log").read_text(errors="replace")
            for key in ("captured", "received by filter", "dropped by kernel"):
                m = re.search(rf"(\d+) packets? {key}", text)
                if m:
                    self.tcpdump_stats[key.replace(" ", "_")] = int(m.group(1))
            self.log.info("tcpdump: %s", self.tcpdump_stats)
        if self.ulogd is not None:
            time.sleep(0.5)
            self.stop(self.ulogd, "ulogd")

    # ------------------------------------------------------------------------------ teardown

    def close(self):
        with self._lock:
            self._closing = True
        for name, proc in reversed(self.procs):
            try:
                self.stop(proc, name)
            except Exception as err:  # keep cleaning up
                self.log.error("stopping %s: %s", name, err)
        # anything still inside our namespaces was started by us (children of the tools): stop by PID
        for ns in self.namespaces:
            try:
                pids = self.sh("ip", "netns", "pids", ns, check=False).stdout.split()
            except Exception:
                pids = []
            for pid in pids:
                try:
                    self.log.warning("left-over pid %s in %s: SIGKILL", pid, ns)
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            try:
                self.sh("ip", "netns", "del", ns, check=False)
            except Exception as err:
                self.log.error("ip netns del %s: %s", ns, err)
        self.namespaces.clear()
        self.log.info("lab torn down")


# ---------------------------------------------------------------------------------------------- scenarios

class Timer:
    """Records the real UTC window of one scenario."""

    def __init__(self):
        self.start = self.end = None

    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, *exc):
        self.end = time.time()
        return False


def _sleep(lab: Lab, seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if lab._closing:
            raise LabClosed("sleep")
        time.sleep(max(0.0, min(0.2, end - time.monotonic())))


def sc_icmp_tunnel(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        cli = lab.spawn(ns, ["ptunnel-ng", f"-p{PT}", "-l2222", "-r127.0.0.1", "-R2223", "-v", "1"],
                        "icmp_tunnel-ptunnel-ng")
        _sleep(lab, 1.0)
        rc = lab.agent(ns, "icmp_tunnel-push", "push", "127.0.0.1", "2222", "--rate", "24000",
                       "--seconds", str(PHASE - 15), "--chunk", "4096", timeout=PHASE + 10)
        lab.stop(cli, "icmp_tunnel-ptunnel-ng")
    return rc == 0


def sc_dns_tunnel_iodine(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        cli = lab.spawn(ns, ["iodine", "-f", "-r", "-P", "labsecret", IODINE_NS, IODINE_DOMAIN], "iodine-client")
        up = lab.wait_log("iodine-client", r"Connection setup complete", cli, timeout=40)
        ok = False
        if up:
            p = lab.run(ns, ["ping", "-n", "-c", "20", "-i", "0.5", "-W", "2", IODINE_SERVER_TUN], "iodine-ping",
                        timeout=30)
            r = lab.agent(ns, "iodine-push", "push", IODINE_SERVER_TUN, "5001", "--rate", "4000", "--seconds", "25",
                          "--chunk", "1024", timeout=45)
            ok = p == 0 and r == 0
        lab.stop(cli, "iodine-client")
    return ok


def sc_dns_tunnel_dns2tcp(lab: Lab, ns: str, t: Timer) -> bool:
    fifo = lab.work / "dns2tcpc.stdin"
    if not fifo.exists():
        os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # idle stdin: never readable, never EOF (dns2tcpc spins on /dev/null)
    try:
        with t:
            cli = lab.spawn(ns, ["dns2tcpc", "-z", D2T_DOMAIN, "-r", "sink", "-l", "2224", D2T_NS],
                            "dns2tcp-client", stdin=fd)
            _sleep(lab, 1.0)
            rc = lab.agent(ns, "dns2tcp-push", "push", "127.0.0.1", "2224", "--rate", "3000", "--seconds", "30",
                           "--chunk", "1024", timeout=50)
            lab.stop(cli, "dns2tcp-client")
    finally:
        os.close(fd)
    return rc == 0


def sc_beacon(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "beacon", "--seed", "14", "beacon", C2_BEACON, "443", "--count", "36", "--interval", "2.0",
                       "--jitter", "0.02", timeout=PHASE + 20)
    return rc == 0


def sc_scan_nmap(lab: Lab, ns: str, t: Timer) -> bool:
    _sleep(lab, 10)
    with t:
        rc = lab.run(ns, ["nmap", "-sS", "-n", "-Pn", "-p1-1000", "--max-rate", "200", "--max-retries", "1",
                          NMAP_TARGET], "nmap", timeout=60)
    return rc == 0


def sc_scan_masscan(lab: Lab, ns: str, t: Timer) -> bool:
    _sleep(lab, 30)
    me = BY_STORY["scan_masscan"].src
    with t:
        # 1001 ports at 200 pps (~5 s) + --wait 3.  masscan 1.3.2 does not always exit after its scan
        # ("waiting -N secs" forever): bounded with timeout(1), SIGINT then SIGKILL; a scan that reached
        # 100 % counts as done whatever the exit status.
        rc = lab.run(ns, ["timeout", "-s", "INT", "-k", "2", "14", "masscan", MASSCAN_TARGET, "-p0-1000",
                          "--rate", "200", "--wait", "3", "--adapter", "eth0", "--adapter-ip", me,
                          "--adapter-mac", _mac(me), "--router-mac", ROUTER_MAC], "masscan", timeout=25)
    done = "100.00% done" in (lab.logs / "masscan.log").read_text(errors="replace")
    lab.log.info("masscan reached 100 %%: %s (exit status %s)", done, rc)
    return done


def sc_sustained_upload(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "upload", "push", UPLOAD_SINK, str(UPLOAD_PORT), "--rate", "1200000",
                       "--seconds", str(PHASE), timeout=PHASE + 20)
    return rc == 0


def sc_blocked_fallback(lab: Lab, ns: str, t: Timer) -> bool:
    _sleep(lab, 5)
    payload = lab.work / "icmp-payload.bin"
    payload.write_bytes(random.Random(18).randbytes(4096))
    with t:
        rc = lab.agent(ns, "fallback", "--seed", "18", "fallback", C2_FALLBACK, "--port", str(FALLBACK_PORT),
                       "--blocked", "5", "--count", "12", "--gap", "3", timeout=80)
        hp = lab.run(ns, ["hping3", "-I", "eth0", "--icmp", "-d", "120", "-E", str(payload), "-c", "8", "-i", "2",
                          C2_FALLBACK], "fallback-hping3", timeout=30)
    return rc == 0 and hp == 0


def sc_benign_dns(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "benign-dns", "--seed", "101", "lookups", RESOLVER, "--count", "25", "--gap", "3",
                       "--seconds", str(PHASE), timeout=PHASE + 20)
    return rc == 0


def sc_benign_ping(lab: Lab, ns: str, t: Timer) -> bool:
    _sleep(lab, 20)
    with t:
        rc = lab.run(ns, ["ping", "-n", "-c", "5", PING_TARGET], "benign-ping", timeout=20)
    return rc == 0


def sc_benign_monitor(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        n = int(PHASE)
        rc = lab.run(ns, ["ping", "-n", "-q", "-i", "1", "-c", str(n), "-w", str(n + 5), PING_TARGET],
                     "benign-monitor", timeout=n + 15)
    return rc == 0


def sc_benign_web(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "benign-web", "--seed", "104", "http-get", f"http://{WEB}",
                       "--paths", "/index.html,/news.html,/static/app.js,/static/logo.png",
                       "--count", "14", "--interval", "5", "--jitter", "0.6", timeout=PHASE + 20)
    return rc == 0


def sc_benign_ntp(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "benign-ntp", "--seed", "105", "ntp-client", NTP, "--count", "8", "--interval", "10",
                       timeout=PHASE + 20)
    return rc == 0


def sc_benign_update(lab: Lab, ns: str, t: Timer) -> bool:
    with t:
        rc = lab.agent(ns, "benign-update", "--seed", "106", "http-get", f"http://{WEB}", "--paths", "/update.json",
                       "--count", "5", "--interval", "15", "--jitter", "0.25",
                       "--agent", "lab-updater/1.4 (check)", timeout=PHASE + 20)
    return rc == 0


RUNNERS = {
    "icmp_tunnel": sc_icmp_tunnel, "dns_tunnel_iodine": sc_dns_tunnel_iodine,
    "dns_tunnel_dns2tcp": sc_dns_tunnel_dns2tcp, "beacon": sc_beacon, "scan_nmap": sc_scan_nmap,
    "scan_masscan": sc_scan_masscan, "sustained_upload": sc_sustained_upload,
    "blocked_fallback": sc_blocked_fallback, "benign_dns": sc_benign_dns, "benign_ping": sc_benign_ping,
    "benign_monitor": sc_benign_monitor, "benign_web": sc_benign_web, "benign_ntp": sc_benign_ntp,
    "benign_update": sc_benign_update,
}


def run_scenarios(lab: Lab, stories: list[str] | None = None, deadline: float = PHASE + 75) -> list[dict]:
    """Run the scenarios concurrently (one thread each, every step bounded); returns the labels."""
    chosen = [s for s in SCENARIOS if stories is None or s.story in stories]
    timers = {s.story: Timer() for s in chosen}
    results: dict[str, object] = {}

    def work(s: Scenario):
        try:
            results[s.story] = bool(RUNNERS[s.story](lab, lab.hosts[s.story], timers[s.story]))
        except LabClosed:
            results[s.story] = "interrupted"
        except Exception as err:  # recorded in lab.log; the label says ok=false
            lab.log.exception("scenario %s failed", s.story)
            results[s.story] = f"error: {err}"

    threads = [threading.Thread(target=work, args=(s,), name=s.story, daemon=True) for s in chosen]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(0.0, deadline - (time.monotonic() - t0)))
    late = [th.name for th in threads if th.is_alive()]
    if late:
        lab.log.error("scenarios still running after %.0f s: %s", deadline, late)
    lab.log.info("scenario phase took %.1f s", time.monotonic() - t0)
    labels = []
    for s in chosen:
        t, res = timers[s.story], results.get(s.story, "unfinished")
        labels.append({"story": s.story, "src": s.src, "dst": s.dst,
                       "start": utc_iso(t.start) if t.start else None,
                       "end": utc_iso(t.end) if t.end else None,
                       "analytics": list(s.analytics), "rule": s.rule, "accept": list(s.accept), "ok": res is True,
                       **({} if res is True else {"error": str(res)})})
        lab.log.info("label %-20s %s  %s .. %s  ok=%s", s.story, s.src, labels[-1]["start"], labels[-1]["end"], res)
    return labels


def summarize_capture(path: Path) -> dict:
    """Per-LAN-host packet/byte counts (both directions) in the capture."""
    import socket as _s

    import dpkt

    per: dict[str, dict[str, int]] = {s.src: {"pkts_out": 0, "pkts_in": 0, "bytes_out": 0, "bytes_in": 0}
                                      for s in SCENARIOS}
    total = other = 0
    with open(path, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            total += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                other += 1
                continue
            src, dst = _s.inet_ntoa(ip.src), _s.inet_ntoa(ip.dst)
            if src in per:
                per[src]["pkts_out"] += 1
                per[src]["bytes_out"] += len(buf)
            elif dst in per:
                per[dst]["pkts_in"] += 1
                per[dst]["bytes_in"] += len(buf)
            else:
                other += 1
    by_story = {s.story: per[s.src] for s in SCENARIOS}
    return {"packets": total, "other": other, "by_story": by_story}


def run(outdir: Path | str, stories: list[str] | None = None, log: logging.Logger | None = None) -> dict:
    """Build the lab, run the scenarios, leave capture.pcap, deny.log, labels.jsonl, lab.log in OUTDIR."""
    log = log or logging.getLogger("lab")
    t0 = time.monotonic()
    with Lab(outdir, log) as lab:
        labels = run_scenarios(lab, stories)
        time.sleep(1.0)  # the last replies / log lines
        lab.finish_capture()
        with open(lab.labels_path, "w") as fh:
            fh.writelines(json.dumps(label) + "\n" for label in labels)
        exit_codes = dict(lab.exit_codes)
        tcpdump_stats = dict(lab.tcpdump_stats)
        capture, deny_log, labels_path = lab.capture, lab.deny_log, lab.labels_path
    summary = {"seconds": round(time.monotonic() - t0, 1), "tcpdump": tcpdump_stats, "exit_codes": exit_codes,
               "deny_log_lines": len(deny_log.read_text(errors="replace").splitlines()),
               "labels_ok": {lb["story"]: lb["ok"] for lb in labels}}
    try:
        summary["capture"] = summarize_capture(capture)
    except Exception as err:  # dpkt missing or a truncated capture: still report the rest
        summary["capture"] = {"error": repr(err)}
    (Path(outdir) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("summary: %s", json.dumps(summary))
    log.info("outputs: %s %s %s", capture, deny_log, labels_path)
    return summary
