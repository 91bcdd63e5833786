"""Syslog framing around a firewall message: RFC 5424, RFC 3164 (with or without <PRI>), an
ISO-8601 timestamp prefix (rsyslog high-precision), a journald JSON export record, or none.
Returns the Header and the message.

RFC 3164 stamps carry neither year nor zone: they take ``TimeContext.year`` and ``.tz``
(the year of the traffic being analysed, or of now for live input; the configured timezone).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from zoneinfo import ZoneInfo

from flowsense.denylog.base import Header

MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                      "Dec"), 1)}
_PRI = re.compile(r"<(\d{1,3})>")
_RFC5424 = re.compile(r"(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ?")
# the host is optional (pfSense's default BSD format has none): a token followed by ": " is a tag
# Cisco devices may add a year ("Aug 06 2016 20:39:42:")
_RFC3164 = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2})(?: (\d{4}))? (\d\d):(\d\d):(\d\d)(?:\.\d+)?:? +"
                      r"(?:(?!\S*: )(\S+) +)?")
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) (\S+) ")
_TAG = re.compile(r"([A-Za-z_][\w\-./]*)(?:\[(\d+)\])?: ")
_SD = re.compile(r'(?:-|(?:\[(?:[^\]"]|"(?:[^"\\]|\\.)*")*\])+) ?')


HALF_YEAR_NS = 183 * 86400 * 1_000_000_000


@dataclass(frozen=True)
class TimeContext:
    """How to read stamps that lack a year or a zone; ``describe`` goes into stats.  With a
    ``reference`` time (the traffic's start), a yearless stamp more than half a year away from it
    takes the neighbouring year: December log lines next to January traffic."""
    year: int
    tz: str = "UTC"
    reference_ns: int | None = None

    def describe(self) -> str:
        near = " (or the neighbouring year, within half a year of the traffic)" if self.reference_ns else ""
        return f"syslog stamps without year/zone read as year {self.year}{near}, timezone {self.tz}"

    def hour_ns(self, year: int | None, month: int, day: int, hour: int) -> int | None:
        """Epoch ns of that hour of an RFC 3164 stamp (year None when it names none)."""
        return self.yearless(month, day, hour) if year is None else _hour_ns(year, self.tz, month, day, hour)

    def yearless(self, month: int, day: int, hour: int) -> int | None:
        """Epoch ns of that hour for a stamp that names no year."""
        ns = _hour_ns(self.year, self.tz, month, day, hour)
        if ns is None or self.reference_ns is None or abs(ns - self.reference_ns) <= HALF_YEAR_NS:
            return ns
        other = _hour_ns(self.year + (1 if ns < self.reference_ns else -1), self.tz, month, day, hour)
        return ns if other is None else other


@lru_cache(maxsize=65536)
def _hour_ns(year: int, tz: str, month: int, day: int, hour: int) -> int | None:
    """Epoch ns of the start of that hour (cached: a log spans few hours)."""
    try:
        return int(datetime(year, month, day, hour, tzinfo=ZoneInfo(tz)).timestamp()) * 1_000_000_000
    except ValueError:
        return None


def iso_ns(text: str, tz: str = "UTC") -> int | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _journald(line: str) -> tuple[Header, str] | None:
    """A `journalctl -o json` record: MESSAGE is the log line, the time is in microseconds."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    message = record.get("MESSAGE") if isinstance(record, dict) else None
    if not isinstance(message, str):
        return None
    stamp = str(record.get("__REALTIME_TIMESTAMP", ""))
    ts = int(stamp) * 1000 if stamp.isascii() and stamp.isdigit() else None
    return Header(ts, str(record.get("_HOSTNAME", "")), str(record.get("SYSLOG_IDENTIFIER", ""))), message


def frame(line: str, ctx: TimeContext) -> tuple[Header, str]:
    if line[:1] == "{" and '"MESSAGE"' in line:
        journal = _journald(line)
        if journal is not None:
            return journal
    pos = 0
    m = _PRI.match(line) if line[:1] == "<" else None
    if m:
        pos = m.end()
        v = _RFC5424.match(line, pos)
        if v and v.group(1) == "1":
            ts = None if v.group(2) == "-" else iso_ns(v.group(2), ctx.tz)
            host, app, msgid = (g if g != "-" else "" for g in (v.group(3), v.group(4), v.group(6)))
            rest = line[v.end():]
            sd = _SD.match(rest)
            sd_text = ""
            if sd:
                sd_text = sd.group(0).strip()
                rest = rest[sd.end():]
            return Header(ts, host, app, msgid, "" if sd_text == "-" else sd_text), rest.lstrip("\ufeff")
    first = line[pos:pos + 1]
    m = _RFC3164.match(line, pos) if first.isupper() else None
    if m and m.group(1) in MONTHS:
        mon, day, year, hh, mm, ss, host = m.groups()
        hour = ctx.hour_ns(int(year) if year else None, MONTHS[mon], int(day), int(hh))
        minutes, seconds = int(mm), int(ss)
        ts = None if hour is None or minutes > 59 or seconds > 60 else \
            hour + (minutes * 60 + seconds) * 1_000_000_000
        return _tagged(ts, host or "", line, m.end())
    m = _ISO.match(line, pos) if first.isdigit() else None
    if m:
        return _tagged(iso_ns(m.group(1), ctx.tz), m.group(2), line, m.end())
    return Header(), line[pos:]


def _tagged(ts: int | None, host: str, line: str, at: int) -> tuple[Header, str]:
    """Split a leading 'tag[pid]: ' off the message at ``at`` (vendor message ids like
    %ASA-6-302013: stay)."""
    t = _TAG.match(line, at)
    if t:
        return Header(ts, host, t.group(1)), line[t.end():]
    return Header(ts, host), line[at:]
