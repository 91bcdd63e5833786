"""Capture formats, link layers and the decoder on crafted traffic, with dpkt as an oracle."""

from __future__ import annotations

import gzip
import struct

import dpkt
import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.contrib.mpls import MPLS

from conftest import decode_file
from craft import pcap_bytes, pcapng_section
from flowsense.errors import InputError
from flowsense.sinks.tables import addr_text
from flowsense.weird import BIT

T0 = 1_700_000_000_123_456_789
V4 = IP(src="198.18.0.1", dst="198.19.0.2") / TCP(sport=40000, dport=443, flags="S")
V6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5000, dport=53) / DNS(qd=DNSQR(qname="a.example.org"))


def write(tmp_path, data: bytes, name="c.pcap"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def five_tuple(pk, i=0):
    return (addr_text(pk["src_hi"][i:i + 1], pk["src_lo"][i:i + 1])[0].as_py(),
            addr_text(pk["dst_hi"][i:i + 1], pk["dst_lo"][i:i + 1])[0].as_py(),
            int(pk["proto"][i]), int(pk["sport"][i]), int(pk["dport"][i]))


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_classic_pcap_flavours_agree_with_dpkt(tmp_path, nano, big_endian):
    frames = [(T0 + k * 1_000_000_007, bytes(Ether() / V4) + bytes(k)) for k in range(5)]
    path = write(tmp_path, pcap_bytes(frames, nano=nano, big_endian=big_endian))
    pk, *_ = decode_file(path)
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        expected = [(round(float(ts) * 1e9), len(buf)) for ts, buf in reader]
    resolution = 1 if nano else 1000
    assert [int(t) // resolution for t in pk["ts"]] == [t // resolution for t, _ in frames]
    assert [abs(int(t) - e) < 1000 for t, (e, _) in zip(pk["ts"], expected)] == [True] * 5
    assert pk["cap_len"].tolist() == [n for _, n in expected]
    assert five_tuple(pk) == ("198.18.0.1", "198.19.0.2", 6, 40000, 443)


def test_pcapng_sections_interfaces_and_resolutions(tmp_path):
    eth, raw = bytes(Ether() / V4), bytes(V6)
    first = pcapng_section([(1, None, None), (101, 9, None)],
                           [(0, 1_700_000_000_000_001, eth), (1, 1_700_000_000_000_000_002, raw), (None, None, eth)])
    second = pcapng_section([(229, 0x80 | 20, 100)], [(0, (5 << 20) + (1 << 19), raw)], big_endian=True)
    path = write(tmp_path, first + second, "multi.pcapng")
    pk, dn, names, cf, _ = decode_file(path)
    assert cf.format == "pcapng"
    assert pk["link"].tolist() == [1, 101, 1, 229]
    assert pk["ts"].tolist() == [1_700_000_000_000_001_000, 1_700_000_000_000_000_002,
                                 1_700_000_000_000_000_002,  # SPB: no time of its own, keeps the last
                                 105_500_000_000]  # 2^-20 units: 5.5 s, plus if_tsoffset 100 s
    assert five_tuple(pk, 1) == ("fd00::1", "fd00::2", 17, 5000, 53)
    assert five_tuple(pk, 3) == five_tuple(pk, 1)
    assert names == [b"a.example.org", b"a.example.org"]
    assert cf.stats()["pcapng_other_blocks"] == 2  # the two statistics blocks


LINK_CASES = {
    "ethernet": (1, lambda p: bytes(Ether() / p), 0),
    "802.1q": (1, lambda p: bytes(Ether() / Dot1Q(vlan=42) / p), 42),
    "qinq": (1, lambda p: bytes(Ether() / Dot1AD(vlan=7) / Dot1Q(vlan=42) / p), 7),
    "mpls": (1, lambda p: bytes(Ether() / MPLS(label=16, s=0) / MPLS(label=17, s=1) / p), 0),
    "pppoe": (1, lambda p: bytes(Ether() / PPPoE(sessionid=1) / PPP(proto=0x21 if IP in p else 0x57) / p), 0),
    "raw": (101, bytes, 0),
    "ipv4": (228, bytes, 0),
    "sll": (113, lambda p: bytes(CookedLinux(proto=0x0800 if IP in p else 0x86DD) / p), 0),
    "sll2": (276, lambda p: struct.pack(">HHIHBB8s", 0x0800 if IP in p else 0x86DD, 0, 2, 1, 0, 6, b"") + bytes(p), 0),
    "null-le": (0, lambda p: struct.pack("<I", 2 if IP in p else 30) + bytes(p), 0),
    "null-be": (0, lambda p: struct.pack(">I", 2 if IP in p else 10) + bytes(p), 0),
    "loop": (108, lambda p: struct.pack(">I", 2 if IP in p else 24) + bytes(p), 0),
    "ppp": (9, lambda p: b"\xff\x03" + struct.pack(">H", 0x21 if IP in p else 0x57) + bytes(p), 0),
    "c_hdlc": (104, lambda p: b"\x0f\x00" + struct.pack(">H", 0x0800 if IP in p else 0x86DD) + bytes(p), 0),
    "nflog": (239, lambda p: bytes([2 if IP in p else 10, 0, 0, 0]) + struct.pack("<HH", 4 + len(bytes(p)), 9)
              + bytes(p) + b"\0" * (-len(bytes(p)) % 4), 0),
}


@pytest.mark.parametrize("case", sorted(LINK_CASES))
@pytest.mark.parametrize("packet", [V4, V6], ids=["v4", "v6"])
def test_link_layers(tmp_path, case, packet):
    link, frame, vlan = LINK_CASES[case]
    if link == 228 and IPv6 in packet:
        link = 229
    pk, *_ = decode_file(write(tmp_path, pcap_bytes([(T0, frame(packet))], link=link)))
    expected = ("198.18.0.1", "198.19.0.2", 6, 40000, 443) if IP in packet else ("fd00::1", "fd00::2", 17, 5000, 53)
    assert five_tuple(pk) == expected
    assert int(pk["vlan"][0]) == vlan and int(pk["weird"][0]) == 0


def test_ipv6_extension_headers_and_fragments(tmp_path):
    base = IPv6(src="fd00::1", dst="fd00::2")
    frames = [
        base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2),
        base / IPv6ExtHdrFragment(offset=0, m=1, id=77) / UDP(sport=3, dport=4) / (b"x" * 40),
        base / IPv6ExtHdrFragment(offset=6, m=0, id=77, nh=17) / (b"y" * 16),
        base / (IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                / IPv6ExtHdrDestOpt() / TCP()),
    ]
    pk, *_ = decode_file(write(tmp_path, pcap_bytes([(T0 + i, bytes(Ether() / f)) for i, f in enumerate(frames)])))
    assert five_tuple(pk, 0)[2:] == (6, 1, 2)
    assert five_tuple(pk, 1)[2:] == (17, 3, 4) and pk["frag"][1] == 1 and pk["ip_id"][1] == 77
    assert five_tuple(pk, 2)[2:] == (17, 0, 0) and pk["frag"][2] == 2
    assert pk["weird"][3] & (1 << BIT["IPv6_ext_chain_too_long"])
    assert pk["ip_ver"].tolist() == [6, 6, 6, 6]


def test_ipv4_fragments_first_carries_ports(tmp_path):
    whole = IP(src="198.18.0.1", dst="198.19.0.2", id=9) / UDP(sport=7, dport=8) / (b"z" * 3000)
    from scapy.layers.inet import fragment
    parts = fragment(whole, fragsize=1000)
    pk, *_ = decode_file(write(tmp_path, pcap_bytes([(T0 + i, bytes(Ether() / p)) for i, p in enumerate(parts)])))
    assert pk["frag"].tolist() == [1, 2, 2, 2]
    assert pk["sport"].tolist() == [7, 0, 0, 0]
    assert pk["ip_len"].sum() == sum(len(bytes(p)) for p in parts)


def test_icmp_fields_and_payload_slice(tmp_path):
    ping = IP(src="198.18.0.1", dst="198.19.0.2") / ICMP(type=8, id=0x1234, seq=7) / (b"\xde\xad\xc0\xde" + bytes(200))
    path = write(tmp_path, pcap_bytes([(T0, bytes(Ether() / ping))]))
    from flowsense.decode.packets import Decoder
    from flowsense.sources.pcap import CaptureFile
    cf = CaptureFile(path)
    batch = Decoder().decode(cf.buf, next(cf.batches()))
    r = batch.packets[0]
    assert (r["icmp_type"], r["icmp_code"], r["icmp_id"], r["icmp_seq"], r["l4_len"]) == (8, 0, 0x1234, 7, 204)
    assert batch.blob[r["pl_off"]:r["pl_off"] + 4].tobytes() == b"\xde\xad\xc0\xde" and r["pl_len"] == 128
    assert int(r["head"]) >> 32 == 0xDEADC0DE and r["head_len"] == 8


def test_dns_hostile_names_are_bounded(tmp_path):
    header = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    loop = header + b"\xc0\x0c"  # pointer to itself
    long_name = header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    forward = header + b"\x01a\xc0\x12\x01b\xc0\x0e" + b"\x00\x01\x00\x01"  # two pointers chasing each other
    frames = [(T0 + i, bytes(Ether() / IP() / UDP(sport=1000, dport=53) / m)) for i, m in enumerate((loop, long_name, forward))]
    pk, dn, names, *_ = decode_file(write(tmp_path, pcap_bytes(frames)))
    assert len(dn) == 3
    assert dn["weird"][0] & (1 << BIT["DNS_pointer_loop"])
    assert dn["weird"][1] & (1 << BIT["DNS_name_too_long"])
    assert dn["weird"][2] & (1 << BIT["DNS_pointer_loop"])
    assert all(len(n) <= 255 for n in names)
    assert (pk["weird"] != 0).all()  # the DNS weird is also on the packet row


def test_dns_over_tcp_uses_length_prefix(tmp_path):
    msg = bytes(DNS(id=5, qd=DNSQR(qname="tcp.example.net", qtype="TXT")))
    seg = IP(src="198.18.0.1", dst="198.19.0.2") / TCP(sport=3333, dport=53, flags="PA") / (struct.pack(">H", len(msg)) + msg)
    pk, dn, names, *_ = decode_file(write(tmp_path, pcap_bytes([(T0, bytes(Ether() / seg))])))
    assert names == [b"tcp.example.net"] and dn["qtype"][0] == 16 and dn["txid"][0] == 5
    assert dn["msg_len"][0] == len(msg) and dn["proto"][0] == 6


def test_gzip_capture_equals_plain(tmp_path):
    data = pcap_bytes([(T0 + i, bytes(Ether() / V4)) for i in range(100)])
    plain, packed = write(tmp_path, data), write(tmp_path, gzip.compress(data), "c.pcap.gz")
    a, *_ = decode_file(plain)
    b, *_ = decode_file(packed)
    assert np.array_equal(a, b)


def test_truncated_capture_keeps_frames_before_the_cut(tmp_path):
    data = pcap_bytes([(T0 + i, bytes(Ether() / V4 / (b"p" * 100))) for i in range(10)])
    pk, _dn, _n, cf, _ = decode_file(write(tmp_path, data[:-50]))
    assert len(pk) == 10 and pk["cap_len"][-1] == pk["cap_len"][0] - 50
    assert cf.stats()["truncated_record"] == 1 and cf.stats()["records"] == 10


def test_damaged_record_length_stops_cleanly(tmp_path):
    data = bytearray(pcap_bytes([(T0 + i, bytes(Ether() / V4)) for i in range(4)]))
    second = 24 + 16 + len(bytes(Ether() / V4))
    data[second + 8:second + 12] = struct.pack("<I", 0x7FFFFFFF)
    pk, _dn, _n, cf, _ = decode_file(write(tmp_path, bytes(data)))
    assert len(pk) == 1 and cf.stats()["damaged_record"] == 1


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", b"\x00" * 64], ids=["empty", "text", "zeros"])
def test_not_a_capture_is_an_input_error(tmp_path, content):
    from flowsense.sources.pcap import CaptureFile
    with pytest.raises(InputError, match="capture"):
        CaptureFile(write(tmp_path, content))
