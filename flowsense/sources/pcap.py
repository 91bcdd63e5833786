"""Capture files: classic pcap (µs/ns, either byte order) and pcapng, plain or gzip.

The file is mapped with mmap and a Numba kernel walks its records into FRAME batches (offsets into
the mapping, lengths, ns timestamps, link type per frame), so no Python runs per packet.  A file
that is not a capture is an operator error; a capture damaged part-way is read up to the damage,
which is counted (``CAPTURE_COUNTERS``) and reported, never raised.
"""

from __future__ import annotations

import gzip
import mmap
import shutil
import tempfile
import zlib
from pathlib import Path

import numba as nb
import numpy as np

from flowsense.errors import InputError, reading
from flowsense.schema import FRAME

PCAP_MAGICS = {0xA1B2C3D4: (False, False), 0xA1B23C4D: (False, True),
               0xD4C3B2A1: (True, False), 0x4D3CB2A1: (True, True)}  # magic read LE -> (big-endian, ns)
PCAPNG_SHB = 0x0A0D0D0A
GZIP_MAGIC = b"\x1f\x8b"
MAX_RECORD = 64 << 20  # a record header claiming more than this is damage, not data
MAX_IFACES = 256
RELEASE_BYTES = 32 << 20  # give mapped pages back in steps of this size

CAPTURE_COUNTERS = (
    "records",                  # records turned into frames
    "truncated_record",         # file ends inside a record header or its data (capture cut short)
    "damaged_record",           # impossible record/block length: the rest of the file is unreadable
    "caplen_gt_wirelen",        # record claims more captured than original bytes
    "bad_timestamp_fraction",   # ns pcap fraction >= 1e9 or us pcap fraction >= 1e6
    "pcapng_bad_block",         # packet block whose lengths disagree; block skipped
    "pcapng_unknown_interface", # packet block naming an interface with no IDB; block skipped
    "pcapng_too_many_interfaces",
    "pcapng_other_blocks",      # name resolution, statistics, custom ... blocks (skipped, fine)
)
C = {name: i for i, name in enumerate(CAPTURE_COUNTERS)}
_RECORDS, _TRUNC, _DAMAGED = C["records"], C["truncated_record"], C["damaged_record"]
_CAPLEN, _BADTS, _BADBLOCK = C["caplen_gt_wirelen"], C["bad_timestamp_fraction"], C["pcapng_bad_block"]
_UNKIF, _MANYIF, _OTHER = C["pcapng_unknown_interface"], C["pcapng_too_many_interfaces"], C["pcapng_other_blocks"]

# walker state slots (int64 array carried between batches)
S_POS, S_BE, S_NIF, S_LAST_TS, S_FRAME_NO, S_DONE = range(6)


@nb.njit(cache=True, inline="always")
def _u16(b, p, be):
    if be:
        return (np.int64(b[p]) << 8) | np.int64(b[p + 1])
    return (np.int64(b[p + 1]) << 8) | np.int64(b[p])


@nb.njit(cache=True, inline="always")
def _u32(b, p, be):
    if be:
        return (np.int64(b[p]) << 24) | (np.int64(b[p + 1]) << 16) | (np.int64(b[p + 2]) << 8) | np.int64(b[p + 3])
    return (np.int64(b[p + 3]) << 24) | (np.int64(b[p + 2]) << 16) | (np.int64(b[p + 1]) << 8) | np.int64(b[p])


@nb.njit(cache=True, inline="always")
def _emit(frames, n, off, cap, wire, ts, link, file_id, st, counters):
    st[S_FRAME_NO] += 1
    f = frames[n]
    f.off = off
    f.cap_len = cap
    f.wire_len = wire
    f.ts = ts
    f.link = link
    f.file_id = file_id
    f.frame_no = st[S_FRAME_NO]
    st[S_LAST_TS] = ts
    counters[_RECORDS] += 1
    if cap > wire:
        counters[_CAPLEN] += 1


@nb.njit(cache=True, nogil=True)
def walk_pcap(buf, st, link, nano, file_id, frames, counters):
    """Fill ``frames`` from classic pcap records; returns the number filled.  ``st`` carries the
    position between calls and S_DONE once the file is exhausted or damaged."""
    end = buf.shape[0]
    be = st[S_BE]
    pos = st[S_POS]
    n = 0
    while n < frames.shape[0]:
        if pos == end:
            st[S_DONE] = 1
            break
        if pos + 16 > end:
            counters[_TRUNC] += 1
            st[S_DONE] = 1
            break
        sec = _u32(buf, pos, be)
        frac = _u32(buf, pos + 4, be)
        cap = _u32(buf, pos + 8, be)
        wire = _u32(buf, pos + 12, be)
        if cap > MAX_RECORD:
            counters[_DAMAGED] += 1
            st[S_DONE] = 1
            break
        if pos + 16 + cap > end:  # cut short: keep what was captured, as tshark does
            counters[_TRUNC] += 1
            st[S_DONE] = 1
            if end - pos - 16 > 0:
                _emit(frames, n, pos + 16, end - pos - 16, wire, sec * 1_000_000_000, link, file_id, st, counters)
                n += 1
            pos = end
            break
        if nano:
            if frac >= 1_000_000_000:
                counters[_BADTS] += 1
            ts = sec * 1_000_000_000 + frac
        else:
            if frac >= 1_000_000:
                counters[_BADTS] += 1
            ts = sec * 1_000_000_000 + frac * 1000
        _emit(frames, n, pos + 16, cap, wire, ts, link, file_id, st, counters)
        n += 1
        pos += 16 + cap
    st[S_POS] = pos
    return n


@nb.njit(cache=True)
def _ts_ns(units, kind, exp, offset_s):
    """pcapng timestamp units -> ns, for if_tsresol 10^-exp (kind 0) or 2^-exp (kind 1)."""
    if kind == 0:
        if exp <= 9:
            ns = units * 10 ** (9 - exp)
        else:
            ns = units // 10 ** (exp - 9)
    elif exp <= 30:
        ns = (units >> exp) * 1_000_000_000 + (((units & ((1 << exp) - 1)) * 1_000_000_000) >> exp)
    else:
        ns = np.int64(units / 2.0 ** exp * 1e9)
    return ns + offset_s * 1_000_000_000


@nb.njit(cache=True)
def _read_idb(buf, pos, blen, be, st, if_link, if_kind, if_exp, if_off, if_snap, counters):
    k = st[S_NIF]
    if k >= MAX_IFACES:
        counters[_MANYIF] += 1
        return
    if blen < 20:
        counters[_BADBLOCK] += 1
        return
    if_link[k] = _u16(buf, pos + 8, be)
    if_snap[k] = _u32(buf, pos + 12, be)
    if_kind[k] = 0
    if_exp[k] = 6
    if_off[k] = 0
    p = pos + 16
    stop = pos + blen - 4
    while p + 4 <= stop:
        code = _u16(buf, p, be)
        olen = _u16(buf, p + 2, be)
        if code == 0 or p + 4 + olen > stop:
            break
        if code == 9 and olen >= 1:
            r = buf[p + 4]
            if_kind[k] = r >> 7
            if_exp[k] = r & 0x7F
        elif code == 14 and olen == 8:
            if_off[k] = (_u32(buf, p + 4, be) << 32) | _u32(buf, p + 8, be) if be else \
                (_u32(buf, p + 8, be) << 32) | _u32(buf, p + 4, be)
        p += 4 + ((olen + 3) & ~3)
    st[S_NIF] = k + 1


@nb.njit(cache=True, nogil=True)
def walk_pcapng(buf, st, if_link, if_kind, if_exp, if_off, if_snap, file_id, frames, counters):
    """Fill ``frames`` from pcapng packet blocks (EPB, SPB, obsolete PB), following section
    headers (byte order, interface list) and interface descriptions (link type, tsresol, tsoffset)."""
    end = buf.shape[0]
    pos = st[S_POS]
    n = 0
    while n < frames.shape[0]:
        if pos == end:
            st[S_DONE] = 1
            break
        if pos + 12 > end:
            counters[_TRUNC] += 1
            st[S_DONE] = 1
            break
        btype = _u32(buf, pos, st[S_BE])
        if btype == PCAPNG_SHB:
            bom = _u32(buf, pos + 8, 0)
            if bom == 0x1A2B3C4D:
                st[S_BE] = 0
            elif bom == 0x4D3C2B1A:
                st[S_BE] = 1
            else:
                counters[_DAMAGED] += 1
                st[S_DONE] = 1
                break
            st[S_NIF] = 0
        be = st[S_BE]
        blen = _u32(buf, pos + 4, be)
        if blen < 12 or blen % 4 != 0 or blen > MAX_RECORD:
            counters[_DAMAGED] += 1
            st[S_DONE] = 1
            break
        if pos + blen > end:
            counters[_TRUNC] += 1
            st[S_DONE] = 1
            break
        if btype == 1:
            _read_idb(buf, pos, blen, be, st, if_link, if_kind, if_exp, if_off, if_snap, counters)
        elif btype == 6 or btype == 2:
            if blen < 32:
                counters[_BADBLOCK] += 1
            else:
                iface = _u32(buf, pos + 8, be) if btype == 6 else _u16(buf, pos + 8, be)
                cap = _u32(buf, pos + 20, be)
                wire = _u32(buf, pos + 24, be)
                if 28 + cap > blen - 4:
                    counters[_BADBLOCK] += 1
                elif iface >= st[S_NIF]:
                    counters[_UNKIF] += 1
                else:
                    units = (_u32(buf, pos + 12, be) << 32) | _u32(buf, pos + 16, be)
                    ts = _ts_ns(units, if_kind[iface], if_exp[iface], if_off[iface])
                    _emit(frames, n, pos + 28, cap, wire, ts, if_link[iface], file_id, st, counters)
                    n += 1
        elif btype == 3:
            if st[S_NIF] == 0 or blen < 16:
                counters[_UNKIF] += 1
            else:
                wire = _u32(buf, pos + 8, be)
                cap = min(wire, blen - 16)
                if if_snap[0] > 0:
                    cap = min(cap, if_snap[0])
                _emit(frames, n, pos + 12, cap, wire, st[S_LAST_TS], if_link[0], file_id, st, counters)
                n += 1
        elif btype != PCAPNG_SHB:
            counters[_OTHER] += 1
        pos += blen
    st[S_POS] = pos
    return n


def _map(path: Path):
    """Map a capture read-only; gzip is inflated to an anonymous temp file first so memory stays
    flat.  Returns (uint8 array, keep-alive objects)."""
    with reading(f"capture {path}"):
        raw = path.open("rb")
    with raw:
        if raw.read(2) == GZIP_MAGIC:
            tmp = tempfile.TemporaryFile()
            try:
                with gzip.open(path, "rb") as gz:
                    shutil.copyfileobj(gz, tmp, 1 << 20)
            except (OSError, EOFError, zlib.error):
                pass  # a damaged gzip stream keeps what inflated; the walker counts the cut
            raw = tmp
        else:
            raw = path.open("rb")
        size = raw.seek(0, 2)
        if size == 0:
            raise InputError(f"{path}: empty file, not a capture; give a .pcap or .pcapng file")
        mm = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
        raw.close()
    return np.frombuffer(mm, dtype=np.uint8), mm


class CaptureFile:
    """One capture in a run.  ``batches()`` yields FRAME arrays referencing ``self.buf``."""

    def __init__(self, path: str | Path, file_id: int = 0, batch_frames: int = 65536):
        self.path = Path(path)
        self.file_id = file_id
        self.batch_frames = batch_frames
        self.buf, self._mm = _map(self.path)
        self.counters = np.zeros(len(CAPTURE_COUNTERS), np.int64)
        self.state = np.zeros(6, np.int64)
        head = bytes(self.buf[:4])
        magic = int.from_bytes(head.ljust(4, b"\0"), "little")
        if magic in PCAP_MAGICS:
            self.format = "pcap"
            self.big_endian, self.nano = PCAP_MAGICS[magic]
            if len(self.buf) < 24:
                self.counters[_TRUNC] += 1
                self.state[S_DONE] = 1
                self.link = 0
            else:
                order = "big" if self.big_endian else "little"
                self.link = int.from_bytes(bytes(self.buf[20:24]), order) & 0xFFFF
                self.state[S_POS] = 24
                self.state[S_BE] = self.big_endian
        elif magic == PCAPNG_SHB:
            self.format = "pcapng"
            self.nano = None
            self.ifaces = [np.zeros(MAX_IFACES, t) for t in (np.int64,) * 5]
        else:
            raise InputError(f"{self.path}: not a pcap or pcapng capture (starts with {head.hex()}); "
                             "convert it with `editcap -F pcap` or give the right file")

    def batches(self):
        """FRAME batches; each is valid until the next one is requested.  Pages behind the read
        position are then released (MADV_DONTNEED), so resident memory stays flat however large
        the capture: decoded batches never point into the mapping."""
        frames = FRAME.empty(self.batch_frames)
        released = 0
        while not self.state[S_DONE]:
            if self.format == "pcap":
                n = walk_pcap(self.buf, self.state, self.link, self.nano, self.file_id, frames, self.counters)
            else:
                n = walk_pcapng(self.buf, self.state, *self.ifaces, self.file_id, frames, self.counters)
            if n:
                yield frames[:n]
            done = self.position // mmap.PAGESIZE * mmap.PAGESIZE
            if done - released >= RELEASE_BYTES:
                self._mm.madvise(mmap.MADV_DONTNEED, released, done - released)
                released = done

    def first_ts(self) -> int | None:
        """Time of the first record, read without moving the walk."""
        state, frames = self.state.copy(), FRAME.empty(1)
        counters = np.zeros_like(self.counters)
        if self.format == "pcap":
            n = walk_pcap(self.buf, state, self.link, self.nano, self.file_id, frames, counters)
        else:
            n = walk_pcapng(self.buf, state, *[a.copy() for a in self.ifaces], self.file_id, frames, counters)
        return int(frames[0]["ts"]) if n else None

    @property
    def position(self) -> int:
        return int(self.state[S_POS])

    def stats(self) -> dict:
        return {"path": str(self.path), "format": self.format, "bytes": int(len(self.buf)),
                **{name: int(v) for name, v in zip(CAPTURE_COUNTERS, self.counters)}}
