"""Community ID v1 (https://github.com/corelight/community-id-spec) for FLOW rows.

Ordering, hash input, SHA-1 and base64 run in one Numba pass per batch (hashlib per flow cost a
quarter of a second per 50k flows, and NumPy assembly of the input rows still three times this
pass).  Checked against the reference ``communityid`` package in the tests.
"""

from __future__ import annotations

import numba as nb
import numpy as np

PORTED = (6, 17, 132, 1, 58)
# ICMP types with a counterpart type: the pair is two-way and ordered like ports
ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
               144: 145, 145: 144, 139: 140, 140: 139}
ID_LEN = 30  # "1:" + base64 of 20 bytes
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)
_K = np.array([0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6], np.uint32)
_M32 = np.uint32(0xFFFFFFFF)


def _counterparts(pairs: dict) -> np.ndarray:
    table = np.full(256, -1, np.int64)
    table[list(pairs)] = list(pairs.values())
    return table


_PAIR4, _PAIR6 = _counterparts(ICMP4_PAIRS), _counterparts(ICMP6_PAIRS)
_IS_PORTED = np.zeros(256, np.bool_)
_IS_PORTED[list(PORTED)] = True


@nb.njit(cache=True, inline="always")
def _rotl(x, n):
    return ((x << np.uint32(n)) | (x >> np.uint32(32 - n))) & _M32


@nb.njit(cache=True, inline="always")
def _put_u64(block, at, value, nbytes):
    """The low ``nbytes`` bytes of ``value``, big-endian, at ``block[at:]``."""
    for j in range(nbytes):
        block[at + j] = np.uint8((value >> np.uint64(8 * (nbytes - 1 - j))) & np.uint64(0xFF))
    return at + nbytes


@nb.njit(cache=True, inline="always")
def _sha1_base64_into(block, n, w, out, i):
    """out[i] = "1:" + base64(sha1(block[:n])), n <= 55 (one padded block)."""
    block[n:] = 0
    block[n] = 0x80
    block[62] = ((n * 8) >> 8) & 0xFF
    block[63] = (n * 8) & 0xFF
    for t in range(16):
        w[t] = (np.uint32(block[4 * t]) << np.uint32(24)) | (np.uint32(block[4 * t + 1]) << np.uint32(16)) \
            | (np.uint32(block[4 * t + 2]) << np.uint32(8)) | np.uint32(block[4 * t + 3])
    for t in range(16, 80):
        w[t] = _rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
    h0, h1, h2, h3, h4 = (np.uint32(0x67452301), np.uint32(0xEFCDAB89), np.uint32(0x98BADCFE),
                          np.uint32(0x10325476), np.uint32(0xC3D2E1F0))
    a, b, c, d, e = h0, h1, h2, h3, h4
    for t in range(80):
        if t < 20:
            f = (b & c) | (~b & d)
        elif t < 40 or t >= 60:
            f = b ^ c ^ d
        else:
            f = (b & c) | (b & d) | (c & d)
        tmp = (_rotl(a, 5) + f + e + _K[t // 20] + w[t]) & _M32
        e, d, c, b, a = d, c, _rotl(b, 30), a, tmp
    hs = ((h0 + a) & _M32, (h1 + b) & _M32, (h2 + c) & _M32, (h3 + d) & _M32, (h4 + e) & _M32)
    out[i, 0] = 49  # '1'
    out[i, 1] = 58  # ':'
    # 20 digest bytes as 7 base64 groups of 3 bytes (the 21st byte is zero, written as '=')
    bits = np.uint64(0)
    held = 0
    g = 0
    for k in range(5):
        for j in range(4):
            bits = (bits << np.uint64(8)) | np.uint64((hs[k] >> np.uint32(24 - 8 * j)) & np.uint32(0xFF))
            held += 1
            if held == 3:
                for q in range(4):
                    out[i, 2 + 4 * g + q] = _B64[(bits >> np.uint64(18 - 6 * q)) & np.uint64(63)]
                bits, held, g = np.uint64(0), 0, g + 1
    bits <<= np.uint64(8)
    for q in range(3):
        out[i, 2 + 4 * g + q] = _B64[(bits >> np.uint64(18 - 6 * q)) & np.uint64(63)]
    out[i, ID_LEN - 1] = 61  # '='


@nb.njit(cache=True, nogil=True)
def _community_ids(proto, ip_ver, a_hi, a_lo, b_hi, b_lo, sport, dport, seed, pair4, pair6, ported, out):
    block = np.zeros(64, np.uint8)
    w = np.zeros(80, np.uint32)
    for i in range(proto.shape[0]):
        p = np.int64(proto[i])
        sp, dp = np.int64(sport[i]), np.int64(dport[i])
        ah, al, bh, bl = a_hi[i], a_lo[i], b_hi[i], b_lo[i]
        one_way = False
        if p == 1 or p == 58:
            other = pair4[sp & 0xFF] if p == 1 else pair6[sp & 0xFF]
            if other >= 0:
                dp = other
            else:
                one_way = True
        # a greater (address, port) endpoint first means swap
        if not one_way and (ah > bh or (ah == bh and (al > bl or (al == bl and sp > dp)))):
            ah, al, bh, bl, sp, dp = bh, bl, ah, al, dp, sp
        k = _put_u64(block, 0, np.uint64(seed), 2)
        if ip_ver[i] == 4:
            k = _put_u64(block, k, al, 4)
            k = _put_u64(block, k, bl, 4)
        else:
            k = _put_u64(block, k, ah, 8)
            k = _put_u64(block, k, al, 8)
            k = _put_u64(block, k, bh, 8)
            k = _put_u64(block, k, bl, 8)
        block[k] = p
        block[k + 1] = 0
        k += 2
        if ported[p]:
            k = _put_u64(block, k, np.uint64(sp), 2)
            k = _put_u64(block, k, np.uint64(dp), 2)
        _sha1_base64_into(block, k, w, out, i)


def community_ids(proto, ip_ver, orig_hi, orig_lo, resp_hi, resp_lo, sport, dport, seed: int = 0) -> np.ndarray:
    """(n, 30) uint8 rows of ASCII community ids; ``sport``/``dport`` are ports, or ICMP type/code."""
    out = np.empty((len(proto), ID_LEN), np.uint8)
    arrays = [np.ascontiguousarray(x) for x in (proto, ip_ver, orig_hi, orig_lo, resp_hi, resp_lo, sport, dport)]
    _community_ids(*arrays, seed, _PAIR4, _PAIR6, _IS_PORTED, out)
    return out
