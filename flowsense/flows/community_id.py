"""Community ID v1 (https://github.com/corelight/community-id-spec) for FLOW rows, vectorised.

The hash input rows are assembled with NumPy; only SHA-1 and base64 run per flow.
"""

from __future__ import annotations

import binascii
import hashlib

import numpy as np

PORTED = (6, 17, 132, 1, 58)
# ICMP types with a counterpart type: the pair is two-way and ordered like ports
ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
               144: 145, 145: 144, 139: 140, 140: 139}


def _counterparts(pairs: dict) -> np.ndarray:
    table = np.full(256, -1, np.int64)
    table[list(pairs)] = list(pairs.values())
    return table


_PAIR4, _PAIR6 = _counterparts(ICMP4_PAIRS), _counterparts(ICMP6_PAIRS)


def _addr_bytes(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(n, 16) big-endian address bytes."""
    both = np.empty((len(hi), 2), ">u8")
    both[:, 0] = hi
    both[:, 1] = lo
    return both.view(np.uint8).reshape(-1, 16)


def community_ids(proto, ip_ver, orig_hi, orig_lo, resp_hi, resp_lo, sport, dport, seed: int = 0) -> np.ndarray:
    """``sport``/``dport`` are ports, or ICMP type/code for ICMP flows."""
    n = len(proto)
    proto = np.asarray(proto, np.int64)
    sport = np.asarray(sport, np.int64).copy()
    dport = np.asarray(dport, np.int64).copy()
    one_way = np.zeros(n, bool)
    for icmp_proto, table in ((1, _PAIR4), (58, _PAIR6)):
        m = proto == icmp_proto
        if m.any():
            other = table[sport[m] & 0xFF]
            paired = other >= 0
            dport[m] = np.where(paired, other, dport[m])
            one_way[m] = ~paired
    a = _addr_bytes(orig_hi, orig_lo)
    b = _addr_bytes(resp_hi, resp_lo)
    a_key = np.concatenate([a, (sport.astype(">u2").view(np.uint8).reshape(-1, 2))], axis=1)
    b_key = np.concatenate([b, (dport.astype(">u2").view(np.uint8).reshape(-1, 2))], axis=1)
    # lexicographic (address, port) comparison: a > b means swap
    diff = a_key.astype(np.int16) - b_key.astype(np.int16)
    first = np.argmax(diff != 0, axis=1)
    a_greater = diff[np.arange(n), first] > 0
    swap = a_greater & ~one_way
    a[swap], b[swap] = b[swap].copy(), a[swap].copy()
    sport[swap], dport[swap] = dport[swap], sport[swap].copy()

    v4 = np.asarray(ip_ver) == 4
    rows = np.zeros((n, 2 + 16 + 16 + 2 + 4), np.uint8)
    rows[:, 0:2] = np.frombuffer(int(seed).to_bytes(2, "big"), np.uint8)
    rows[:, 2:18] = a
    rows[:, 18:34] = b
    rows[:, 34] = proto
    rows[:, 36:38] = sport.astype(">u2").view(np.uint8).reshape(-1, 2)
    rows[:, 38:40] = dport.astype(">u2").view(np.uint8).reshape(-1, 2)
    ported = np.isin(proto, PORTED)
    out = np.empty(n, object)
    sha1, b64 = hashlib.sha1, binascii.b2a_base64
    for i in range(n):
        r = rows[i]
        if v4[i]:
            data = r[0:2].tobytes() + r[14:18].tobytes() + r[30:34].tobytes() + r[34:40].tobytes()
        else:
            data = r.tobytes()
        if not ported[i]:
            data = data[:-4]
        out[i] = "1:" + b64(sha1(data).digest(), newline=False).decode()
    return out
