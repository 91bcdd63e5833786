"""Palo Alto Networks PAN-OS syslog, default CSV format:

    1,2015/01/05 12:51:33,0003C105690,TRAFFIC,drop,1,2015/01/05 12:51:33,10.0.0.219,10.3.0.21,...

TRAFFIC and THREAT share their first 31 columns in every PAN-OS release since 6 (later releases
only append), so fixed positions hold.  A TRAFFIC line is a deny when its action refuses the
session; a THREAT line when the threat action blocks it (then the rule is the threat's name, the
thing that refused).  The time columns are device local time without a zone, so Deny.ts stays
unset and the reader keeps the framing's time.
"""

from __future__ import annotations

import csv
import re

from flowsense.denylog.base import Fail, Header, Skip, checked, port, proto_number

NAME = "panos"

_HEAD = re.compile(r"\d,[^,]{0,40},[^,]{0,40},([A-Z]{3,14}),")  # future-use, receive time, serial, type
_TYPES = {"TRAFFIC", "THREAT", "SYSTEM", "CONFIG", "HIPMATCH", "CORRELATION", "USERID", "GLOBALPROTECT",
          "DECRYPTION", "AUTH", "AUTHENTICATION", "IPTAG", "TUNNEL", "SCTP", "GTP"}
SRC, DST, RULE, SPORT, DPORT, PROTO, ACTION, THREAT_NAME = 7, 8, 11, 24, 25, 29, 30, 32
DEVICE_NAME = {"TRAFFIC": 52, "THREAT": 59}  # PAN-OS 8+; absent from older formats
_TRAFFIC_DENY = {"deny": "deny", "drop": "drop", "drop-icmp": "drop", "reset-client": "reset",
                 "reset-server": "reset", "reset-both": "reset"}
_THREAT_DENY = {"deny": "deny", "drop": "drop", "drop-all": "drop", "drop-all-packets": "drop",
                "random-drop": "drop", "block-ip": "drop", "block-url": "deny", "block-continue": "deny",
                "block-override": "deny", "override-lockout": "deny", "sinkhole": "deny",
                "reset-client": "reset", "reset-server": "reset", "reset-both": "reset"}
_PASS = {"allow", "alert", "continue", "override", "syncookie-sent"}  # logged, traffic let through


def parse(msg: str, hdr: Header):
    head = _HEAD.match(msg)
    if head is None or head.group(1) not in _TYPES:
        return None
    kind = head.group(1)
    if kind not in DEVICE_NAME:
        return Skip("not a deny")
    try:
        row = next(csv.reader([msg])) if '"' in msg else msg.split(",")
    except csv.Error:  # a stray CR inside a record, an over-long field
        return Fail("bad CSV")
    last = THREAT_NAME if kind == "THREAT" else ACTION
    if len(row) <= last:
        return Fail("short record")
    verdict = row[ACTION]
    action = (_THREAT_DENY if kind == "THREAT" else _TRAFFIC_DENY).get(verdict)
    if action is None:
        return Skip(verdict) if verdict in _PASS else Fail("unknown action")
    src, dst = row[SRC], row[DST]
    proto = proto_number(row[PROTO])
    sport, dport = port(row[SPORT]), port(row[DPORT])
    rule = f"threat:{row[THREAT_NAME]}" if kind == "THREAT" else row[RULE]
    at = DEVICE_NAME[kind]
    return checked(src, dst, proto, sport, dport, action, rule, row[at] if len(row) > at else "")
