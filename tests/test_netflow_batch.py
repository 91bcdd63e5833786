"""Batched NetFlow decoding: one ``decode_batch`` over many datagrams gives exactly the rows and
counters of one ``decode`` per datagram, whatever the batch boundaries (templates, options data,
data waiting for its template, several exporters and versions in one batch)."""

from __future__ import annotations

import numpy as np
import pytest
from test_netflow import NETFLOW, udp_payloads

from flowsense.decode.netflow import NetflowDecoder

ALL_VENDORS = NETFLOW / "derived/logstash-codec-netflow_all-vendors_udp-wrapped.pcap"


def batches(items, sizes):
    """(buffer, bounds, exporter ids, exporter names) per batch of the given sizes, in order."""
    pos = 0
    for size in sizes:
        chunk = items[pos:pos + size]
        pos += size
        names = sorted({e for e, _ in chunk})
        yield (np.frombuffer(b"".join(p for _, p in chunk), np.uint8),
               np.cumsum([0] + [len(p) for _, p in chunk]).astype(np.int64),
               np.array([names.index(e) for e, _ in chunk], np.int64), names)


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_batches_decode_as_datagrams_one_by_one(size):
    items = list(udp_payloads(ALL_VENDORS)) + list(udp_payloads(NETFLOW / "pmacct/102-nfv9-cisco-asr9k-2sources.pcap"))
    one = NetflowDecoder()
    expected = np.concatenate([one.decode(p, e) for e, p in items])
    many = NetflowDecoder()
    got = np.concatenate([many.decode_batch(*b).copy()
                          for b in batches(items, [size] * (len(items) // size + 1))])
    assert len(got) == len(expected) > 500
    for name in expected.dtype.names:
        assert np.array_equal(got[name], expected[name]), name
    assert many.stats() == one.stats()
    assert sum(s.get("replayed_sets", 0) for s in one.stats().values()) > 0  # the order-sensitive path ran


def test_batch_rows_are_reused_by_the_next_call():
    """decode_batch returns a view into a buffer the next call overwrites; decode returns a copy."""
    payload = (NETFLOW / "python-netflow/packet_v5.bin").read_bytes()
    d = NetflowDecoder()
    buf = np.frombuffer(payload, np.uint8)
    first = d.decode_batch(buf, np.array([0, len(payload)]), np.zeros(1, np.int64), ["198.18.0.1"])
    kept = d.decode(payload, "198.18.0.2")
    d.decode_batch(buf, np.array([0, len(payload)]), np.zeros(1, np.int64), ["198.18.0.3"])
    low = np.uint64(0xFFFFFFFF)
    assert set(first["exporter_lo"] & low) == {0xC6120003}  # overwritten by the third call
    assert set(kept["exporter_lo"] & low) == {0xC6120002}
