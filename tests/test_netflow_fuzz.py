"""The NetFlow kernels under NUMBA_BOUNDSCHECK=1 (recompiled in a child process with its own
cache dir): Hypothesis-mutated export datagrams, each batch in a buffer of exactly its own bytes,
never read out of bounds (an over-read would raise IndexError), never raise, and a batch decodes
as its datagrams one by one."""

from __future__ import annotations

import textwrap

from conftest import run_bounds_checked

CHILD = textwrap.dedent('''
    import sys
    import numpy as np
    from hypothesis import HealthCheck, given, settings, strategies as st
    sys.path.insert(0, "tests")
    from flowsense.decode.netflow import NetflowDecoder
    from test_netflow import SEEDS

    def batch(datagrams):
        buf = np.frombuffer(b"".join(datagrams), np.uint8).copy()  # exactly these bytes
        bounds = np.cumsum([0] + [len(d) for d in datagrams]).astype(np.int64)
        return buf, bounds, np.arange(len(datagrams), dtype=np.int64) % 2, ["198.18.0.1", "198.18.0.2"]

    @settings(max_examples=int(sys.argv[1]), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)),
                                                                  max_size=6), st.integers(0, 1500)),
                    min_size=1, max_size=6))
    def test_mutated_batches(parts):
        datagrams = []
        for seed, flips, cut in parts:
            data = bytearray(seed)
            for pos, value in flips:
                if pos < len(data):
                    data[pos] = value
            datagrams.append(bytes(data[:cut]))
        one = NetflowDecoder()
        rows = [one.decode(d, ["198.18.0.1", "198.18.0.2"][k % 2]) for k, d in enumerate(datagrams)]
        many = NetflowDecoder()
        got = many.decode_batch(*batch(datagrams))
        expected = np.concatenate(rows)
        assert len(got) == len(expected) and all(np.array_equal(got[f], expected[f]) for f in got.dtype.names)
        assert many.stats() == one.stats()

    test_mutated_batches()
    print("fuzz ok")
''')


def test_netflow_kernels_fuzz_with_bounds_checks(tmp_path):
    run_bounds_checked(CHILD, 400, tmp_path)
