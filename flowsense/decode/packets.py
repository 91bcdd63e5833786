"""FRAME batch -> PACKET batch (+ DNS batch), one Numba call per batch.

IPv4 and IPv6 (bounded extension-header walk), TCP, UDP, SCTP ports, ICMP/ICMPv6 fields, DNS over
UDP/TCP on 53/5353/5355.  Each frame yields exactly one PACKET row, so nothing is lost silently:
a frame that is not IP has ``ip_ver == 0``; a damaged layer sets its weird bit and the layers
below it keep what they decoded.  The first fragment carries the ports; later ones carry none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from flowsense.decode.bytes import head, u16, u32, u64
from flowsense.decode.dns import is_dns_port, parse_dns
from flowsense.decode.l2 import NOT_IP, SNIFF, link_layer
from flowsense.schema import DNS, PACKET
from flowsense.weird import BIT, WEIRDS

W_TRUNC_IP = 1 << BIT["truncated_IP"]
W_BAD_VER = 1 << BIT["bad_IP_version"]
W_BAD_IHL = 1 << BIT["bad_IP_header_len"]
W_LEN_LT_HDR = 1 << BIT["IP_len_lt_header"]
W_LEN_ZERO = 1 << BIT["IP_len_zero"]
W_PAYLOAD_TRUNC = 1 << BIT["IP_payload_truncated"]
W_BAD_EXT = 1 << BIT["bad_IPv6_ext_header"]
W_EXT_LONG = 1 << BIT["IPv6_ext_chain_too_long"]
W_TRUNC_TCP = 1 << BIT["truncated_TCP_header"]
W_BAD_TCP_LEN = 1 << BIT["bad_TCP_header_len"]
W_TRUNC_UDP = 1 << BIT["truncated_UDP_header"]
W_BAD_UDP_LEN = 1 << BIT["bad_UDP_len"]
W_TRUNC_ICMP = 1 << BIT["truncated_ICMP_header"]

MAX_EXT_HEADERS = 8
PAYLOAD_KEEP = 128     # ICMP payload bytes kept per packet for the feature stage
BLOB_PER_FRAME = 256   # blob bytes reserved per frame (DNS name <= 255 or ICMP slice <= 128)
IPV4_MAPPED = np.uint64(0xFFFF00000000)

PROTO_NAMES = {1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
               51: "ah", 58: "icmp6", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp"}


@nb.njit(cache=True, inline="always")
def has_echo_id(proto, icmp_type):
    """ICMP types whose second header word is (identifier, sequence)."""
    if proto == 1:
        return icmp_type == 0 or icmp_type == 8 or (13 <= icmp_type <= 18)
    return icmp_type == 128 or icmp_type == 129


@nb.njit(cache=True)
def _ipv4(b, p, end, r):
    """Returns (l4 offset, ip end within capture, declared ip end) or l4 offset -1."""
    if end - p < 20:
        r.weird |= W_TRUNC_IP
        return -1, 0, 0
    r.ip_ver = 4
    r.src_lo = IPV4_MAPPED | np.uint64(u32(b, p + 12))
    r.dst_lo = IPV4_MAPPED | np.uint64(u32(b, p + 16))
    r.proto = b[p + 9]
    r.ttl = b[p + 8]
    r.ip_id = u16(b, p + 4)
    ihl = (b[p] & 15) * 4
    if ihl < 20 or p + ihl > end:
        r.weird |= W_BAD_IHL
        return -1, 0, 0
    total = u16(b, p + 2)
    if total == 0:
        r.weird |= W_LEN_ZERO
        total = end - p
    elif total < ihl:
        r.weird |= W_LEN_LT_HDR
        return -1, 0, 0
    r.ip_len = total
    frag = u16(b, p + 6)
    if frag & 0x1FFF:
        r.frag = 2
    elif frag & 0x2000:
        r.frag = 1
    declared_end = p + total
    if declared_end > end:
        r.weird |= W_PAYLOAD_TRUNC
    return p + ihl, min(declared_end, end), declared_end


@nb.njit(cache=True)
def _ipv6(b, p, end, r):
    if end - p < 40:
        r.weird |= W_TRUNC_IP
        return -1, 0, 0
    r.ip_ver = 6
    r.src_hi = u64(b, p + 8)
    r.src_lo = u64(b, p + 16)
    r.dst_hi = u64(b, p + 24)
    r.dst_lo = u64(b, p + 32)
    r.ttl = b[p + 7]
    nh = np.int64(b[p + 6])
    plen = u16(b, p + 4)
    if plen == 0 and nh != 59:
        r.weird |= W_LEN_ZERO
        plen = end - p - 40
    r.ip_len = 40 + plen
    declared_end = p + 40 + plen
    if declared_end > end:
        r.weird |= W_PAYLOAD_TRUNC
    stop = min(declared_end, end)
    q = p + 40
    for _ in range(MAX_EXT_HEADERS):
        if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140 or nh == 51:
            if q + 2 > stop:
                r.weird |= W_BAD_EXT
                r.proto = nh
                return -1, 0, 0
            hlen = (np.int64(b[q + 1]) + 2) * 4 if nh == 51 else (np.int64(b[q + 1]) + 1) * 8
            nh = np.int64(b[q])
            q += hlen
        elif nh == 44:
            if q + 8 > stop:
                r.weird |= W_BAD_EXT
                r.proto = nh
                return -1, 0, 0
            off_m = u16(b, q + 2)
            r.ip_id = u16(b, q + 6)
            nh = np.int64(b[q])
            q += 8
            if off_m >> 3:
                r.frag = 2
            elif off_m & 1:
                r.frag = 1
        else:
            break
    else:
        r.weird |= W_EXT_LONG
    r.proto = nh
    if q > stop:
        r.weird |= W_BAD_EXT
        return -1, 0, 0
    return q, stop, declared_end


@nb.njit(cache=True)
def _transport(b, q, stop, declared_end, r, blob, bp):
    """Ports, flags, ICMP fields and payload head.  Returns (payload offset or -1, blob used)."""
    avail = stop - q
    declared = declared_end - q
    proto = r.proto
    if proto == 6 or proto == 17 or proto == 132:
        if avail >= 4:
            r.sport = u16(b, q)
            r.dport = u16(b, q + 2)
    if proto == 6:
        if avail < 20:
            r.weird |= W_TRUNC_TCP
            return -1, 0
        doff = (b[q + 12] >> 4) * 4
        r.tcp_seq = u32(b, q + 4)
        r.tcp_flags = b[q + 13]
        r.tcp_win = u16(b, q + 14)
        if doff < 20:
            r.weird |= W_BAD_TCP_LEN
            return -1, 0
        if doff > avail:
            r.weird |= W_TRUNC_TCP if doff <= declared else W_BAD_TCP_LEN
            return -1, 0
        r.l4_len = max(declared - doff, 0)
        return q + doff, 0
    if proto == 17:
        if avail < 8:
            r.weird |= W_TRUNC_UDP
            return -1, 0
        ulen = u16(b, q + 4)
        if ulen < 8 or ulen > declared:
            r.weird |= W_BAD_UDP_LEN
            r.l4_len = max(declared - 8, 0)
        else:
            r.l4_len = ulen - 8
        return q + 8, 0
    if proto == 1 or proto == 58:
        if avail < 8:
            r.weird |= W_TRUNC_ICMP
            if avail >= 2:
                r.icmp_type = b[q]
                r.icmp_code = b[q + 1]
            return -1, 0
        r.icmp_type = b[q]
        r.icmp_code = b[q + 1]
        if has_echo_id(proto, r.icmp_type):
            r.icmp_id = u16(b, q + 4)
            r.icmp_seq = u16(b, q + 6)
        r.l4_len = max(declared - 8, 0)
        keep = min(PAYLOAD_KEEP, stop - q - 8)
        if keep > 0 and bp + keep <= blob.shape[0]:
            blob[bp:bp + keep] = b[q + 8:q + 8 + keep]
            r.pl_off = bp
            r.pl_len = keep
            return q + 8, keep
        return q + 8, 0
    if proto == 132 and avail >= 12:
        r.l4_len = max(declared - 12, 0)
        return q + 12, 0
    return -1, 0


@nb.njit(cache=True)
def _dns(b, pay, stop, r, d, blob, bp):
    """DNS row for a UDP/TCP packet on a DNS port; returns blob bytes used."""
    d.ts = r.ts
    d.file_id = r.file_id
    d.frame_no = r.frame_no
    d.src_hi = r.src_hi
    d.src_lo = r.src_lo
    d.dst_hi = r.dst_hi
    d.dst_lo = r.dst_lo
    d.sport = r.sport
    d.dport = r.dport
    d.proto = r.proto
    if r.proto == 6:
        used = parse_dns(b, pay + 2, stop, u16(b, pay), d, blob, bp)
    else:
        used = parse_dns(b, pay, stop, r.l4_len, d, blob, bp)
    r.weird |= d.weird
    return used


@nb.njit(cache=True)
def decode_batch(buf, frames, pk, dns, blob, weird_counts):
    """Decode every frame into ``pk`` (same length); DNS messages into ``dns``.
    Returns (DNS rows, blob bytes used)."""
    nd = 0
    bp = 0
    for i in range(frames.shape[0]):
        f = frames[i]
        r = pk[i]
        r.ts = f.ts
        r.file_id = f.file_id
        r.frame_no = f.frame_no
        r.link = f.link
        r.wire_len = f.wire_len
        r.cap_len = f.cap_len
        start = f.off
        p, end, expect = link_layer(buf, start, start + f.cap_len, f.link, r)
        if expect != NOT_IP:
            if p >= end:
                r.weird |= W_TRUNC_IP
            else:
                version = buf[p] >> 4
                if expect == SNIFF and (version == 4 or version == 6):
                    expect = version
                if version != expect:
                    r.weird |= W_BAD_VER
                else:
                    if version == 4:
                        q, stop, declared_end = _ipv4(buf, p, end, r)
                    else:
                        q, stop, declared_end = _ipv6(buf, p, end, r)
                    if q >= 0 and r.frag != 2:
                        pay, used = _transport(buf, q, stop, declared_end, r, blob, bp)
                        bp += used
                        if pay >= 0:
                            r.head, r.head_len = head(buf, pay, stop)
                            if (r.proto == 17 or (r.proto == 6 and stop - pay >= 2)) and \
                                    (is_dns_port(r.sport) or is_dns_port(r.dport)):
                                bp += _dns(buf, pay, stop, r, dns[nd], blob, bp)
                                nd += 1
        w = r.weird
        bit = 0
        while w:
            if w & 1:
                weird_counts[bit] += 1
            w >>= 1
            bit += 1
    return nd, bp


@dataclass
class Decoded:
    """One decoded batch: PACKET rows, DNS rows and the blob both reference."""
    packets: np.ndarray
    dns: np.ndarray
    blob: np.ndarray

    def split(self, horizon: int) -> tuple[Decoded, Decoded]:
        """Rows at or before ``horizon`` and the rest; both keep referencing the same blob."""
        p, d = self.packets["ts"] <= horizon, self.dns["ts"] <= horizon
        return (Decoded(self.packets[p], self.dns[d], self.blob),
                Decoded(self.packets[~p], self.dns[~d], self.blob))

    @staticmethod
    def merge(parts: list[Decoded]) -> Decoded:
        """Concatenate (rebasing blob offsets) and order by time; ties keep input order."""
        packets, dns, blobs, base = [], [], [], 0
        for part in parts:
            pk, dn = part.packets.copy(), part.dns.copy()
            pk["pl_off"] += base
            dn["qname_off"] += base
            packets.append(pk)
            dns.append(dn)
            blobs.append(part.blob)
            base += len(part.blob)
        pk, dn = np.concatenate(packets), np.concatenate(dns)
        return Decoded(pk[np.argsort(pk["ts"], kind="stable")], dn[np.argsort(dn["ts"], kind="stable")],
                       np.concatenate(blobs))


class Decoder:
    """Owns the weird counters of a run; ``decode`` is pure apart from counting."""

    def __init__(self):
        self.weird_counts = np.zeros(len(WEIRDS), np.int64)

    def decode(self, buf: np.ndarray, frames: np.ndarray) -> Decoded:
        n = len(frames)
        pk = PACKET.empty(n)
        dns = DNS.empty(n)
        blob = np.empty(n * BLOB_PER_FRAME, np.uint8)
        nd, used = decode_batch(buf, frames, pk, dns, blob, self.weird_counts)
        return Decoded(pk, dns[:nd].copy(), blob[:used].copy())

    def stats(self) -> dict:
        return {name: int(v) for name, v in zip(WEIRDS, self.weird_counts)}
