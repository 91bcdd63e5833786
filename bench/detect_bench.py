"""Cost of the detection stage: in-process decode + flow meter with and without the packet-grade
feature extractors and the end-of-run detectors, best of N passes after a JIT warm-up.

    python bench/detect_bench.py [CAPTURE] [--repeat 3]

Without CAPTURE it uses the benchmark capture of run_bench.py (bench/.cache, made with --keep)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flowsense.config import Config
from flowsense.decode.packets import Decoder
from flowsense.detection import Detection
from flowsense.flows.meter import FlowMeter
from flowsense.pipeline import decoded_batches
from flowsense.sources.pcap import CaptureFile


def one_pass(path: str, detect: bool) -> tuple[float, float, int, int]:
    """(seconds for decode + meter [+ features], seconds for the detectors, packets, alerts)."""
    config = Config()
    cf = CaptureFile(path, 0, config.pcap.batch_frames)
    decoder, meter = Decoder(config.pcap.batch_frames), FlowMeter(config.flows)
    detection = Detection(config) if detect else None
    packets = 0
    t0 = time.perf_counter()
    for batch in decoded_batches([cf], decoder):
        packets += len(batch.packets)
        if detection:
            detection.update(batch)
        for flows in meter.update(batch.packets):
            if detection:
                detection.add_flows(flows)
    for flows in meter.flush():
        if detection:
            detection.add_flows(flows)
    stream = time.perf_counter() - t0
    t1 = time.perf_counter()
    alerts = len(detection.finish()[0]) if detection else 0
    return stream, time.perf_counter() - t1, packets, alerts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capture", nargs="?", default=str(Path(__file__).parent / ".cache" / "bench-1M.pcap"))
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    if not Path(a.capture).exists():
        print(f"no capture {a.capture}: run `python bench/run_bench.py --keep` first or give one", file=sys.stderr)
        return 2
    best = {}
    for detect in (False, True):
        one_pass(a.capture, detect)          # warm-up: JIT and page cache
        runs = [one_pass(a.capture, detect) for _ in range(a.repeat)]
        best[detect] = min(runs, key=lambda r: r[0] + r[1])
    base, full = best[False], best[True]
    packets = base[2]
    print(f"capture {a.capture}: {packets:,} packets")
    print(f"  decode + meter                {base[0]:7.3f} s  {packets / base[0] / 1e6:6.2f} Mpps")
    print(f"  + feature extractors          {full[0]:7.3f} s  {packets / full[0] / 1e6:6.2f} Mpps  "
          f"({full[0] / base[0] - 1:+.0%} time, packets/s x{base[0] / full[0]:.2f})")
    print(f"  + detectors at end of run     {full[1]:7.3f} s  ({full[3]:,} alerts)")
    total = full[0] + full[1]
    print(f"  whole detection stage         {total:7.3f} s  {packets / total / 1e6:6.2f} Mpps  "
          f"(packets/s x{base[0] / total:.2f} of the foundation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
