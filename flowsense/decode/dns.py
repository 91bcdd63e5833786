"""DNS message header, first question and the first address answer (RFC 1035), UDP and TCP alike.

The name is copied into the batch blob as raw label bytes joined by '.'; compression pointers
are followed at most ``MAX_POINTER_HOPS`` times and names are capped at 255 bytes, so hostile
messages cost bounded work."""

import numba as nb
import numpy as np

from flowsense.decode.bytes import u16, u32, u64
from flowsense.weird import BIT

DNS_PORTS = (53, 5353, 5355)
MAX_POINTER_HOPS = 16
MAX_NAME = 255
MAX_ANSWERS = 16  # answer records walked per response (CNAME chains, several addresses)

W_TRUNC_HEADER = 1 << BIT["truncated_DNS_header"]
W_NAME_TRUNC = 1 << BIT["DNS_name_truncated"]
W_NAME_LONG = 1 << BIT["DNS_name_too_long"]
W_BAD_LABEL = 1 << BIT["DNS_bad_label_type"]
W_LOOP = 1 << BIT["DNS_pointer_loop"]
W_Q_TRUNC = 1 << BIT["DNS_question_truncated"]


@nb.njit(cache=True, inline="always")
def is_dns_port(port):
    return port == 53 or port == 5353 or port == 5355


@nb.njit(cache=True)
def read_name(b, msg, end, pos, blob, bp):
    """Copy the name at ``pos`` into blob[bp:].  Returns (offset after the name in the message or
    -1, name length, weird bits)."""
    n = 0
    after = -1
    hops = 0
    cap = blob.shape[0]
    while True:
        if pos >= end:
            return after, n, W_NAME_TRUNC
        length = np.int64(b[pos])
        if length == 0:
            if after < 0:
                after = pos + 1
            return after, n, 0
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                return after, n, W_NAME_TRUNC
            if after < 0:
                after = pos + 2
            hops += 1
            if hops > MAX_POINTER_HOPS:
                return after, n, W_LOOP
            pos = msg + (((length & 0x3F) << 8) | np.int64(b[pos + 1]))
            continue
        if kind != 0:
            return after, n, W_BAD_LABEL
        if pos + 1 + length > end:
            return after, n, W_NAME_TRUNC
        sep = 1 if n > 0 else 0
        if n + sep + length > MAX_NAME:
            return after, n, W_NAME_LONG
        if bp + n + sep + length <= cap:
            if sep:
                blob[bp + n] = 46  # '.'
            for i in range(length):
                blob[bp + n + sep + i] = b[pos + 1 + i]
        n += sep + length
        pos += 1 + length


@nb.njit(cache=True)
def parse_dns(b, msg, end, msg_len, d, blob, bp):
    """Fill DNS row ``d`` from the message at ``msg`` (captured up to ``end``).  Returns the blob
    bytes used; weird bits land in d.weird."""
    d.msg_len = msg_len
    if end - msg < 12:
        d.weird |= W_TRUNC_HEADER
        return 0
    d.txid = u16(b, msg)
    flags = u16(b, msg + 2)
    d.flags = flags
    d.qr = flags >> 15
    d.opcode = (flags >> 11) & 15
    d.rcode = flags & 15
    d.qdcount = u16(b, msg + 4)
    d.ancount = u16(b, msg + 6)
    d.nscount = u16(b, msg + 8)
    d.arcount = u16(b, msg + 10)
    if d.qdcount == 0:
        return 0
    after, n, weird = read_name(b, msg, end, msg + 12, blob, bp)
    d.weird |= weird
    if bp + n > blob.shape[0]:
        n = 0
    d.qname_off = bp
    d.qname_len = n
    if weird == 0:
        if after + 4 > end:
            d.weird |= W_Q_TRUNC
        else:
            d.qtype = u16(b, after)
            d.qclass = u16(b, after + 2)
            if d.qr and d.qdcount == 1 and d.ancount:
                _answers(b, end, after + 4, min(np.int64(d.ancount), MAX_ANSWERS), d)
    return n


@nb.njit(cache=True, inline="always")
def _skip_name(b, end, pos):
    """Offset after the (possibly compressed) name at ``pos``, or -1 when it runs past the end."""
    while pos < end:
        length = np.int64(b[pos])
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= end else -1
        if length & 0xC0:
            return -1
        pos += 1 + length
    return -1


@nb.njit(cache=True)
def _answers(b, end, pos, count, d):
    """Record the first A/AAAA address among the first ``count`` answer records (which address
    a client was told a name has: flows to it can then be tied to the name)."""
    for _ in range(count):
        pos = _skip_name(b, end, pos)
        if pos < 0 or pos + 10 > end:
            return
        rtype, rdlen = u16(b, pos), np.int64(u16(b, pos + 8))
        data = pos + 10
        if data + rdlen > end:
            return
        if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
            if d.answers == 0:
                if rtype == 1:
                    d.answer_hi = 0
                    d.answer_lo = np.uint64(0xFFFF00000000) | np.uint64(u32(b, data))
                else:
                    d.answer_hi = u64(b, data)
                    d.answer_lo = u64(b, data + 8)
            d.answers += 1
        pos = data + rdlen
