"""Address sets (internal networks, allowlists) over the two-uint64 address columns, and the
conversions between those columns and text."""

from __future__ import annotations

import functools
import ipaddress

import numpy as np



def to_halves(text: str) -> tuple[int, int]:
    """An address as (hi, lo) with IPv4 IPv4-mapped, the way batches store it."""
    addr = ipaddress.ip_address(text)
    value = int(addr) | (0xFFFF00000000 if addr.version == 4 else 0)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=1 << 16)
def addr_str(hi: int, lo: int) -> str:
    """Text form of one address column pair (IPv4-mapped addresses print as IPv4).  Cached: the
    alert path names the same few hosts many times."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and lo >> 32 == 0xFFFF:
        return f"{lo >> 24 & 255}.{lo >> 16 & 255}.{lo >> 8 & 255}.{lo & 255}"
    return str(ipaddress.IPv6Address((hi << 64) | lo))


class AddressSet:
    """A set of CIDRs tested against whole address columns at once (a few NumPy ops per CIDR)."""

    def __init__(self, cidrs=()):
        self.cidrs = tuple(str(c) for c in cidrs)
        rows = []
        for text in self.cidrs:
            net = ipaddress.ip_network(text, strict=False)
            bits = net.prefixlen + (96 if net.version == 4 else 0)
            base = int(net.network_address) | (0xFFFF00000000 if net.version == 4 else 0)
            mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
            rows.append((base >> 64, base & (2**64 - 1), mask >> 64, mask & (2**64 - 1)))
        self._nets = np.array(rows, np.uint64).reshape(-1, 4)

    def __bool__(self):
        return len(self._nets) > 0

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        hi, lo = np.asarray(hi, np.uint64), np.asarray(lo, np.uint64)
        out = np.zeros(hi.shape, np.bool_)
        for nhi, nlo, mhi, mlo in self._nets:
            out |= ((hi & mhi) == nhi) & ((lo & mlo) == nlo)
        return out

    def has(self, hi: int, lo: int) -> bool:
        return bool(self.contains(np.array([hi]), np.array([lo]))[0])
