"""Deny-log lines -> DENY rows, with every line accounted for.

Each line is framed (syslog), then offered to the vendor decoders (all of them, or the one forced
with --deny-format) until one claims it.  Files are read in blocks; in a large block the fast path
(flowsense.denylog.fast) finishes the common lines itself and hands the rest to the decoders.  Outcomes are counted per vendor: parsed (a DENY row),
skipped (allow or other non-deny lines the vendor recognised) and failed per reason, with a few
sample lines kept per reason; lines no vendor claims are counted under "unrecognised".
"""

from __future__ import annotations

import gzip
import io
import socket
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from flowsense.denylog import VENDORS, fast
from flowsense.denylog.base import ACTIONS, Deny, Fail, Skip
from flowsense.denylog.framing import TimeContext, frame, iso_ns
from flowsense.errors import InputError, UsageError, reading
from flowsense.schema import DENY

SAMPLES_PER_REASON = 3
BLOCK_BYTES = 32 << 20  # a log is read in blocks of whole lines this big
FAST_BYTES = 1 << 20  # smaller blocks skip the fast path (its kernels take ~25 s to compile on a cold cache)
TEXT_COLUMNS = ("vendor", "device", "rule")
TS_RANGE = (-(1 << 63), (1 << 63) - 1)
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
        self._allowed = {v.NAME for v in vendors}
        self._blocks: list[tuple[np.ndarray, dict]] = []  # rows of whole files, as columns
        self.sources: list[str] = []
        self.kept: list[tuple] = []  # one tuple per DENY row of fed lines, columns made at the end
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
            elif not TS_RANGE[0] <= ts <= TS_RANGE[1]:  # would overflow the int64 column
                result = Fail("timestamp out of range")
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
        self._settle()  # rows so far stay ahead of this file's
        line_base = 0
        with reading(f"deny log {path}"), opener(path, "rb") as fh:
            for data in _whole_lines(fh, BLOCK_BYTES):
                line_base = self._read_block(data, source, line_base)

    def _read_block(self, data: memoryview, source: int, line_base: int) -> int:
        """Whole lines: the fast path, then the Python decoders for the lines it left; rows in line
        order.  Returns the line number reached."""
        buf = np.frombuffer(data, np.uint8)
        starts, ends, kinds, lone_cr = fast.lines(buf) if len(buf) >= FAST_BYTES else (None, None, None, True)
        if lone_cr:  # a small block, or lone CRs (text mode's universal newlines end lines there): as text
            with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace") as text:
                lines = text.readlines()
            for line_no, line in enumerate(lines, line_base + 1):
                self.feed(line, source, line_no)
            self._settle()
            return line_base + len(lines)
        block = fast.parse_block(buf, starts, ends, kinds, self.ctx, self._allowed)
        skips = iter(block.skips)
        pending = next(skips, None)
        claimed_before = np.searchsorted(block.claimed, block.defer) - 1
        previous = -1
        for i, j in zip(block.defer.tolist(), claimed_before.tolist()):
            while pending and pending[0] < i:
                self.skipped[pending[1]][pending[2]] += pending[3]
                pending = next(skips, None)
            if j >= 0 and block.claimed[j] > previous:  # as if the lines in between went through feed
                self._order = self._orders[fast.VENDORS[block.claimed_vendor[j]][0].NAME]
            previous = i
            self.feed(bytes(data[starts[i]:ends[i]]).decode("utf-8", "replace"), source, line_base + i + 1)
        while pending:
            self.skipped[pending[1]][pending[2]] += pending[3]
            pending = next(skips, None)
        if len(block.claimed) and block.claimed[-1] > previous:
            self._order = self._orders[fast.VENDORS[block.claimed_vendor[-1]][0].NAME]
        self.lines += len(starts) - len(block.defer)
        self.blank += block.blank
        self.parsed.update(block.parsed)
        rows = block.rows
        rows["source"] = source
        rows["line_no"] += line_base
        if self.kept:  # rows of the lines the decoders read go between the fast path's
            slow, slow_text = self._tuple_part(0)
            self.kept = []
            order = np.argsort(np.concatenate((rows["line_no"], slow["line_no"])), kind="stable")
            rows = np.concatenate((rows, slow))[order]
            block.text = {k: np.concatenate((v, slow_text[k]))[order] for k, v in block.text.items()}
        self._blocks.append((rows, block.text))
        return line_base + len(starts)

    def _settle(self):
        """Rows kept as tuples become a block."""
        self._blocks.append(self._tuple_part(0))
        self.kept = []

    def add_rows(self, rows: np.ndarray, text: dict[str, list[str]]):
        """DENY rows from another source (NetFlow NSEL 'flow denied' events), counted as parsed."""
        for i, r in enumerate(rows.tolist()):
            self.kept.append((r[0], r[1] << 64 | r[2], r[3] << 64 | r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                              text["vendor"][i], text["device"][i], text["rule"][i]))
            self.parsed[text["vendor"][i]] += 1

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows, _ in self._blocks) + len(self.kept)

    def _tuple_part(self, start: int) -> tuple[np.ndarray, dict]:
        """Rows kept as tuples (from the start-th on) as columns."""
        kept = self.kept[start:]
        rows = DENY.empty(len(kept))
        if kept:
            columns = list(zip(*kept))
            rows["ts"] = columns[0]
            rows["src_hi"], rows["src_lo"] = _halves(columns[1])
            rows["dst_hi"], rows["dst_lo"] = _halves(columns[2])
            for k, name in enumerate(("sport", "dport", "proto", "action", "source", "line_no"), 3):
                rows[name] = columns[k]
        text = {name: np.array([row[k] for row in kept], object) for k, name in enumerate(TEXT_COLUMNS, 9)}
        return rows, text

    def _parts(self, start: int) -> list[tuple[np.ndarray, dict]]:
        parts = []
        for rows, text in self._blocks:
            if start < len(rows):
                parts.append((rows[start:], {k: v[start:] for k, v in text.items()}))
            start = max(0, start - len(rows))
        return parts + [self._tuple_part(start)]

    def rows(self, start: int = 0) -> np.ndarray:
        """DENY rows from the ``start``-th row on (live inputs write what is new)."""
        return np.concatenate([rows for rows, _ in self._parts(start)])

    def text_columns(self, start: int = 0) -> dict[str, list[str]]:
        parts = self._parts(start)
        return {k: np.concatenate([text[k] for _, text in parts]).tolist() for k in TEXT_COLUMNS}

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




def _whole_lines(fh, size: int):
    """Blocks of whole lines (the last line may lack its newline), as views of one buffer that the
    next block overwrites."""
    buf = bytearray(size)
    filled = 0
    while True:
        got = fh.readinto(memoryview(buf)[filled:])
        if not got:
            if filled:
                yield memoryview(buf)[:filled]
            return
        filled += got
        cut = buf.rfind(b"\n", 0, filled) + 1
        if cut:
            yield memoryview(buf)[:cut]
            buf[:filled - cut] = buf[cut:filled]
            filled -= cut
        elif filled == len(buf):  # a line longer than the buffer
            buf = buf + bytearray(len(buf))
