"""The business-hours calendar (``[calendar]``): is a packet-time instant outside working hours?

Times are int64 ns since the epoch (UTC).  Local time comes from the IANA zone with its daylight
saving rules: the UTC offset is looked up once per distinct quarter hour present in the input (a
zone changes offset only on quarter-hour boundaries), so a million timestamps cost a few NumPy
passes plus one ``zoneinfo`` call per quarter hour they span.

Working hours ``HH:MM-HH:MM`` may wrap midnight (``22:00-06:00``: a night shift); the working-day
test then applies to the local day the instant falls on.  Detectors weight a finding by
``1 + (off_hours_weight - 1) * fraction_outside`` (capped at a score of 1 by the caller).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from flowsense.config import DAYS, CalendarConfig

NS = 1_000_000_000
QUARTER_NS = 900 * NS
DAY_NS = 86400 * NS


class BusinessCalendar:
    def __init__(self, config: CalendarConfig | None = None):
        config = config or CalendarConfig()
        self.zone_name = config.timezone
        self.zone = ZoneInfo(config.timezone)
        start, end = config.business_hours.split("-")
        self.start_min = int(start[:2]) * 60 + int(start[3:])
        self.end_min = int(end[:2]) * 60 + int(end[3:])
        self.days = np.zeros(7, np.bool_)
        for day in config.business_days:
            self.days[DAYS.index(day)] = True
        self.weight_max = float(config.off_hours_weight)
        self.describe = {"timezone": config.timezone, "business_hours": config.business_hours,
                         "business_days": list(config.business_days), "off_hours_weight": self.weight_max}

    def _offsets_ns(self, ts: np.ndarray) -> np.ndarray:
        quarters, inverse = np.unique(ts // QUARTER_NS, return_inverse=True)
        offs = np.empty(len(quarters), np.int64)
        for i, q in enumerate(quarters.tolist()):
            sec = q * 900
            try:
                moment = datetime.fromtimestamp(sec, UTC).astimezone(self.zone)
                offs[i] = int(moment.utcoffset().total_seconds()) * NS
            except (OverflowError, OSError, ValueError):   # outside what datetime can hold
                offs[i] = 0
        return offs[inverse.reshape(-1)]

    def outside(self, ts_ns) -> np.ndarray:
        """True where the instant falls outside business hours (local time, working days)."""
        ts = np.atleast_1d(np.asarray(ts_ns, np.int64))
        if ts.size == 0:
            return np.zeros(0, np.bool_)
        local = ts + self._offsets_ns(ts)
        minute = (local // (60 * NS)) % 1440
        weekday = ((local // DAY_NS) + 3) % 7          # 1970-01-01 was a Thursday; Mon = 0
        if self.start_min <= self.end_min:
            in_hours = (minute >= self.start_min) & (minute < self.end_min)
        else:
            in_hours = (minute >= self.start_min) | (minute < self.end_min)
        return ~(in_hours & self.days[weekday])

    def outside_fraction(self, start_ns, end_ns, samples: int = 9) -> np.ndarray:
        """Per interval, the share of ``samples`` evenly spaced instants (ends included) that fall
        outside business hours: a cheap estimate of how much of a long flow ran off hours."""
        start = np.atleast_1d(np.asarray(start_ns, np.int64))
        end = np.maximum(np.atleast_1d(np.asarray(end_ns, np.int64)), start)
        if start.size == 0:
            return np.zeros(0, np.float64)
        steps = np.linspace(0.0, 1.0, samples)
        points = start[:, None] + ((end - start).astype(np.float64)[:, None] * steps[None, :]).astype(np.int64)
        return self.outside(points.reshape(-1)).reshape(len(start), samples).mean(axis=1)

    def weight(self, fraction_outside) -> np.ndarray | float:
        """Score multiplier for a finding with this share of its activity outside business hours."""
        return 1.0 + (self.weight_max - 1.0) * np.clip(fraction_outside, 0.0, 1.0)
