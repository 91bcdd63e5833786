"""Linux netfilter LOG / NFLOG text (kernel via syslog or journald, ulogd2 LOGEMU), any prefix.

    [prefix]IN=eth0 OUT= MAC=... SRC=198.18.0.1 DST=198.19.0.2 ... PROTO=TCP SPT=1 DPT=2 ...

The prefix is whatever the rule set (``--log-prefix``, nftables ``log prefix``); it names the rule
and usually says what happened.  A prefix or a Proxmox/UniFi verdict that says ACCEPT/allow is a
skip; everything else logged this way is taken as a deny (LOG rules are written for drops), with
the action taken from the prefix when it says drop/reject.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, proto_number

NAME = "iptables"

_FIELDS = re.compile(r"\b(SRC|DST|PROTO|SPT|DPT|TYPE|CODE)=(\S*)")
_ALLOW = re.compile(r"(?i)(\baccept|\ballow|\bpass\b|-A-\d|_A_|-A\]|\[[^\]]*-A\])")
_REJECT = re.compile(r"(?i)reject")
_DROP = re.compile(r"(?i)\bdrop|-D-\d|_D_|block")


def parse(msg: str, hdr: Header):
    at = msg.find(" SRC=")
    if at < 0 or "DST=" not in msg:
        return None
    head = msg[:msg.find("IN=")] if "IN=" in msg[:at] else msg[:at]
    fields = dict(_FIELDS.findall(msg))
    src, dst = fields.get("SRC", ""), fields.get("DST", "")
    if not src or not dst:
        return Fail("missing SRC or DST")
    proto = proto_number(fields.get("PROTO", "")) if "PROTO" in fields else 0
    if proto is None:
        return Fail("unknown PROTO")
    if _ALLOW.search(head):
        return Skip("accept")
    sport, dport = fields.get("SPT", "0"), fields.get("DPT", "0")
    if proto in (1, 58):
        sport, dport = fields.get("TYPE", "0"), fields.get("CODE", "0")
    if not (sport.isdigit() and dport.isdigit()):
        return Fail("bad port")
    action = "reject" if _REJECT.search(head) else "drop" if _DROP.search(head) else "deny"
    rule = head.strip().strip(":").strip()
    return Deny(src, dst, proto, int(sport), int(dport), action, rule)
