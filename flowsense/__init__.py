"""flowsense: find covert or abnormal egress in packets, flows and firewall logs."""

__version__ = "0.1.0"
