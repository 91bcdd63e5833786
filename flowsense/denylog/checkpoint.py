"""Check Point gateway logs in the two text forms they reach a collector in:

  - Log Exporter syslog (R80.10+): RFC 5424 whose structured-data slot holds the whole record,
    ``[action:"Drop"; ... src:"10.1.1.1"; dst:"10.2.2.2"; proto:"6"; s_port:"51234"; service:"443"]``
    (quotes, backslashes and ']' inside values are backslash-escaped); relays that rewrite the
    header leave the same bracket in the message, so it is read from there when the SD is empty;
  - LEA exports (fw1-loggrabber, OPSEC tools, Log Exporter's splunk format): ``key=value`` fields
    joined by '|', an escaped ``\\|`` inside a value; keys may hold spaces or '-' ('ICMP Type').

Drop, Reject and Block are denies; every other action (Accept, Encrypt, Decrypt, Key Install,
Log In...) or none is a skip.  ``time`` is epoch seconds in both forms when it is all digits (LEA
tools may print local date text instead, which is not used).
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Fail, Header, Skip, checked, port, proto_number

NAME = "checkpoint"

# A quote inside a value is always escaped, so 'key:"' can only start a real field: the fields used
# are picked out directly instead of splitting the whole (long) record.
_SD_FIELD = re.compile(r'(?<!\w)(action|src|dst|proto|s_port|service|icmp_type|icmp_code|rule_name|rule|match_id|'
                       r'layer_name|time|origin):"([^"\\]*(?:\\.[^"\\]*)*)"')
_SD_ACTION = re.compile(r'(?<!\w)action:"(\w+)')
_LEA_SPLIT = re.compile(r"(?<!\\)\|")
_UNESCAPE = re.compile(r"\\(.)")
_ADDRESS = re.compile(r"[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*")  # not a host name (LEA may resolve them)
_DENY = {"drop": "drop", "reject": "reject", "block": "drop"}


def parse(msg: str, hdr: Header):
    if hdr.program == "CheckPoint" or 'loguid:"' in hdr.sd or 'loguid:"' in msg:
        text = hdr.sd if ':"' in hdr.sd else msg
        verdict = _SD_ACTION.search(text)
        if verdict is None or verdict.group(1).lower() not in _DENY:
            return Skip("not a deny")
        f = dict(_SD_FIELD.findall(text))
    elif "|product=" in msg and "|orig" in msg:
        f = {k.strip().lower().replace(" ", "_").replace("-", "_"): v
             for k, _, v in (part.partition("=") for part in _LEA_SPLIT.split(msg))}
    else:
        return None
    action = _DENY.get(f.get("action", "").lower())
    if action is None:
        return Skip("not a deny")
    src, dst = f.get("src", ""), f.get("dst", "")
    if not _ADDRESS.fullmatch(src) or not _ADDRESS.fullmatch(dst):
        return Fail("missing address" if not src or not dst else "address is a name")
    proto = proto_number(f.get("proto", ""))
    if proto in (1, 58):
        sport, dport = port(f.get("icmp_type", "")), port(f.get("icmp_code", ""))
    else:
        sport, dport = port(f.get("s_port", "")), port(f.get("service", ""))
    number = f.get("rule") or f.get("match_id", "")
    rule = f.get("rule_name") or ":".join(p for p in (f.get("layer_name", ""), number) if p)
    when = f.get("time", "")
    ts = int(when) * 1_000_000_000 if when.isdecimal() else None
    return checked(src, dst, proto, sport, dport, action, _UNESCAPE.sub(r"\1", rule),
                   f.get("origin") or f.get("orig", ""), ts)
