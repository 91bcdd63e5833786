"""Firewall deny logs: syslog framing, one decoder per vendor, DENY rows for the detectors' join."""

from flowsense.denylog import (checkpoint, cisco_asa, fortigate, iptables, juniper_srx, mikrotik, panos, pfsense,
                               ulogd_json)

# Order matters only for speed: every line is offered to each vendor until one claims it.
VENDORS = (iptables, cisco_asa, pfsense, panos, fortigate, juniper_srx, checkpoint, mikrotik, ulogd_json)
