"""Small traffic agents for the detection lab, run inside the lab's network namespaces.

    python agents.py KIND [ARGS...]

Servers print ``ready`` on stdout once listening; every agent has a hard lifetime (``--life``, SIGALRM)
so a forgotten process cannot outlive the lab for long.  Clients print one JSON summary line at the
end (what they did, bytes, errors), which the lab copies into lab.log.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request


def _ready():
    print("ready", flush=True)


def _summary(**kw):
    print(json.dumps(kw), flush=True)


# ---------------------------------------------------------------------------------------------- servers

def tcp_server(a):
    """Listen on HOST:PORT[,PORT...]; per connection either ``sink`` (read all, reply --reply bytes per
    --every bytes received), ``http`` (read one request, answer an HTTP-ish response of ~--reply bytes,
    close) or ``banner`` (send a short banner, read a little, close)."""
    rnd = random.Random(a.seed)
    socks = []
    for port in (int(p) for p in a.ports.split(",")):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.host, port))
        s.listen(64)
        socks.append(s)

    def handle(c):
        c.settimeout(30)
        try:
            if a.mode == "sink":
                since = 0
                while True:
                    data = c.recv(65536)
                    if not data:
                        break
                    since += len(data)
                    if a.reply and since >= a.every:
                        c.sendall(os.urandom(a.reply))
                        since = 0
            elif a.mode == "http":
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < 65536:
                    data = c.recv(4096)
                    if not data:
                        break
                    buf += data
                    if not buf[:1].isalpha():  # not HTTP (a TLS-like record): answer the first read
                        break
                size = max(0, a.reply + rnd.randint(-a.reply // 20, a.reply // 20))
                body = os.urandom(size // 2).hex().encode()[:size]
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            else:  # banner
                c.sendall(b"SSH-2.0-OpenSSH_9.2p1 lab\r\n")
                c.recv(1024)
        except OSError:
            pass
        finally:
            c.close()

    def serve(s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    _ready()
    while True:
        time.sleep(3600)


def dns_server(a):
    """A tiny authoritative-for-everything responder: A queries get --answer, others an empty NOERROR."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.host, 53))
    answer = socket.inet_aton(a.answer)
    _ready()
    while True:
        data, peer = s.recvfrom(4096)
        if len(data) < 12:
            continue
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        if flags & 0x8000 or qd != 1:
            continue
        off = 12
        while off < len(data) and data[off]:
            off += 1 + data[off]
        off += 1
        if off + 4 > len(data):
            continue
        qtype = struct.unpack("!H", data[off:off + 2])[0]
        question = data[12:off + 4]
        an = b""
        if qtype == 1:
            an = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + answer
        hdr = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1 if an else 0, 0, 0)
        s.sendto(hdr + question + an, peer)


def ntp_server(a):
    """Answers 48-byte NTP client packets (mode 3) with a server packet (mode 4, stratum 2)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.host, 123))
    _ready()
    while True:
        data, peer = s.recvfrom(1024)
        if len(data) < 48 or data[0] & 7 != 3:
            continue
        now = time.time() + 2208988800
        ts = struct.pack("!II", int(now), int((now % 1) * 2**32))
        pkt = bytes([0x24, 2, data[2], 0xE9]) + b"\0" * 8 + b"LAB\0" + ts + data[40:48] + ts + ts
        s.sendto(pkt, peer)


def web_server(a):
    """http.server for the files under --root on HOST:PORT (quiet access log on stdout)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        server_version = "nginx"
        sys_version = ""

        def log_message(self, fmt, *args):
            print("%s %s" % (self.client_address[0], fmt % args), flush=True)

    httpd = ThreadingHTTPServer((a.host, a.port), functools.partial(Handler, directory=a.root))
    _ready()
    httpd.serve_forever()


# ---------------------------------------------------------------------------------------------- clients

def push(a):
    """Send --rate bytes/s for --seconds over one TCP connection (optionally via a local tunnel port),
    reading whatever comes back."""
    deadline = time.monotonic() + a.seconds
    sent = got = 0
    err = None
    start = time.monotonic()
    for attempt in range(a.connect_tries):
        try:
            c = socket.create_connection((a.host, a.port), timeout=10)
            break
        except OSError as e:
            err = repr(e)
            time.sleep(1)
    else:
        _summary(kind="push", ok=False, error=err, sent=0, got=0)
        return 1
    c.settimeout(0.05)
    chunk = max(512, min(a.chunk, a.rate // 10 or 512))
    try:
        while time.monotonic() < deadline:
            due = (time.monotonic() - start) * a.rate
            while sent < due and time.monotonic() < deadline:
                c.settimeout(10)
                c.sendall(os.urandom(chunk))
                sent += chunk
            c.settimeout(0.05)
            try:
                data = c.recv(65536)
                got += len(data)
            except TimeoutError:
                pass
            time.sleep(0.02)
        c.shutdown(socket.SHUT_WR)
        c.settimeout(3)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                got += len(data)
        except OSError:
            pass
    except OSError as e:
        err = repr(e)
    finally:
        c.close()
    _summary(kind="push", ok=err is None, error=err, sent=sent, got=got, seconds=round(time.monotonic() - start, 1))
    return 0 if err is None else 1


def beacon(a):
    """Connect every --interval s (+-jitter) to HOST:PORT, send a small check-in, read the reply."""
    rnd = random.Random(a.seed)
    ok = fails = 0
    for i in range(a.count):
        t0 = time.monotonic()
        try:
            with socket.create_connection((a.host, a.port), timeout=5) as c:
                body = os.urandom(rnd.randint(150, 170) // 2).hex()
                c.sendall((f"POST /api/v2/telemetry HTTP/1.1\r\nHost: cdn-sync.lab.test\r\nUser-Agent: Mozilla/5.0\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
                c.settimeout(5)
                while c.recv(4096):
                    pass
            ok += 1
        except OSError:
            fails += 1
        if i + 1 < a.count:
            wait = a.interval * (1 + rnd.uniform(-a.jitter, a.jitter)) - (time.monotonic() - t0)
            time.sleep(max(0.0, wait))
    _summary(kind="beacon", ok=ok, fails=fails)
    return 0 if ok else 1


def fallback(a):
    """C2 that finds TCP 443 blocked: --blocked attempts on 443, then --count check-ins on --port."""
    rnd = random.Random(a.seed)
    result = {"kind": "fallback", "blocked": [], "fallback_ok": 0, "fallback_fail": 0}
    for _ in range(a.blocked):
        try:
            with socket.create_connection((a.host, 443), timeout=3):
                result["blocked"].append("connected")
        except OSError as e:
            result["blocked"].append(type(e).__name__)
        time.sleep(a.gap)
    for i in range(a.count):
        t0 = time.monotonic()
        try:
            with socket.create_connection((a.host, a.port), timeout=5) as c:
                c.sendall(b"\x17\x03\x03" + struct.pack("!H", 120) + os.urandom(120))  # TLS-like record
                c.settimeout(5)
                while c.recv(4096):
                    pass
            result["fallback_ok"] += 1
        except OSError:
            result["fallback_fail"] += 1
        if i + 1 < a.count:
            time.sleep(max(0.0, a.gap * (1 + rnd.uniform(-0.05, 0.05)) - (time.monotonic() - t0)))
    _summary(**result)
    return 0 if result["fallback_ok"] and "connected" not in result["blocked"] else 1


def lookups(a):
    """dig for ordinary names against the lab resolver, one every --gap s (randomised)."""
    rnd = random.Random(a.seed)
    names = ["www.debian.org", "deb.debian.org", "security.debian.org", "github.com", "api.github.com",
             "www.wikipedia.org", "mail.example.com", "www.example.org", "ntp.ubuntu.com", "pypi.org",
             "files.pythonhosted.org", "www.google.com", "outlook.office365.com", "login.microsoftonline.com"]
    ok = fails = 0
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline and ok + fails < a.count:
        name = rnd.choice(names)
        qtype = rnd.choice(["A", "A", "A", "AAAA"])
        r = subprocess.run(["dig", "+time=2", "+tries=1", "+short", f"@{a.server}", name, qtype],
                           check=False, capture_output=True, text=True, timeout=10)
        ok, fails = (ok + 1, fails) if r.returncode == 0 else (ok, fails + 1)
        time.sleep(rnd.uniform(0.5, 1.5) * a.gap)
    _summary(kind="lookups", ok=ok, fails=fails)
    return 0 if ok else 1


def http_get(a):
    """GET --paths from --base every --interval s (+-jitter); --count requests in all."""
    rnd = random.Random(a.seed)
    paths = a.paths.split(",")
    ok = fails = size = 0
    for i in range(a.count):
        t0 = time.monotonic()
        try:
            req = urllib.request.Request(a.base + rnd.choice(paths), headers={"User-Agent": a.agent})
            with urllib.request.urlopen(req, timeout=5) as r:
                size += len(r.read())
            ok += 1
        except OSError:
            fails += 1
        if i + 1 < a.count:
            time.sleep(max(0.0, a.interval * (1 + rnd.uniform(-a.jitter, a.jitter)) - (time.monotonic() - t0)))
    _summary(kind="http_get", ok=ok, fails=fails, bytes=size)
    return 0 if ok else 1


def ntp_client(a):
    """An SNTP client: one 48-byte mode-3 query every --interval s."""
    rnd = random.Random(a.seed)
    ok = fails = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for i in range(a.count):
        t0 = time.monotonic()
        now = time.time() + 2208988800
        pkt = bytes([0x23, 0, 6, 0xEC]) + b"\0" * 36 + struct.pack("!II", int(now), int((now % 1) * 2**32))
        try:
            s.sendto(pkt, (a.server, 123))
            s.recvfrom(1024)
            ok += 1
        except OSError:
            fails += 1
        if i + 1 < a.count:
            time.sleep(max(0.0, a.interval * (1 + rnd.uniform(-0.01, 0.01)) - (time.monotonic() - t0)))
    _summary(kind="ntp", ok=ok, fails=fails)
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--life", type=float, default=300, help="hard lifetime in seconds (SIGALRM)")
    p.add_argument("--seed", type=int, default=1)
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("tcp-server")
    s.add_argument("host")
    s.add_argument("ports")
    s.add_argument("--mode", choices=["sink", "http", "banner"], default="sink")
    s.add_argument("--reply", type=int, default=0)
    s.add_argument("--every", type=int, default=65536)
    s = sub.add_parser("dns-server")
    s.add_argument("host")
    s.add_argument("--answer", default="198.19.0.80")
    s = sub.add_parser("ntp-server")
    s.add_argument("host")
    s = sub.add_parser("web-server")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--root", required=True)
    s = sub.add_parser("push")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--rate", type=int, required=True, help="bytes per second")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--chunk", type=int, default=16384)
    s.add_argument("--connect-tries", type=int, default=5)
    s = sub.add_parser("beacon")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=35)
    s.add_argument("--interval", type=float, default=2.0)
    s.add_argument("--jitter", type=float, default=0.02)
    s = sub.add_parser("fallback")
    s.add_argument("host")
    s.add_argument("--port", type=int, default=8443)
    s.add_argument("--blocked", type=int, default=5)
    s.add_argument("--count", type=int, default=12)
    s.add_argument("--gap", type=float, default=3.0)
    s = sub.add_parser("lookups")
    s.add_argument("server")
    s.add_argument("--count", type=int, default=25)
    s.add_argument("--gap", type=float, default=3.0)
    s.add_argument("--seconds", type=float, default=80)
    s = sub.add_parser("http-get")
    s.add_argument("base")
    s.add_argument("--paths", default="/index.html")
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--interval", type=float, default=5.0)
    s.add_argument("--jitter", type=float, default=0.5)
    s.add_argument("--agent", default="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
    s = sub.add_parser("ntp-client")
    s.add_argument("server")
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--interval", type=float, default=10.0)
    a = p.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda *_: os._exit(124))
    signal.alarm(max(1, int(a.life)))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    fn = {"tcp-server": tcp_server, "dns-server": dns_server, "ntp-server": ntp_server, "web-server": web_server, "push": push,
          "beacon": beacon, "fallback": fallback, "lookups": lookups, "http-get": http_get,
          "ntp-client": ntp_client}[a.kind]
    return fn(a) or 0


if __name__ == "__main__":
    sys.exit(main())
