"""Shared test helpers: corpus location, whole-file decoding, CLI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
PCAPS = ROOT / "pcaps"


def corpus_captures(folder: str = "pcap") -> list[Path]:
    base = CORPUS / folder
    return sorted(p for p in base.rglob("*") if p.is_file() and ".pcap" in p.name and not p.name.endswith(".txt"))


def decode_file(path, batch_frames: int = 4096):
    """Every PACKET and DNS row of one capture (copies), the DNS names as text, and the capture."""
    from flowsense.decode.packets import Decoder
    from flowsense.sources.pcap import CaptureFile

    cf = CaptureFile(path, 0, batch_frames)
    decoder = Decoder(batch_frames)
    packets, dns, names = [], [], []
    for frames in cf.batches():
        batch = decoder.decode(cf.buf, frames)
        packets.append(batch.packets.copy())
        dns.append(batch.dns.copy())
        raw = batch.blob.tobytes()
        names += [raw[o:o + n] for o, n in zip(batch.dns["qname_off"].tolist(), batch.dns["qname_len"].tolist())]
    from flowsense.schema import DNS, PACKET
    pk = np.concatenate(packets) if packets else PACKET.empty(0)
    dn = np.concatenate(dns) if dns else DNS.empty(0)
    return pk, dn, names, cf, decoder


def flows_of(path, **flow_config):
    """All FLOW records of one capture through the meter (the analyze path without outputs)."""
    from flowsense.config import FlowsConfig
    from flowsense.decode.packets import Decoder
    from flowsense.flows.meter import FlowMeter
    from flowsense.pipeline import decoded_batches
    from flowsense.schema import FLOW
    from flowsense.sources.pcap import CaptureFile

    meter = FlowMeter(FlowsConfig(**flow_config))
    out = []
    for batch in decoded_batches([CaptureFile(path)], Decoder()):
        out += list(meter.update(batch.packets))
    out += list(meter.flush())
    return (np.concatenate(out) if out else FLOW.empty(0)), meter


def require_netns(extra_reason: str | None = None) -> None:
    """Skip a namespace test where namespaces cannot work (not root, no iproute2) — but fail under
    CI (CI set in the environment), where a skip would hide that the test never ran."""
    reason = extra_reason or netns_unusable()
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def netns_unusable() -> str | None:
    """Why network-namespace tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, NFLOG)"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not installed"
    try:
        probe = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"'ip netns' not usable: {err}"
    if probe.returncode != 0:
        return f"'ip netns' not usable: {probe.stderr.strip()}"
    return None


def run_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowsense", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def corpus():
    if not CORPUS.is_dir():
        pytest.fail(f"corpus not found at {CORPUS}: the tests expect ../shared/corpus beside the repo")
    return CORPUS


def run_bounds_checked(child: str, examples: int, tmp_path) -> None:
    """Run fuzzing code in a child whose Numba kernels are recompiled with NUMBA_BOUNDSCHECK=1 (in a
    cache of its own), so any over-read fails; the child prints "fuzz ok" when every example passed."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
           "PYTHONPATH": str(ROOT)}
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    result = subprocess.run([sys.executable, "-c", child, str(examples)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "fuzz ok" in result.stdout, result.stdout[-3000:] + result.stderr[-6000:]
