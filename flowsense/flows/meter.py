"""Flow meter: PACKET batches in, FLOW batches out (records of flows that ended).

Owns the table's arrays; ``update`` makes one ``meter_run`` call per batch (more only when the
output buffer fills), ``flush`` ends everything at end of input.  Memory is fixed by
``capacity``: the slab and index are allocated once with np.zeros, so untouched pages cost nothing.
"""

from __future__ import annotations

import numpy as np

from flowsense.config import FlowsConfig
from flowsense.flows import table as t
from flowsense.schema import FLOW

OUT_RECORDS = 65536
SWEEP_INTERVAL_S = 1.0


class FlowMeter:
    def __init__(self, config: FlowsConfig = FlowsConfig()):
        cap = config.capacity
        self.flows = FLOW.empty(cap)
        self.index = np.zeros(1 << max(4, int(2 * cap - 1).bit_length()), np.int32)
        self.free = np.zeros(cap, np.int32)
        self.meta = np.zeros(t.N_META, np.int64)
        self.meta[[t.M_LRU_HEAD, t.M_LRU_TAIL, t.M_AGE_HEAD, t.M_AGE_TAIL]] = -1
        self.meta[t.M_NOW] = np.iinfo(np.int64).min // 2
        self.meta[t.M_LAST_SWEEP] = np.iinfo(np.int64).min // 2
        self.counters = np.zeros(len(t.COUNTERS), np.int64)
        self.params = np.array([config.idle_timeout_s, config.active_timeout_s,
                                config.tcp_closed_timeout_s, SWEEP_INTERVAL_S], np.float64)
        self.params = (self.params * 1e9).astype(np.int64)
        self.out = FLOW.empty(OUT_RECORDS)

    def update(self, packets: np.ndarray):
        """Yield FLOW batches of the flows that ended while accounting ``packets``."""
        i = 0
        while True:
            i, n = t.meter_run(packets, i, self.flows, self.index, self.free, self.meta, self.counters,
                               self.params, self.out)
            if n:
                yield self.out[:n].copy()
            if i >= len(packets) and not self.meta[t.M_SWEEP_PENDING]:
                return

    def flush(self):
        while self.meta[t.M_COUNT] > 0:
            n = t.flush(self.flows, self.index, self.free, self.meta, self.counters, self.out)
            if n:
                yield self.out[:n].copy()

    @property
    def active(self) -> int:
        return int(self.meta[t.M_COUNT])

    def stats(self) -> dict:
        return {**{name: int(v) for name, v in zip(t.COUNTERS, self.counters)},
                "max_concurrent_flows": int(self.meta[t.M_MAX_COUNT]),
                "capacity": len(self.flows),
                "bytes_per_flow": round((self.flows.nbytes + self.index.nbytes + self.free.nbytes)
                                        / len(self.flows), 1)}
