"""Write a reproducible synthetic pcap for benchmarking flow meters.

    python bench/gen_capture.py OUT.pcap [--packets 1000000] [--flows 50000] [--seed 1]

Exactly N packets of bidirectional TCP (handshake, data, FIN teardown, true seq/ack),
UDP, ICMP echo and DNS (real query/response messages) flows, ~10 % of them IPv6, all
interleaved on one clock over ~120 s. Addresses come from 198.18.0.0/15 and fd00::/8.
Data frames follow IMIX (7:4:1 of 64/594/1518 bytes, raised where headers do not fit);
handshake/teardown packets and DNS messages keep their natural sizes.

Speed matters (1M packets in seconds), so nothing is built per packet in Python: every
header layout is a numpy structured dtype, filled column-wise for all packets of that
layout and scattered into one pcap-sized buffer. Payload bytes are zero, which makes
every IPv4/TCP/UDP/ICMP checksum computable from the headers alone, so they are valid.
"""

import argparse
import collections
import socket
import subprocess
import sys
import time

import numpy as np

DURATION = 120.0
EPOCH = 1_700_000_000
KIND_SHARE = (0.55, 0.15, 0.10, 0.20)
KIND_MIN_PACKETS = (6, 2, 2, 2)      # tcp: SYN, SYN-ACK, ACK, FIN, FIN, ACK
TCP, UDP, ICMP, DNS = range(4)
V6_SHARE = 0.10
IMIX = ((64, 7), (594, 4), (1518, 1))
TCP_PORTS = ((443, 0.6), (80, 0.2), (22, 0.1), (25, 0.05), (8443, 0.05))
UDP_PORTS = ((443, 0.6), (51820, 0.2), (9000, 0.2))
QTYPES = ((1, 0.6), (28, 0.25), (16, 0.15))   # A, AAAA, TXT
TXT = b"v=spf1 -all"
SYN_OPTS = bytes.fromhex("020405b4010303080101" "0402")   # MSS 1460, NOP, WS 8, NOP, NOP, SACK-perm
V6_CLIENT, V6_SERVER = bytes.fromhex("fd00001800000000"), bytes.fromhex("fd00001900000000")
MAC_CLIENT, MAC_SERVER = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
U1, BE2, BE4, LE4 = "u1", ">u2", ">u4", "<u4"

REC = [("sec", LE4), ("usec", LE4), ("incl", LE4), ("orig", LE4)]
ETH = [("dst", U1, 6), ("src", U1, 6), ("type", BE2)]
IP4 = [("vihl", U1), ("tos", U1), ("len", BE2), ("id", BE2), ("frag", BE2), ("ttl", U1),
       ("proto", U1), ("csum", BE2), ("src", BE4), ("dst", BE4)]
IP6 = [("vtcfl", BE4), ("plen", BE2), ("nxt", U1), ("hlim", U1), ("src", U1, 16), ("dst", U1, 16)]
TCP_H = [("sport", BE2), ("dport", BE2), ("seq", BE4), ("ack", BE4), ("off", U1), ("flags", U1),
         ("win", BE2), ("csum", BE2), ("urp", BE2)]
UDP_H = [("sport", BE2), ("dport", BE2), ("len", BE2), ("csum", BE2)]
ICMP_H = [("type", U1), ("code", U1), ("csum", BE2), ("id", BE2), ("seq", BE2)]
DNS_H = [("id", BE2), ("flags", BE2), ("qd", BE2), ("an", BE2), ("ns", BE2), ("ar", BE2)]


def pick(rng, table, n):
    values, weights = zip(*table)
    return rng.choice(values, n, p=np.array(weights) / sum(weights))


def flow_table(rng, n_packets, n_flows):
    """Per-flow kind, endpoints, timing and packet count; shrinks the flow count if N cannot hold them."""
    mean_min = float(np.dot(KIND_SHARE, KIND_MIN_PACKETS))
    n_flows = max(1, min(n_flows, int(n_packets / (mean_min + 0.5))))
    kind = np.repeat(np.arange(4), np.diff(np.round(np.cumsum((0,) + KIND_SHARE) * n_flows).astype(int)))
    kind = rng.permutation(kind)
    count = np.array(KIND_MIN_PACKETS)[kind]
    extra = n_packets - count.sum()
    if extra < 0:
        sys.exit(f"--packets {n_packets} is too small: a TCP flow alone takes {KIND_MIN_PACKETS[TCP]}")
    weight = np.where(kind == DNS, 0.0, rng.lognormal(0.0, 1.5, n_flows))
    count += rng.multinomial(extra, weight / weight.sum())
    key = rng.choice(65534 * 28000, n_flows, replace=False)   # unique (client host, client port)
    start = rng.uniform(0, DURATION, n_flows)
    span = np.where(kind == DNS, rng.uniform(0.0005, 0.05, n_flows), rng.lognormal(0.0, 1.5, n_flows) * count / 20)
    return dict(
        kind=kind, count=count, v6=rng.random(n_flows) < V6_SHARE,
        client=1 + key // 28000, cport=32768 + key % 28000,
        server=1 + (4095 * rng.random(n_flows) ** 3).astype(np.int64),
        sport=np.select([kind == TCP, kind == UDP, kind == DNS],
                        [pick(rng, TCP_PORTS, n_flows), pick(rng, UDP_PORTS, n_flows), np.full(n_flows, 53)], 0),
        isn=rng.integers(0, 2**32, (n_flows, 2)), label=rng.integers(0, 2**20, n_flows),
        qtype=pick(rng, QTYPES, n_flows), qnum=rng.integers(0, 100000, n_flows),
        txid=rng.integers(0, 65536, n_flows), start=start, span=np.minimum(span, DURATION - start),
    )


def packet_table(rng, fl):
    """Expand flows into packets: direction, role, sizes, TCP seq/ack, then sort all by capture time."""
    f = np.repeat(np.arange(len(fl["count"])), fl["count"])
    first = np.cumsum(fl["count"]) - fl["count"]
    k = np.arange(len(f)) - first[f]
    n = fl["count"][f]
    kind, v6 = fl["kind"][f], fl["v6"][f]
    # direction 0 = client->server
    d = np.select([kind == ICMP, kind == DNS], [k % 2, k], (rng.random(len(f)) < 0.6).astype(np.int64))
    tcp = kind == TCP
    flags = np.select([k == 0, k == 1, (k == 2) | (k == n - 1), k == n - 3, k == n - 2],
                      [0x02, 0x12, 0x10, 0x11, 0x11], 0x18)   # SYN, SYN-ACK, ACK, FIN-ACK, FIN-ACK, else PSH-ACK
    d = np.where(tcp & ((k < 3) | (k >= n - 3)), np.select([k == 1, k == n - 2], [1, 1], 0), d)
    d[first] = 0   # the client speaks first in every flow
    control = tcp & (flags != 0x18)
    syn = tcp & (k < 2)
    dns_resp = (kind == DNS) & (k == 1)
    ip_len = np.where(v6, 40, 20)
    l4_len = np.select([tcp, kind == ICMP], [np.where(syn, 20 + len(SYN_OPTS), 20), 8], 8)
    dns_len = np.where(kind == DNS, dns_size(fl["qnum"][f], fl["qtype"][f], dns_resp), 0)
    hdr = 14 + ip_len + l4_len + dns_len
    imix = pick(rng, IMIX, len(f))
    frame = np.where(control | (kind == DNS), hdr, np.maximum(imix, hdr))
    echo_reply = np.flatnonzero((kind == ICMP) & (d == 1))
    frame[echo_reply] = frame[echo_reply - 1]
    payload = frame - hdr
    flags = np.where(tcp & (flags == 0x18) & (payload == 0), 0x10, flags)
    # TCP sequence space: SYN and FIN take one number each; every packet acks all the peer sent before it.
    seqlen = np.where(tcp, payload + (flags & 0x02 > 0) + (flags & 0x01 > 0), 0)
    sent = []
    for side in (0, 1):
        own = np.where(d == side, seqlen, 0)
        before = np.cumsum(own) - own
        sent.append(before - before[first][f])
    seq = fl["isn"][f, d] + np.where(d == 0, sent[0], sent[1])
    ack = np.where(flags == 2, 0, fl["isn"][f, 1 - d] + np.where(d == 0, sent[1], sent[0]))
    # increasing times within each flow without a sort: normalised running sums of exponential gaps
    gap = rng.exponential(size=len(f))
    gap[first] = 0.0
    elapsed = np.cumsum(gap)
    elapsed -= elapsed[first][f]
    total = elapsed[first + fl["count"] - 1] + rng.exponential(size=len(first))
    t_us = np.round((fl["start"][f] + fl["span"][f] * elapsed / total[f]) * 1e6).astype(np.int64)
    order = np.argsort(t_us, kind="stable")
    i = np.arange(len(f))
    ts = np.maximum.accumulate(t_us[order] - i) + i + EPOCH * 1_000_000   # strictly increasing
    cols = dict(f=f, k=k, d=d, kind=kind, v6=v6, syn=syn, dns_resp=dns_resp, flags=flags, frame=frame,
                seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF)
    return dict({name: col[order] for name, col in cols.items()}, ts=ts, ip_id=rng.integers(0, 65536, len(f)))


def qname_digits(qnum):
    return 1 + np.searchsorted([10, 100, 1000, 10000], qnum, side="right")


def rdata_len(qtype):
    return np.select([qtype == 1, qtype == 28], [4, 16], 1 + len(TXT))


def dns_size(qnum, qtype, resp):
    """Bytes of the DNS message: header, question host<n>.example.com, and for responses one answer."""
    question = 12 + (1 + 4 + qname_digits(qnum) + 1 + 7 + 1 + 3 + 1) + 4
    return question + np.where(resp, 12 + rdata_len(qtype), 0)


def ones_sum(b):
    """Per-row 16-bit one's-complement partial sum of a 2-D uint8 array (even width)."""
    return (b[:, 0::2].astype(np.uint64) << 8 | b[:, 1::2]).sum(axis=1)


def fold(s):
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def layout(v6, kind, syn, digits, qtype, resp):
    l4 = {TCP: TCP_H + ([("opts", U1, len(SYN_OPTS))] if syn else []), UDP: UDP_H, ICMP: ICMP_H, DNS: UDP_H}[kind]
    fields = [("rec", REC), ("eth", ETH), ("ip", IP6 if v6 else IP4), ("l4", l4)]
    if kind == DNS:
        dns = DNS_H + [("qname", U1, 18 + digits), ("qtype", BE2), ("qclass", BE2)]
        if resp:
            dns += [("aname", BE2), ("atype", BE2), ("aclass", BE2), ("ttl", BE4), ("rdlen", BE2),
                    ("rdata", U1, int(rdata_len(np.array(qtype))))]
        fields.append(("dns", dns))
    return np.dtype(fields)


def v6_addr(prefix, host):
    a = np.zeros((len(host), 16), np.uint8)
    a[:, :8] = np.frombuffer(prefix, np.uint8)
    a[:, 12:] = host.astype(">u4").view(np.uint8).reshape(-1, 4)
    return a


def build(rows, pk, fl, key):
    """All headers for packets `rows`, which share one layout `key`: a (len(rows), width) uint8 array."""
    v6, kind, syn, digits, qtype, resp = key
    h = np.zeros(len(rows), layout(*key))
    f, d, frame = pk["f"][rows], pk["d"][rows], pk["frame"][rows]
    fwd = d == 0
    rec, eth, ip, l4 = h["rec"], h["eth"], h["ip"], h["l4"]
    rec["sec"], rec["usec"] = divmod(pk["ts"][rows], 1_000_000)
    rec["incl"] = rec["orig"] = frame
    mac_c, mac_s = np.frombuffer(MAC_CLIENT, np.uint8), np.frombuffer(MAC_SERVER, np.uint8)
    eth["src"] = np.where(fwd[:, None], mac_c, mac_s)
    eth["dst"] = np.where(fwd[:, None], mac_s, mac_c)
    proto = {TCP: 6, UDP: 17, DNS: 17, ICMP: 58 if v6 else 1}[kind]
    ip_hdr = 40 if v6 else 20
    l4_total = frame - 14 - ip_hdr
    client, server = fl["client"][f], fl["server"][f]
    if kind == DNS:
        server = np.full(len(rows), 53)
    if v6:
        eth["type"] = 0x86DD
        ip["vtcfl"] = 0x60000000 | fl["label"][f]
        ip["plen"], ip["nxt"], ip["hlim"] = l4_total, proto, np.where(fwd, 64, 57)
        c, s = v6_addr(V6_CLIENT, client), v6_addr(V6_SERVER, server)
    else:
        eth["type"] = 0x0800
        ip["vihl"], ip["len"], ip["id"], ip["frag"] = 0x45, frame - 14, pk["ip_id"][rows], 0x4000
        ip["ttl"], ip["proto"] = np.where(fwd, 64, 57), proto
        c, s = 0xC6120000 + client, 0xC6130000 + server
    ip["src"] = np.where(fwd[:, None] if v6 else fwd, c, s)
    ip["dst"] = np.where(fwd[:, None] if v6 else fwd, s, c)
    cport, sport = fl["cport"][f], fl["sport"][f]
    if kind == ICMP:
        l4["type"] = np.where(fwd, 128, 129) if v6 else np.where(fwd, 8, 0)
        l4["id"], l4["seq"] = cport, pk["k"][rows] // 2 + 1
    else:
        l4["sport"], l4["dport"] = np.where(fwd, cport, sport), np.where(fwd, sport, cport)
    if kind == TCP:
        l4["seq"], l4["ack"], l4["flags"] = pk["seq"][rows], pk["ack"][rows], pk["flags"][rows]
        l4["off"] = (20 + len(SYN_OPTS) if syn else 20) // 4 << 4
        l4["win"] = np.where(fwd, 64240, 65535) if syn else np.where(fwd, 502, 1024)   # scaled by WS 8 after SYN
        if syn:
            l4["opts"] = np.frombuffer(SYN_OPTS, np.uint8)
            l4["opts"][:, 2:4] = np.frombuffer((1440 if v6 else 1460).to_bytes(2, "big"), np.uint8)
    if kind in (UDP, DNS):
        l4["len"] = l4_total
    if kind == DNS:
        fill_dns(h["dns"], fl, f, digits, qtype, resp)
    set_checksums(h, v6, kind, proto, l4_total)
    return h.view(np.uint8).reshape(len(rows), -1)


def fill_dns(m, fl, f, digits, qtype, resp):
    m["id"], m["flags"], m["qd"], m["an"] = fl["txid"][f], 0x8180 if resp else 0x0100, 1, int(resp)
    qname = m["qname"]
    qname[:, 0] = 4 + digits
    qname[:, 1:5] = np.frombuffer(b"host", np.uint8)
    qname[:, 5:5 + digits] = 48 + fl["qnum"][f][:, None] // 10 ** np.arange(digits - 1, -1, -1) % 10
    qname[:, 5 + digits:] = np.frombuffer(b"\x07example\x03com\x00", np.uint8)
    m["qtype"], m["qclass"] = qtype, 1
    if resp:
        m["aname"], m["atype"], m["aclass"], m["ttl"] = 0xC00C, qtype, 1, 300
        m["rdlen"] = m.dtype["rdata"].shape[0]
        answer = fl["qnum"][f]
        if qtype == 1:
            m["rdata"] = (0xC6130000 + answer % 65536).astype(">u4").view(np.uint8).reshape(-1, 4)
        elif qtype == 28:
            m["rdata"] = v6_addr(V6_SERVER, answer)
        else:
            m["rdata"] = np.frombuffer(bytes([len(TXT)]) + TXT, np.uint8)


def set_checksums(h, v6, kind, proto, l4_total):
    """IPv4 header and L4 checksums; the zero payload adds nothing but its length in the pseudo-header."""
    raw = h.view(np.uint8).reshape(len(h), -1)
    ip_off, l4_off = h.dtype.fields["ip"][1], h.dtype.fields["l4"][1]
    if not v6:
        h["ip"]["csum"] = fold(ones_sum(raw[:, ip_off:ip_off + 20]))
    l4 = raw[:, l4_off:]
    if l4.shape[1] % 2:
        l4 = np.pad(l4, ((0, 0), (0, 1)))
    s = ones_sum(l4)
    if v6 or kind != ICMP:
        addr = raw[:, ip_off + 8:ip_off + 40] if v6 else raw[:, ip_off + 12:ip_off + 20]
        s += ones_sum(addr) + proto + l4_total.astype(np.uint64)
    csum = fold(s)
    if kind in (UDP, DNS):
        csum[csum == 0] = 0xFFFF
    h["l4"]["csum"] = csum


def generate(n_packets, n_flows, seed):
    """Return (pcap bytes as a uint8 array, number of flows)."""
    rng = np.random.default_rng(seed)
    fl = flow_table(rng, n_packets, n_flows)
    pk = packet_table(rng, fl)
    rec_len = 16 + pk["frame"]
    offset = 24 + np.cumsum(rec_len) - rec_len
    buf = np.zeros(24 + rec_len.sum(), np.uint8)
    # magic, version 2.4, zone, sigfigs, snaplen, linktype Ethernet
    buf[:24] = np.array([0xA1B2C3D4, 2 | 4 << 16, 0, 0, 65535, 1], "<u4").view(np.uint8)
    dns = pk["kind"] == DNS
    digits = np.where(dns, qname_digits(fl["qnum"][pk["f"]]), 0)
    qtype = np.where(dns, fl["qtype"][pk["f"]], 0)
    # one integer per header layout: v6, kind, syn, dns_resp, qname digits, qtype
    code = pk["v6"] | pk["kind"] << 1 | pk["syn"] << 3 | pk["dns_resp"] << 4 | digits << 5 | qtype << 8
    by_code = np.argsort(code, kind="stable")   # rows stay in file order within a layout
    uniq, bounds = np.unique(code[by_code], return_index=True)
    for c, lo, hi in zip(uniq.tolist(), bounds, np.append(bounds[1:], n_packets)):
        rows = by_code[lo:hi]
        hdr = build(rows, pk, fl, (bool(c & 1), c >> 1 & 3, bool(c >> 3 & 1), c >> 5 & 7, c >> 8, bool(c >> 4 & 1)))
        for s in range(0, len(rows), 1 << 16):   # chunked so the index array stays small
            part = slice(s, s + (1 << 16))
            buf[offset[rows[part], None] + np.arange(hdr.shape[1])] = hdr[part]
    return buf, len(fl["count"])


def expect(ok, why):
    if not ok:
        sys.exit(f"check failed: {why}")


def check(path, n_packets, sample=2000):
    """Read the capture back with dpkt, tshark and capinfos; exit non-zero on any disagreement."""
    import dpkt

    seen, mine = collections.Counter(), []
    with open(path, "rb") as fh:
        for i, (_, frame) in zip(range(sample), dpkt.pcap.Reader(fh)):
            eth = dpkt.ethernet.Ethernet(frame)
            ip, l4 = eth.data, eth.data.data
            v6 = isinstance(ip, dpkt.ip6.IP6)
            expect(isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)), f"packet {i + 1} is not IP")
            expect(isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)),
                   f"packet {i + 1} has no TCP/UDP/ICMP header")
            ip_total = ip.plen + 40 if v6 else ip.len
            expect(ip_total == len(frame) - 14, f"packet {i + 1}: IP length does not match the frame")
            if isinstance(l4, dpkt.udp.UDP):
                expect(l4.ulen == ip_total - (40 if v6 else 20), f"packet {i + 1}: UDP length does not match IP")
            name = ""
            if isinstance(l4, dpkt.udp.UDP) and 53 in (l4.sport, l4.dport):
                name = dpkt.dns.DNS(l4.data).qd[0].name
                l4 = "dns"
            seen[("ip6 " if v6 else "ip4 ") + (l4 if isinstance(l4, str) else type(l4).__name__.lower())] += 1
            src = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, ip.src)
            mine.append((src, name))
    out = subprocess.run(["tshark", "-r", path, "-c", str(sample), "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
                          "-e", "dns.qry.name"], capture_output=True, text=True, check=True).stdout
    theirs = [(v4 or v6, name) for v4, v6, name in (line.split("\t") for line in out.splitlines())]
    expect(theirs == mine, "tshark and dpkt disagree on addresses or DNS names")
    info = subprocess.run(["capinfos", "-c", "-M", path], capture_output=True, text=True, check=True).stdout
    expect(f"Number of packets:   {n_packets}" in info, info)
    print(f"check ok: first {len(mine)} packets agree in dpkt and tshark ({dict(seen)}); capinfos counts {n_packets}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="read the result back with dpkt, tshark and capinfos")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    buf, flows = generate(a.packets, a.flows, a.seed)
    with open(a.out, "wb") as fh:
        fh.write(buf.data)
    print(f"{a.out}: {a.packets} packets, {flows} flows, {len(buf)} bytes, {time.perf_counter() - t0:.1f} s")
    if a.check:
        check(a.out, a.packets)


if __name__ == "__main__":
    main()
