"""ulogd2 JSON output plugin (``ulogd_output_JSON``, package ulogd2-json): one JSON object a line.

What ulogd 2.0.8 writes for an NFLOG stack ``NFLOG,BASE,IFINDEX,IP2STR,HWHDR,JSON`` (abridged):

    {"timestamp": "2026-11-22T16:07:34.189015", "dvc": "Netfilter", "raw.pktlen": 60,
     "oob.prefix": "fs-drop-tcp443 ", "oob.time.sec": 1795363654, "oob.time.usec": 189015,
     "oob.family": 2, "oob.protocol": 2048, "ip.protocol": 6, "src_port": 58106, "dest_port": 443,
     "oob.in": "", "oob.out": "vc0", "src_ip": "198.18.77.1", "dest_ip": "198.18.77.2"}

- IPv6 lines have the same ``src_ip``/``dest_ip``/``ip.protocol`` keys (plus ``ip6.*``); ICMP has
  ``icmp.type``/``icmp.code``, ICMPv6 ``icmpv6.type``/``icmpv6.code``; UDP and SCTP use
  ``src_port``/``dest_port`` too.
- ``timestamp`` is local time; it carries a zone (``+0100``) only when the host's zone is not
  UTC, so a zone-less stamp is not trusted.  ``oob.time.sec``/``oob.time.usec`` (the kernel's
  packet time, seconds since the epoch) are exact and preferred when present.
- ``eventv1=1`` writes ``@timestamp``/``@version`` instead of ``timestamp``; ``boolean_label=1``
  adds ``"action": "allowed"|"blocked"`` (from the NFLOG ``numeric_label``).
- ``dvc`` is the plugin's ``device`` option, "Netfilter" unless configured; that default names
  no device and is dropped (the framing host, if any, stands in).

Every line ulogd logs came from a log rule: as in ``iptables`` (LOGEMU text of the same rules),
a prefix naming accept/allow is a skip and everything else a deny, its action taken from the
prefix.  Suricata EVE lines share ``src_ip``/``dest_ip`` but have no ``oob.``/``raw.`` keys and
are left to other decoders.
"""

from __future__ import annotations

import json
import re

from flowsense.denylog.base import Deny, Fail, Header, Skip
from flowsense.denylog.framing import iso_ns

NAME = "ulogd_json"

# The same verdict words as flowsense.denylog.iptables, so the LOGEMU and JSON lines of one rule agree.
_ALLOW = re.compile(r"(?i)\baccept|\ballow|\bpass\b")
_REJECT = re.compile(r"(?i)reject")
_DROP = re.compile(r"(?i)drop|block|\bdeny")
_ZONE = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")
_DEFAULT_DEVICE = "Netfilter"
_PORTED = (6, 17, 132, 136)  # tcp, udp, sctp, udplite: BASE puts their ports in src_port/dest_port
_PORT_KEYS = {6: "tcp", 17: "udp", 132: "sctp", 136: "udp"}


def _int(value, limit: int) -> int | None:
    """A JSON integer (or digit string) in [0, limit); None otherwise (bools are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < limit else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12:
        n = int(value)
        return n if n < limit else None
    return None


def _field(obj: dict, keys: tuple[str, ...], limit: int):
    """(present, value) of the first key present; value None when present but not a valid number."""
    for key in keys:
        if key in obj:
            return True, _int(obj[key], limit)
    return False, 0


def _ts(obj: dict) -> int | None:
    sec = _int(obj.get("oob.time.sec"), 1 << 40)
    if sec is not None:
        usec = _int(obj.get("oob.time.usec", 0), 1_000_000)
        return sec * 1_000_000_000 + (usec or 0) * 1000
    stamp = obj.get("timestamp", obj.get("@timestamp"))
    if isinstance(stamp, str) and len(stamp) < 64 and _ZONE.search(stamp):
        try:
            return iso_ns(stamp)
        except (ValueError, OverflowError):
            return None
    return None


def parse(msg: str, hdr: Header):
    text = msg.strip()
    if not text.startswith("{") or ("src_ip" not in text and "oob.prefix" not in text):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return Fail("bad json") if ('"oob.' in text or '"raw.' in text) else None
    if not isinstance(obj, dict) or not any(k.startswith(("oob.", "raw.")) for k in obj):
        return None  # JSON with src_ip but not ulogd's (e.g. Suricata EVE)

    prefix = obj.get("oob.prefix", "")
    if not isinstance(prefix, str):
        return Fail("bad oob.prefix")
    rule = prefix.strip().rstrip(":").strip()
    if _ALLOW.search(rule) or obj.get("action") == "allowed":
        return Skip("accept")

    src, dst = obj.get("src_ip", obj.get("ip.saddr.str")), obj.get("dest_ip", obj.get("ip.daddr.str"))
    if not (isinstance(src, str) and src and isinstance(dst, str) and dst):
        if obj.get("oob.protocol") == 0x0806 or any(k.startswith("arp.") for k in obj):
            return Skip("arp")
        return Fail("missing src_ip or dest_ip")

    _, proto = _field(obj, ("ip.protocol", "ip6.nexthdr"), 256)
    if proto is None:
        return Fail("bad ip.protocol")
    if proto in (1, 58):
        icmp = "icmp" if proto == 1 else "icmpv6"
        sport_keys, dport_keys = (f"{icmp}.type",), (f"{icmp}.code",)
    elif proto in _PORTED:
        sport_keys = ("src_port", f"{_PORT_KEYS[proto]}.sport")
        dport_keys = ("dest_port", f"{_PORT_KEYS[proto]}.dport")
    else:
        sport_keys = dport_keys = ()
    _, sport = _field(obj, sport_keys, 65536)
    _, dport = _field(obj, dport_keys, 65536)
    if sport is None or dport is None:
        return Fail("bad port")

    action = "reject" if _REJECT.search(rule) else "drop" if _DROP.search(rule) else "deny"
    device = obj.get("dvc", obj.get("hostname", ""))
    if not isinstance(device, str) or device == _DEFAULT_DEVICE:
        device = ""
    return Deny(src, dst, proto, sport, dport, action, rule, device[:255], _ts(obj))
