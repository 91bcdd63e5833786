"""Link layers down to the IP header: Ethernet (802.1Q/802.1ad/QinQ, MPLS incl. pseudowire control
word, PPPoE, LLC/SNAP), raw IPv4/IPv6, BSD NULL/LOOP, Linux SLL/SLL2, PPP, Cisco HDLC, NFLOG,
802.11 with or without radiotap.  Walks are bounded; problems are weird bits, never exceptions."""

import numba as nb
import numpy as np

from flowsense.decode.bytes import u16
from flowsense.weird import BIT

W_TRUNC_LINK = 1 << BIT["truncated_link_header"]
W_UNKNOWN_LINK = 1 << BIT["unknown_link_type"]
W_TOO_DEEP = 1 << BIT["encapsulation_too_deep"]

MAX_LAYERS = 8        # VLAN/MPLS/PPPoE layers walked before giving up
MAX_MPLS_LABELS = 16
SNIFF = -1            # "IP version from the first nibble"
NOT_IP = 0

LINK_NAMES = {0: "null", 1: "ethernet", 9: "ppp", 12: "raw", 14: "raw", 50: "ppp_hdlc", 101: "raw",
              104: "c_hdlc", 105: "ieee802_11", 108: "loop", 113: "linux_sll", 127: "radiotap",
              228: "ipv4", 229: "ipv6", 239: "nflog", 276: "linux_sll2"}


@nb.njit(cache=True, inline="always")
def _ppp_ethertype(proto):
    if proto == 0x0021:
        return 0x0800
    if proto == 0x0057:
        return 0x86DD
    return 0


@nb.njit(cache=True, inline="always")
def ethertype_payload(b, p, end, et):
    """Follow VLAN/MPLS/PPPoE from ethertype ``et`` whose payload starts at p.
    Returns (l3 offset, 4 | 6 | SNIFF | NOT_IP, outer VLAN id, weird bits).  Values are returned,
    not written to the row: stores through a record inside this loop cost 3x (aliasing)."""
    vlan = 0
    for _ in range(MAX_LAYERS):
        if et == 0x0800:
            return p, 4, vlan, 0
        if et == 0x86DD:
            return p, 6, vlan, 0
        if et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if p + 4 > end:
                return p, NOT_IP, vlan, W_TRUNC_LINK
            if vlan == 0:
                vlan = u16(b, p) & 0x0FFF
            et = u16(b, p + 2)
            p += 4
        elif et == 0x8847 or et == 0x8848:
            for _label in range(MAX_MPLS_LABELS):
                if p + 4 > end:
                    return p, NOT_IP, vlan, W_TRUNC_LINK
                bottom = b[p + 2] & 1
                p += 4
                if bottom:
                    break
            else:
                return p, NOT_IP, vlan, W_TOO_DEEP
            if p >= end:
                return p, NOT_IP, vlan, W_TRUNC_LINK
            nibble = b[p] >> 4
            if nibble == 4 or nibble == 6:
                return p, SNIFF, vlan, 0
            if nibble != 0 or p + 18 > end:  # not a pseudowire control word + Ethernet
                return p, NOT_IP, vlan, 0
            et = u16(b, p + 16)
            p += 18
        elif et == 0x8864:
            if p + 8 > end:
                return p, NOT_IP, vlan, W_TRUNC_LINK
            et = _ppp_ethertype(u16(b, p + 6))
            p += 8
        else:
            return p, NOT_IP, vlan, 0
    return p, NOT_IP, vlan, W_TOO_DEEP


@nb.njit(cache=True, inline="always")
def _ethernet(b, p, end):
    if p + 14 > end:
        return p, NOT_IP, 0, W_TRUNC_LINK
    et = u16(b, p + 12)
    p += 14
    if et < 0x0600:  # 802.3 length: only LLC/SNAP can carry IP
        if p + 8 > end or b[p] != 0xAA or b[p + 1] != 0xAA or b[p + 2] != 0x03:
            return p, NOT_IP, 0, 0
        et = u16(b, p + 6)
        p += 8
    return ethertype_payload(b, p, end, et)


@nb.njit(cache=True, inline="always")
def _ieee802_11(b, p, end):
    """Data frames with LLC/SNAP; management, control, null and protected frames are not IP."""
    if p + 24 > end:
        return p, NOT_IP, 0, W_TRUNC_LINK
    fc0 = b[p]
    fc1 = b[p + 1]
    if (fc0 >> 2) & 3 != 2 or (fc0 >> 4) & 4 or fc1 & 0x40:
        return p, NOT_IP, 0, 0
    hdr = 24
    if fc1 & 3 == 3:
        hdr += 6
    if (fc0 >> 4) & 8:
        hdr += 2
        if fc1 & 0x80:
            hdr += 4
    p += hdr
    if p + 8 > end or b[p] != 0xAA or b[p + 1] != 0xAA:
        return p, NOT_IP, 0, 0
    return ethertype_payload(b, p + 8, end, u16(b, p + 6))


@nb.njit(cache=True, inline="always")
def _nflog(b, p, end):
    """NFLOG: 4-byte header (address family first), then little-endian TLVs; type 9 is the packet.
    Returns (l3 offset, l3 end, version, weird)."""
    if p + 4 > end:
        return p, end, NOT_IP, W_TRUNC_LINK
    family = b[p]
    q = p + 4
    while q + 4 <= end:
        tlen = np.int64(b[q]) | (np.int64(b[q + 1]) << 8)
        ttype = np.int64(b[q + 2]) | (np.int64(b[q + 3]) << 8)
        if tlen < 4:
            break
        if ttype == 9:
            return q + 4, min(q + tlen, end), 4 if family == 2 else (6 if family == 10 else SNIFF), 0
        q += (tlen + 3) & ~3
    return q, end, NOT_IP, 0


@nb.njit(cache=True, inline="always")
def _ppp(b, p, end):
    q = p
    if q + 2 <= end and b[q] == 0xFF and b[q + 1] == 0x03:
        q += 2
    if q + 1 > end:
        return p, NOT_IP, W_TRUNC_LINK
    if b[q] & 1:  # protocol field compression
        proto = np.int64(b[q])
        q += 1
    elif q + 2 <= end:
        proto = u16(b, q)
        q += 2
    else:
        return p, NOT_IP, W_TRUNC_LINK
    et = _ppp_ethertype(proto)
    return q, (4 if et == 0x0800 else (6 if et == 0x86DD else NOT_IP)), 0


@nb.njit(cache=True, inline="always")
def _loopback(b, p, end, link):
    """BSD NULL (host byte order family) and OpenBSD LOOP (network order)."""
    if p + 4 > end:
        return p, NOT_IP, W_TRUNC_LINK
    if link == 108:
        family = u16(b, p + 2)
    else:
        family = np.int64(b[p]) | (np.int64(b[p + 1]) << 8)
        if family == 0:  # written by a big-endian host
            family = u16(b, p + 2)
    if family == 2:
        return p + 4, 4, 0
    if family == 10 or family == 24 or family == 28 or family == 30:
        return p + 4, 6, 0
    return p + 4, NOT_IP, 0


@nb.njit(cache=True, inline="always")
def link_layer(b, p, end, link):
    """Returns (l3 offset, l3 end, expected IP version | SNIFF | NOT_IP, outer VLAN, weird bits)."""
    if link == 1:
        q, v, vlan, w = _ethernet(b, p, end)
        return q, end, v, vlan, w
    if link == 101 or link == 12 or link == 14:
        return p, end, SNIFF, 0, 0
    if link == 228:
        return p, end, 4, 0, 0
    if link == 229:
        return p, end, 6, 0, 0
    if link == 0 or link == 108:
        q, v, w = _loopback(b, p, end, link)
        return q, end, v, 0, w
    if link == 113 or link == 276:
        hdr = 16 if link == 113 else 20
        if p + hdr > end:
            return p, end, NOT_IP, 0, W_TRUNC_LINK
        et = u16(b, p + 14) if link == 113 else u16(b, p)
        q, v, vlan, w = ethertype_payload(b, p + hdr, end, et)
        return q, end, v, vlan, w
    if link == 9 or link == 50:
        q, v, w = _ppp(b, p, end)
        return q, end, v, 0, w
    if link == 104:
        if p + 4 > end:
            return p, end, NOT_IP, 0, W_TRUNC_LINK
        q, v, vlan, w = ethertype_payload(b, p + 4, end, u16(b, p + 2))
        return q, end, v, vlan, w
    if link == 239:
        q, stop, v, w = _nflog(b, p, end)
        return q, stop, v, 0, w
    if link == 127 or link == 105:
        q = p
        if link == 127:
            if p + 4 > end:
                return p, end, NOT_IP, 0, W_TRUNC_LINK
            q = p + (np.int64(b[p + 2]) | (np.int64(b[p + 3]) << 8))
        r, v, vlan, w = _ieee802_11(b, q, end)
        return r, end, v, vlan, w
    return p, end, NOT_IP, 0, W_UNKNOWN_LINK
