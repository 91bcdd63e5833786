"""Fortinet FortiGate (FortiOS) key=value logs, traffic and UTM types:

    date=2020-04-23 time=01:16:08 devname="fw1" logid="0000000013" type="traffic" ... srcip=10.10.10.10
    srcport=60899 dstip=175.16.199.1 dstport=161 proto=17 action="deny" policyid=0 ...

Values are bare or double-quoted (quoted ones may hold spaces, '=' and backslash escapes), so the
line is split into pairs by one pattern that steps over quoted values whole.  Only the actions that
refuse traffic are denies; session ends (close, timeout, server-rst, client-rst) and passes are
skips.  FortiOS 5.0 wrote the action as 'status'.  ``eventtime`` is epoch (s, ms, us or ns by
release); date/time are device local time without a zone, so they are not used.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, port, proto_number

NAME = "fortigate"

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_DENY = {"deny": "deny", "block": "deny", "blocked": "deny", "drop": "drop", "dropped": "drop",
         "clear_session": "drop", "reject": "reject", "reset": "reset"}


def parse(msg: str, hdr: Header):
    if "logid=" not in msg or "type=" not in msg:
        return None
    f = {k: v[1:-1] if v[:1] == '"' else v for k, v in _PAIR.findall(msg)}
    if "logid" not in f or "type" not in f:
        return None
    if f["type"] == "event":  # the device's own events (admin, VPN, HA...), not traffic
        return Skip("event")
    action = _DENY.get(f.get("action") or f.get("status", ""))
    if action is None:
        return Skip("not a deny")
    src, dst = f.get("srcip", ""), f.get("dstip", "")
    try:  # int() refuses junk, and text like '²' that base.port/proto_number let through (str.isdigit)
        proto = proto_number(f.get("proto", ""))
        if proto in (1, 58):
            sport, dport = _icmp(f.get("icmptype", "")), _icmp(f.get("icmpcode", ""))
        else:
            sport, dport = port(f.get("srcport", "")), port(f.get("dstport", ""))
    except ValueError:
        return Fail("bad number")
    if not src or not dst:
        return Fail("missing address")
    if proto is None:
        return Fail("unknown protocol")
    if sport is None or dport is None:
        return Fail("bad port")
    rule = f.get("policyname") or f.get("policyid", "")
    return Deny(src, dst, proto, sport, dport, action, rule, f.get("devname", ""), _epoch_ns(f.get("eventtime", "")))


def _icmp(text: str) -> int | None:
    """ICMP type/code as FortiOS writes them: '0x08' (or plain decimal); 0 when absent."""
    n = int(text, 16 if text[:2] == "0x" else 10) if text else 0
    return n if 0 <= n < 256 else None


def _epoch_ns(text: str) -> int | None:
    """eventtime in s, ms, us or ns (by FortiOS release), told apart by magnitude."""
    if not text.isdecimal():
        return None
    n = int(text)
    for limit, scale in ((10**11, 10**9), (10**14, 10**6), (10**17, 10**3)):
        if n < limit:
            return n * scale
    return n
