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


@nb.njit(cache=True, inline="always")
def _ipv4(b, p, end):
    """Returns (l4 offset or -1, capture stop, declared end, weird, proto, ttl, ip_id, ip_len, frag,
    src_lo, dst_lo).  Helpers return values rather than writing the row: stores through a record
    defeat LLVM's alias analysis and cost ~3x here."""
    if end - p < 20:
        return -1, 0, 0, W_TRUNC_IP, 0, 0, 0, 0, 0, np.uint64(0), np.uint64(0)
    src = IPV4_MAPPED | np.uint64(u32(b, p + 12))
    dst = IPV4_MAPPED | np.uint64(u32(b, p + 16))
    proto = np.int64(b[p + 9])
    ttl = np.int64(b[p + 8])
    ip_id = u16(b, p + 4)
    ihl = np.int64(b[p] & 15) * 4
    if ihl < 20 or p + ihl > end:
        return -1, 0, 0, W_BAD_IHL, proto, ttl, ip_id, 0, 0, src, dst
    weird = 0
    total = u16(b, p + 2)
    if total == 0:
        weird = W_LEN_ZERO
        total = end - p
    elif total < ihl:
        return -1, 0, 0, W_LEN_LT_HDR, proto, ttl, ip_id, total, 0, src, dst
    frag_field = u16(b, p + 6)
    frag = 2 if frag_field & 0x1FFF else (1 if frag_field & 0x2000 else 0)
    declared_end = p + total
    if declared_end > end:
        weird |= W_PAYLOAD_TRUNC
    return p + ihl, min(declared_end, end), declared_end, weird, proto, ttl, ip_id, total, frag, src, dst


@nb.njit(cache=True, inline="always")
def _ipv6(b, p, end):
    """Returns (l4 offset or -1, capture stop, declared end, weird, proto, hop limit, fragment id,
    ip_len, frag, src_hi, src_lo, dst_hi, dst_lo), walking at most MAX_EXT_HEADERS headers."""
    z = np.uint64(0)
    if end - p < 40:
        return -1, 0, 0, W_TRUNC_IP, 0, 0, 0, 0, 0, z, z, z, z
    src_hi, src_lo, dst_hi, dst_lo = u64(b, p + 8), u64(b, p + 16), u64(b, p + 24), u64(b, p + 32)
    ttl = np.int64(b[p + 7])
    nh = np.int64(b[p + 6])
    plen = u16(b, p + 4)
    weird = 0
    if plen == 0 and nh != 59:
        weird = W_LEN_ZERO
        plen = end - p - 40
    declared_end = p + 40 + plen
    if declared_end > end:
        weird |= W_PAYLOAD_TRUNC
    stop = min(declared_end, end)
    q = p + 40
    frag = 0
    frag_id = 0
    for _ in range(MAX_EXT_HEADERS):
        if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140 or nh == 51:
            if q + 2 > stop:
                return -1, 0, 0, weird | W_BAD_EXT, nh, ttl, frag_id, 40 + plen, frag, src_hi, src_lo, dst_hi, dst_lo
            hlen = (np.int64(b[q + 1]) + 2) * 4 if nh == 51 else (np.int64(b[q + 1]) + 1) * 8
            nh = np.int64(b[q])
            q += hlen
        elif nh == 44:
            if q + 8 > stop:
                return -1, 0, 0, weird | W_BAD_EXT, nh, ttl, frag_id, 40 + plen, frag, src_hi, src_lo, dst_hi, dst_lo
            off_m = u16(b, q + 2)
            frag_id = u16(b, q + 6)
            nh = np.int64(b[q])
            q += 8
            frag = 2 if off_m >> 3 else (1 if off_m & 1 else 0)
        else:
            break
    else:
        weird |= W_EXT_LONG
    if q > stop:
        return -1, 0, 0, weird | W_BAD_EXT, nh, ttl, frag_id, 40 + plen, frag, src_hi, src_lo, dst_hi, dst_lo
    return q, stop, declared_end, weird, nh, ttl, frag_id, 40 + plen, frag, src_hi, src_lo, dst_hi, dst_lo


@nb.njit(cache=True, inline="always")
def _transport(b, q, stop, declared_end, proto):
    """Returns (payload offset or -1, weird, sport, dport, tcp flags, tcp seq, tcp win, icmp type,
    icmp code, icmp id, icmp seq, l4 payload length)."""
    avail = stop - q
    declared = declared_end - q
    sport = dport = 0
    if proto == 6 or proto == 17 or proto == 132:
        if avail >= 4:
            sport = u16(b, q)
            dport = u16(b, q + 2)
    if proto == 6:
        if avail < 20:
            return -1, W_TRUNC_TCP, sport, dport, 0, 0, 0, 0, 0, 0, 0, 0
        doff = np.int64(b[q + 12] >> 4) * 4
        flags = np.int64(b[q + 13])
        seq = u32(b, q + 4)
        win = u16(b, q + 14)
        if doff < 20:
            return -1, W_BAD_TCP_LEN, sport, dport, flags, seq, win, 0, 0, 0, 0, 0
        if doff > avail:
            w = W_TRUNC_TCP if doff <= declared else W_BAD_TCP_LEN
            return -1, w, sport, dport, flags, seq, win, 0, 0, 0, 0, 0
        return q + doff, 0, sport, dport, flags, seq, win, 0, 0, 0, 0, max(declared - doff, 0)
    if proto == 17:
        if avail < 8:
            return -1, W_TRUNC_UDP, sport, dport, 0, 0, 0, 0, 0, 0, 0, 0
        ulen = u16(b, q + 4)
        if ulen < 8 or ulen > declared:
            return q + 8, W_BAD_UDP_LEN, sport, dport, 0, 0, 0, 0, 0, 0, 0, max(declared - 8, 0)
        return q + 8, 0, sport, dport, 0, 0, 0, 0, 0, 0, 0, ulen - 8
    if proto == 1 or proto == 58:
        if avail < 8:
            if avail >= 2:
                return -1, W_TRUNC_ICMP, 0, 0, 0, 0, 0, np.int64(b[q]), np.int64(b[q + 1]), 0, 0, 0
            return -1, W_TRUNC_ICMP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        itype = np.int64(b[q])
        icode = np.int64(b[q + 1])
        iid = iseq = 0
        if has_echo_id(proto, itype):
            iid = u16(b, q + 4)
            iseq = u16(b, q + 6)
        return q + 8, 0, 0, 0, 0, 0, 0, itype, icode, iid, iseq, max(declared - 8, 0)
    if proto == 132 and avail >= 12:
        return q + 12, 0, sport, dport, 0, 0, 0, 0, 0, 0, 0, max(declared - 12, 0)
    return -1, 0, sport, dport, 0, 0, 0, 0, 0, 0, 0, 0


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


@nb.njit(cache=True, inline="always")
def _decode_ip(buf, p, end, version, r, blob, bp):
    """IP and transport of one frame into row r; returns (payload offset or -1, stop, blob used)."""
    if version == 4:
        q, stop, declared_end, weird, proto, ttl, ip_id, ip_len, frag, src_lo, dst_lo = _ipv4(buf, p, end)
        src_hi = dst_hi = np.uint64(0)
    else:
        q, stop, declared_end, weird, proto, ttl, ip_id, ip_len, frag, src_hi, src_lo, dst_hi, dst_lo = \
            _ipv6(buf, p, end)
    if weird & W_TRUNC_IP:
        r.weird |= weird
        return -1, 0, 0
    r.ip_ver = version
    r.src_hi, r.src_lo, r.dst_hi, r.dst_lo = src_hi, src_lo, dst_hi, dst_lo
    r.proto, r.ttl, r.ip_id, r.ip_len, r.frag = proto, ttl, ip_id, ip_len, frag
    if q < 0 or frag == 2:
        r.weird |= weird
        return -1, 0, 0
    pay, w4, sport, dport, flags, seq, win, itype, icode, iid, iseq, l4_len = \
        _transport(buf, q, stop, declared_end, proto)
    r.weird |= weird | w4
    r.sport, r.dport, r.tcp_flags, r.tcp_seq, r.tcp_win = sport, dport, flags, seq, win
    r.icmp_type, r.icmp_code, r.icmp_id, r.icmp_seq, r.l4_len = itype, icode, iid, iseq, l4_len
    used = 0
    if pay >= 0 and (proto == 1 or proto == 58):
        keep = min(PAYLOAD_KEEP, stop - pay)
        if keep > 0 and bp + keep <= blob.shape[0]:
            blob[bp:bp + keep] = buf[pay:pay + keep]
            r.pl_off = bp
            r.pl_len = keep
            used = keep
    return pay, stop, used


@nb.njit(cache=True, nogil=True)
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
        p, end, expect, vlan, weird = link_layer(buf, start, start + f.cap_len, f.link)
        r.vlan = vlan
        r.weird = weird
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
                    pay, stop, used = _decode_ip(buf, p, end, version, r, blob, bp)
                    bp += used
                    if pay >= 0:
                        r.pay_off = pay - start
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
    """Decodes into buffers it owns and reuses: a batch it returns stays valid until the next
    ``decode`` call on the same Decoder.  Several decoders may share one weird counter array."""

    def __init__(self, batch_frames: int = 65536, weird_counts: np.ndarray | None = None):
        self.weird_counts = np.zeros(len(WEIRDS), np.int64) if weird_counts is None else weird_counts
        self._pk = PACKET.empty(batch_frames)
        self._dns = DNS.empty(batch_frames)
        self._blob = np.empty(batch_frames * BLOB_PER_FRAME, np.uint8)

    def decode(self, buf: np.ndarray, frames: np.ndarray) -> Decoded:
        n = len(frames)
        if n > len(self._pk):
            self.__init__(n, self.weird_counts)
        pk, dns = self._pk[:n], self._dns[:n]
        pk.view(np.uint8)[:] = 0
        dns.view(np.uint8)[:] = 0
        nd, used = decode_batch(buf, frames, pk, dns, self._blob, self.weird_counts)
        return Decoded(pk, dns[:nd], self._blob[:used])

    def stats(self) -> dict:
        return {name: int(v) for name, v in zip(WEIRDS, self.weird_counts)}
