"""MITRE ATT&CK identifiers used by the detectors, as data (names checked by a test).

``RULES`` is the one place that says which analytics and techniques each rule id stands for; a
detector may add the technique of what it found (e.g. the channel a fallback moved to)."""

from __future__ import annotations

from dataclasses import dataclass

TECHNIQUES = {
    "T1008": "Fallback Channels",
    "T1046": "Network Service Discovery",
    "T1048": "Exfiltration Over Alternative Protocol",
    "T1071": "Application Layer Protocol",
    "T1071.004": "Application Layer Protocol: DNS",
    "T1090": "Proxy",
    "T1095": "Non-Application Layer Protocol",
    "T1496": "Resource Hijacking",
    "T1571": "Non-Standard Port",
    "T1572": "Protocol Tunneling",
}

ANALYTICS = {
    "AN0081": "Sustained or high-volume outbound traffic, proxying and scanning",
    "AN0597": "Beaconing: repeated outbound connections at regular intervals with similar sizes",
    "AN1258": "Non-standard port/protocol pairings and tunnel-like ICMP",
    "AN1376": "Fallback to another port or transport after blocked traffic",
    "AN1377": "Fallback to another port or transport after blocked traffic",
}


@dataclass(frozen=True)
class Rule:
    name: str
    analytics: tuple[str, ...]
    techniques: tuple[str, ...]


RULES = {
    "icmp_tunnel": Rule("Tunnel-like ICMP conversation", ("AN1258",), ("T1095",)),
    "port_pairing": Rule("Rare or mismatched port/protocol pairing", ("AN1258",), ("T1571",)),
    "dns_tunnel": Rule("DNS tunnel", (), ("T1071.004", "T1572")),  # feeds deny_fallback; no analytic alone
    "deny_fallback": Rule("Fallback channel after blocked traffic", ("AN1377", "AN1376"), ("T1008",)),
    "beacon": Rule("Beaconing", ("AN0597",), ("T1071",)),
    "egress_sustained": Rule("Sustained high-volume egress", ("AN0081",), ("T1048",)),
    "egress_proxy": Rule("Proxy-like relaying", ("AN0081",), ("T1090",)),
    "scan": Rule("Network scan", ("AN0081",), ("T1046",)),
}
