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


@nb.njit(cache=True)
def ethertype_payload(b, p, end, et, row):
    """Follow VLAN/MPLS/PPPoE from ethertype ``et`` whose payload starts at p.
    Returns (l3 offset, 4 | 6 | SNIFF | NOT_IP)."""
    for _ in range(MAX_LAYERS):
        if et == 0x0800:
            return p, 4
        if et == 0x86DD:
            return p, 6
        if et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if p + 4 > end:
                row.weird |= W_TRUNC_LINK
                return p, NOT_IP
            if row.vlan == 0:
                row.vlan = u16(b, p) & 0x0FFF
            et = u16(b, p + 2)
            p += 4
        elif et == 0x8847 or et == 0x8848:
            for _label in range(MAX_MPLS_LABELS):
                if p + 4 > end:
                    row.weird |= W_TRUNC_LINK
                    return p, NOT_IP
                bottom = b[p + 2] & 1
                p += 4
                if bottom:
                    break
            else:
                row.weird |= W_TOO_DEEP
                return p, NOT_IP
            if p >= end:
                row.weird |= W_TRUNC_LINK
                return p, NOT_IP
            nibble = b[p] >> 4
            if nibble == 4 or nibble == 6:
                return p, SNIFF
            if nibble != 0 or p + 18 > end:  # not a pseudowire control word + Ethernet
                return p, NOT_IP
            et = u16(b, p + 16)
            p += 18
        elif et == 0x8864:
            if p + 8 > end:
                row.weird |= W_TRUNC_LINK
                return p, NOT_IP
            et = _ppp_ethertype(u16(b, p + 6))
            p += 8
        else:
            return p, NOT_IP
    row.weird |= W_TOO_DEEP
    return p, NOT_IP


@nb.njit(cache=True)
def _ethernet(b, p, end, row):
    if p + 14 > end:
        row.weird |= W_TRUNC_LINK
        return p, NOT_IP
    et = u16(b, p + 12)
    p += 14
    if et < 0x0600:  # 802.3 length: only LLC/SNAP can carry IP
        if p + 8 > end or b[p] != 0xAA or b[p + 1] != 0xAA or b[p + 2] != 0x03:
            return p, NOT_IP
        et = u16(b, p + 6)
        p += 8
    return ethertype_payload(b, p, end, et, row)


@nb.njit(cache=True)
def _ieee802_11(b, p, end, row):
    """Data frames with LLC/SNAP; management, control, null and protected frames are not IP."""
    if p + 24 > end:
        row.weird |= W_TRUNC_LINK
        return p, NOT_IP
    fc0 = b[p]
    fc1 = b[p + 1]
    if (fc0 >> 2) & 3 != 2 or (fc0 >> 4) & 4 or fc1 & 0x40:
        return p, NOT_IP
    hdr = 24
    if fc1 & 3 == 3:
        hdr += 6
    if (fc0 >> 4) & 8:
        hdr += 2
        if fc1 & 0x80:
            hdr += 4
    p += hdr
    if p + 8 > end or b[p] != 0xAA or b[p + 1] != 0xAA:
        return p, NOT_IP
    return ethertype_payload(b, p + 8, end, u16(b, p + 6), row)


@nb.njit(cache=True)
def _nflog(b, p, end, row):
    """NFLOG: 4-byte header (address family first), then little-endian TLVs; type 9 is the packet."""
    if p + 4 > end:
        row.weird |= W_TRUNC_LINK
        return p, end, NOT_IP
    family = b[p]
    q = p + 4
    while q + 4 <= end:
        tlen = np.int64(b[q]) | (np.int64(b[q + 1]) << 8)
        ttype = np.int64(b[q + 2]) | (np.int64(b[q + 3]) << 8)
        if tlen < 4:
            break
        if ttype == 9:
            stop = min(q + tlen, end)
            return q + 4, stop, 4 if family == 2 else (6 if family == 10 else SNIFF)
        q += (tlen + 3) & ~3
    return q, end, NOT_IP


@nb.njit(cache=True)
def link_layer(b, p, end, link, row):
    """Returns (l3 offset, l3 end, expected IP version | SNIFF | NOT_IP)."""
    if link == 1:
        q, v = _ethernet(b, p, end, row)
        return q, end, v
    if link == 101 or link == 12 or link == 14:
        return p, end, SNIFF
    if link == 228:
        return p, end, 4
    if link == 229:
        return p, end, 6
    if link == 0 or link == 108:
        if p + 4 > end:
            row.weird |= W_TRUNC_LINK
            return p, end, NOT_IP
        if link == 108:
            family = u16(b, p + 2)
        else:
            family = np.int64(b[p]) | (np.int64(b[p + 1]) << 8)
            if family == 0:  # written by a big-endian host
                family = u16(b, p + 2)
        if family == 2:
            return p + 4, end, 4
        if family == 10 or family == 24 or family == 28 or family == 30:
            return p + 4, end, 6
        return p + 4, end, NOT_IP
    if link == 113 or link == 276:
        hdr = 16 if link == 113 else 20
        if p + hdr > end:
            row.weird |= W_TRUNC_LINK
            return p, end, NOT_IP
        et = u16(b, p + 14) if link == 113 else u16(b, p)
        q, v = ethertype_payload(b, p + hdr, end, et, row)
        return q, end, v
    if link == 9 or link == 50:
        q = p
        if q + 2 <= end and b[q] == 0xFF and b[q + 1] == 0x03:
            q += 2
        if q + 1 > end:
            row.weird |= W_TRUNC_LINK
            return p, end, NOT_IP
        if b[q] & 1:  # protocol field compression
            proto = np.int64(b[q])
            q += 1
        elif q + 2 <= end:
            proto = u16(b, q)
            q += 2
        else:
            row.weird |= W_TRUNC_LINK
            return p, end, NOT_IP
        et = _ppp_ethertype(proto)
        return q, end, (4 if et == 0x0800 else (6 if et == 0x86DD else NOT_IP))
    if link == 104:
        if p + 4 > end:
            row.weird |= W_TRUNC_LINK
            return p, end, NOT_IP
        q, v = ethertype_payload(b, p + 4, end, u16(b, p + 2), row)
        return q, end, v
    if link == 239:
        return _nflog(b, p, end, row)
    if link == 127 or link == 105:
        q = p
        if link == 127:
            if p + 4 > end:
                row.weird |= W_TRUNC_LINK
                return p, end, NOT_IP
            q = p + (np.int64(b[p + 2]) | (np.int64(b[p + 3]) << 8))
        r, v = _ieee802_11(b, q, end, row)
        return r, end, v
    row.weird |= W_UNKNOWN_LINK
    return p, end, NOT_IP
