"""Alerts forwarded as they are written by the live front doors (sense, collect, run): CEF over
syslog UDP to a SIEM's collector (ArcSight CEF 0, RFC 5424 framing) and/or JSON lines on stdout.
alerts.jsonl stays the record; a forward that fails is counted, never fatal."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone

from flowsense import __version__
from flowsense.config import AlertsConfig
from flowsense.errors import UsageError

CEF_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
SYSLOG_PRI = 8 * 13 + 4   # facility log audit (13), severity warning (4)


def _cef_escape(text: str, header: bool) -> str:
    """CEF escaping: backslashes always, pipes in the header, equals signs in the extension; no newlines."""
    text = text.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    return text.replace("|", "\\|") if header else text.replace("=", "\\=")


def cef(alert: dict) -> str:
    """One alert as a CEF:0 line: the headline fields as CEF keys, the rest of the evidence left to alerts.jsonl."""
    fs, src, dst = alert["flowsense"], alert.get("source") or {}, alert.get("destination") or {}
    ext = {"rt": alert["@timestamp"], "start": alert["event"]["start"], "end": alert["event"]["end"],
           "src": src.get("ip"), "spt": src.get("port"), "dst": dst.get("ip"), "dpt": dst.get("port"),
           "proto": (alert.get("network") or {}).get("transport"),
           "cs1Label": "analytic", "cs1": "/".join(fs["analytic"]),
           "cs2Label": "techniques", "cs2": "/".join(alert["threat"]["technique"]["id"]),
           "cs3Label": "identifier", "cs3": fs["identifier"],
           "cfp1Label": "score", "cfp1": fs["score"], "cs4Label": "evidenceGrade", "cs4": fs["evidence_grade"]}
    extension = " ".join(f"{k}={_cef_escape(str(v), False)}" for k, v in ext.items() if v is not None)
    head = "|".join(_cef_escape(str(x), True) for x in ("flowsense", "flowsense", __version__, alert["rule"]["id"],
                                                        alert["rule"]["name"], CEF_SEVERITY[fs["severity"]]))
    return f"CEF:0|{head}|{extension}"


class Forwarder:
    def __init__(self, cfg: AlertsConfig):
        self.stdout = cfg.forward_stdout
        self.target = None
        self.sent = self.failed = 0
        if cfg.forward_syslog:
            host, _, port = cfg.forward_syslog.rpartition(":")
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"config: [alerts].forward_syslog {cfg.forward_syslog!r}: expected HOST:PORT, "
                                 "e.g. 192.0.2.10:514")
            self.target = (host, int(port))
            self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            self.host = socket.gethostname()

    def send(self, alerts: list[dict]) -> None:
        for a in alerts:
            if self.stdout:
                print(json.dumps(a), flush=True)
            if self.target:
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                line = f"<{SYSLOG_PRI}>1 {stamp} {self.host} flowsense - alert - {cef(a)}"
                try:
                    self.sock.sendto(line.encode("utf-8", "replace")[:65000], self.target)
                    self.sent += 1
                except OSError:
                    self.failed += 1

    def stats(self) -> dict:
        return {"syslog": f"{self.target[0]}:{self.target[1]}" if self.target else None, "sent": self.sent,
                "failed": self.failed, "stdout": self.stdout}
