"""The contract between the deny-log reader and the per-vendor decoders.

A vendor module (one file each, listed in ``flowsense.denylog.VENDORS``) defines:

    NAME: str                      vendor name used in stats and --deny-format
    def parse(msg: str, hdr: Header) -> Deny | Skip | Fail | None

``msg`` is the line with any syslog framing removed (``hdr`` carries what the framing said:
time, host, program).  ``parse`` returns
  - ``None`` at once when the line is not this vendor's (cheap substring test first: every line
    is offered to every vendor until one claims it);
  - ``Skip(reason)`` for a line of this vendor that is not a deny (allow, session start/end,
    system messages): recognised and counted, never a failure;
  - ``Fail(reason)`` for a line of this vendor that should be a deny but cannot be used (missing
    address, bad port...): counted per reason with a sample kept;
  - ``Deny(...)`` otherwise.
Parsers never raise: the reader treats an exception as a bug, counts it as Fail("parser error")
and keeps going, and the Hypothesis tests hold every parser to that.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("deny", "drop", "reject", "reset")
PROTO_NUMBERS = {"icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17, "ipv6": 41, "gre": 47, "esp": 50, "ah": 51,
                 "icmp6": 58, "ipv6-icmp": 58, "icmpv6": 58, "eigrp": 88, "ospf": 89, "pim": 103, "vrrp": 112,
                 "sctp": 132}


@dataclass(slots=True)  # not frozen: frozen construction costs 4x, one per log line
class Header:
    ts: int | None = None     # ns since epoch (UTC) from the framing
    host: str = ""            # sending device per the framing
    program: str = ""         # syslog tag (RFC 3164) or APP-NAME (RFC 5424)
    msgid: str = ""           # RFC 5424 MSGID (e.g. RT_FLOW_SESSION_DENY)
    sd: str = ""              # RFC 5424 STRUCTURED-DATA text, brackets included (Check Point, Juniper)


@dataclass(slots=True)  # not frozen: frozen construction costs 4x, one per log line
class Deny:
    src: str                  # addresses as text (IPv4 or IPv6)
    dst: str                  # "" when the log names no destination (e.g. ASA 313001)
    proto: int                # IP protocol number
    sport: int = 0
    dport: int = 0            # ICMP: type in sport, code in dport when the log gives them
    action: str = "deny"      # one of ACTIONS
    rule: str = ""            # rule / policy / prefix name
    device: str = ""          # device name when the message carries one (else the framing host)
    ts: int | None = None     # ns since epoch when the message carries its own time
    local_time: str = ""      # or an ISO date-time without zone (device local time): the reader
                              # applies the configured timezone, as for RFC 3164 stamps


@dataclass(slots=True)  # not frozen: frozen construction costs 4x, one per log line
class Skip:
    reason: str


@dataclass(slots=True)  # not frozen: frozen construction costs 4x, one per log line
class Fail:
    reason: str


def proto_number(text: str) -> int | None:
    """'TCP', 'tcp', '6' -> 6; None when unknown."""
    t = text.strip().lower()
    if t.isascii() and t.isdigit():
        n = int(t)
        return n if n < 256 else None
    return PROTO_NUMBERS.get(t)


def port(text: str) -> int | None:
    t = text.strip()
    if t.isascii() and t.isdigit():
        n = int(t)
        return n if n < 65536 else None
    return None if t else 0


def checked(src: str, dst: str, proto: int | None, sport: int | None, dport: int | None, action: str,
            rule: str = "", device: str = "", ts: int | None = None, local_time: str = "") -> Deny | Fail:
    """The Deny, or the Fail that names what is missing: the checks every decoder ends with."""
    if not src or not dst:
        return Fail("missing address")
    if proto is None:
        return Fail("unknown protocol")
    if sport is None or dport is None:
        return Fail("bad port")
    return Deny(src, dst, proto, sport, dport, action, rule, device, ts, local_time)
