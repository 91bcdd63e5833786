"""Big-endian readers for the Numba decoders.  Callers check bounds first: Numba does not."""

import numba as nb
import numpy as np


@nb.njit(cache=True, inline="always")
def u16(b, p):
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@nb.njit(cache=True, inline="always")
def u32(b, p):
    return (np.int64(b[p]) << 24) | (np.int64(b[p + 1]) << 16) | (np.int64(b[p + 2]) << 8) | np.int64(b[p + 3])


@nb.njit(cache=True, inline="always")
def u64(b, p):
    return (np.uint64(u32(b, p)) << np.uint64(32)) | np.uint64(u32(b, p + 4))


@nb.njit(cache=True, inline="always")
def head(b, p, end):
    """Up to 8 bytes at p as a big-endian uint64 (zero-padded) and how many were there."""
    n = min(8, end - p)
    v = np.uint64(0)
    for i in range(8):
        v = v << np.uint64(8)
        if i < n:
            v |= np.uint64(b[p + i])
    return v, max(n, 0)
