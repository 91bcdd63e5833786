"""Deny-log lines -> DENY rows, with every line accounted for.

Each line is framed (syslog), then offered to the vendor decoders (all of them, or the one forced
with --deny-format) until one claims it.  Outcomes are counted per vendor: parsed (a DENY row),
skipped (allow or other non-deny lines the vendor recognised) and failed per reason, with a few
sample lines kept per reason; lines no vendor claims are counted under "unrecognised".
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import socket
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from flowsense.denylog import VENDORS
from flowsense.denylog.base import ACTIONS, Deny, Fail, Skip
from flowsense.denylog.framing import TimeContext, frame, iso_ns
from flowsense.errors import InputError, UsageError, reading
from flowsense.schema import DENY

SAMPLES_PER_REASON = 3
PARALLEL_BYTES = 16 << 20  # plain logs at least this big are split across processes
MAX_WORKERS = 8
ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}
ADDRESS_CACHE = 1 << 20  # distinct addresses remembered (bounds memory on scans of huge ranges)
_V4_MAPPED = 0xFFFF << 32
UNRECOGNISED = "unrecognised"


def parse_line(line: str, ctx: TimeContext, vendors=VENDORS):
    """(vendor name or None, Deny | Skip | Fail | None, Header) for one log line."""
    hdr, msg = frame(line.rstrip("\r\n"), ctx)
    for vendor in vendors:
        try:
            result = vendor.parse(msg, hdr)
        except Exception as err:  # a decoder bug must not stop the run: counted as a failure
            return vendor.NAME, Fail(f"parser error: {type(err).__name__}"), hdr
        if result is not None:
            return vendor.NAME, result, hdr
    return None, None, hdr


def vendor_named(name: str | None):
    """The decoders to try: all (auto-detect) or the one named by --deny-format."""
    if name in (None, "auto"):
        return VENDORS
    for vendor in VENDORS:
        if vendor.NAME == name:
            return (vendor,)
    raise UsageError(f"--deny-format {name}: unknown; choose auto or one of {', '.join(v.NAME for v in VENDORS)}")


def _halves(values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    hi = np.array([v >> 64 for v in values], np.uint64)
    lo = np.array([v & 0xFFFFFFFFFFFFFFFF for v in values], np.uint64)
    return hi, lo


class DenyLogReader:
    """Accumulates DENY rows from files, or from lines fed by a listener or a tail."""

    def __init__(self, ctx: TimeContext, deny_format: str | None = None):
        self.ctx = ctx
        self._deny_format = deny_format
        vendors = vendor_named(deny_format)
        # logs come in runs of one vendor: try the vendor of the previous line first
        self._orders = {v.NAME: (v, *(w for w in vendors if w is not v)) for v in vendors}
        self._order = vendors
        self.sources: list[str] = []
        self.kept: list[tuple] = []  # one tuple per DENY row, columns made at the end
        self.parsed = Counter()
        self.skipped = defaultdict(Counter)
        self.failed = defaultdict(Counter)
        self.samples = defaultdict(lambda: defaultdict(list))
        self.lines = 0
        self.blank = 0
        self._addrs: dict[str, int | None] = {}

    def _addr(self, text: str) -> int | None:
        """Address text -> 128-bit int (IPv4 as IPv4-mapped); each distinct text parsed once."""
        v = self._addrs.get(text, -1)
        if v == -1:
            try:
                v = _V4_MAPPED | int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            except OSError:
                try:
                    v = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.split("%")[0]), "big")
                except OSError:
                    v = None
            if len(self._addrs) < ADDRESS_CACHE:
                self._addrs[text] = v
        return v

    def add_source(self, name: str) -> int:
        self.sources.append(name)
        return len(self.sources) - 1

    def feed(self, line: str, source: int, line_no: int):
        self.lines += 1
        if not line.strip():
            self.blank += 1
            return
        vendor, result, hdr = parse_line(line, self.ctx, self._order)
        if vendor is not None:
            self._order = self._orders[vendor]
        if isinstance(result, Deny):
            ts = result.ts if result.ts is not None else hdr.ts
            if ts is None and result.local_time:
                ts = iso_ns(result.local_time, self.ctx.tz)
            src, dst = self._addr(result.src), (self._addr(result.dst) if result.dst else 0)
            if ts is None:
                result = Fail("no timestamp")
            elif src is None or dst is None:
                result = Fail("bad address")
            elif not (0 <= result.sport < 65536 and 0 <= result.dport < 65536 and 0 <= result.proto < 256
                      and result.action in ACTIONS):
                result = Fail("bad port, protocol or action")
            else:
                self._keep(result, ts, src, dst, vendor, hdr.host, source, line_no)
                return
        if isinstance(result, Skip):
            self.skipped[vendor][result.reason] += 1
            return
        vendor = vendor or UNRECOGNISED
        reason = result.reason if isinstance(result, Fail) else "no vendor decoder claimed the line"
        self.failed[vendor][reason] += 1
        kept = self.samples[vendor][reason]
        if len(kept) < SAMPLES_PER_REASON:
            kept.append(line.rstrip("\r\n")[:500])

    def _keep(self, d: Deny, ts: int, src: int, dst: int, vendor: str, host: str, source: int, line_no: int):
        self.kept.append((ts, src, dst, d.sport, d.dport, d.proto, ACTION_INDEX[d.action], source, line_no, vendor,
                          d.device or host, d.rule))
        self.parsed[vendor] += 1

    def read_file(self, path: str | Path):
        """A plain or gzip text log; a file that is not text is an operator error."""
        path = Path(path)
        try:
            with reading(f"deny log {path}"):
                with path.open("rb") as fh:
                    gz = fh.read(2) == b"\x1f\x8b"
                opener = gzip.open if gz else open
                with opener(path, "rb") as fh:
                    head = fh.read(8192)
        except (OSError, EOFError) as err:
            raise InputError(f"deny log {path}: unreadable ({err}); give a plain or gzip text log") from None
        if b"\0" in head or head.decode("utf-8", "replace").count("\ufffd") > len(head) // 20:
            raise InputError(f"deny log {path}: not a text log (binary content); give the firewall's text "
                             "log, plain or gzip")
        source = self.add_source(str(path))
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
        if gz or workers < 2 or path.stat().st_size < PARALLEL_BYTES:
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                for line_no, line in enumerate(fh, 1):
                    self.feed(line, source, line_no)
            return
        # a large plain log: one process per core, each on a run of whole lines
        size = path.stat().st_size
        with path.open("rb") as fh:
            cuts = [0]
            for k in range(1, workers):
                fh.seek(max(size * k // workers, cuts[-1]))
                fh.readline()
                cuts.append(fh.tell())
            cuts.append(size)
        spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(spans), mp_context=context) as pool:
            parts = list(pool.map(_read_span, [(str(path), a, b, self.ctx, self._deny_format) for a, b in spans]))
        base = 0
        for part in parts:
            self._absorb(part, source, base)
            base += part["lines"]

    def add_rows(self, rows: np.ndarray, text: dict[str, list[str]]):
        """DENY rows from another source (NetFlow NSEL 'flow denied' events), counted as parsed."""
        for i, r in enumerate(rows.tolist()):
            self.kept.append((r[0], r[1] << 64 | r[2], r[3] << 64 | r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                              text["vendor"][i], text["device"][i], text["rule"][i]))
            self.parsed[text["vendor"][i]] += 1

    def _state(self) -> dict:
        """What a worker process hands back (plain containers that pickle)."""
        return {"kept": self.kept, "parsed": self.parsed, "skipped": dict(self.skipped),
                "failed": dict(self.failed), "samples": {v: dict(r) for v, r in self.samples.items()},
                "lines": self.lines, "blank": self.blank}

    def _absorb(self, part: dict, source: int, line_base: int):
        self.kept.extend((*row[:7], source, row[8] + line_base, *row[9:]) for row in part["kept"])
        self.parsed.update(part["parsed"])
        for mine, theirs in ((self.skipped, part["skipped"]), (self.failed, part["failed"])):
            for vendor, counts in theirs.items():
                mine[vendor].update(counts)
        for vendor, reasons in part["samples"].items():
            for reason, lines in reasons.items():
                kept = self.samples[vendor][reason]
                kept.extend(lines[:SAMPLES_PER_REASON - len(kept)])
        self.lines += part["lines"]
        self.blank += part["blank"]

    def _column(self, k: int, start: int = 0) -> list:
        return [row[k] for row in self.kept[start:]]

    def rows(self, start: int = 0) -> np.ndarray:
        """DENY rows from the ``start``-th kept row on (live inputs write what is new)."""
        rows = DENY.empty(len(self.kept) - start)
        if len(rows):
            rows["ts"] = self._column(0, start)
            rows["src_hi"], rows["src_lo"] = _halves(self._column(1, start))
            rows["dst_hi"], rows["dst_lo"] = _halves(self._column(2, start))
            for k, name in enumerate(("sport", "dport", "proto", "action", "source", "line_no"), 3):
                rows[name] = self._column(k, start)
        return rows

    def text_columns(self, start: int = 0) -> dict[str, list[str]]:
        return {name: self._column(k, start) for k, name in enumerate(("vendor", "device", "rule"), 9)}

    def stats(self) -> dict:
        vendors = sorted(set(self.parsed) | set(self.skipped) | set(self.failed))
        return {
            "time_interpretation": self.ctx.describe(),
            "files": self.sources,
            "lines": self.lines,
            "blank_lines": self.blank,
            "deny_rows": sum(self.parsed.values()),
            "vendors": {v: {"parsed": self.parsed[v], "skipped": sum(self.skipped[v].values()),
                            "failed": sum(self.failed[v].values()),
                            "skipped_by_reason": dict(self.skipped[v]), "failed_by_reason": dict(self.failed[v]),
                            "failed_samples": {r: s for r, s in self.samples[v].items()}} for v in vendors},
        }



def _read_span(job) -> dict:
    """Worker: parse bytes [start, end) of a log (whole lines), line numbers from 1."""
    path, start, end, ctx, deny_format = job
    reader = DenyLogReader(ctx, deny_format)
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read(end - start).decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line_no, line in enumerate(lines, 1):
        reader.feed(line, 0, line_no)
    return reader._state()
