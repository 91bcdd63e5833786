"""Flows of the bundled captures equal their reviewed golden CSV (regenerate: python tests/golden.py)."""

import difflib

import pytest

from golden import BUNDLED, golden_path, render


@pytest.mark.parametrize("pcap", BUNDLED, ids=lambda p: p.name)
def test_bundled_capture_matches_golden_flows(pcap):
    expected = golden_path(pcap).read_text()
    got = render(pcap)
    diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "golden", "now", n=0))
    assert got == expected, f"flows changed; if intended run `python tests/golden.py` and review:\n{diff[:4000]}"
