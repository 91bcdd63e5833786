"""Build pcaps/demo-egress.pcap, a small reproducible capture for flowsense.

Internal hosts in 198.18.10.0/24 (and fd00:18:10::/64) talk to "external" hosts
in 198.19.0.0/16 (and fd00:19::/32): benign background traffic plus five
suspicious stories whose ground truth is written to demo-egress.labels.jsonl.
Everything is crafted in memory from a fixed seed and a fixed base time, so
running `python pcaps/make_demo.py` again gives a byte-identical file.
"""

import base64
import json
import random
import struct
from datetime import datetime, timezone
from pathlib import Path

from scapy.all import ARP, DNS, DNSQR, DNSRR, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw, wrpcap
from scapy.layers.ntp import NTPHeader

HERE = Path(__file__).resolve().parent
PCAP = HERE / "demo-egress.pcap"
LABELS = HERE / "demo-egress.labels.jsonl"

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp()
SPAN = 35 * 60  # seconds of capture
NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01

GW, GW6 = "198.18.10.1", "fd00:18:10::1"  # router and DNS resolver
WEB, WEB6 = "198.19.1.10", "fd00:19:1::10"
UPDATES = "198.19.2.20"
NTP_SERVER = "198.19.3.3"

rng = random.Random(20260302)
frames = []


# --- frame plumbing ---------------------------------------------------------

def is_internal(addr):
    return addr.startswith(("198.18.10.", "fd00:18:10:"))


def mac(addr):
    """On-link hosts get 02:00:00:12:0a:NN (NN = last octet, or last IPv6 group
    read as decimal so dual-stack hosts share a MAC); anything else is behind the router."""
    host = addr if is_internal(addr) else GW
    return "02:00:00:12:0a:%02x" % int(host.replace(":", ".").rsplit(".", 1)[1])


def add(t, frame):
    frame.time = round(T0 + t, 6)
    frames.append(frame)


def emit(t, pkt, vlan=None):
    """Wrap an IP/IPv6 packet in Ethernet (optionally 802.1Q) and queue it at t seconds."""
    eth = Ether(src=mac(pkt.src), dst=mac(pkt.dst))
    add(t, eth / Dot1Q(vlan=vlan) / pkt if vlan else eth / pkt)


def ip(src, dst):
    """Linux-like IP header: TTL 64 leaving our hosts, 54 for replies from far away."""
    ttl = 64 if is_internal(src) else 54
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=ttl)
    return IP(src=src, dst=dst, ttl=ttl, id=rng.randrange(65536), flags="DF")


def tcp(t, src, dst, sport, dport, flags, seq, ack=0, data=b"", window=64240):
    opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)] if "S" in flags else []
    seg = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window, options=opts)
    emit(t, ip(src, dst) / seg / (Raw(data) if data else b""))


def tcp_session(t, cli, srv, dport, messages, rtt=0.03):
    """Complete conversation: handshake, (sender, bytes) messages each ACKed, FIN close.
    Returns the time of the last packet."""
    port = {cli: rng.randint(32768, 60999), srv: dport}
    seq = {cli: rng.getrandbits(32), srv: rng.getrandbits(32)}

    def send(t, a, b, flags, data=b""):
        tcp(t, a, b, port[a], port[b], flags, seq[a], seq[b] if "A" in flags else 0, data,
            64240 if "S" in flags else 502)
        seq[a] = (seq[a] + len(data) + ("S" in flags or "F" in flags)) % 2**32

    send(t, cli, srv, "S")
    send(t := t + rtt, srv, cli, "SA")
    send(t := t + 0.0002, cli, srv, "A")
    for sender, data in messages:
        receiver = srv if sender == cli else cli
        t += rng.uniform(0.005, 0.05)
        for i in range(0, len(data), 1448):
            send(t := t + 0.0004, sender, receiver, "PA", data[i:i + 1448])
        send(t := t + rtt / 2, receiver, sender, "A")
    send(t := t + rng.uniform(0.05, 0.5), cli, srv, "FA")
    send(t := t + rtt, srv, cli, "FA")
    send(t := t + 0.0002, cli, srv, "A")
    return t


def dns(t, cli, name, qtype, answers, rtt=0.004):
    """One query to the resolver and its answer."""
    resolver = GW6 if ":" in cli else GW
    sport, qid = rng.randint(32768, 60999), rng.randrange(65536)
    q = DNSQR(qname=name, qtype=qtype)
    an = [DNSRR(rrname=name, type=qtype, ttl=300, rdata=a) for a in answers]
    emit(t, ip(cli, resolver) / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=q))
    emit(t + rtt, ip(resolver, cli) / UDP(sport=53, dport=sport) / DNS(id=qid, qr=1, rd=1, ra=1, qd=q, an=an))


def icmp_echo(t, src, dst, ident, seq, payload, reply_payload=None, rtt=0.02):
    """Echo request and reply; the reply echoes the payload unless told otherwise."""
    emit(t, ip(src, dst) / ICMP(type=8, id=ident, seq=seq) / payload)
    emit(t + rtt, ip(dst, src) / ICMP(type=0, id=ident, seq=seq) / (reply_payload or payload))


def linux_ping(t, src, dst, ident, count, interval=1.0):
    """iputils ping: 56 data bytes = struct timeval (16 bytes on 64-bit) + 0x10..0x37."""
    for seq in range(1, count + 1):
        now = T0 + t + (seq - 1) * interval
        stamp = struct.pack("<qq", int(now), int(now % 1 * 1e6))
        icmp_echo(t + (seq - 1) * interval, src, dst, ident, seq, stamp + bytes(range(0x10, 0x38)),
                  rtt=rng.uniform(0.01, 0.03) if not is_internal(dst) else 0.0004)


def arp(t, asker, target):
    """Who-has broadcast and is-at reply (non-IP frames)."""
    add(t, Ether(src=mac(asker), dst="ff:ff:ff:ff:ff:ff") /
        ARP(op=1, hwsrc=mac(asker), psrc=asker, pdst=target))
    add(t + 0.0003, Ether(src=mac(target), dst=mac(asker)) /
        ARP(op=2, hwsrc=mac(target), psrc=target, hwdst=mac(asker), pdst=asker))


# --- TLS and HTTP payloads ----------------------------------------------------

def tls_record(ctype, body, version=0x0303):
    return struct.pack("!BHH", ctype, version, len(body)) + body


def tls_ext(etype, body):
    return struct.pack("!HH", etype, len(body)) + body


def client_hello(sni, size=None):
    """Parseable ClientHello (record header 16 03 01) with SNI, padded to `size` bytes if given."""
    name = sni.encode()
    exts = tls_ext(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    exts += tls_ext(0x002B, b"\x02\x03\x04")  # supported_versions: TLS 1.3
    hello = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
             + b"\x00\x06\x13\x01\x13\x02\x13\x03" + b"\x01\x00")

    def record(exts):
        body = hello + struct.pack("!H", len(exts)) + exts
        return tls_record(0x16, b"\x01" + len(body).to_bytes(3, "big") + body, 0x0301)

    if size:
        exts += tls_ext(0x0015, bytes(size - len(record(exts)) - 4))  # padding extension
    return record(exts)


def server_flight(size):
    """ServerHello + ChangeCipherSpec + one encrypted record, `size` bytes in total."""
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + b"\x13\x01\x00"
            + struct.pack("!H", 6) + tls_ext(0x002B, b"\x03\x04"))
    head = tls_record(0x16, b"\x02" + len(body).to_bytes(3, "big") + body) + tls_record(0x14, b"\x01")
    return head + app_data(size - len(head))


def app_data(size):
    return tls_record(0x17, rng.randbytes(size - 5))


def http_get(host, path, agent="Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0"):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode()


def http_ok(body, ctype):
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def https(t, cli, srv, sni):
    """Browser-ish TLS session: hello, server flight, request, larger response."""
    return tcp_session(t, cli, srv, 443, [
        (cli, client_hello(sni)),
        (srv, server_flight(rng.randint(1500, 4000))),
        (cli, app_data(rng.randint(300, 700))),
        (srv, app_data(rng.randint(2000, 9000))),
    ])


# --- benign background ----------------------------------------------------------

def browsing():
    """Several desktops resolve names (A and AAAA) and fetch pages over 443 and 80."""
    desktops = ["198.18.10.20", "198.18.10.22", "198.18.10.23", "198.18.10.24"]
    page = b"<!doctype html><html><head><title>Example</title></head><body><p>Hello.</p></body></html>\n"
    for _ in range(36):
        t = rng.uniform(5, SPAN - 30)
        host = rng.choice(desktops)
        name = rng.choice(["example.com", "www.example.org"])
        dns(t, host, name, "A", [WEB])
        dns(t + 0.001, host, name, "AAAA", [WEB6])
        if rng.random() < 0.7:
            https(t + 0.01, host, WEB, name)
        else:
            tcp_session(t + 0.01, host, WEB, 80, [(host, http_get(name, "/")), (WEB, http_ok(page, "text/html"))])


def ipv6_browsing():
    """A dual-stack desktop resolving AAAA over IPv6 and using TLS to an IPv6 server."""
    for t in (200.0, 905.0, 1710.0):
        dns(t, "fd00:18:10::23", "example.com", "AAAA", [WEB6])
        https(t + 0.01, "fd00:18:10::23", WEB6, "example.com")


def update_check():
    """An agent on .21 polls its update server every 10 minutes: regular but benign."""
    host, body = "198.18.10.21", b'{"latest":"4.2.1","update":false}'
    request = http_get("updates.example.net", "/v1/check?product=agent&version=4.2.1", "agent-updater/4.2.1")
    for t in range(90, SPAN, 600):
        dns(t, host, "updates.example.net", "A", [UPDATES])
        tcp_session(t + 0.01, host, UPDATES, 80, [
            (host, request),
            (UPDATES, http_ok(body, "application/json")),
        ])


def ntp():
    """.30 syncs time every 64 s; its frames are tagged with 802.1Q VLAN 10."""
    host, sport = "198.18.10.30", 123
    for t in range(7, SPAN, 64):
        sent = T0 + t + NTP_EPOCH
        req = NTPHeader(version=4, mode=3, stratum=0, poll=6, precision=-20, id="0.0.0.0", orig=0, sent=sent)
        rep = NTPHeader(version=4, mode=4, stratum=2, poll=6, precision=-23, id="198.19.3.1",
                        ref=sent - 30, orig=sent, recv=sent + 0.009, sent=sent + 0.0091)
        emit(t, ip(host, NTP_SERVER) / UDP(sport=sport, dport=123) / req, vlan=10)
        emit(t + 0.018, ip(NTP_SERVER, host) / UDP(sport=123, dport=sport) / rep, vlan=10)


def monitoring():
    """Monitoring host .5 pings five internal hosts once a minute."""
    targets = ["198.18.10.20", "198.18.10.21", "198.18.10.22", "198.18.10.23", "198.18.10.24"]
    for n, t in enumerate(range(3, SPAN, 60), start=1):
        for i, target in enumerate(targets):
            linux_ping(t + i * 0.2, "198.18.10.5", target, 0x0500 + i + n * 8, 1)


def user_pings_and_arp():
    """A couple of manual `ping -c 4` runs, and ARP chatter on the LAN."""
    linux_ping(410.0, "198.18.10.22", WEB, 0x2201, 4)
    linux_ping(1530.0, "198.18.10.23", WEB, 0x2301, 4)
    arp(0.05, "198.18.10.20", GW)
    arp(600.0, "198.18.10.5", "198.18.10.24")
    arp(1199.5, "198.18.10.53", GW)
    arp(1800.0, GW, "198.18.10.21")


# --- suspicious stories -----------------------------------------------------------
# Each returns (src, dst); main() takes start/end from the frames the story added.

def beacon():
    """(a) New TLS connection every 60 s +/- 2 %, ~200-250 bytes out, ~100-150 back."""
    src, dst, t = "198.18.10.50", "198.19.66.6", 120.0
    while t < SPAN - 65:
        tcp_session(t, src, dst, 443, [
            (src, client_hello("api.c2-demo.test", rng.randint(200, 250))),
            (dst, server_flight(rng.randint(110, 150))),
        ])
        t += 60 * rng.uniform(0.98, 1.02)
    return src, dst


def icmp_tunnel():
    """(b) Echo every 2-3 s with 64 random bytes; replies carry other random bytes,
    and every fifth exchange starts with the ptunnel-ng magic 0xdeadc0de."""
    src, dst, t, seq = "198.18.10.51", "198.19.77.7", 480.0, 0
    while t < 1080:
        seq += 1
        magic = b"\xde\xad\xc0\xde" if seq % 5 == 1 else b""
        out = magic + rng.randbytes(64 - len(magic))
        back = magic + rng.randbytes(64 - len(magic))
        icmp_echo(t, src, dst, 0x7A11, seq, out, back, rtt=rng.uniform(0.03, 0.06))
        t += rng.uniform(2, 3)
    return src, dst


def dns_tunnel():
    """(c) ~1 TXT query/s for 4 minutes: 50-60 char base32 labels out, base64 TXT back."""
    src, t = "198.18.10.52", 720.0
    while t < 960:
        label = base64.b32encode(rng.randbytes(rng.randint(32, 37))).decode().rstrip("=").lower()
        txt = base64.b64encode(rng.randbytes(rng.randint(60, 150))).decode()
        dns(t, src, f"{label}.t.exfil-demo.test", "TXT", [[txt]], rtt=rng.uniform(0.02, 0.08))
        t += rng.uniform(0.8, 1.2)
    return src, GW


def deny_then_fallback():
    """(d) Three SYNs to 443 each reset by the far side, then 8443 works ~30 s later,
    then the host talks ICMP to the same destination."""
    src, dst = "198.18.10.53", "198.19.88.8"
    for t in (1200.0, 1203.1, 1209.4):
        sport, isn = rng.randint(32768, 60999), rng.getrandbits(32)
        tcp(t, src, dst, sport, 443, "S", isn)
        tcp(t + 0.021, dst, src, 443, sport, "RA", 0, isn + 1, window=0)
    tcp_session(1240.0, src, dst, 8443, [
        (src, client_hello("portal.fallback-demo.test")),
        (dst, server_flight(rng.randint(1200, 2000))),
        (src, app_data(rng.randint(400, 900))),
        (dst, app_data(rng.randint(600, 1500))),
    ])
    linux_ping(1320.0, src, dst, 0x5301, 10)
    return src, dst


def scan():
    """(e) SYN scan of 200 ports in under 20 s: closed ports RST-ACK, the open ones
    SYN-ACK and the scanner resets them."""
    src, dst, t = "198.18.10.54", "198.19.99.9", 1500.0
    open_ports = {22, 80, 443}
    ports = sorted(open_ports) + rng.sample(sorted(set(range(1, 1025)) - open_ports), 197)
    rng.shuffle(ports)
    sport, isn = rng.randint(40000, 60000), rng.getrandbits(32)
    times = sorted(rng.uniform(0, 19.5) for _ in ports)
    for port, dt in zip(ports, times):
        tcp(t + dt, src, dst, sport, port, "S", isn, window=1024)
        if port in open_ports:
            tcp(t + dt + 0.02, dst, src, port, sport, "SA", rng.getrandbits(32), isn + 1)
            tcp(t + dt + 0.0201, src, dst, sport, port, "R", isn + 1, window=0)
        else:
            tcp(t + dt + 0.02, dst, src, port, sport, "RA", 0, isn + 1, window=0)
    return src, dst


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


BENIGN_HOSTS = ("198.18.10.5", "198.18.10.20", "198.18.10.21", "198.18.10.22", "198.18.10.23", "198.18.10.24",
                "198.18.10.30", "fd00:18:10::23")


def benign_labels():
    """Hosts of the background stories: any alert from them is a false positive."""
    return [{"story": f"benign {host}", "src": host, "dst": None, "start": iso(T0), "end": iso(T0 + SPAN),
             "expected": "no alert", "rule": None, "analytics": []} for host in BENIGN_HOSTS]


def main():
    for background in (browsing, ipv6_browsing, update_check, ntp, monitoring, user_pings_and_arp):
        background()
    stories = [  # (story, function, expected, rule id, analytics)
        ("beacon", beacon, "AN0597 beacon", "beacon", ["AN0597"]),
        ("icmp_tunnel", icmp_tunnel, "AN1258 ICMP tunnel", "icmp_tunnel", ["AN1258"]),
        ("dns_tunnel", dns_tunnel, "DNS tunnel", "dns_tunnel", []),
        ("deny_then_fallback", deny_then_fallback, "AN1376/AN1377 deny then fallback", "deny_fallback",
         ["AN1377", "AN1376"]),
        ("scan", scan, "AN0081 scan", "scan", ["AN0081"]),
    ]
    labels = []
    for name, story, expected, rule, analytics in stories:
        first = len(frames)
        src, dst = story()
        times = [f.time for f in frames[first:]]
        labels.append({"story": name, "src": src, "dst": dst, "start": iso(min(times)),
                       "end": iso(max(times)), "expected": expected, "rule": rule, "analytics": analytics})
    labels += benign_labels()
    frames.sort(key=lambda f: f.time)
    wrpcap(str(PCAP), frames)
    LABELS.write_text("".join(json.dumps(label) + "\n" for label in labels))
    print(f"wrote {len(frames)} packets to {PCAP} and {len(labels)} labels to {LABELS}")


if __name__ == "__main__":
    main()
