"""Port/protocol pairing: app-vs-port verdicts on crafted and corpus traffic, rarity with a baseline."""

from __future__ import annotations

import numpy as np
import pytest

from detect_helpers import UDP, Raw, alerts_of, at, frame, of_rule, tcp_exchange
from flowsense.baseline import Baseline
from flowsense.features.app import APP, classify
from flowsense.schema import FLOW

from conftest import CORPUS

NONSTANDARD = CORPUS / "pcap" / "nonstandard-ports"


def _head(data: bytes) -> tuple[int, int]:
    chunk = data[:8]
    return int.from_bytes(chunk.ljust(8, b"\0"), "big"), len(chunk)


@pytest.mark.parametrize("proto,client,server,app", [
    (6, b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK", "http"),
    (6, b"", b"SSH-2.0-OpenSSH_9.2", "ssh"),
    (6, b"SSH-2.0-PuTTY", b"SSH-2.0-OpenSSH", "ssh"),
    (6, b"\x16\x03\x01\x02\x00\x01\x00\x01", b"\x16\x03\x03\x00\x5a", "tls"),
    (6, b"\x17\x03\x03\x00\x20abc", b"", "tls"),                      # capture started mid-session
    (6, b"EHLO mail.example", b"220 mx ESMTP", "smtp"),
    (6, b"\x00\x00\x00\x54\xfeSMB", b"", "smb"),
    (6, b"\x03\x00\x00\x13\x0e\xe0\x00\x00", b"", "rdp"),
    (6, b"", b"\x4a\x00\x00\x00\x0a\x38\x2e\x30", "mysql"),
    (6, b"\x00\x1c\xab\xcd\x01\x00\x00\x01", b"", "dns"),             # DNS over TCP: length prefix
    (17, b"\xab\xcd\x01\x00\x00\x01\x00\x00", b"", "dns"),
    (17, b"\xc3\x00\x00\x00\x01\x08\xaa\xbb", b"", "quic"),
    (17, b"M-SEARCH * HTTP/1.1", b"", "ssdp"),
    (6, b"\x8f\x11\x02\x9a\x00\x7f\xee\x01", b"\x00\x00\x10\x00", "unknown"),
    (6, b"", b"", "none"),
])
def test_app_signatures(proto, client, server, app):
    f = FLOW.empty(1)
    f["proto"] = proto
    f["orig_head"], f["orig_head_len"] = _head(client)
    f["resp_head"], f["resp_head_len"] = _head(server)
    f["orig_pkts"], f["orig_payload_bytes"] = 1, len(client)
    assert classify(f)[0] == APP[app]


def test_ntp_needs_ntp_sized_datagrams():
    f = FLOW.empty(2)
    f["proto"] = 17
    f["orig_head"], f["orig_head_len"] = _head(b"\x23\x00\x06\xec\x00\x00\x00\x00")
    f["orig_pkts"] = 1
    f["orig_payload_bytes"] = (48, 300)
    assert classify(f).tolist() == [APP["ntp"], APP["unknown"]]


@pytest.mark.parametrize("capture,name", [
    ("http-on-tcp22-synthetic_zeek.pcap", "HTTP on TCP/22"),
    ("http-get-to-ssh-server-tcp22_zeek.pcap", "HTTP on TCP/22"),
    ("http-on-tcp5432_zeek.pcap", "HTTP on TCP/5432"),
    ("mysql-on-tcp5432_zeek.pcap", "MYSQL on TCP/5432"),
    ("ssh-on-tcp80_zeek.pcap", "SSH on TCP/80"),
    ("tls-on-tcp80_ndpi.pcapng", "TLS on TCP/80"),
    ("http-on-tcp8001_zeek.pcap", "HTTP on non-standard port TCP/8001"),
    ("ssh-banner-over-udp1234-null-linktype_zeek.pcap", "SSH on non-standard port UDP/1234"),
])
def test_corpus_mismatches_are_named(tmp_path, capture, name):
    alerts = of_rule(alerts_of(tmp_path, pcap=NONSTANDARD / capture), "port_pairing")
    assert [a["rule"]["name"] for a in alerts] == [name]
    assert alerts[0]["threat"]["technique"]["id"] == ["T1571"]
    assert alerts[0]["flowsense"]["analytic"] == ["AN1258"]


def test_sslh_flags_the_ssh_session_not_the_tls_one(tmp_path):
    alerts = of_rule(alerts_of(tmp_path, pcap=NONSTANDARD / "ssl-and-ssh-multiplexed-tcp443-sslh_zeek.pcap"),
                     "port_pairing")
    assert [(a["rule"]["name"], a["flowsense"]["evidence"]["app"]) for a in alerts] == [("SSH on TCP/443", "ssh")]


@pytest.mark.parametrize("capture", [
    NONSTANDARD / "baseline-services-std-ports_zeek.pcap",
    NONSTANDARD / "http-on-sip-port5060_ndpi.pcap",          # source port 5060, HTTP to 8888 (alt-HTTP)
    *sorted(p for p in (CORPUS / "pcap" / "benign").glob("*.pcap*") if not p.name.endswith(".txt")),
])
def test_benign_corpus_raises_no_pairing_alert(tmp_path, capture):
    assert of_rule(alerts_of(tmp_path, pcap=capture), "port_pairing") == []


def test_not_dns_on_53_and_dns_to_outside_5353(tmp_path):
    cli, out = "10.0.0.8", "198.51.100.53"
    pkts = tcp_exchange(1.0, cli, out, 40000, 53, out=b"\x8f\x11\x02\x9a\x00\x7f\xee\x01\x99", back=b"\x00" * 40)
    pkts += [at(2.0, frame(cli, out, UDP(sport=40001, dport=5353) / Raw(b"\x12\x34\x01\x00\x00\x01\x00\x00abc")))]
    names = sorted(a["rule"]["name"] for a in of_rule(alerts_of(tmp_path, pkts), "port_pairing"))
    assert names == ["DNS on UDP/5353 to an outside address", "Not DNS on TCP/53 (unknown protocol)"]


def _custom_protocol_traffic(t0, clients, port, server="198.51.100.7"):
    return [p for k, cli in enumerate(clients) for p in
            tcp_exchange(t0 + k, cli, server, 41000 + k, port, out=b"\x8f\x11\x02\x9a\x00\x7f\xee\x01", back=b"\x01")]


def test_rarity_needs_a_reference_with_enough_hosts(tmp_path):
    """An unknown protocol on an unassigned port is only 'rare' against enough hosts: the capture
    alone (one host) cannot say so; a baseline of 30 hosts that never used it can.  A single
    connection is not enough either (random high ports are everyday traffic)."""
    attack = _custom_protocol_traffic(100.0, ["10.0.0.66"] * 3, 4433)   # a channel used three times
    assert of_rule(alerts_of(tmp_path, attack, name="alone"), "port_pairing") == []

    normal = [p for k in range(30) for p in tcp_exchange(1.0 + k, f"10.0.1.{k + 1}", "198.51.100.80", 42000 + k,
                                                         443, out=b"\x16\x03\x01\x00\x10", back=b"\x16\x03\x03")]
    from detect_helpers import wrpcap
    wrpcap(str(tmp_path / "normal.pcap"), normal)
    from flowsense.config import Config
    from flowsense.pipeline import learn_baseline
    baseline = learn_baseline([str(tmp_path / "normal.pcap")], Config(), Baseline.empty())
    baseline.save(tmp_path / "b.npz")
    loaded = Baseline.load(tmp_path / "b.npz")
    assert loaded.pairings.hosts == 30
    alerts = of_rule(alerts_of(tmp_path, attack, baseline=loaded, name="with"), "port_pairing")
    assert [a["rule"]["name"] for a in alerts] == ["Unknown protocol on rare port TCP/4433"]
    once = _custom_protocol_traffic(100.0, ["10.0.0.66"], 4433)
    assert of_rule(alerts_of(tmp_path, once, baseline=loaded, name="once"), "port_pairing") == []
    prevalence = alerts[0]["flowsense"]["evidence"]["prevalence"]
    assert prevalence["hosts_using_pairing"] == 0 and prevalence["hosts_in_reference"] == 30
    assert prevalence["reference"].startswith("baseline ")
    assert alerts[0]["flowsense"]["evidence"]["first_use_by_host"] is True


def test_allowlisted_port_is_quiet(tmp_path):
    from flowsense.config import AllowlistConfig, Config
    pkts = tcp_exchange(1.0, "10.0.0.8", "198.51.100.9", 40000, 22, out=b"GET / HTTP/1.1\r\n", back=b"HTTP/1.1 200")
    assert len(of_rule(alerts_of(tmp_path, pkts, name="a"), "port_pairing")) == 1
    quiet = Config(allowlist=AllowlistConfig(ports=(22,)))
    assert of_rule(alerts_of(tmp_path, pkts, config=quiet, name="b"), "port_pairing") == []


def test_pairing_keys_count_hosts_not_flows():
    from flowsense.features.pairing import Pairings
    f = FLOW.empty(5)
    f["proto"], f["resp_p"], f["app"], f["orig_lo"] = 6, 4433, APP["unknown"], [1, 1, 1, 1, 2]
    p = Pairings.of_flows(f)
    assert p.hosts == 2
    assert p.prevalence(np.array([(6 << 24) | (4433 << 8) | APP["unknown"]], np.uint64)).tolist() == [2]
