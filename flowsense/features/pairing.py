"""Port/protocol pairings and how common each is: prevalence across hosts, network-wide and per host.

A pairing is (transport, responder port, app actually spoken).  Prevalence counts distinct
originating hosts, not flows, so one busy beacon cannot make its own pairing look common.  Only
flows that carried payload or completed a handshake count: a scanner's probes are not "use".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowsense.flows.table import ST_SYNACK

HOST_PAIR = np.dtype([("hi", "u8"), ("lo", "u8"), ("key", "u8")])


def pairing_keys(flows: np.ndarray) -> np.ndarray:
    return (flows["proto"].astype(np.uint64) << np.uint64(24)) | \
        (flows["resp_p"].astype(np.uint64) << np.uint64(8)) | flows["app"].astype(np.uint64)


def used(flows: np.ndarray) -> np.ndarray:
    """Flows that show real use of their pairing (payload seen, or a TCP handshake answered)."""
    tcp_ok = (flows["proto"] == 6) & ((flows["state"] & ST_SYNACK) != 0)
    return ((flows["proto"] == 6) | (flows["proto"] == 17)) & ((flows["app"] != 0) | tcp_ok)


@dataclass
class Pairings:
    """Distinct (host, pairing) rows, sorted; prevalence per pairing derives from them."""
    host_pairs: np.ndarray      # HOST_PAIR, unique, sorted by (hi, lo, key)
    hosts: int                  # distinct originating hosts

    @classmethod
    def of_flows(cls, flows: np.ndarray) -> Pairings:
        f = flows[used(flows)]
        rows = np.empty(len(f), HOST_PAIR)
        rows["hi"], rows["lo"], rows["key"] = f["orig_hi"], f["orig_lo"], pairing_keys(f)
        return cls.of_rows(rows)

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> Pairings:
        rows = np.unique(rows)
        hosts = len(np.unique(rows[["hi", "lo"]])) if len(rows) else 0
        return cls(rows, hosts)

    def merged(self, other: Pairings) -> Pairings:
        return Pairings.of_rows(np.concatenate([self.host_pairs, other.host_pairs]))

    def __post_init__(self):
        self.pairings = len(np.unique(self.host_pairs["key"]))   # K: distinct pairings

    def prevalence(self, keys: np.ndarray) -> np.ndarray:
        """Distinct hosts that used each pairing."""
        known, counts = np.unique(self.host_pairs["key"], return_counts=True)
        if not len(known):
            return np.zeros(len(keys), np.int64)
        at = np.clip(np.searchsorted(known, keys), 0, len(known) - 1)
        return np.where(known[at] == keys, counts[at], 0)

    def host_knows(self, hi: np.ndarray, lo: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Whether each (host, pairing) was seen."""
        if not len(self.host_pairs):
            return np.zeros(len(keys), np.bool_)
        probe = np.empty(len(keys), HOST_PAIR)
        probe["hi"], probe["lo"], probe["key"] = hi, lo, keys
        at = np.clip(np.searchsorted(self.host_pairs, probe), 0, len(self.host_pairs) - 1)
        return self.host_pairs[at] == probe

    def rarity_bits(self, counts: np.ndarray, alpha: float) -> np.ndarray:
        """-log2((c + a) / (N + a K)): the smoothed surprise of a pairing among N hosts, K pairings."""
        n, k = self.hosts, max(self.pairings, 1)
        return -np.log2((counts + alpha) / (n + alpha * k))
