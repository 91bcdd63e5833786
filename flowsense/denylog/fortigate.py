"""Fortinet FortiGate (FortiOS) key=value logs, traffic and UTM types:

    date=2020-04-23 time=01:16:08 devname="fw1" logid="0000000013" type="traffic" ... srcip=10.10.10.10
    srcport=60899 dstip=175.16.199.1 dstport=161 proto=17 action="deny" policyid=0 ...

Only the actions that refuse traffic are denies; session ends (close, timeout, server-rst,
client-rst) and passes are skips.  FortiOS 5.0 wrote the action as 'status'.  Values are bare or
double-quoted (quoted ones may hold spaces, '=' and backslash escapes): a deny line is split into
pairs by one pattern that steps over quoted values whole, the other lines are skipped after a cheap
look at every 'action='.  ``eventtime`` is epoch (s, ms, us or ns by release); without it, date/time
are device local time, zoned by the ``tz`` field when present, else by the configured timezone.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Header, Skip, checked, port, proto_number
from flowsense.denylog.framing import iso_ns

NAME = "fortigate"

_LOGID = re.compile(r'(?<!\w)logid="?\d')
_VERDICT = re.compile(r' (?:action|status)="?([\w-]+)')  # every candidate, quoted values included
_PAIR = re.compile(r'(\w+)=("[^"\\]*(?:\\.[^"\\]*)*"|\S*)')  # a quoted value is stepped over whole
_DENY = {"deny": "deny", "block": "deny", "blocked": "deny", "drop": "drop", "dropped": "drop",
         "clear_session": "drop", "reject": "reject", "reset": "reset"}


def parse(msg: str, hdr: Header):
    if "logid=" not in msg or _LOGID.search(msg) is None:
        return None
    if not any_deny(_VERDICT.findall(msg)):  # most lines: accept/close, skipped cheaply
        return NOT_A_DENY
    return decide({k: v[1:-1] if v[:1] == '"' else v for k, v in _PAIR.findall(msg)})


NOT_A_DENY = Skip("not a deny")
ICMP_PROTOS = (1, 58)  # their type and code stand in for the ports


def any_deny(verdicts: list[str]) -> bool:
    """Whether any action=/status= word anywhere in the line refuses traffic."""
    return any(v in _DENY for v in verdicts)


def decide(f: dict[str, str]):
    """The Deny, Skip or Fail of a line with a deny verdict, from its key=value fields (unquoted)."""
    if f.get("type") == "event":  # the device's own events (admin, VPN, HA...), not traffic
        return Skip("event")
    action = _DENY.get(f.get("action") or f.get("status", ""))
    if action is None:
        return NOT_A_DENY
    src, dst = f.get("srcip", ""), f.get("dstip", "")
    proto = proto_number(f.get("proto", ""))
    if proto in ICMP_PROTOS:
        sport, dport = _icmp(f.get("icmptype", "")), _icmp(f.get("icmpcode", ""))
    else:
        sport, dport = port(f.get("srcport", "")), port(f.get("dstport", ""))
    rule = f.get("policyname") or f.get("policyid", "")
    ts = epoch_ns(f.get("eventtime", ""))
    local = f"{f.get('date', '')}T{f.get('time', '')}" if ts is None and "date" in f and "time" in f else ""
    if local and f.get("tz"):
        ts, local = iso_ns(local + f["tz"]), ""
    return checked(src, dst, proto, sport, dport, action, rule, f.get("devname", ""), ts, local)


def _icmp(text: str) -> int | None:
    """ICMP type/code as FortiOS writes them: '0x08' (or plain decimal); 0 when absent."""
    try:
        n = int(text, 16 if text[:2] == "0x" else 10) if text else 0
    except ValueError:
        return None
    return n if 0 <= n < 256 else None


EPOCH_SCALES = ((10**11, 10**9), (10**14, 10**6), (10**17, 10**3), (10**20, 1))  # below limit: x scale = ns


def epoch_ns(text: str) -> int | None:
    """eventtime in s, ms, us or ns (by FortiOS release), told apart by magnitude."""
    if not text.isdecimal():
        return None
    n = int(text)
    for limit, scale in EPOCH_SCALES:
        if n < limit:
            return n * scale
    return None
