"""The detectors, run in this order (deny_fallback last: it reads what the others found).

Adding a detector touches three files: the detector module, its line here, its test."""

from flowsense.detectors import beacon, deny_fallback, dns_tunnel, egress, icmp_tunnel, port_pairing

DETECTORS = (icmp_tunnel, dns_tunnel, port_pairing, beacon, egress, deny_fallback)
