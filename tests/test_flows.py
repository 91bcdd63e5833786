"""Flow meter semantics on crafted traffic: orientation, timeouts on packet time, TCP close and
port reuse, ICMP keys, LRU eviction, memory per flow; Community ID against the reference package."""

from __future__ import annotations

import communityid
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from conftest import PCAPS, corpus_captures, flows_of
from craft import pcap_bytes
from flowsense.flows import table as t
from flowsense.flows.community_id import community_ids
from flowsense.sinks.tables import addr_text, conn_state, CONN_STATES

S = 1_000_000_000
T0 = 1_700_000_000 * S
A, B = "198.18.0.1", "198.19.0.2"


def capture(tmp_path, packets) -> str:
    """packets: list of (seconds after T0, scapy packet)."""
    path = tmp_path / "f.pcap"
    path.write_bytes(pcap_bytes([(T0 + int(sec * S), bytes(Ether() / p)) for sec, p in packets]))
    return str(path)


def tcp(src, dst, sport, dport, flags, payload=b""):
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload


def handshake(at, sport=40000):
    return [(at, tcp(A, B, sport, 443, "S")), (at + 0.01, tcp(B, A, 443, sport, "SA")),
            (at + 0.02, tcp(A, B, sport, 443, "A", b"hello")), (at + 0.03, tcp(B, A, 443, sport, "PA", b"world!"))]


def close(at, sport=40000):
    return [(at, tcp(A, B, sport, 443, "FA")), (at + 0.01, tcp(B, A, 443, sport, "FA")),
            (at + 0.02, tcp(A, B, sport, 443, "A"))]


def states(f):
    return [CONN_STATES[i] for i in conn_state(f)]


def test_tcp_orientation_counts_and_state(tmp_path):
    f, _ = flows_of(capture(tmp_path, handshake(0) + close(1)))
    assert len(f) == 1
    r = f[0]
    assert addr_text(f["orig_hi"], f["orig_lo"])[0].as_py() == A and r["orig_p"] == 40000 and r["resp_p"] == 443
    assert (r["orig_pkts"], r["resp_pkts"]) == (4, 3)
    assert (r["orig_payload_bytes"], r["resp_payload_bytes"]) == (5, 6)
    assert states(f) == ["SF"] and t.END_REASONS[r["end_reason"]] == "end_of_input"


def test_syn_ack_seen_first_makes_the_receiver_orig(tmp_path):
    f, _ = flows_of(capture(tmp_path, handshake(0)[1:]))
    assert addr_text(f["orig_hi"], f["orig_lo"])[0].as_py() == A
    assert (f["orig_pkts"][0], f["resp_pkts"][0]) == (1, 2)


def test_midstream_first_packet_sender_is_orig(tmp_path):
    f, _ = flows_of(capture(tmp_path, handshake(0)[3:]))
    assert addr_text(f["orig_hi"], f["orig_lo"])[0].as_py() == B and states(f) == ["OTH"]


def test_idle_timeout_splits_on_packet_time(tmp_path):
    pkts = [(0, IP(src=A, dst=B) / UDP(sport=5, dport=6)), (119, IP(src=B, dst=A) / UDP(sport=6, dport=5)),
            (300, IP(src=A, dst=B) / UDP(sport=5, dport=6))]
    f, _ = flows_of(capture(tmp_path, pkts), idle_timeout_s=120.0)
    assert len(f) == 2
    assert [t.END_REASONS[x] for x in f["end_reason"]] == ["idle_timeout", "end_of_input"]
    assert f["orig_pkts"].tolist() == [1, 1] and f["resp_pkts"].tolist() == [1, 0]


def test_active_timeout_emits_and_continues_same_orientation(tmp_path):
    pkts = [(s, IP(src=A, dst=B) / UDP(sport=5, dport=6)) for s in range(0, 100, 10)]
    pkts += [(s + 1, IP(src=B, dst=A) / UDP(sport=6, dport=5)) for s in range(0, 100, 10)]
    f, meter = flows_of(capture(tmp_path, sorted(pkts, key=lambda p: p[0])), active_timeout_s=30.0)
    assert meter.stats()["active_timeouts"] >= 2
    assert int(f["orig_pkts"].sum()) == 10 and int(f["resp_pkts"].sum()) == 10
    assert set(addr_text(f["orig_hi"], f["orig_lo"]).to_pylist()) == {A}
    assert all(f["last_ts"] - f["ts"] <= 31 * S)


def test_fin_close_then_port_reuse_starts_a_new_flow(tmp_path):
    pkts = handshake(0) + close(1) + handshake(2)
    f, meter = flows_of(capture(tmp_path, pkts))
    assert len(f) == 2 and meter.stats()["port_reuse_splits"] == 1
    assert f["orig_pkts"].tolist() == [2 + 2, 2]


def test_rst_closes_after_the_closed_timeout(tmp_path):
    pkts = handshake(0) + [(1, tcp(B, A, 443, 40000, "R")), (20, tcp(A, B, 40001, 443, "S"))]
    f, _ = flows_of(capture(tmp_path, pkts), tcp_closed_timeout_s=5.0)
    assert [t.END_REASONS[x] for x in f["end_reason"]] == ["tcp_close", "end_of_input"]
    assert states(f) == ["RSTR", "S0"]


def test_rejected_syns_are_rej(tmp_path):
    pkts = [(k, tcp(A, B, 50000 + k, 443, "S")) for k in range(3)]
    pkts += [(k + 0.001, tcp(B, A, 443, 50000 + k, "RA")) for k in range(3)]
    f, _ = flows_of(capture(tmp_path, sorted(pkts, key=lambda p: p[0])))
    assert states(f) == ["REJ"] * 3


def test_icmp_keyed_by_echo_id_and_family(tmp_path):
    pkts = []
    for seq in range(3):
        pkts += [(seq, IP(src=A, dst=B) / ICMP(type=8, id=7, seq=seq)), (seq + 0.1, IP(src=B, dst=A) / ICMP(type=0, id=7, seq=seq))]
    pkts += [(5, IP(src=A, dst=B) / ICMP(type=8, id=8, seq=0))]
    pkts += [(6, IP(src=B, dst=A) / ICMP(type=3, code=3) / IP(src=A, dst=B) / UDP(sport=1, dport=2))]
    pkts += [(7, IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(id=7)),
             (7.1, IPv6(src="fd00::2", dst="fd00::1") / ICMPv6EchoReply(id=7))]
    f, _ = flows_of(capture(tmp_path, pkts))
    summary = sorted((int(r["icmp_type"]), int(r["resp_p"]), int(r["orig_pkts"]), int(r["resp_pkts"])) for r in f)
    assert summary == [(3, 0, 1, 0), (8, 7, 3, 3), (8, 8, 1, 0), (128, 7, 1, 1)]
    echo = f[(f["icmp_type"] == 8) & (f["resp_p"] == 7)]
    assert addr_text(echo["orig_hi"], echo["orig_lo"])[0].as_py() == A


def test_reply_seen_first_is_oriented_to_the_requester(tmp_path):
    f, _ = flows_of(capture(tmp_path, [(0, IP(src=B, dst=A) / ICMP(type=0, id=9))]))
    assert addr_text(f["orig_hi"], f["orig_lo"])[0].as_py() == A and f["resp_pkts"][0] == 1 and f["icmp_type"][0] == 8


def test_lru_eviction_when_full_is_counted_and_loses_nothing(tmp_path):
    pkts = [(k * 0.001, IP(src=A, dst=B) / UDP(sport=1000 + k, dport=53)) for k in range(200)]
    pkts += [(1 + k * 0.001, IP(src=A, dst=B) / UDP(sport=1000 + k, dport=53)) for k in range(0, 200, 2)]
    f, meter = flows_of(capture(tmp_path, pkts), capacity=50)
    assert meter.stats()["evicted"] > 0 and meter.stats()["max_concurrent_flows"] == 50
    assert int(f["orig_pkts"].sum()) == 300
    assert sum(t.END_REASONS[x] == "evicted" for x in f["end_reason"]) == meter.stats()["evicted"]


def test_memory_per_flow_is_bounded():
    from flowsense.config import FlowsConfig
    from flowsense.flows.meter import FlowMeter
    assert FlowMeter(FlowsConfig(capacity=100_000)).stats()["bytes_per_flow"] <= 300


def test_same_flows_from_pcap_and_pcapng_copies(corpus):
    a, _ = flows_of(corpus / "pcap/scans/syn-scan_ndpi.pcap")
    b, _ = flows_of(corpus / "pcap/scans/nmap-syn-scan_chrissanders.pcapng")
    keep = ["ts", "last_ts", "orig_lo", "resp_lo", "orig_p", "resp_p", "orig_pkts", "resp_pkts", "orig_bytes"]
    assert np.array_equal(a[keep], b[keep])


def _reference_id(proto, o, r, sp, dp):
    make = {6: communityid.FlowTuple.make_tcp, 17: communityid.FlowTuple.make_udp,
            1: communityid.FlowTuple.make_icmp, 58: communityid.FlowTuple.make_icmp6}.get(proto)
    return communityid.CommunityID().calc(make(o, r, sp, dp) if make else communityid.FlowTuple(proto, o, r))


@pytest.mark.parametrize("path", [PCAPS / "demo-egress.pcap", *corpus_captures("pcap/benign")[:12],
                                  *corpus_captures("pcap/robustness")[-25:]], ids=lambda p: p.name)
def test_community_id_matches_reference(path):
    f, _ = flows_of(path)
    icmp = (f["proto"] == 1) | (f["proto"] == 58)
    sp = np.where(icmp, f["icmp_type"], f["orig_p"])
    dp = np.where(icmp, f["icmp_code"], f["resp_p"])
    ours = community_ids(f["proto"], f["ip_ver"], f["orig_hi"], f["orig_lo"], f["resp_hi"], f["resp_lo"], sp, dp)
    o = addr_text(f["orig_hi"], f["orig_lo"]).to_pylist()
    r = addr_text(f["resp_hi"], f["resp_lo"]).to_pylist()
    for i in range(len(f)):
        expected = _reference_id(int(f["proto"][i]), o[i], r[i], int(sp[i]), int(dp[i]))
        assert ours[i].tobytes().decode() == expected, (o[i], r[i], int(f["proto"][i]))
