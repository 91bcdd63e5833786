"""Firewall deny logs: syslog framing, one decoder per vendor, DENY rows for the detectors' join."""

from flowsense.denylog import iptables, juniper_srx, mikrotik, pfsense, ulogd_json

# Order matters only for speed: every line is offered to each vendor until one claims it.
VENDORS = (iptables, pfsense, juniper_srx, mikrotik, ulogd_json)
