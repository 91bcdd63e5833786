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

_FIELDS = re.compile(r"\b(SRC|DST|PROTO|SPT|DPT|TYPE|CODE)=(\S*)")
_FIRST_KEY = re.compile(r"\b[A-Z]{2,}=")
_UPTIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_PVEFW_TIME = re.compile(r"\b(\d{1,2}/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}) ")
_ALLOW = re.compile(r"(?i)\baccept|\ballow|\bpass\b|-A-\d|\[[^\]]*-A\]")
_REJECT = re.compile(r"(?i)reject")
_DROP = re.compile(r"(?i)drop|-D-\d|-D\]|block|\bdeny")


def _prefix(msg: str, hdr: Header) -> tuple[str, int | None]:
    """The rule prefix in front of the first KEY= field, and the Proxmox per-line time if any."""
    key = _FIRST_KEY.search(msg)
    head = _UPTIME.sub("", msg[:key.start()] if key else "").strip()
    if hdr.host and head.startswith(hdr.host + " "):
        head = head[len(hdr.host) + 1:]
    ts = None
    when = _PVEFW_TIME.search(head)
    if when:
        ts = int(datetime.strptime(when.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()) * 1_000_000_000
        head = head[:when.start()] + head[when.end():]
    rule = head.rstrip(":").strip()
    if not rule and hdr.program not in ("", "kernel"):
        rule = hdr.program  # a "prefix: " with no syslog tag before it was framed as the tag (LOGEMU)
    return rule, ts


def parse(msg: str, hdr: Header):
    if " SRC=" not in msg or " DST=" not in msg:
        return None
    fields = dict(_FIELDS.findall(msg))
    src, dst = fields.get("SRC", ""), fields.get("DST", "")
    if not src or not dst:
        return Fail("missing SRC or DST")
    proto = proto_number(fields["PROTO"]) if "PROTO" in fields else 0
    if proto is None:
        return Fail("unknown PROTO")
    rule, ts = _prefix(msg, hdr)
    if _ALLOW.search(rule):
        return Skip("accept")
    sport, dport = (fields.get("TYPE", "0"), fields.get("CODE", "0")) if proto in (1, 58) else \
        (fields.get("SPT", "0"), fields.get("DPT", "0"))
    if not (sport.isascii() and sport.isdigit() and dport.isascii() and dport.isdigit()):
        return Fail("bad port")
    action = "reject" if _REJECT.search(rule) else "drop" if _DROP.search(rule) else "deny"
    return Deny(src, dst, proto, int(sport), int(dport), action, rule, ts=ts)
