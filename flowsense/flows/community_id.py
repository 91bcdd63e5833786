"""Community ID v1 (https://github.com/corelight/community-id-spec) for FLOW rows.

Ordering, hash input and base64 run in one Numba pass per batch, which calls OpenSSL's SHA-1
(the libcrypto Python's own hashlib uses) through ctypes: with the CPU's SHA instructions that is
~0.1 us a flow, against ~0.4 us for SHA-1 written in Numba and ~1 us for hashlib from Python.
Checked against the reference ``communityid`` package in the tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numba as nb
import numpy as np

PORTED = (6, 17, 132, 1, 58)
# ICMP types with a counterpart type: the pair is two-way and ordered like ports
ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
               144: 145, 145: 144, 139: 140, 140: 139}
ID_LEN = 30  # "1:" + base64 of 20 bytes
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)
SHA_CTX_BYTES = 96  # sizeof(SHA_CTX) is 96; room to spare is harmless


def _libcrypto():
    """SHA1_Init/Update/Final of OpenSSL's libcrypto (the one-shot ``SHA1`` goes through a provider
    lookup per call in OpenSSL 3, eight times slower for 20-byte inputs)."""
    for name in filter(None, (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so")):
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA1_Init, lib.SHA1_Update, lib.SHA1_Final
            break
        except (OSError, AttributeError):
            continue
    else:
        raise ImportError("flowsense needs OpenSSL's libcrypto with SHA1_Init/Update/Final (Debian: libssl3)")
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    for fn in (init, update, final):
        fn.restype = ctypes.c_int
    return init, update, final


_SHA1 = _libcrypto()


def _counterparts(pairs: dict) -> np.ndarray:
    table = np.full(256, -1, np.int64)
    table[list(pairs)] = list(pairs.values())
    return table


_PAIR4, _PAIR6 = _counterparts(ICMP4_PAIRS), _counterparts(ICMP6_PAIRS)
_IS_PORTED = np.zeros(256, np.bool_)
_IS_PORTED[list(PORTED)] = True


@nb.njit(cache=True, inline="always")
def _put_u64(block, at, value, nbytes):
    """The low ``nbytes`` bytes of ``value``, big-endian, at ``block[at:]``."""
    for j in range(nbytes):
        block[at + j] = np.uint8((value >> np.uint64(8 * (nbytes - 1 - j))) & np.uint64(0xFF))
    return at + nbytes


@nb.njit(cache=True, nogil=True)
def _community_ids(proto, ip_ver, a_hi, a_lo, b_hi, b_lo, sport, dport, seed, pair4, pair6, ported, out,
                   sha1_init, sha1_update, sha1_final):
    block = np.zeros(64, np.uint8)
    digest = np.zeros(21, np.uint8)  # the 21st byte stays zero: base64 of 20 bytes ends in '='
    ctx = np.zeros(SHA_CTX_BYTES, np.uint8)
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
        sha1_init(ctx.ctypes.data)
        sha1_update(ctx.ctypes.data, block.ctypes.data, k)
        sha1_final(digest.ctypes.data, ctx.ctypes.data)
        out[i, 0] = 49  # '1'
        out[i, 1] = 58  # ':'
        for g in range(7):
            v = (np.int64(digest[3 * g]) << 16) | (np.int64(digest[3 * g + 1]) << 8) | np.int64(digest[3 * g + 2])
            for j in range(4):
                out[i, 2 + 4 * g + j] = _B64[(v >> (18 - 6 * j)) & 63]
        out[i, ID_LEN - 1] = 61  # '=' pads the 21st byte


def community_ids(proto, ip_ver, orig_hi, orig_lo, resp_hi, resp_lo, sport, dport, seed: int = 0) -> np.ndarray:
    """(n, 30) uint8 rows of ASCII community ids; ``sport``/``dport`` are ports, or ICMP type/code."""
    out = np.empty((len(proto), ID_LEN), np.uint8)
    arrays = [np.ascontiguousarray(x) for x in (proto, ip_ver, orig_hi, orig_lo, resp_hi, resp_lo, sport, dport)]
    _community_ids(*arrays, seed, _PAIR4, _PAIR6, _IS_PORTED, out, *_SHA1)
    return out
