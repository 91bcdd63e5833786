"""NetFlow v5, v9 and IPFIX export datagrams -> NFLOW rows (unidirectional flow records).

A batch of datagrams (one byte buffer and the datagrams' bounds, e.g. everything a socket reader
drained) is decoded with two Numba passes: one walks every header and set header, the next writes
the NFLOW rows of every data set whose template is known, reading each field where the set's
template puts it (a "plan" per template: byte offset and width of every input an NFLOW column
needs).  NetFlow v5 is one more template with a fixed 48-byte layout.  Python only sees the rare
sets that change state: templates (parsed here, applied in datagram order), options data
(sampling rates, exporter boot time) and variable-length records.  Templates are keyed by
(exporter, version, observation domain / source id, template id); a data set that arrives before
its template waits (bounded in count and age) and is decoded when the template arrives, or is
counted as dropped.  Nothing here raises on bad input: problems are counted per exporter and reason.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Sequence

import numba as nb
import numpy as np

from flowsense.decode.bytes import u16, u32
from flowsense.schema import NFLOW

MAX_WAITING_SETS = 256          # data sets held for templates not yet seen, all exporters together
MAX_WAITING_AGE_S = 600         # ... and for at most this long (export time)
MAX_FIELDS = 512                # a template claiming more fields is damage
MAX_TEMPLATES = 65536           # templates held, all exporters together (oldest evicted first)
VARIABLE = 65535                # IPFIX variable-length field marker
V5_SET = 65536                  # set id given to a v5 datagram's records (outside the 16-bit ids)
_NTP_EPOCH = 2208988800         # seconds from 1900 to 1970
FW_DENIED = 3
SAMPLING_IES = (34, 50)          # samplingInterval, samplerRandomInterval (1-in-N)
SAMPLER_ID_IES = (48, 302)
REVERSE_PEN = 29305             # RFC 5103 biflow: reverse-direction IEs carry this enterprise number
MAX_NAMES = 1024                # interface names, App-IDs and User-IDs kept per exporter (stats)

# Where each NFLOW input comes from: per plan slot the IEs in order of preference (the first one a
# template has wins; (enterprise, id) for the RFC 5103 reverse counters).  ICMP: 178/179 and
# icmpTypeCode 139 are the IPv6 forms; the NSEL counters 231/298 and firewall event 40005 (older
# ASA) come after the standard ones.  The last slots are text (Palo Alto App-ID and User-ID, v9
# fields 56701/56702), read in Python for the stats: NFLOW has no column for them.
PLAN_IES = (
    ("sport", (7,)), ("dport", (11,)), ("proto", (4,)), ("tcp_flags", (6,)), ("in_if", (10,)), ("out_if", (14,)),
    ("icmp_type", (178, 176)), ("icmp_code", (179, 177)), ("icmp_type_code", (139, 32)),
    ("bytes", (1, 85, 231)), ("packets", (2, 86, 298)), ("fw_event", (233, 40005)),
    ("src4", (8,)), ("dst4", (12,)), ("src6", (27,)), ("dst6", (28,)), ("sampler", SAMPLER_ID_IES),
    # start, then end: milliseconds, seconds, NTP (nano- before microseconds), sysUpTime-relative ms
    ("start_ms", (152,)), ("start_s", (150,)), ("start_ntp", (156, 154)), ("start_rel", (22,)),
    ("end_ms", (153,)), ("end_s", (151,)), ("end_ntp", (157, 155)), ("end_rel", (21,)),
    ("observed_ms", (323,)),  # observationTimeMilliseconds (NSEL events)
    ("boot_ms", (160,)),      # systemInitTimeMilliseconds in the data record itself (Huawei)
    ("reverse_bytes", ((REVERSE_PEN, 1), (REVERSE_PEN, 85))),
    ("reverse_packets", ((REVERSE_PEN, 2), (REVERSE_PEN, 86))), ("reverse_tcp_flags", ((REVERSE_PEN, 6),)),
    ("app", (56701,)), ("user", (56702,)),
)
_SLOT = {name: slot for slot, (name, _) in enumerate(PLAN_IES)}
(P_SPORT, P_DPORT, P_PROTO, P_FLAGS, P_IN_IF, P_OUT_IF, P_ICMP_TYPE, P_ICMP_CODE, P_ICMP_TC, P_BYTES, P_PACKETS,
 P_FW_EVENT, P_SRC4, P_DST4, P_SRC6, P_DST6, P_SAMPLER, P_OBSERVED, P_BOOT, P_REV_BYTES, P_REV_PACKETS, P_REV_FLAGS,
 P_APP, P_USER) = (_SLOT[name] for name in (
    "sport", "dport", "proto", "tcp_flags", "in_if", "out_if", "icmp_type", "icmp_code", "icmp_type_code", "bytes",
    "packets", "fw_event", "src4", "dst4", "src6", "dst6", "sampler", "observed_ms", "boot_ms", "reverse_bytes",
    "reverse_packets", "reverse_tcp_flags", "app", "user"))
P_START, P_END = _SLOT["start_ms"], _SLOT["end_ms"]  # each followed by its s, NTP and relative slots
ADDRESS_V6 = (P_SRC6, P_DST6)   # only a 16-byte field is an IPv6 address
# per-record values the row kernel hands back besides the rows (``extra`` columns)
X_SAMPLER, X_REV_BYTES, X_REV_PACKETS, X_REV_FLAGS = range(4)

# header columns of the scan (one row per datagram)
H_VERSION, H_OK, H_UPTIME, H_SECS, H_NSECS, H_SEQ, H_DOMAIN, H_SAMPLING = range(8)
# set columns of the scan: datagram, set id (V5_SET for v5 records), body offset, body length
S_DG, S_ID, S_OFF, S_LEN = range(4)
# per-set inputs of the row kernel
K_OFF, K_NREC, K_PLAN, K_ROW, K_EXPORT_NS, K_UPTIME, K_SYS_INIT, K_SAMPLING, K_VERSION, K_DOMAIN = range(10)
# decode errors the scan counts, by datagram
ERRORS = ("short datagram", "short header", "truncated records", "truncated message", "bad set length",
          "reserved set id", "unknown version")
E_SHORT_DATAGRAM, E_SHORT_HEADER, E_TRUNC_RECORDS, E_TRUNC_MESSAGE, E_BAD_SET_LEN, E_RESERVED, E_VERSION = range(7)


def _exporter_halves(address: str) -> tuple[int, int]:
    a = ipaddress.ip_address(address)
    v = (0xFFFF << 32 | int(a)) if a.version == 4 else int(a)
    return v >> 64, v & 0xFFFFFFFFFFFFFFFF


def looks_like_export(data: bytes) -> bool:
    """A UDP payload whose header is consistent with a NetFlow v5/v9 or IPFIX message, for picking
    export datagrams out of a capture without knowing the collector's port."""
    if len(data) < 16:
        return False
    version, second = struct.unpack_from(">HH", data)
    if version == 5:
        return 1 <= second <= 30 and len(data) >= 24 + 48 * second
    if version == 9:
        if len(data) < 24:
            return False
        first_set = struct.unpack_from(">H", data, 20)[0]
        return 1 <= second <= 1024 and (first_set in (0, 1) or first_set >= 256)
    return version == 10 and second == len(data)


class Template:
    """A data template: (IE id, enterprise, length) per field; when all are fixed, the record
    dtype (options data) and the plan (where each NFLOW input sits, for the row kernel)."""

    def __init__(self, fields: list[tuple[int, int, int]], scope_count: int = 0):
        self.fields = fields
        self.scope_count = scope_count
        self.fixed = all(length != VARIABLE for _, _, length in fields)
        self.size = sum(length for _, _, length in fields) if self.fixed else 0
        if self.fixed:
            self.dtype = np.dtype([(f"f{i}", f">u{n}" if n in (1, 2, 4, 8) and not ent else f"V{n}")
                                   for i, (_, ent, n) in enumerate(fields)])
            self.plan = self._plan()

    def same(self, other: Template | None) -> bool:
        return other is not None and other.fields == self.fields and other.scope_count == self.scope_count

    def _plan(self) -> np.ndarray:
        """(offset, width) per PLAN_IES slot, offset -1 when the template has none of its IEs."""
        first, first16, offset = {}, {}, 0
        for fid, ent, n in self.fields:
            key = fid if not ent else (ent, fid)
            first.setdefault(key, (offset, n))
            if n == 16:
                first16.setdefault(key, (offset, n))
            offset += n
        plan = np.full((len(PLAN_IES), 2), -1, np.int64)
        for slot, (_, ies) in enumerate(PLAN_IES):
            found = first16 if slot in ADDRESS_V6 else first
            ie = next((ie for ie in ies if ie in found), None)
            if ie is not None:
                plan[slot] = found[ie]
        return plan

    def column(self, records: np.ndarray, ie: int) -> np.ndarray | None:
        """Values of standard IE ``ie`` as uint64 (None when absent); any width up to 8 bytes."""
        for i, (fid, ent, n) in enumerate(self.fields):
            if fid == ie and not ent:
                col = records[f"f{i}"]
                if n in (1, 2, 4, 8):
                    return col.astype(np.uint64)
                raw = np.frombuffer(col.tobytes(), np.uint8).reshape(-1, n)[:, -8:].astype(np.uint64)
                out = np.zeros(len(col), np.uint64)
                for k in range(raw.shape[1]):
                    out = (out << np.uint64(8)) | raw[:, k]
                return out
        return None


# NetFlow v5's record as a template of standard IEs (210 = padding), so it decodes like any other
V5_TEMPLATE = Template([(8, 0, 4), (12, 0, 4), (15, 0, 4), (10, 0, 2), (14, 0, 2), (2, 0, 4), (1, 0, 4), (22, 0, 4),
                        (21, 0, 4), (7, 0, 2), (11, 0, 2), (210, 0, 1), (6, 0, 1), (4, 0, 1), (5, 0, 1), (16, 0, 2),
                        (17, 0, 2), (9, 0, 1), (13, 0, 1), (210, 0, 2)])


# ---- kernels ---------------------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True)
def _scan(buf, bounds):
    """Headers and set headers of every datagram ``buf[bounds[i]:bounds[i+1]]``.
    Returns (header row per datagram, error counts per datagram, set rows)."""
    n = bounds.shape[0] - 1
    head = np.zeros((n, 8), np.int64)
    errors = np.zeros((n, 7), np.int64)
    sets = np.empty(((bounds[n] - bounds[0]) // 4 + n, 4), np.int64)
    ns = 0
    for i in range(n):
        a, e = bounds[i], bounds[i + 1]
        size = e - a
        if size < 4:
            errors[i, E_SHORT_DATAGRAM] += 1
            continue
        version = u16(buf, a)
        head[i, H_VERSION] = version
        if version == 5:
            if size < 24:
                errors[i, E_SHORT_HEADER] += 1
                continue
            count = u16(buf, a + 2)
            nrec = min(count, (size - 24) // 48)
            if nrec < count:
                errors[i, E_TRUNC_RECORDS] += 1
            head[i, H_OK], head[i, H_UPTIME], head[i, H_SECS] = 1, u32(buf, a + 4), u32(buf, a + 8)
            head[i, H_NSECS], head[i, H_SEQ] = u32(buf, a + 12), u32(buf, a + 16)
            head[i, H_DOMAIN], head[i, H_SAMPLING] = u16(buf, a + 20), max(u16(buf, a + 22) & 0x3FFF, 1)
            if nrec:
                sets[ns, S_DG], sets[ns, S_ID], sets[ns, S_OFF], sets[ns, S_LEN] = i, V5_SET, a + 24, nrec * 48
                ns += 1
        elif version == 9 or version == 10:
            hl = 20 if version == 9 else 16
            if size < hl:
                errors[i, E_SHORT_HEADER] += 1
                continue
            head[i, H_OK] = 1
            if version == 9:
                head[i, H_UPTIME], head[i, H_SECS] = u32(buf, a + 4), u32(buf, a + 8)
                head[i, H_SEQ], head[i, H_DOMAIN] = u32(buf, a + 12), u32(buf, a + 16)
                end = e
            else:
                length = u16(buf, a + 2)
                head[i, H_UPTIME], head[i, H_SECS] = -1, u32(buf, a + 4)
                head[i, H_SEQ], head[i, H_DOMAIN] = u32(buf, a + 8), u32(buf, a + 12)
                end = a + min(length, size)
                if length > size:
                    errors[i, E_TRUNC_MESSAGE] += 1
            first_template, last_template = (0, 1) if version == 9 else (2, 3)
            pos = a + hl
            while pos + 4 <= end:
                set_id, set_len = u16(buf, pos), u16(buf, pos + 2)
                if set_len < 4 or pos + set_len > end:
                    errors[i, E_BAD_SET_LEN] += 1
                    break
                if first_template <= set_id <= last_template or set_id >= 256:
                    sets[ns, S_DG], sets[ns, S_ID], sets[ns, S_OFF], sets[ns, S_LEN] = i, set_id, pos + 4, set_len - 4
                    ns += 1
                else:
                    errors[i, E_RESERVED] += 1
                pos += set_len
        else:
            errors[i, E_VERSION] += 1
    return head, errors, sets[:ns]


@nb.njit(cache=True, inline="always")
def _be(buf, p, width):
    """Big-endian unsigned value of the last (up to) 8 of ``width`` bytes at p."""
    v = np.uint64(0)
    for k in range(max(0, width - 8), width):
        v = (v << np.uint64(8)) | np.uint64(buf[p + k])
    return v


@nb.njit(cache=True, inline="always")
def _column(buf, base, size, n, off, width, dst):
    """dst[:n] = the field at ``off`` of each of the n records; the common widths read without a
    byte loop."""
    p = base + off
    if width == 4:
        for r in range(n):
            dst[r] = u32(buf, p + r * size)
    elif width == 2:
        for r in range(n):
            dst[r] = u16(buf, p + r * size)
    elif width == 1:
        for r in range(n):
            dst[r] = buf[p + r * size]
    elif width == 8:
        for r in range(n):
            dst[r] = (np.uint64(u32(buf, p + r * size)) << np.uint64(32)) | np.uint64(u32(buf, p + r * size + 4))
    else:
        for r in range(n):
            dst[r] = _be(buf, p + r * size, width)


@nb.njit(cache=True, inline="always")
def _time(v, plan, first, export_ns, uptime, sys_init, uptime_relative, n, dst):
    """Flow start (first = P_START) or end (P_END) in ns from whichever time IE the template has
    (its values in ``v[slot]``): milliseconds, seconds, NTP, sysUpTime-relative (v5/v9: the
    header's uptime; IPFIX: systemInitTimeMilliseconds of the record, else of the exporter's
    options, when known), an NSEL event
    time, IPFIX sysUpTime-relative anchored at the export, else the export time."""
    if plan[first, 0] >= 0:
        for r in range(n):
            dst[r] = np.int64(v[first, r]) * 1_000_000
    elif plan[first + 1, 0] >= 0:
        for r in range(n):
            dst[r] = np.int64(v[first + 1, r]) * 1_000_000_000
    elif plan[first + 2, 0] >= 0:
        for r in range(n):
            frac = np.float64(v[first + 2, r] & np.uint64(0xFFFFFFFF)) / 4294967296.0
            dst[r] = (np.int64(v[first + 2, r] >> np.uint64(32)) - _NTP_EPOCH) * 1_000_000_000 + np.int64(frac * 1e9)
    elif plan[first + 3, 0] >= 0 and uptime_relative:
        for r in range(n):
            dst[r] = export_ns - (uptime - np.int64(v[first + 3, r])) * 1_000_000
    elif plan[first + 3, 0] >= 0 and plan[P_BOOT, 0] >= 0:
        for r in range(n):
            dst[r] = (np.int64(v[P_BOOT, r]) + np.int64(v[first + 3, r])) * 1_000_000
    elif plan[first + 3, 0] >= 0 and sys_init >= 0:
        for r in range(n):
            dst[r] = (sys_init + np.int64(v[first + 3, r])) * 1_000_000
    elif plan[P_OBSERVED, 0] >= 0:
        for r in range(n):
            dst[r] = np.int64(v[P_OBSERVED, r]) * 1_000_000
    elif plan[first + 3, 0] >= 0:
        # IPFIX sysUpTime-relative times and no systemInitTimeMilliseconds (MikroTik): the boot
        # time is taken as the export time minus the latest uptime in the set, so the record that
        # ended last ended at the export and every duration and spacing is kept
        latest = np.uint64(0)
        for slot in (P_START + 3, P_END + 3):
            if plan[slot, 0] >= 0:
                for r in range(n):
                    latest = max(latest, v[slot, r])
        for r in range(n):
            dst[r] = export_ns - (np.int64(latest) - np.int64(v[first + 3, r])) * 1_000_000
    else:
        dst[:n] = export_ns


@nb.njit(cache=True, nogil=True)
def _rows(buf, sets, exporters, plans, sizes, out, extra):
    """Write the NFLOW rows of every set (one row of ``sets`` each, K_* columns) into ``out``
    and each record's sampler id and reverse counters into ``extra`` (X_* columns).  Within a
    set, each field is read column by column into ``v`` (plan slot x record) first: one tight
    loop per field."""
    most = 0
    for s in range(sets.shape[0]):
        most = max(most, sets[s, K_NREC])
    v = np.zeros((len(PLAN_IES), most), np.uint64)  # rows of fields a template lacks stay 0
    start, end = np.empty(most, np.int64), np.empty(most, np.int64)
    mapped = np.uint64(0xFFFF << 32)
    for s in range(sets.shape[0]):
        plan = plans[sets[s, K_PLAN]]
        size, base, n, row = sizes[sets[s, K_PLAN]], sets[s, K_OFF], sets[s, K_NREC], sets[s, K_ROW]
        if s and sets[s, K_PLAN] != sets[s - 1, K_PLAN]:
            v[:] = 0
        for slot in range(P_APP):
            if plan[slot, 0] >= 0 and slot != P_SRC6 and slot != P_DST6:
                _column(buf, base, size, n, plan[slot, 0], plan[slot, 1], v[slot])
        uptime_relative = sets[s, K_VERSION] != 10
        for first, dst in ((P_START, start), (P_END, end)):
            _time(v, plan, first, sets[s, K_EXPORT_NS], sets[s, K_UPTIME], sets[s, K_SYS_INIT], uptime_relative, n,
                  dst)
        has_src4, has_dst4, has_tc = plan[P_SRC4, 0] >= 0, plan[P_DST4, 0] >= 0, plan[P_ICMP_TC, 0] >= 0
        src6, dst6 = plan[P_SRC6, 0], plan[P_DST6, 0]
        sampling, version, domain = sets[s, K_SAMPLING], sets[s, K_VERSION], sets[s, K_DOMAIN]
        exporter_hi, exporter_lo = exporters[s, 0], exporters[s, 1]
        for r in range(n):
            o = out[row + r]
            proto, sport, dport = v[P_PROTO, r] & 0xFF, v[P_SPORT, r] & 0xFFFF, v[P_DPORT, r] & 0xFFFF
            icmp_type, icmp_code = v[P_ICMP_TYPE, r] & 0xFF, v[P_ICMP_CODE, r] & 0xFF
            if has_tc:  # icmpTypeCode: type * 256 + code
                icmp_type, icmp_code = (v[P_ICMP_TC, r] >> np.uint64(8)) & 0xFF, v[P_ICMP_TC, r] & 0xFF
            if (proto == 1 or proto == 58) and icmp_type == 0 and icmp_code == 0:
                # no ICMP IEs: type * 256 + code in the destination port (some Cisco releases
                # byte-swap it into the source port)
                code = dport if dport != 0 else sport
                if dport == 0 and sport != 0:
                    code = ((code & 0xFF) << np.uint64(8)) | (code >> np.uint64(8))
                icmp_type, icmp_code = code >> np.uint64(8), code & 0xFF
            o.proto, o.sport, o.dport, o.icmp_type, o.icmp_code = proto, sport, dport, icmp_type, icmp_code
            o.tcp_flags = v[P_FLAGS, r] & 0xFF
            o.in_if, o.out_if = v[P_IN_IF, r] & 0xFFFFFFFF, v[P_OUT_IF, r] & 0xFFFFFFFF
            o.bytes, o.packets, o.fw_event = v[P_BYTES, r], v[P_PACKETS, r], v[P_FW_EVENT, r] & 0xFF
            if has_src4:
                o.src_lo = v[P_SRC4, r] | mapped
            if has_dst4:
                o.dst_lo = v[P_DST4, r] | mapped
            if src6 >= 0:  # an IPv6 address that is there and not all zero replaces the IPv4 one
                p = base + r * size + src6
                hi, lo = _be(buf, p, 8), _be(buf, p + 8, 8)
                if hi | lo:
                    o.src_hi, o.src_lo = hi, lo
            if dst6 >= 0:
                p = base + r * size + dst6
                hi, lo = _be(buf, p, 8), _be(buf, p + 8, 8)
                if hi | lo:
                    o.dst_hi, o.dst_lo = hi, lo
            o.ts, o.last_ts = start[r], max(start[r], end[r])  # an end before the start is taken as the start
            o.sampling, o.version, o.domain = sampling, version, domain
            o.exporter_hi, o.exporter_lo = exporter_hi, exporter_lo
            extra[row + r, X_SAMPLER], extra[row + r, X_REV_BYTES] = v[P_SAMPLER, r], v[P_REV_BYTES, r]
            extra[row + r, X_REV_PACKETS], extra[row + r, X_REV_FLAGS] = v[P_REV_PACKETS, r], v[P_REV_FLAGS, r]


@nb.njit(cache=True, nogil=True)
def _sequence(slots, seqs, advances, expected, known):
    """Per datagram, the records/datagrams its sequence number says were lost (0 when none);
    updates the next expected number per (exporter, version, domain) slot."""
    gaps = np.zeros(slots.shape[0], np.int64)
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0:
            continue
        if known[s] and seqs[i] != expected[s]:
            gap = (seqs[i] - expected[s]) & 0xFFFFFFFF
            if gap < 1 << 31:
                gaps[i] = gap
        expected[s] = (seqs[i] + advances[i]) & 0xFFFFFFFF
        known[s] = True
    return gaps


# ---- decoder ---------------------------------------------------------------------------------------

class NetflowDecoder:
    def __init__(self):
        self.templates: dict[tuple, Template] = {}
        self.waiting: OrderedDict[tuple, list] = OrderedDict()
        self.sampling: dict[tuple, int] = {}          # (exporter, domain[, sampler]) -> 1-in-N
        self.sys_init_ms: dict[tuple, int] = {}       # (exporter, domain) -> exporter boot time (IPFIX)
        self.counters: dict[str, Counter] = defaultdict(Counter)
        # (exporter, version, domain) -> slot, for the sequence numbers and the per-set lookups
        self.slots: dict[tuple, int] = {}
        self.slot_keys: list[tuple] = []
        self.slot_exporter = np.zeros((0, 2), np.uint64)
        self.expected = np.zeros(0, np.int64)
        self.known = np.zeros(0, np.bool_)
        # rows are written here, reused from batch to batch: fresh memory costs a page fault per
        # 4 KiB, which here costs more than decoding the records
        self._out = NFLOW.empty(0)
        self._extra = np.zeros((0, 4), np.uint64)
        self.names: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))

    def decode(self, data: bytes, exporter: str) -> np.ndarray:
        """NFLOW rows of one export datagram from ``exporter`` (its source address)."""
        return self.decode_batch(np.frombuffer(data, np.uint8), np.array([0, len(data)], np.int64),
                                 np.zeros(1, np.int64), [exporter]).copy()

    def decode_batch(self, buf: np.ndarray, bounds: np.ndarray, exporter_ids: np.ndarray,
                     exporters: Sequence[str]) -> np.ndarray:
        """NFLOW rows of the datagrams ``buf[bounds[i]:bounds[i + 1]]``, datagram i sent by
        ``exporters[exporter_ids[i]]``, in datagram order (exactly as one ``decode`` each).
        The rows are a view into a buffer the next call reuses: copy what must outlive it."""
        head, errors, sets = _scan(buf, bounds)
        names = list(exporters)
        exporter_ids = np.asarray(exporter_ids, np.int64)
        ok = head[:, H_OK] == 1
        per_exporter = np.bincount(exporter_ids, minlength=len(names))
        for e in np.flatnonzero(per_exporter).tolist():
            self.counters[names[e]]["datagrams"] += int(per_exporter[e])
        self._count_errors(errors, head, exporter_ids, names)
        for e in np.unique(exporter_ids[ok]):
            self.counters[names[e]]["records"] += 0  # present for every exporter that got this far
        slots = self._slot_of(head, exporter_ids, names, ok)
        batch = _Batch(self, buf, head, sets, slots)
        templates = np.flatnonzero(sets[:, S_ID] < 256)
        start = 0
        for t in templates:  # template sets in datagram order; data between them decodes at once
            parsed = self._parse_templates(batch, t)
            if any(self._changes(key, template) for key, template in parsed):
                batch.data(start, t)
                start = t
            batch.apply_templates(parsed, t)
        batch.data(start, len(sets))
        advances = np.where(head[:, H_VERSION] == 9, 1, batch.direct_rows)
        gaps = _sequence(slots, head[:, H_SEQ], advances, self.expected, self.known)
        self._count_gaps(gaps, head, exporter_ids, names)
        return self._out[:batch.rows]

    # ---- per batch bookkeeping ------------------------------------------------------------------

    def _count_errors(self, errors, head, exporter_ids, names):
        for dg, code in zip(*np.nonzero(errors)):
            reason = ERRORS[code] if code != E_VERSION else f"unknown version {head[dg, H_VERSION]}"
            self.counters[names[exporter_ids[dg]]]["error:" + reason] += int(errors[dg, code])

    def _count_gaps(self, gaps, head, exporter_ids, names):
        for dg in np.flatnonzero(gaps):
            c = self.counters[names[exporter_ids[dg]]]
            version = head[dg, H_VERSION]
            c["sequence_gaps"] += 1
            c["lost " + ("flows" if version == 5 else "datagrams" if version == 9 else "records")] += int(gaps[dg])

    def _slot_of(self, head, exporter_ids, names, ok) -> np.ndarray:
        """Slot of each datagram's (exporter, version, domain); -1 for datagrams without a header."""
        key = exporter_ids << 36 | (head[:, H_VERSION] & 0xF) << 32 | head[:, H_DOMAIN]
        unique, inverse = np.unique(np.where(ok, key, -1), return_inverse=True)
        slot_of_unique = np.empty(len(unique), np.int64)
        for u, k in enumerate(unique.tolist()):
            if k < 0:
                slot_of_unique[u] = -1
                continue
            name = names[k >> 36]
            slot_key = (name, (k >> 32) & 0xF, k & 0xFFFFFFFF)
            if slot_key not in self.slots:
                self.slots[slot_key] = len(self.slot_keys)
                self.slot_keys.append(slot_key)
                self.slot_exporter = np.vstack([self.slot_exporter, np.array([_exporter_halves(name)], np.uint64)])
                self.expected = np.append(self.expected, 0)
                self.known = np.append(self.known, False)
            slot_of_unique[u] = self.slots[slot_key]
        return slot_of_unique[inverse.ravel()]

    def _changes(self, key: tuple, template: Template | None) -> bool:
        """Whether applying this template (None: withdrawal) changes what data sets decode to;
        a refresh of a known template does not, so data on both sides decodes in one pass."""
        if template is None:
            return key in self.templates
        return not template.same(self.templates.get(key)) or key in self.waiting

    # ---- templates ------------------------------------------------------------------------------

    def _parse_templates(self, batch: _Batch, t: int) -> list[tuple[tuple, Template | None]]:
        """(key, template or None for a withdrawal) of each template in set ``t``."""
        dg, set_id, off, length = batch.sets[t]
        exporter, version, domain = self.slot_keys[batch.slots[dg]]
        body = batch.buf[off:off + length].tobytes()
        options = set_id in (1, 3)
        c = self.counters[exporter]
        pos, out = 0, []
        while pos + 4 <= len(body):
            tid, count = struct.unpack_from(">HH", body, pos)
            pos += 4
            scope = 0
            if options:
                if pos + 2 > len(body):
                    break
                if version == 9:  # scope and option lengths in bytes, 4 per field
                    scope_len, opt_len = count, struct.unpack_from(">H", body, pos)[0]
                    scope, count = scope_len // 4, (scope_len + opt_len) // 4
                else:
                    scope = struct.unpack_from(">H", body, pos)[0]
                pos += 2
            if tid < 256:
                break  # padding at the end of the set
            key = (exporter, version, domain, tid)
            if count == 0:  # IPFIX template withdrawal
                out.append((key, None))
                continue
            if count > MAX_FIELDS:
                c["error:template too large"] += 1
                return out
            fields = []
            for _ in range(count):
                if pos + 4 > len(body):
                    c["error:truncated template"] += 1
                    return out
                fid, length = struct.unpack_from(">HH", body, pos)
                pos += 4
                ent = 0
                if version == 10 and fid & 0x8000:
                    if pos + 4 > len(body):
                        c["error:truncated template"] += 1
                        return out
                    ent = struct.unpack_from(">I", body, pos)[0]
                    fid &= 0x7FFF
                    pos += 4
                if version == 9 and options and len(fields) < scope:
                    ent = 1 << 31  # v9 scope fields (system, interface...) use their own id space
                if length == 0:
                    continue  # zero-length fields carry nothing (seen in the wild)
                fields.append((fid, ent, length))
            if fields:
                out.append((key, Template(fields, scope)))
        return out

    def _apply_template(self, key: tuple, template: Template | None) -> list[tuple[bytes, tuple]]:
        """Store (or withdraw) a template; returns the data sets that waited for it."""
        c = self.counters[key[0]]
        if template is None:
            if self.templates.pop(key, None) is not None:
                c["templates_withdrawn"] += 1
            return []
        if key not in self.templates:
            c["templates"] += 1
            if len(self.templates) >= MAX_TEMPLATES:  # bounded whatever exporters send
                oldest = next(iter(self.templates))
                del self.templates[oldest]
                self.counters[oldest[0]]["templates_evicted"] += 1
        self.templates[key] = template
        return self.waiting.pop(key, [])

    # ---- data that does not take the vectorised path ----------------------------------------------

    def _wait(self, body, key, c, clock):
        secs = clock[0]
        for k in [k for k, sets in self.waiting.items() if secs - sets[0][1][0] > MAX_WAITING_AGE_S]:
            c_old = self.counters[k[0]]
            c_old["dropped_sets_no_template"] += len(self.waiting.pop(k))
        if sum(map(len, self.waiting.values())) >= MAX_WAITING_SETS:
            oldest = next(iter(self.waiting))
            self.counters[oldest[0]]["dropped_sets_no_template"] += 1
            self.waiting[oldest].pop(0)
            if not self.waiting[oldest]:
                del self.waiting[oldest]
        self.waiting.setdefault(key, []).append((body, clock))
        c["waiting_sets"] += 1

    def _fixed_records(self, body: bytes, template: Template, c: Counter):
        """(body, layout, record count) of a set with at least one whole record, else None."""
        laid_out = self._fixed_body(body, template, c)
        if laid_out is None:
            return None
        body, t = laid_out
        n = len(body) // t.size
        return (body, t, n) if n else None

    def _fixed_body(self, body: bytes, template: Template, c: Counter) -> tuple[bytes, Template] | None:
        """The set's records laid out by a fixed template (variable-length IEs dropped)."""
        if template.fixed:
            return body, template
        return self._walk_variable(body, template, c)

    def _walk_variable(self, body: bytes, template: Template, c: Counter) -> tuple[bytes, Template] | None:
        """Records with variable-length IEs, re-laid out with those IEs dropped (none of them maps
        to an NFLOW column), so the fixed-layout path can take over."""
        kept = [(fid, ent, n) for fid, ent, n in template.fields if n != VARIABLE]
        fixed = Template(kept, template.scope_count)
        rows, pos = [], 0
        while pos < len(body):
            parts, start = [], pos
            for _, _, n in template.fields:
                if n == VARIABLE:
                    if pos >= len(body):
                        break
                    n = body[pos]
                    pos += 1
                    if n == 255:
                        if pos + 2 > len(body):
                            break
                        n = struct.unpack_from(">H", body, pos)[0]
                        pos += 2
                    pos += n
                else:
                    parts.append(body[pos:pos + n])
                    pos += n
            if pos > len(body) or len(parts) != len(kept):
                if any(body[start:]):  # trailing zeros are padding, anything else is damage
                    c["error:truncated variable-length record"] += 1
                break
            rows.append(b"".join(parts))
        if not rows or not fixed.size:
            return None
        return b"".join(rows), fixed

    def _options(self, body: bytes, template: Template, key: tuple, c: Counter):
        """Options records: sampling rates (per exporter or per sampler id), the exporter's
        systemInitTimeMilliseconds, which turns IPFIX sysUpTime-relative times absolute, and
        interface names (for the stats)."""
        if any(fid in (82, 83) and not ent for fid, ent, _ in template.fields):
            self._interface_names(body, template, key[0])
        records = self._fixed_records(body, template, c)
        if records is None:
            return
        body, t, n = records
        records = np.frombuffer(body, t.dtype, n)
        exporter, _, domain, _ = key
        init = t.column(records, 160)
        if init is not None and 0 < int(init[-1]) < 1 << 48:  # a plausible epoch in ms
            self.sys_init_ms[(exporter, domain)] = int(init[-1])
        rate = _sampling_rate(records, t)
        if rate is None:
            return
        sampler = next((v for ie in SAMPLER_ID_IES if (v := t.column(records, ie)) is not None), None)
        for i in range(len(rate)):
            ident = int(sampler[i]) if sampler is not None else None
            self.sampling[(exporter, domain, ident)] = max(int(rate[i]), 1)

    def _interface_names(self, body: bytes, template: Template, exporter: str):
        """interfaceName (82, else interfaceDescription 83) per interface index: IPFIX
        ingressInterface (10) or the v9 "interface" scope (type 2); fixed or variable length."""
        for record in _walk_records(body, template):
            index = record.get((10, 0), record.get((2, 1 << 31)))
            name = record.get((82, 0), record.get((83, 0)))
            if index is not None and name is not None:
                names = self.names[exporter]["interfaces"]
                key = str(int.from_bytes(index[-8:], "big"))
                if key in names or len(names) < MAX_NAMES:
                    names[key] = name.rstrip(b"\0").decode("utf-8", "replace")

    def _names(self, exporter: str, kind: str, records: np.ndarray, field: np.ndarray):
        """Count the text values (NUL-padded) of a fixed-width field per exporter, for the stats;
        at most MAX_NAMES distinct values, the rest under "(more)"."""
        if field[0] < 0:
            return
        values, counts = np.unique(records[:, field[0]:field[0] + field[1]], axis=0, return_counts=True)
        kept = self.names[exporter][kind]
        for value, count in zip(values, counts.tolist()):
            name = bytes(value).rstrip(b"\0").decode("utf-8", "replace")
            if name:  # an empty User-ID: nobody known
                kept[name if name in kept or len(kept) < MAX_NAMES else "(more)"] += count

    def _sampled(self, out: np.ndarray, sampler: np.ndarray, rows: np.ndarray, slots: np.ndarray):
        """Per-record sampling rates of ``out[rows]`` (whose template names a sampler, in
        ``sampler[rows]``; ``slots``: each one's exporter slot)."""
        for slot in np.unique(slots).tolist():
            exporter, _, domain = self.slot_keys[slot]
            mine = rows[slots == slot]
            default = self.sampling.get((exporter, domain, None), 1)
            ids, inverse = np.unique(sampler[mine], return_inverse=True)
            rates = np.array([self.sampling.get((exporter, domain, i), default) for i in ids.tolist()], np.uint32)
            out["sampling"][mine] = rates[inverse.ravel()]

    def save_templates(self) -> list:
        """Templates as JSON-ready data, so that a restarted collector decodes at once."""
        return [{"key": list(key), "fields": [list(f) for f in t.fields], "scope": t.scope_count}
                for key, t in self.templates.items()]

    def load_templates(self, saved: list) -> int:
        for item in saved:
            key = tuple(item["key"])
            self.templates[key] = Template([tuple(f) for f in item["fields"]], item["scope"])
        return len(saved)

    def stats(self) -> dict:
        """Per exporter: the counters, templates known, sets waiting, and the names it told us
        (``interfaces``: index -> name; ``apps``/``users``: Palo Alto App-/User-ID -> records)."""
        return {exporter: {**dict(c), "templates_known": sum(1 for k in self.templates if k[0] == exporter),
                           "waiting_now": sum(len(v) for k, v in self.waiting.items() if k[0] == exporter),
                           **{kind: dict(v) for kind, v in self.names.get(exporter, {}).items()}}
                for exporter, c in self.counters.items()}


class _Batch:
    """One ``decode_batch`` call: the scan's tables and the rows decoded so far, in set order."""

    def __init__(self, decoder: NetflowDecoder, buf, head, sets, slots):
        self.decoder, self.buf, self.head, self.sets, self.slots = decoder, buf, head, sets, slots
        self.rows = 0  # rows written to decoder._out so far
        self.direct_rows = np.zeros(len(head), np.int64)  # records of each datagram's own data sets

    def apply_templates(self, parsed, t: int):
        dg = self.sets[t, S_DG]
        for key, template in parsed:
            for body, clock in self.decoder._apply_template(key, template):
                self.decoder.counters[key[0]]["replayed_sets"] += 1
                self._one(body, key, clock, dg, direct=False)

    def data(self, start: int, stop: int):
        """Decode the data sets among sets[start:stop] (no template changes in between): runs of
        sets with known fixed templates in one kernel call; options data, variable-length
        records and sets still waiting for their template one by one, in order."""
        d = self.decoder
        pick = np.arange(start, stop)
        pick = pick[self.sets[pick, S_ID] >= 256]
        if not len(pick):
            return
        sets = self.sets[pick]
        slots = self.slots[sets[:, S_DG]]
        keys = slots << 17 | sets[:, S_ID]
        unique, inverse = np.unique(keys, return_inverse=True)
        templates = []
        for k in unique.tolist():
            set_id = k & 0x1FFFF
            templates.append(V5_TEMPLATE if set_id == V5_SET else d.templates.get((*d.slot_keys[k >> 17], set_id)))
        plain = np.array([t is not None and t.fixed and not t.scope_count for t in templates], np.bool_)
        inverse = inverse.ravel()
        special = np.flatnonzero(~plain[inverse])
        run_start = 0
        for i in special.tolist() + [len(pick)]:
            if i > run_start:
                self._run(sets[run_start:i], slots[run_start:i], inverse[run_start:i], templates)
            if i < len(pick):
                dg, set_id, off, length = sets[i]
                self._one(self.buf[off:off + length].tobytes(), (*d.slot_keys[slots[i]], int(set_id)),
                          (int(self.head[dg, H_SECS]), int(self.head[dg, H_UPTIME])), dg, direct=True)
            run_start = i + 1

    def _run(self, sets, slots, template_index, templates):
        """One kernel call for sets whose templates are known, fixed and not options."""
        d = self.decoder
        used, plan_index = np.unique(template_index, return_inverse=True)
        plans = np.stack([templates[u].plan for u in used.tolist()])
        sizes = np.array([templates[u].size for u in used.tolist()], np.int64)
        plan_index = plan_index.ravel()
        nrec = sets[:, S_LEN] // sizes[plan_index]
        dgs = sets[:, S_DG]
        info = np.empty((len(sets), 10), np.int64)
        info[:, K_OFF], info[:, K_NREC], info[:, K_PLAN] = sets[:, S_OFF], nrec, plan_index
        info[:, K_ROW] = np.cumsum(nrec) - nrec
        head = self.head[dgs]
        info[:, K_EXPORT_NS] = head[:, H_SECS] * 1_000_000_000 + head[:, H_NSECS]
        info[:, K_UPTIME], info[:, K_VERSION] = head[:, H_UPTIME], head[:, H_VERSION]
        info[:, K_DOMAIN] = head[:, H_DOMAIN]
        unique_slots, slot_inverse = np.unique(slots, return_inverse=True)
        slot_keys = [d.slot_keys[s] for s in unique_slots.tolist()]
        sys_init = np.array([d.sys_init_ms.get((e, dom), -1) for e, _, dom in slot_keys], np.int64)
        default = np.array([d.sampling.get((e, dom, None), 1) for e, _, dom in slot_keys], np.int64)
        slot_inverse = slot_inverse.ravel()
        info[:, K_SYS_INIT] = sys_init[slot_inverse]
        info[:, K_SAMPLING] = np.where(head[:, H_VERSION] == 5, head[:, H_SAMPLING], default[slot_inverse])
        self._decode(self.buf, info, d.slot_exporter[slots], plans, sizes, slots, dgs, direct=True)

    def _one(self, body: bytes, key: tuple, clock: tuple, dg: int, direct: bool):
        """A data set on its own (``_data`` of one set): waits, options, or a kernel call."""
        d = self.decoder
        exporter, version, domain, _ = key
        c = d.counters[exporter]
        template = d.templates.get(key)
        if template is None:
            d._wait(body, key, c, clock)
            return
        if template.scope_count:  # options data: remember sampling, emit no flows
            d._options(body, template, key, c)
            return
        records = d._fixed_records(body, template, c)
        if records is None:
            return
        body, t, nrec = records
        slot = d.slots[(exporter, version, domain)]
        info = np.array([[0, nrec, 0, 0, clock[0] * 1_000_000_000, clock[1], d.sys_init_ms.get((exporter, domain), -1),
                          d.sampling.get((exporter, domain, None), 1), version, domain]], np.int64)
        self._decode(np.frombuffer(body, np.uint8), info, d.slot_exporter[[slot]], t.plan[None], np.array([t.size]),
                     np.array([slot]), np.array([dg]), direct)

    def _decode(self, buf, info, exporters, plans, sizes, slots, dgs, direct: bool):
        """The row kernel over ``info``'s sets (K_* columns; K_ROW from 0), then what it leaves to
        Python: sampling rates by sampler id, App-/User-ID names, biflow reverse rows."""
        d, nrec = self.decoder, info[:, K_NREC]
        total = int(nrec.sum())
        if not total:
            return
        out, extra = self._reserve(total)
        _rows(buf, info, exporters, plans, sizes, out, extra)
        per_set = plans[info[:, K_PLAN]]
        row_slots = np.repeat(slots, nrec)
        if (per_set[:, P_SAMPLER, 0] >= 0).any():
            rows = np.flatnonzero(np.repeat(per_set[:, P_SAMPLER, 0] >= 0, nrec))
            d._sampled(out, extra[:, X_SAMPLER], rows, row_slots[rows])
        for s in np.flatnonzero((per_set[:, P_APP, 0] >= 0) | (per_set[:, P_USER, 0] >= 0)).tolist():
            records = buf[info[s, K_OFF]:info[s, K_OFF] + nrec[s] * sizes[info[s, K_PLAN]]].reshape(nrec[s], -1)
            for slot, kind in ((P_APP, "apps"), (P_USER, "users")):
                d._names(d.slot_keys[slots[s]][0], kind, records, per_set[s, slot])
        rows = total
        if (per_set[:, P_REV_PACKETS, 0] >= 0).any() or (per_set[:, P_REV_BYTES, 0] >= 0).any():
            rows = self._biflow(out.copy(), extra[:total].copy(), row_slots)
        self._add(rows, slots, nrec, dgs, direct)

    def _biflow(self, out: np.ndarray, extra: np.ndarray, row_slots: np.ndarray) -> int:
        """RFC 5103 biflow records with reverse traffic become two unidirectional rows (NFLOW is
        one-way): the record as exported, then the reverse direction (addresses and ports
        swapped, the reverse counters and TCP flags; times, interfaces and ICMP fields as in the
        record).  Returns the rows now written."""
        reverse = (extra[:, X_REV_PACKETS] > 0) | (extra[:, X_REV_BYTES] > 0)
        both = np.repeat(out, np.where(reverse, 2, 1))
        second = np.cumsum(np.where(reverse, 2, 1)) - 1
        second = second[reverse]
        flipped = both[second]
        for a, b in (("src_hi", "dst_hi"), ("src_lo", "dst_lo"), ("sport", "dport")):
            flipped[a], flipped[b] = both[b][second], both[a][second]
        flipped["bytes"], flipped["packets"] = extra[reverse, X_REV_BYTES], extra[reverse, X_REV_PACKETS]
        flipped["tcp_flags"] = extra[reverse, X_REV_FLAGS]
        both[second] = flipped
        for slot in np.unique(row_slots[reverse]).tolist():
            self.decoder.counters[self.decoder.slot_keys[slot][0]]["biflow_reverse_rows"] += int(
                np.sum(row_slots[reverse] == slot))
        room, _ = self._reserve(len(both))
        room[:] = both
        return len(both)

    def _reserve(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed room for n more rows (and their X_* values) after those written so far."""
        d, end = self.decoder, self.rows + n
        if end > len(d._out):
            grown = NFLOW.empty(max(end, 2 * len(d._out), 4096))
            grown[:self.rows] = d._out[:self.rows]
            d._out, d._extra = grown, np.zeros((len(grown), 4), np.uint64)
        out = d._out[self.rows:end]
        out.view(np.uint8)[:] = 0
        return out, d._extra[self.rows:end]

    def _add(self, n: int, slots: np.ndarray, nrec: np.ndarray, dgs: np.ndarray, direct: bool):
        """Keep the n rows just written; count the records per exporter, and per datagram for
        IPFIX sequence numbers (which count the records of the datagram's own data sets, not
        replayed ones)."""
        self.rows += n
        by_slot = np.bincount(slots, weights=nrec)
        for slot in np.flatnonzero(by_slot).tolist():
            self.decoder.counters[self.decoder.slot_keys[slot][0]]["records"] += int(by_slot[slot])
        if direct:
            np.add.at(self.direct_rows, dgs, nrec)


def _walk_records(body: bytes, template: Template):
    """Each record as {(IE, enterprise): bytes}, variable-length fields included (options data,
    which is rare: plain Python)."""
    pos = 0
    while pos < len(body):
        record = {}
        for fid, ent, n in template.fields:
            if n == VARIABLE:
                if pos >= len(body):
                    return
                n, pos = body[pos], pos + 1
                if n == 255:
                    if pos + 2 > len(body):
                        return
                    n, pos = struct.unpack_from(">H", body, pos)[0], pos + 2
            if pos + n > len(body):
                return
            record.setdefault((fid, ent), body[pos:pos + n])
            pos += n
        yield record


def _sampling_rate(records: np.ndarray, t: Template) -> np.ndarray | None:
    """1-in-N from the PSAMP forms (population/size 310/309, interval+space 305/306) or the
    NetFlow v9 interval IEs."""
    size, population = t.column(records, 309), t.column(records, 310)
    if size is not None and population is not None:
        return population // np.maximum(size, np.uint64(1))
    interval, space = t.column(records, 305), t.column(records, 306)
    if interval is not None:
        return (interval + (space if space is not None else 0)) // np.maximum(interval, np.uint64(1))
    return next((v for ie in SAMPLING_IES if (v := t.column(records, ie)) is not None), None)
