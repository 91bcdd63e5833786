"""Cisco ASA and Firepower Threat Defense syslog: ``%ASA-<sev>-<id>: text`` / ``%FTD-...``.

Each packet-deny message id has a fixed wording (Cisco's syslog message guide); the ids sharing a
wording share one pattern below.  Every other ASA/FTD message (connection built/teardown, NAT,
VPN, management...) is a skip, so a whole ASA log is recognised without a failure per line.
FTD's Snort-side connection events (430002/430003) are key: value lists; their Block actions are
denies too, as FTD logs its access-control-policy blocks only that way.
"""

from __future__ import annotations

import re

from flowsense.denylog.base import Deny, Fail, Header, Skip, checked, port, proto_number

NAME = "cisco_asa"

TAG = re.compile(r"%(ASA|FTD)-(?:[a-z]+-)?\d-(\d{6}):? ?")  # 'ASA-session-5-106100' with logging class
# The patterns are ASCII-only (re.A): their \w and \d text goes to int() through base.port/proto_number.
_IP = r"[0-9A-Fa-f.:]*[0-9A-Fa-f]"  # IPv4 or IPv6 as ASA prints it
_IF = r"[^:\s][^:]*:"  # 'nameif:' before an address (names may hold spaces: 'NP Identity Ifc')
_SRC = rf"(?P<src>{_IP})(?:/(?P<sport>\d+))?"
_DST = rf"(?P<dst>{_IP})(?:/(?P<dport>\d+))?"

# 106001 106006 106007 106012 106015 106016 106017 106020 106021 106022, e.g.
# 'Inbound TCP connection denied from A/p to B/p flags SYN on interface X', 'Deny IP spoof from (A) to B ...'
_FROM_TO = re.compile(rf"(?:Inbound|Deny)(?: inbound)? (?P<proto>\w+) .*?from \(?{_SRC}\)?.*? to {_DST}", re.A)
# 106010 106014 106023: 'Deny tcp src if:A/p[(user)] dst if:B/p [(type 8, code 0)] by access-group "acl" [...]'
_SRC_DST = re.compile(rf"Deny (?:inbound )?(?:protocol )?(?P<proto>\w+) src {_IF}{_SRC}.*? dst {_IF}{_DST}"
                      r"(?:.*?type (?P<type>\d+), code (?P<code>\d+))?"
                      r"(?:.*? by access-group \"(?P<rule>[^\"]*)\")?", re.A)
# 106100: 'access-list acl denied tcp if/A(p) -> if/B(p) hit-cnt 1 first hit [...]'
_ACL = re.compile(rf"access-list (?P<rule>\S+) (?P<verdict>denied|permitted|est-allowed) (?P<proto>\w+) "
                  rf"[^/]+/(?P<src>{_IP})\((?P<sport>\d+)\).*?-> ?[^/]+/(?P<dst>{_IP})\((?P<dport>\d+)\)", re.A)
# 313001 313004 313008: 'Denied ICMP type=3, code=3 from A on interface X' (no destination: the ASA itself),
# 'Denied ICMP type=0, from laddr A on interface X to B: no matching session'
_ICMP = re.compile(rf"Denied (?P<proto>ICMP|IPv6-ICMP) type=(?P<type>\d+), (?:code=(?P<code>\d+) )?"
                   rf"from (?:laddr )?(?P<src>{_IP}) on interface .*?(?: to (?P<dst>{_IP})\b|\s*$)", re.A)
# 710003: 'TCP access denied by ACL from A/p to if:B/p' (to the box itself)
_TO_BOX = re.compile(rf"(?P<proto>\w+) access denied by ACL from {_SRC} to {_IF}{_DST}", re.A)
# 338007 338008: 'Dynamic Filter dropped black listed TCP traffic from if:A/p (mapped) to if:B/p (mapped), ...'
_BOTNET = re.compile(rf"Dynamic Filter dropped black ?listed (?P<proto>\w+) traffic from {_IF}{_SRC}.*? "
                     rf"to {_IF}{_DST}", re.A)

_DENY = {"106001": _FROM_TO, "106006": _FROM_TO, "106007": _FROM_TO, "106012": _FROM_TO, "106015": _FROM_TO,
         "106016": _FROM_TO, "106017": _FROM_TO, "106020": _FROM_TO, "106021": _FROM_TO, "106022": _FROM_TO,
         "106010": _SRC_DST, "106014": _SRC_DST, "106023": _SRC_DST, "106100": _ACL, "313001": _ICMP,
         "313004": _ICMP, "313008": _ICMP, "710003": _TO_BOX, "338007": _BOTNET, "338008": _BOTNET}

_FTD_FIELD = re.compile(r"(\w+): ([^,]*)")


def parse(msg: str, hdr: Header):
    if "%ASA-" not in msg and "%FTD-" not in msg:
        return None
    tag = TAG.search(msg)
    if tag is None:
        return None
    family, msgid = tag.groups()
    body = msg[tag.end():]
    if msgid in CONNECTION_EVENTS:
        return _connection_event(body, f"{family}-{msgid}")
    pattern = _DENY.get(msgid)
    if pattern is None:
        return NOT_A_DENY
    m = pattern.match(body)
    if m is None:
        return Fail(f"unparsed {msgid}")
    g = m.groupdict()
    if g.get("verdict", "denied") != "denied":
        return Skip("permitted")
    proto = protocol(g["proto"])
    if proto is None:
        return Fail("unknown protocol")
    sport, dport = g.get("sport"), g.get("dport")
    if g.get("type") is not None and proto in (1, 58):  # ICMP type and code where the message gives them
        sport, dport = g["type"], g["code"]
    elif pattern is _ACL and proto in (1, 58):  # 106100 logs ICMP as (0) -> (type)
        sport, dport = dport, "0"
    sport, dport = port(sport or ""), port(dport or "")
    if sport is None or dport is None:
        return Fail("bad port")
    action = "drop" if pattern is _BOTNET else "deny"  # the only ones that say 'dropped', not 'denied'
    return Deny(g["src"], g["dst"] or "", proto, sport, dport, action, rule(g.get("rule"), family, msgid))


NOT_A_DENY = Skip("not a deny")
CONNECTION_EVENTS = ("430002", "430003")
DENY_IDS = tuple(_DENY)
SRC_DST_IDS = tuple(k for k, v in _DENY.items() if v is _SRC_DST)  # the fast path lexes these itself


def protocol(word: str) -> int | None:
    return 0 if word.lower() == "ip" else proto_number(word)


def rule(acl: str | None, family: str, msgid: str) -> str:
    """The access-group when the message names one, else the message id."""
    return acl or f"{family}-{msgid}"


def _connection_event(body: str, msg_rule: str):
    """FTD 430002/430003 'AccessControlRuleAction: Block, SrcIP: A, DstIP: B, SrcPort: p, ...'."""
    f = dict(_FTD_FIELD.findall(body))
    verdict = f.get("AccessControlRuleAction", "")
    if "Block" not in verdict:
        return Skip("not a deny")
    src, dst = f.get("SrcIP", ""), f.get("DstIP", "")
    proto = proto_number(f.get("Protocol", ""))
    sport, dport = port(f.get("SrcPort", "")), port(f.get("DstPort", ""))
    action = "reset" if "reset" in verdict else "deny"
    return checked(src, dst, proto, sport, dport, action, f.get("AccessControlRuleName") or msg_rule)
