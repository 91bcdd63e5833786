"""Lines -> DENY rows: framing, vendor auto-detection (or a forced vendor), counting."""

from __future__ import annotations

from flowsense.denylog import VENDORS
from flowsense.denylog.base import Deny, Fail, Skip
from flowsense.denylog.framing import TimeContext, frame


def parse_line(line: str, ctx: TimeContext, vendors=VENDORS):
    """(vendor name or None, Deny | Skip | Fail | None, Header) for one log line."""
    hdr, msg = frame(line.rstrip("\r\n"), ctx)
    for vendor in vendors:
        try:
            result = vendor.parse(msg, hdr)
        except Exception as err:  # a parser bug must not stop the run; counted as a failure
            return vendor.NAME, Fail(f"parser error: {type(err).__name__}"), hdr
        if result is not None:
            return vendor.NAME, result, hdr
    return None, None, hdr
