"""Which name a client was told an address has: DNS answers tie later flows to registered domains.

Per batch, the responses that carry an A/AAAA answer give (client, address, registered domain of
the question); registered domains come from the Public Suffix List kernel of ``dns_tunnel``.
Python touches only those responses, a small share of the traffic."""

from __future__ import annotations

import numpy as np

from flowsense.features.dns_tunnel import psl_table, registered_spans

PAIR = np.dtype([("client_hi", "u8"), ("client_lo", "u8"), ("addr_hi", "u8"), ("addr_lo", "u8")])


class ResolvedNames:
    def __init__(self):
        self._pairs: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self.domains: list[str] = []
        self._index: dict[bytes, int] = {}
        self._table = None

    def update(self, batch) -> None:
        d = batch.dns
        r = d[(d["qr"] == 1) & (d["answers"] > 0) & (d["qname_len"] > 0)]
        if not len(r):
            return
        spans = np.zeros((len(r), 2), np.int64)
        registered_spans(r, batch.blob, *psl_table(), spans)
        raw = batch.blob.tobytes()
        ids = np.empty(len(r), np.int64)
        for i, (off, n, start) in enumerate(zip(r["qname_off"].tolist(), r["qname_len"].tolist(),
                                                spans[:, 0].tolist())):
            name = raw[off + start:off + n].lower()
            ids[i] = self._index.setdefault(name, len(self._index))
            if ids[i] == len(self.domains):
                self.domains.append(name.decode("ascii", "backslashreplace"))
        pairs = np.empty(len(r), PAIR)
        pairs["client_hi"], pairs["client_lo"] = r["dst_hi"], r["dst_lo"]
        pairs["addr_hi"], pairs["addr_lo"] = r["answer_hi"], r["answer_lo"]
        self._pairs.append(pairs)
        self._ids.append(ids)
        self._table = None

    def lookup(self, client_hi, client_lo, addr_hi, addr_lo) -> np.ndarray:
        """Domain id per (client, address) (the latest answer wins), -1 when never resolved."""
        if self._table is None:
            pairs = np.concatenate(self._pairs) if self._pairs else np.empty(0, PAIR)
            ids = np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)
            # latest answer per pair: reverse, then unique keeps the first occurrence
            uniq, first = np.unique(pairs[::-1], return_index=True)
            self._table = (uniq, ids[::-1][first])
        uniq, ids = self._table
        out = np.full(len(client_hi), -1, np.int64)
        if not len(uniq):
            return out
        probe = np.empty(len(client_hi), PAIR)
        probe["client_hi"], probe["client_lo"], probe["addr_hi"], probe["addr_lo"] = client_hi, client_lo, addr_hi, \
            addr_lo
        at = np.clip(np.searchsorted(uniq, probe), 0, len(uniq) - 1)
        hit = uniq[at] == probe
        out[hit] = ids[at[hit]]
        return out

    def domain_of(self, client: tuple[int, int], addr: tuple[int, int]) -> str | None:
        i = int(self.lookup(np.array([client[0]], np.uint64), np.array([client[1]], np.uint64),
                            np.array([addr[0]], np.uint64), np.array([addr[1]], np.uint64))[0])
        return self.domains[i] if i >= 0 else None
