"""NetFlow v5, v9 and IPFIX export datagrams -> NFLOW rows (unidirectional flow records).

A template fixes a record layout, so a whole data FlowSet decodes as one ``np.frombuffer`` with a
big-endian structured dtype built from the template: known IEs become unsigned integers, unknown
and enterprise IEs opaque byte fields skipped by their length.  Only templates holding
variable-length IEs are walked record by record.  Templates are keyed by (exporter, version,
observation domain / source id, template id); a data set that arrives before its template waits
(bounded in count and age) and is decoded when the template arrives, or is counted as dropped.
Nothing here raises on bad input: problems are counted per exporter and reason.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict, defaultdict

import numpy as np

from flowsense.schema import NFLOW

MAX_WAITING_SETS = 256          # data sets held for templates not yet seen, all exporters together
MAX_WAITING_AGE_S = 600         # ... and for at most this long (export time)
MAX_FIELDS = 512                # a template claiming more fields is damage
MAX_TEMPLATES = 65536           # templates held, all exporters together (oldest evicted first)
VARIABLE = 65535                # IPFIX variable-length field marker
_NTP_EPOCH = 2208988800         # seconds from 1900 to 1970

# IE id -> NFLOW field for the plain copies (numbers of any width)
DIRECT = {4: "proto", 6: "tcp_flags", 7: "sport", 11: "dport", 10: "in_if", 14: "out_if", 176: "icmp_type",
          177: "icmp_code", 178: "icmp_type", 179: "icmp_code"}
# field -> IEs in order of preference: deltas, then totals and Cisco NSEL initiator counters; NSEL
# firewall event is 233, or 40005 on older ASA releases
PREFERRED = {"bytes": (1, 85, 231), "packets": (2, 86, 298), "fw_event": (233, 40005)}
FW_DENIED = 3
SAMPLING_IES = (34, 50)          # samplingInterval, samplerRandomInterval (1-in-N)
SAMPLER_ID_IES = (48, 302)


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
    """A data template: (IE id, enterprise, length) per field and the dtype when all are fixed."""

    def __init__(self, fields: list[tuple[int, int, int]], scope_count: int = 0):
        self.fields = fields
        self.scope_count = scope_count
        self.fixed = all(length != VARIABLE for _, _, length in fields)
        self.size = sum(length for _, _, length in fields) if self.fixed else 0
        if self.fixed:
            self.dtype = np.dtype([(f"f{i}", f">u{n}" if n in (1, 2, 4, 8) and not ent else f"V{n}")
                                   for i, (_, ent, n) in enumerate(fields)])

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

    def raw(self, records: np.ndarray, ie: int, width: int) -> np.ndarray | None:
        """(n, width) bytes of IE ``ie`` (addresses)."""
        for i, (fid, ent, n) in enumerate(self.fields):
            if fid == ie and not ent and n == width:
                return np.frombuffer(records[f"f{i}"].tobytes(), np.uint8).reshape(-1, width)
        return None


class NetflowDecoder:
    def __init__(self):
        self.templates: dict[tuple, Template] = {}
        self.waiting: OrderedDict[tuple, list] = OrderedDict()
        self.sampling: dict[tuple, int] = {}          # (exporter, domain[, sampler]) -> 1-in-N
        self.sequence: dict[tuple, int] = {}          # (exporter, version, domain) -> next expected
        self.sys_init_ms: dict[tuple, int] = {}       # (exporter, domain) -> exporter boot time (IPFIX)
        self.counters: dict[str, Counter] = defaultdict(Counter)

    # ---- datagrams ----------------------------------------------------------------------------

    def decode(self, data: bytes, exporter: str) -> np.ndarray:
        """NFLOW rows of one export datagram from ``exporter`` (its source address)."""
        c = self.counters[exporter]
        c["datagrams"] += 1
        if len(data) < 4:
            c["error:short datagram"] += 1
            return NFLOW.empty(0)
        version = struct.unpack_from(">H", data)[0]
        if version == 5:
            return self._v5(data, exporter, c)
        if version in (9, 10):
            return self._template_based(data, exporter, version, c)
        c[f"error:unknown version {version}"] += 1
        return NFLOW.empty(0)

    def _v5(self, data: bytes, exporter: str, c: Counter) -> np.ndarray:
        if len(data) < 24:
            c["error:short header"] += 1
            return NFLOW.empty(0)
        _, count, uptime, secs, nsecs, seq, etype, eid, sampling = struct.unpack_from(">HHIIIIBBH", data)
        n = min(count, (len(data) - 24) // 48)
        if n < count:
            c["error:truncated records"] += 1
        rec = np.frombuffer(data, V5_RECORD, n, 24)
        self._sequence(exporter, 5, etype << 8 | eid, seq, n, c)
        out = NFLOW.empty(n)
        export_ns = secs * 1_000_000_000 + nsecs
        _set_times(out, export_ns - (uptime - rec["first"].astype(np.int64)) * 1_000_000,
                   export_ns - (uptime - rec["last"].astype(np.int64)) * 1_000_000)
        out["src_lo"] = rec["src"].astype(np.uint64) | np.uint64(0xFFFF << 32)
        out["dst_lo"] = rec["dst"].astype(np.uint64) | np.uint64(0xFFFF << 32)
        out["sport"], out["dport"], out["proto"] = rec["sport"], rec["dport"], rec["proto"]
        out["tcp_flags"], out["packets"], out["bytes"] = rec["flags"], rec["packets"], rec["octets"]
        out["in_if"], out["out_if"] = rec["input"], rec["output"]
        out["sampling"] = max(sampling & 0x3FFF, 1)
        _icmp_from_ports(out)
        out["version"], out["domain"] = 5, etype << 8 | eid
        out["exporter_hi"], out["exporter_lo"] = _exporter_halves(exporter)
        c["records"] += n
        return out

    def _template_based(self, data: bytes, exporter: str, version: int, c: Counter) -> np.ndarray:
        head = 20 if version == 9 else 16
        if len(data) < head:
            c["error:short header"] += 1
            return NFLOW.empty(0)
        if version == 9:
            _, _, uptime, secs, seq, domain = struct.unpack_from(">HHIIII", data)
            end = len(data)
        else:
            _, length, secs, seq, domain = struct.unpack_from(">HHIII", data)
            uptime = None
            end = min(length, len(data))
            if length > len(data):
                c["error:truncated message"] += 1
        clock = (secs, uptime)
        out, pos, records = [], head, 0
        while pos + 4 <= end:
            set_id, set_len = struct.unpack_from(">HH", data, pos)
            if set_len < 4 or pos + set_len > end:
                c["error:bad set length"] += 1
                break
            body = data[pos + 4:pos + set_len]
            pos += set_len
            if set_id in ((0, 1) if version == 9 else (2, 3)):
                out += self._templates(body, exporter, version, domain, set_id in (1, 3), c, clock)
            elif set_id >= 256:
                rows = self._data(body, (exporter, version, domain, set_id), c, clock)
                if rows is not None:
                    out.append(rows)
                    records += len(rows)
            else:
                c["error:reserved set id"] += 1
        self._sequence(exporter, version, domain, seq, 1 if version == 9 else records, c)
        rows = np.concatenate(out) if out else NFLOW.empty(0)
        c["records"] += len(rows)
        return rows

    def _sequence(self, exporter, version, domain, seq, advance, c):
        """Count what the sequence numbers say was lost (v5: flows, v9: datagrams, IPFIX: records)."""
        key = (exporter, version, domain)
        expected = self.sequence.get(key)
        if expected is not None and seq != expected:
            gap = (seq - expected) & 0xFFFFFFFF
            if gap < 1 << 31:
                c["sequence_gaps"] += 1
                c["lost " + ("flows" if version == 5 else "datagrams" if version == 9 else "records")] += gap
        self.sequence[key] = (seq + advance) & 0xFFFFFFFF

    # ---- templates ------------------------------------------------------------------------------

    def _templates(self, body, exporter, version, domain, options, c, clock) -> list[np.ndarray]:
        pos, out = 0, []
        while pos + 4 <= len(body):
            tid, count = struct.unpack_from(">HH", body, pos)
            pos += 4
            scope = 0
            if options:
                if version == 9:  # scope and option lengths in bytes, 4 per field
                    if pos + 2 > len(body):
                        break
                    scope_len, opt_len = count, struct.unpack_from(">H", body, pos)[0]
                    pos += 2
                    scope, count = scope_len // 4, (scope_len + opt_len) // 4
                else:
                    if pos + 2 > len(body):
                        break
                    scope = struct.unpack_from(">H", body, pos)[0]
                    pos += 2
            if tid < 256:
                break  # padding at the end of the set
            key = (exporter, version, domain, tid)
            if count == 0:  # IPFIX template withdrawal
                if self.templates.pop(key, None) is not None:
                    c["templates_withdrawn"] += 1
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
            if not fields:
                continue
            template = Template(fields, scope)
            if key not in self.templates:
                c["templates"] += 1
                if len(self.templates) >= MAX_TEMPLATES:  # bounded whatever exporters send
                    oldest = next(iter(self.templates))
                    del self.templates[oldest]
                    self.counters[oldest[0]]["templates_evicted"] += 1
            self.templates[key] = template
            for body_waiting, clock_waiting in self.waiting.pop(key, []):
                rows = self._data(body_waiting, key, c, clock_waiting)
                c["replayed_sets"] += 1
                if rows is not None:
                    out.append(rows)
        return out

    # ---- data -----------------------------------------------------------------------------------

    def _data(self, body: bytes, key: tuple, c: Counter, clock) -> np.ndarray | None:
        template = self.templates.get(key)
        if template is None:
            self._wait(body, key, c, clock)
            return None
        decoded = self._records(body, template, c)
        if decoded is None:
            return None
        records, layout = decoded
        if template.scope_count:  # options data: remember sampling, emit no flows
            self._options(records, layout, key)
            return None
        return self._rows(records, layout, key, clock)

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

    def _records(self, body: bytes, template: Template, c: Counter) -> tuple[np.ndarray, Template] | None:
        """The set's records and the fixed layout they are in."""
        if template.fixed:
            n = len(body) // template.size if template.size else 0
            return (np.frombuffer(body, template.dtype, n), template) if n else None
        return self._walk_variable(body, template, c)

    def _walk_variable(self, body: bytes, template: Template, c: Counter) -> tuple[np.ndarray, Template] | None:
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
        return np.frombuffer(b"".join(rows), fixed.dtype), fixed

    def _options(self, records: np.ndarray, template: Template, key: tuple):
        """Options records: sampling rates (per exporter or per sampler id) and the exporter's
        systemInitTimeMilliseconds, which turns IPFIX sysUpTime-relative times absolute."""
        exporter, _, domain, _ = key
        init = template.column(records, 160)
        if init is not None and len(init) and 0 < int(init[-1]) < 1 << 48:  # a plausible epoch in ms
            self.sys_init_ms[(exporter, domain)] = int(init[-1])
        rate = _sampling_rate(records, template)
        if rate is None or not len(rate):
            return
        sampler = next((v for ie in SAMPLER_ID_IES if (v := template.column(records, ie)) is not None), None)
        for i in range(len(rate)):
            ident = int(sampler[i]) if sampler is not None else None
            self.sampling[(exporter, domain, ident)] = max(int(rate[i]), 1)

    def _rows(self, records: np.ndarray, t: Template, key: tuple, clock) -> np.ndarray:
        exporter, version, domain, _ = key
        n = len(records)
        out = NFLOW.empty(n)
        for ie, name in DIRECT.items():
            col = t.column(records, ie)
            if col is not None:
                out[name] = col
        for name, ies in PREFERRED.items():
            col = next((v for ie in ies if (v := t.column(records, ie)) is not None), None)
            if col is not None:
                out[name] = col
        _addresses(out, records, t)
        for ie in (32, 139):  # icmpTypeCode: type * 256 + code
            col = t.column(records, ie)
            if col is not None:
                out["icmp_type"], out["icmp_code"] = col >> np.uint64(8), col & np.uint64(0xFF)
        _icmp_from_ports(out)
        _set_times(out, *_times(records, t, clock, self.sys_init_ms.get((exporter, domain))))
        sampler = next((v for ie in SAMPLER_ID_IES if (v := t.column(records, ie)) is not None), None)
        default = self.sampling.get((exporter, domain, None), 1)
        if sampler is None:
            out["sampling"] = default
        else:
            out["sampling"] = [self.sampling.get((exporter, domain, int(s)), default) for s in sampler]
        out["version"], out["domain"] = version, domain
        out["exporter_hi"], out["exporter_lo"] = _exporter_halves(exporter)
        return out

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
        return {exporter: {**dict(c), "templates_known": sum(1 for k in self.templates if k[0] == exporter),
                           "waiting_now": sum(len(v) for k, v in self.waiting.items() if k[0] == exporter)}
                for exporter, c in self.counters.items()}


V5_RECORD = np.dtype([("src", ">u4"), ("dst", ">u4"), ("nexthop", ">u4"), ("input", ">u2"), ("output", ">u2"),
                      ("packets", ">u4"), ("octets", ">u4"), ("first", ">u4"), ("last", ">u4"), ("sport", ">u2"),
                      ("dport", ">u2"), ("pad1", "u1"), ("flags", "u1"), ("proto", "u1"), ("tos", "u1"),
                      ("src_as", ">u2"), ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"),
                      ("pad2", ">u2")])


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


def _addresses(out: np.ndarray, records: np.ndarray, t: Template):
    for side, v4, v6 in (("src", 8, 27), ("dst", 12, 28)):
        col = t.column(records, v4)
        if col is not None:
            out[f"{side}_lo"] = col | np.uint64(0xFFFF << 32)
        raw = t.raw(records, v6, 16)
        if raw is not None:
            halves = raw.copy().view(">u8").reshape(-1, 2)
            has = raw.any(axis=1)
            out[f"{side}_hi"] = np.where(has, halves[:, 0], out[f"{side}_hi"])
            out[f"{side}_lo"] = np.where(has, halves[:, 1], out[f"{side}_lo"])


def _set_times(out: np.ndarray, start: np.ndarray, end: np.ndarray):
    """An end before the start (mixed precisions: ms start, s end; uptime counters that wrapped)
    is taken as the start."""
    out["ts"], out["last_ts"] = start, np.maximum(start, end)


def _icmp_from_ports(out: np.ndarray):
    """Exporters without ICMP IEs put type * 256 + code in the destination port (some Cisco
    releases byte-swap it into the source port)."""
    icmp = ((out["proto"] == 1) | (out["proto"] == 58)) & (out["icmp_type"] == 0) & (out["icmp_code"] == 0)
    if icmp.any():
        code = np.where(out["dport"][icmp] != 0, out["dport"][icmp], out["sport"][icmp]).astype(np.uint32)
        swapped = (out["dport"][icmp] == 0) & (out["sport"][icmp] != 0)
        code = np.where(swapped, ((code & 0xFF) << 8) | (code >> 8), code)
        out["icmp_type"][icmp], out["icmp_code"][icmp] = code >> 8, code & 0xFF


def _times(records: np.ndarray, t: Template, clock, sys_init_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Flow start/end in ns from whichever time IEs the template has, else the export time."""
    secs, uptime = clock
    export_ns = np.int64(secs) * 1_000_000_000
    n = len(records)
    result = []
    for seconds, millis, micros, nanos, relative in ((150, 152, 154, 156, 22), (151, 153, 155, 157, 21)):
        if (v := t.column(records, millis)) is not None:
            value = v.astype(np.int64) * 1_000_000
        elif (v := t.column(records, seconds)) is not None:
            value = v.astype(np.int64) * 1_000_000_000
        elif (v := t.column(records, nanos)) is not None or (v := t.column(records, micros)) is not None:
            ntp_s = (v >> np.uint64(32)).astype(np.int64) - _NTP_EPOCH
            frac = (v & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2**32
            value = ntp_s * 1_000_000_000 + (frac * 1e9).astype(np.int64)
        elif (v := t.column(records, relative)) is not None and uptime is not None:  # v9
            value = export_ns - (np.int64(uptime) - v.astype(np.int64)) * 1_000_000
        elif v is not None and sys_init_ms is not None:  # IPFIX with systemInitTimeMilliseconds
            value = (np.int64(sys_init_ms) + v.astype(np.int64)) * 1_000_000
        elif (v := t.column(records, 323)) is not None:  # observationTimeMilliseconds (NSEL events)
            value = v.astype(np.int64) * 1_000_000
        else:
            value = np.full(n, export_ns)
        result.append(value)
    return result[0], result[1]
