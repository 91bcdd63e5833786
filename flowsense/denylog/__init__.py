"""Firewall deny logs: syslog framing, one decoder per vendor, DENY rows for the detectors' join."""

from flowsense.denylog import iptables, ulogd_json

# Order matters only for speed: every line is offered to each vendor until one claims it.
VENDORS = (iptables, ulogd_json)
