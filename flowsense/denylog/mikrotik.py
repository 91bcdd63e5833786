"""MikroTik RouterOS firewall log lines (``action=log`` or ``log=yes`` on a filter/raw/NAT rule).

    firewall,info drop-tcp input: in:ether1 out:(unknown 0), connection-state:new src-mac 00:17:10:88:bc:02,
        proto TCP (SYN), 36.97.161.219:59388->81.82.202.145:23, len 40

i.e. [topics] [log-prefix] chain: in:<if> out:<if>, [state] [src-mac], proto P [(flags | type t, code c)],
src->dst[, NAT ...], len n.  IPv6 endpoints are bracketed when they carry a port (``[2001:db8::1]:80``);
ICMP has none.  In NAT lines the first src->dst pair is the packet as logged.

RouterOS logs the same line whatever the rule does, so only the rule's own words tell a drop: a
log-prefix or chain naming drop/reject/block/deny is a deny, any other line just says that a rule
with logging matched (a skip).  Remote syslog may omit the topics; without them the line is only
claimed when it has the packet fields.  Topic lists of other facilities (``system,error,critical``)
are MikroTik skips.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, port, proto_number

NAME = "mikrotik"

_TOPICS = re.compile(r"([a-z][a-z0-9-]*(?:,[a-z][a-z0-9-]*)+) ")
_SEVERITIES = frozenset(("debug", "info", "warning", "error", "critical"))
_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\](?::\d+)?|[0-9A-Fa-f:.]+)"
_PACKET = re.compile(r"\bproto ([\w-]+)(?: \(([^)]*)\))?, " + _ENDPOINT + "->" + _ENDPOINT)
_ICMP = re.compile(r"type (\d+), code (\d+)")
_VERDICT = re.compile(r"(?i)drop|reject|block|deny")


def parse(msg: str, hdr: Header):
    t = _TOPICS.match(msg)
    topics = t.group(1).split(",") if t else ()
    if _SEVERITIES.isdisjoint(topics):  # not a topic list, e.g. a log-prefix with a comma
        topics = ()
    elif "firewall" not in topics:
        return Skip("not firewall")
    body = msg[t.end():] if topics else msg
    at = body.find(": in:")
    if at >= 0:
        head, rest = body[:at], body[at + 1:]
    elif body.startswith("in:") and hdr.program:  # no prefix, no topics: the framing took 'chain:' for a tag
        head, rest = hdr.program, body
    else:
        return Fail("no in:/out: fields") if topics else None
    packet = _PACKET.search(rest)
    if not (packet or topics):
        return None
    if not _VERDICT.search(head):
        return Skip("no deny in prefix")
    if not packet:
        return Fail("no protocol or addresses")
    name, detail, src, dst = packet.groups()
    proto = proto_number(name)
    if proto is None:
        return Fail("unknown protocol")
    (src, sport), (dst, dport) = _split(src), _split(dst)
    if proto in (1, 58):
        icmp = _ICMP.search(detail or "")
        sport, dport = icmp.groups() if icmp else ("", "")
    sport, dport = port(sport), port(dport)
    if sport is None or dport is None:
        return Fail("bad port")
    prefix = head.rpartition(" ")[0]
    action = "reject" if "reject" in head.lower() else "drop"
    return Deny(src, dst, proto, sport, dport, action, prefix or head)


def _split(endpoint: str) -> tuple[str, str]:
    """'1.2.3.4:80', '[2001:db8::1]:80', '1.2.3.4', '2001:db8::1' -> (address, port text or '')."""
    if endpoint.startswith("["):
        addr, _, rest = endpoint[1:].partition("]")
        return addr, rest[1:]
    if endpoint.count(":") == 1:
        addr, _, p = endpoint.partition(":")
        return addr, p
    return endpoint, ""
