"""Juniper SRX security flow logs (``RT_FLOW``), structured or plain text.

Structured (RFC 5424, ``structured-data``): the event is the MSGID and the fields are SD-PARAMs,

    RT_FLOW - RT_FLOW_SESSION_DENY [junos@2636.1.1.1.2.134 source-address="10.0.0.26" source-port="37233"
    destination-address="10.128.0.1" destination-port="161" ... protocol-id="17" icmp-type="0"
    policy-name="MgmtAccess-trust-cleanup" ... reason="Denied by policy" ...]

Plain text (BSD syslog): ``RT_FLOW: RT_FLOW_SESSION_DENY: session denied`` then
``src/sport->dst/dport [connection-tag] service protocol-id(icmp-type) policy from-zone to-zone``
and, on newer Junos, application, user, interface, encrypted and reason.

Only RT_FLOW_SESSION_DENY (and the logical-system ``_LS`` variant) is a deny; session create and
close, APPTRACK and every other RT_* message are skips.  ICMP has no ports: the type goes in
sport and the code, which the log lacks, is 0.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, port, proto_number

NAME = "juniper_srx"

_EVENT = re.compile(r"\b((?:RT|APPTRACK)_[A-Z0-9]+_[A-Z0-9_]+)\b")
_PARAM = re.compile(r'([\w-]+)="([^"]*)"')
_DENIED = re.compile(r"session denied ([0-9A-Fa-f:.]+)/(\d+)->([0-9A-Fa-f:.]+)/(\d+) (?:\S+ )*?(\d+)\((\d+)\) "
                     r"(\S+)(.*)")
_REJECT = re.compile(r"(?i)reject")


def parse(msg: str, hdr: Header):
    if not hdr.program.startswith("RT_") and "RT_" not in msg:
        return None
    event = _event(msg, hdr)
    if event is None:
        return None
    skip = skip_of(event)
    if skip is not None:
        return skip
    params = dict(_PARAM.findall(hdr.sd or msg))
    if params:
        g = params.get
        return _deny(g("source-address", ""), g("source-port", ""), g("destination-address", ""),
                     g("destination-port", ""), g("protocol-id", ""), g("icmp-type", ""), g("policy-name", ""),
                     g("reason", ""))
    m = _DENIED.search(msg)
    if not m:
        return Fail("no session fields")
    return _deny(*m.groups())


def _event(msg: str, hdr: Header) -> str | None:
    """The message id (RFC 5424 MSGID, else the RT_*/APPTRACK_* word in the text); None: not SRX."""
    ours = hdr.program.startswith("RT_")
    if ours and hdr.msgid:
        return hdr.msgid
    found = _EVENT.search(msg)
    if found:
        return found.group(1)
    return hdr.program if ours else None


def _deny(src: str, sport: str, dst: str, dport: str, proto_id: str, icmp_type: str, policy: str, reason: str):
    """One deny from the fields both forms carry; ``reason`` is any text that may say reject."""
    got = verdict(proto_id, icmp_type, reason)
    if not src or not dst or got is None:
        return Fail("missing address or protocol")
    proto, icmp, action = got
    sp, dp = icmp or (port(sport), port(dport))
    if sp is None or dp is None:
        return Fail("bad port")
    return Deny(src, dst, proto, sp, dp, action, policy)


def verdict(proto_id: str, icmp_type: str, reason: str) -> tuple[int, tuple | None, str] | None:
    """(proto, ICMP (type, code) or None when the ports apply, action); None: no protocol."""
    proto = proto_number(proto_id)
    if proto is None:
        return None
    icmp = (port(icmp_type), 0) if proto in (1, 58) else None
    return proto, icmp, "reject" if _REJECT.search(reason) else "deny"


def skip_of(event: str):
    """None for a deny event, else its Skip."""
    return None if event.startswith("RT_FLOW_SESSION_DENY") else Skip(event)
