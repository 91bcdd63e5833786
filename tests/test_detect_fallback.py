"""Deny then fallback (AN1376/AN1377): blocks from firewall logs and from the traffic itself,
followed by a new channel; scanners and ordinary resets stay quiet."""

from __future__ import annotations

import json

from detect_helpers import ICMP, IP, Ether, Raw, alerts_of, at, frame, of_rule, refused, tcp_exchange
from flowsense.config import AllowlistConfig, Config, FallbackConfig

from conftest import PCAPS

HOST, C2 = "10.20.0.5", "203.0.113.9"
TLS_HELLO, TLS_REPLY = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x16\x03\x03\x00\x5a\x02"


def _blocked_by_resets(t0=100.0):
    return [p for k in range(3) for p in refused(t0 + 3 * k, HOST, C2, 50000 + k, 443)]


def _fallback_8443(t0=140.0):
    return tcp_exchange(t0, HOST, C2, 50100, 8443, out=TLS_HELLO, back=TLS_REPLY)


def _background(t0=1.0):
    """Other hosts using 443 normally, so the capture has a few hosts to compare with."""
    return [p for k in range(6) for p in tcp_exchange(t0 + k, f"10.20.0.{100 + k}", "198.51.100.80", 40000 + k,
                                                      443, out=TLS_HELLO, back=TLS_REPLY)]


def test_resets_then_new_port_to_the_same_destination(tmp_path):
    alerts = of_rule(alerts_of(tmp_path, _background() + _blocked_by_resets() + _fallback_8443()), "deny_fallback")
    assert len(alerts) == 1
    a = alerts[0]
    assert a["source"]["ip"] == HOST and a["destination"] == {"ip": C2, "port": 8443}
    assert a["flowsense"]["analytic"] == ["AN1377", "AN1376"]
    assert a["threat"]["technique"]["id"] == ["T1008", "T1571"]
    ev = a["flowsense"]["evidence"]
    assert ev["blocked"]["events"] == {"rst_from_far_side": 3}
    assert ev["fallback"]["port"] == 8443 and ev["fallback"]["app"] == "tls"
    assert {"same_destination", "new_pairing_for_host"} <= set(ev["score_parts"])
    assert ev["gap_s"] == 34.0   # last reset at 106 s, fallback at 140 s
    assert a["event"]["start"].startswith("1970-01-01T00:01:40")


def test_a_single_reset_is_not_a_block(tmp_path):
    pkts = _background() + refused(100.0, HOST, C2, 50000, 443) + _fallback_8443()
    assert of_rule(alerts_of(tmp_path, pkts), "deny_fallback") == []


def test_no_fallback_without_a_new_channel(tmp_path):
    assert of_rule(alerts_of(tmp_path, _background() + _blocked_by_resets()), "deny_fallback") == []


def test_deny_log_then_icmp_to_the_same_destination(tmp_path):
    """The firewall log says 443 was dropped (the packets never show it); the host then talks ICMP."""
    log = tmp_path / "fw.log"
    log.write_text("Jan  1 00:01:40 fw kernel: [ 12.3] DROP-OUT IN=eth1 OUT=eth0 SRC=10.20.0.5 DST=203.0.113.9 "
                   "LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF PROTO=TCP SPT=50000 DPT=443 WINDOW=64240 RES=0x00 "
                   "SYN URGP=0\n")
    pings = []
    for seq in range(10):
        payload = bytes((seq * 7 + i) & 0xFF for i in range(56))
        e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        pings += [at(150.0 + seq, e / IP(src=HOST, dst=C2) / ICMP(type=8, id=0x4242, seq=seq) / Raw(payload)),
                  at(150.02 + seq, e / IP(src=C2, dst=HOST) / ICMP(type=0, id=0x4242, seq=seq) / Raw(payload))]
    alerts = of_rule(alerts_of(tmp_path, _background() + pings, deny_logs=[log]), "deny_fallback")
    assert len(alerts) == 1
    a = alerts[0]
    assert a["network"]["transport"] == "icmp" and "T1095" in a["threat"]["technique"]["id"]
    ev = a["flowsense"]["evidence"]
    assert ev["blocked"]["events"] == {"deny_log": 1}
    assert ev["blocked"]["deny_lines"][0]["line"] == 1 and "DPT=443" in ev["blocked"]["deny_lines"][0]["text"]
    assert {"same_destination", "transport_switch_icmp", "block_in_firewall_log"} <= set(ev["score_parts"])


def test_admin_prohibited_counts_as_a_block(tmp_path):
    router = "10.20.0.1"
    quote = IP(src=HOST, dst=C2) / Raw(b"\x00" * 8)
    prohibited = [at(100.0 + k, frame(router, HOST, ICMP(type=3, code=13) / quote)) for k in range(1)]
    alerts = of_rule(alerts_of(tmp_path, _background() + prohibited + _fallback_8443(120.0)), "deny_fallback")
    assert len(alerts) == 1
    assert alerts[0]["flowsense"]["evidence"]["blocked"]["events"] == {"icmp_prohibited": 1}


def test_scanner_is_left_to_the_scan_detector(tmp_path):
    scan = [p for port in range(1, 60) for p in refused(100.0 + port * 0.01, HOST, C2, 50000, port)]
    scan += [p for port in range(1, 60) for p in refused(100.5 + port * 0.01, HOST, C2, 50000, port)]
    pkts = _background() + scan + tcp_exchange(110.0, HOST, C2, 50200, 8443, out=TLS_HELLO, back=TLS_REPLY)
    assert of_rule(alerts_of(tmp_path, pkts), "deny_fallback") == []


def test_window_and_allowlist(tmp_path):
    pkts = _background() + _blocked_by_resets() + _fallback_8443(140.0)
    short = Config(fallback=FallbackConfig(window_s=10.0))
    assert of_rule(alerts_of(tmp_path, pkts, config=short, name="short"), "deny_fallback") == []
    allowed = Config(allowlist=AllowlistConfig(hosts=("10.20.0.0/24",)))
    assert of_rule(alerts_of(tmp_path, pkts, config=allowed, name="allowed"), "deny_fallback") == []


def test_demo_capture_fallback_story(tmp_path):
    labels = [json.loads(line) for line in (PCAPS / "demo-egress.labels.jsonl").read_text().splitlines()]
    story = next(lb for lb in labels if lb["rule"] == "deny_fallback")
    alerts = of_rule(alerts_of(tmp_path, pcap=PCAPS / "demo-egress.pcap"), "deny_fallback")
    assert [(a["source"]["ip"], a["destination"]["ip"]) for a in alerts] == [(story["src"], story["dst"])]


def _resolve(t, name, addr, resolver="10.20.0.1"):
    from scapy.all import DNS, DNSQR, DNSRR
    from detect_helpers import UDP
    q = DNS(id=7, rd=1, qd=DNSQR(qname=name))
    a = DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, type="A", rdata=addr, ttl=60))
    return [at(t, frame(HOST, resolver, UDP(sport=5353 + int(t), dport=53) / q)),
            at(t + 0.01, frame(resolver, HOST, UDP(sport=53, dport=5353 + int(t)) / a))]


def test_fallback_to_another_address_of_the_same_registered_domain(tmp_path):
    """Blocked on c2.evil-demo.test's address, the host resolves backup.evil-demo.test to another
    address and talks to it on a new port: tied together by the DNS answers."""
    other = "203.0.113.77"
    pkts = _background() + _resolve(90.0, "c2.evil-demo.test", C2) + _blocked_by_resets()
    pkts += _resolve(130.0, "backup.evil-demo.test", other)
    pkts += tcp_exchange(140.0, HOST, other, 50300, 8443, out=TLS_HELLO, back=TLS_REPLY)
    alerts = of_rule(alerts_of(tmp_path, pkts), "deny_fallback")
    assert len(alerts) == 1
    ev = alerts[0]["flowsense"]["evidence"]
    assert alerts[0]["destination"]["ip"] == other
    assert "same_registered_domain" in ev["score_parts"] and ev["fallback"]["domain"] == "evil-demo.test"
