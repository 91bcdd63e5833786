"""Helpers for detector tests: write scapy packets to a pcap, analyze it in-process, read alerts."""

from __future__ import annotations

import json
from pathlib import Path

from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw, wrpcap  # noqa: F401 (re-exported for tests)

from flowsense.config import Config
from flowsense.pipeline import analyze


def at(t: float, pkt):
    pkt.time = t
    return pkt


def frame(src, dst, layer):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst) / layer


def tcp_exchange(t, cli, srv, sport, dport, out=b"", back=b"", isn=1000):
    """A complete TCP connection (handshake, one message each way, FIN) starting at t."""
    seq, ack = isn, 5000
    pkts = [at(t, frame(cli, srv, TCP(sport=sport, dport=dport, flags="S", seq=seq))),
            at(t + 0.01, frame(srv, cli, TCP(sport=dport, dport=sport, flags="SA", seq=ack, ack=seq + 1))),
            at(t + 0.02, frame(cli, srv, TCP(sport=sport, dport=dport, flags="A", seq=seq + 1, ack=ack + 1)))]
    seq, ack = seq + 1, ack + 1
    if out:
        pkts.append(at(t + 0.03, frame(cli, srv, TCP(sport=sport, dport=dport, flags="PA", seq=seq, ack=ack)
                                       / Raw(out))))
        seq += len(out)
    if back:
        pkts.append(at(t + 0.04, frame(srv, cli, TCP(sport=dport, dport=sport, flags="PA", seq=ack, ack=seq)
                                       / Raw(back))))
        ack += len(back)
    pkts += [at(t + 0.05, frame(cli, srv, TCP(sport=sport, dport=dport, flags="FA", seq=seq, ack=ack))),
             at(t + 0.06, frame(srv, cli, TCP(sport=dport, dport=sport, flags="FA", seq=ack, ack=seq + 1))),
             at(t + 0.07, frame(cli, srv, TCP(sport=sport, dport=dport, flags="A", seq=seq + 1, ack=ack + 1)))]
    return pkts


def refused(t, cli, srv, sport, dport):
    """A SYN answered by a reset from the far side."""
    return [at(t, frame(cli, srv, TCP(sport=sport, dport=dport, flags="S", seq=77))),
            at(t + 0.01, frame(srv, cli, TCP(sport=dport, dport=sport, flags="RA", seq=0, ack=78)))]


def alerts_of(tmp_path: Path, packets=None, pcap: Path | None = None, deny_logs=(), config: Config = Config(),
              baseline=None, name: str = "run") -> list[dict]:
    if packets is not None:
        pcap = tmp_path / f"{name}.pcap"
        wrpcap(str(pcap), sorted(packets, key=lambda p: p.time))
    out = tmp_path / f"{name}.out"
    analyze([str(pcap)], config, out, list(deny_logs), quiet=True, baseline=baseline)
    return [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]


def of_rule(alerts: list[dict], rule: str) -> list[dict]:
    return [a for a in alerts if a["rule"]["id"] == rule]
