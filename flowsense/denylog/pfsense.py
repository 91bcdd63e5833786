"""pfSense / OPNsense ``filterlog``: one CSV line per logged packet (pfSense 2.2+, OPNsense).

    rule,subrule,anchor,tracker,iface,reason,action,dir,4,tos,ecn,ttl,id,offset,flags,protoid,proto,len,src,dst,...
    rule,subrule,anchor,tracker,iface,reason,action,dir,6,class,flowlabel,hoplimit,proto,protoid,len,src,dst,...

then, for TCP/UDP, ``sport,dport,datalen[,tcp fields]``; for ICMP a type word (``request``,
``unreachport``...) and its own fields.  The IP version decides where the protocol id and the
addresses sit.  ``block``/``reject`` are denies, ``pass`` (and anything else pf logs) a skip.

The tag names the format (``filterlog:`` in BSD syslog, APP-NAME in RFC 5424); a bare CSV line
is still recognised by its shape, e.g. pfSense's default BSD format without a hostname, where the
framing reads ``filterlog[pid]:`` as the host.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, port, proto_number

NAME = "pfsense"

_CSV = re.compile(r"\d*,\d*,[^,]*,[^,]*,[^,]*,[^,]*,[a-z-]+,(?:in|out),[46],")
_LAYOUT = {"4": (15, 18), "6": (13, 15)}  # IP version -> index of the protocol id, of the source address
DENY_ACTIONS = {"block": "drop", "reject": "reject"}  # the rest (pass...) are skips
# ICMP type word -> (type, code); the code is 0 where the log gives only a description.
_ICMP = {"reply": (0, 0), "unreach": (3, 0), "unreachproto": (3, 2), "unreachport": (3, 3), "needfrag": (3, 4),
         "redirect": (5, 0), "request": (8, 0), "timexceed": (11, 0), "paramprob": (12, 0), "tstamp": (13, 0),
         "tstampreply": (14, 0), "maskreply": (18, 0)}


def parse(msg: str, hdr: Header):
    if not _CSV.match(msg):
        return Fail("not filterlog CSV") if hdr.program == "filterlog" else None
    f = msg.split(",")
    action = DENY_ACTIONS.get(f[6])
    if action is None:
        return Skip(f[6])
    proto_at, src_at = _LAYOUT[f[8]]
    if len(f) < src_at + 2:
        return Fail("short line")
    proto = proto_number(f[proto_at])
    if proto is None:
        return Fail("bad protocol id")
    ports = icmp_ports(proto, f[src_at + 2:src_at + 3]) if proto not in PORTED else _ports(f[src_at + 2:])
    if isinstance(ports, Fail):
        return ports
    return Deny(f[src_at], f[src_at + 1], proto, *ports, action, rule(f[3], f[0]))


PORTED = (6, 17)  # protocols whose ports follow the addresses


def _ports(rest: list[str]) -> tuple[int, int] | Fail:
    if len(rest) < 2:
        return Fail("missing ports")
    sport, dport = port(rest[0]), port(rest[1])
    return Fail("bad port") if sport is None or dport is None else (sport, dport)


def icmp_ports(proto: int, rest: list[str]) -> tuple[int, int]:
    """(type, code) from an ICMP line's type word; (0, 0) for the other unported protocols."""
    return _ICMP.get(rest[0], (0, 0)) if proto in (1, 58) and rest else (0, 0)


def rule(tracker: str, number: str) -> str:
    return f"tracker {tracker}" if tracker else number
