"""Linux netfilter LOG / NFLOG text (kernel via syslog or journald, ulogd2 LOGEMU, Proxmox pvefw,
UniFi), any prefix.

    [prefix]IN=eth0 OUT= MAC=... SRC=198.18.0.1 DST=198.19.0.2 ... PROTO=TCP SPT=1 DPT=2 ...

The prefix is whatever the rule set (``--log-prefix``, nftables ``log prefix``); it names the rule
and usually says what happened.  A prefix or verdict that says ACCEPT/allow (UniFi ``-A-``) is a
skip; everything else logged this way is taken as a deny (LOG rules are written for drops), with
the action taken from the prefix when it says drop/reject.
"""

from __future__ import annotations

import re
from datetime import datetime

from flowsense.denylog.base import Deny, Fail, Header, Skip, proto_number

NAME = "iptables"

_FIRST_KEY = re.compile(r"\b[A-Z]{2,}=")
_UPTIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_PVEFW_TIME = re.compile(r"\b(\d{1,2}/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}) ")
_ALLOW = re.compile(r"(?i)\baccept|\ballow|\bpass\b|-A-\d|\[[^\]]*-A\]")
_REJECT = re.compile(r"(?i)reject")
_DROP = re.compile(r"(?i)drop|-D-\d|-D\]|block|\bdeny")


def _field(msg: str, key: str) -> str | None:
    """Value of ' KEY=' up to the next space (str.find: ~5x cheaper than a findall over the line)."""
    at = msg.find(key)
    if at < 0:
        return None
    at += len(key)
    end = msg.find(" ", at)
    return msg[at:] if end < 0 else msg[at:end]


PORT_KEYS, ICMP_KEYS = (" SPT=", " DPT="), (" TYPE=", " CODE=")


def port_keys(proto: int) -> tuple[str, str]:
    return ICMP_KEYS if proto in (1, 58) else PORT_KEYS


def head(msg: str) -> str:
    """The text in front of the first KEY= field (IN= as a rule): the rule prefix, framed."""
    at = msg.find("IN=")
    if at < 0:
        key = _FIRST_KEY.search(msg)
        at = key.start() if key else 0
    return msg[:at]


def _prefix(head: str, hdr: Header) -> tuple[str, int | None]:
    """The rule prefix, and the Proxmox per-line time if any."""
    head = _UPTIME.sub("", head).strip() if head[:1] == "[" and head[1:2] in " 0123456789" else head.strip()
    if hdr.host and head.startswith(hdr.host + " "):
        head = head[len(hdr.host) + 1:]
    ts = None
    when = _PVEFW_TIME.search(head)
    if when:
        try:
            ts = int(datetime.strptime(when.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()) * 1_000_000_000
        except ValueError:
            ts = None  # an impossible date (day 00, 31 June): the syslog stamp stands
        head = head[:when.start()] + head[when.end():]
    rule = head.rstrip(":").strip()
    if not rule and hdr.program not in ("", "kernel"):
        rule = hdr.program  # a "prefix: " with no syslog tag before it was framed as the tag (LOGEMU)
    return rule, ts


def verdict(head: str, proto_name: str | None, hdr: Header):
    """(proto, rule, ts, action), or the Skip/Fail, from the prefix and the PROTO= value (the fast
    path asks once per distinct prefix, protocol, host and tag)."""
    proto = 0 if proto_name is None else proto_number(proto_name)
    if proto is None:
        return Fail("unknown PROTO")
    rule, ts = _prefix(head, hdr)
    if _ALLOW.search(rule):
        return Skip("accept")
    action = "reject" if _REJECT.search(rule) else "drop" if _DROP.search(rule) else "deny"
    return proto, rule, ts, action


def parse(msg: str, hdr: Header):
    src = _field(msg, " SRC=")
    dst = _field(msg, " DST=") if src is not None else None
    if dst is None:
        return None
    if not src or not dst:
        return Fail("missing SRC or DST")
    got = verdict(head(msg), _field(msg, " PROTO="), hdr)
    if not isinstance(got, tuple):
        return got
    proto, rule, ts, action = got
    sport, dport = (_field(msg, key) or "0" for key in port_keys(proto))
    if not (sport.isascii() and sport.isdigit() and dport.isascii() and dport.isdigit()):
        return Fail("bad port")
    return Deny(src, dst, proto, int(sport), int(dport), action, rule, ts=ts)
