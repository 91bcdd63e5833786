"""Back to the capture for the packets behind an alert.

The analysis keeps flows, DNS rows and alerts, not packets.  The report's per-packet plots and
`explain`'s dissection need only the few conversations or frames an alert names, so they walk the
capture again with the same decoder (millions of packets/s) and keep just those.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowsense.decode.packets import Decoder
from flowsense.nets import to_halves
from flowsense.schema import PACKET
from flowsense.sources.pcap import CaptureFile


def capture_paths(recorded: list[str], given: list[str]) -> dict[str, Path]:
    """Readable captures by the path the analysis recorded.  ``given`` (``--pcap``) replaces a recorded
    capture of the same file name, or the only one; recorded paths that still exist serve otherwise."""
    found = {}
    by_name = {Path(g).name: Path(g) for g in given}
    for path in recorded:
        if Path(path).name in by_name:
            found[path] = by_name[Path(path).name]
        elif len(recorded) == 1 and len(given) == 1:
            found[path] = Path(given[0])
        elif Path(path).is_file():
            found[path] = Path(path)
    return {k: v for k, v in found.items() if v.is_file()}


def conversation_packets(paths: list[Path], pairs: list[tuple[str, str]], keep: int = 20000) -> dict:
    """PACKET rows exchanged between each (a, b) address pair, either direction, in capture order
    (at most ``keep`` per pair: enough to draw a distribution)."""
    halves = [(to_halves(a), to_halves(b)) for a, b in pairs]
    parts: dict[tuple[str, str], list[np.ndarray]] = {p: [] for p in pairs}
    counts = dict.fromkeys(pairs, 0)
    for file_id, path in enumerate(paths):
        cf, decoder = CaptureFile(path, file_id), Decoder()
        for frames in cf.batches():
            pk = decoder.decode(cf.buf, frames).packets
            for pair, ((ahi, alo), (bhi, blo)) in zip(pairs, halves):
                if counts[pair] >= keep:
                    continue
                src_a = (pk["src_hi"] == ahi) & (pk["src_lo"] == alo)
                src_b = (pk["src_hi"] == bhi) & (pk["src_lo"] == blo)
                dst_a = (pk["dst_hi"] == ahi) & (pk["dst_lo"] == alo)
                dst_b = (pk["dst_hi"] == bhi) & (pk["dst_lo"] == blo)
                rows = pk[(src_a & dst_b) | (src_b & dst_a)][:keep - counts[pair]].copy()
                parts[pair].append(rows)
                counts[pair] += len(rows)
    return {p: np.concatenate(rows) if rows else PACKET.empty(0) for p, rows in parts.items()}


@dataclass
class Frame:
    """One captured frame, copied out of its capture."""
    capture: str
    frame_no: int
    ts: int
    link: int
    data: bytes
    role: str


def read_frames(path: Path, wanted: dict[int, str], capture: str) -> list[Frame]:
    """The frames of one capture with the given 1-based numbers (number -> role), in capture order."""
    numbers = np.array(sorted(wanted), np.uint32)
    out: list[Frame] = []
    cf = CaptureFile(path)
    for frames in cf.batches():
        hit = frames[np.isin(frames["frame_no"], numbers)]
        out += [Frame(capture, int(f["frame_no"]), int(f["ts"]), int(f["link"]),
                      bytes(cf.buf[f["off"]:f["off"] + f["cap_len"]]), wanted[int(f["frame_no"])]) for f in hit]
        if len(out) == len(numbers) or (len(frames) and frames["frame_no"][-1] >= numbers[-1]):
            break
    return out


def dissect(frames: list[Frame]) -> list[tuple[Frame, object]]:
    """Each frame with its tshark dissection (a pyshark packet).  The frames are first written to a
    small capture of their own, so tshark reads a handful of packets, not the whole original."""
    import dpkt
    import pyshark

    out = []
    for link in sorted({f.link for f in frames}):
        group = [f for f in frames if f.link == link]
        with tempfile.NamedTemporaryFile(suffix=".pcap") as tmp:
            writer = dpkt.pcap.Writer(tmp, linktype=link, nano=True)
            for f in group:
                writer.writepkt(f.data, ts=f.ts / 1e9)
            tmp.flush()
            cap = pyshark.FileCapture(tmp.name, keep_packets=False)
            try:
                out += list(zip(group, cap))
            finally:
                cap.close()
    return sorted(out, key=lambda pair: (pair[0].ts, pair[0].frame_no))

