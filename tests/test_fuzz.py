"""Hypothesis fuzzing of the decoder and the capture walker: never raises, never reads out of
bounds, always counts.  The kernels are recompiled with NUMBA_BOUNDSCHECK=1 in a child process
(its own cache dir), so an out-of-bounds read becomes an IndexError instead of silent garbage;
each fuzzed frame sits in a buffer of exactly its own length, so any over-read is caught."""

from __future__ import annotations

import textwrap

from conftest import run_bounds_checked

CHILD = textwrap.dedent('''
    import struct, sys
    import numpy as np
    from hypothesis import HealthCheck, given, settings, strategies as st
    sys.path.insert(0, "tests")
    from craft import pcap_bytes
    from flowsense.decode.packets import Decoder
    from flowsense.schema import FRAME
    from flowsense.sources.pcap import CAPTURE_COUNTERS, CaptureFile
    from flowsense.weird import WEIRDS

    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
    from scapy.layers.l2 import Dot1Q, Ether
    SEEDS = [bytes(Ether() / IP() / TCP(options=[("MSS", 1460)]) / b"GET / HTTP/1.1\\r\\n"),
             bytes(Ether() / Dot1Q(vlan=3) / IP() / UDP(dport=53) / DNS(qd=DNSQR(qname="x.example.com"))),
             bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / UDP(sport=53) / DNS()),
             bytes(Ether() / IP() / ICMP() / (b"\\xde\\xad\\xc0\\xde" + bytes(60)))]
    LINKS = [0, 1, 9, 101, 104, 105, 108, 113, 127, 228, 229, 239, 276, 147]

    def decode_alone(link, frame):
        buf = np.frombuffer(bytes(frame), np.uint8)  # exactly the frame: any over-read is out of bounds
        frames = FRAME.empty(1)
        frames[0]["cap_len"] = frames[0]["wire_len"] = len(buf)
        frames[0]["link"] = link
        dec = Decoder(1)
        batch = dec.decode(buf, frames)
        assert len(batch.packets) == 1
        return batch, dec

    @settings(max_examples=int(sys.argv[1]), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(LINKS), st.binary(max_size=300))
    def test_random_frames(link, frame):
        decode_alone(link, frame)

    @settings(max_examples=int(sys.argv[1]), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
           st.integers(0, 400))
    def test_mutated_frames(seed, flips, cut):
        frame = bytearray(seed)
        for pos, value in flips:
            if pos < len(frame):
                frame[pos] = value
        batch, dec = decode_alone(1, frame[:cut])
        row = batch.packets[0]
        assert row["ip_ver"] in (0, 4, 6)
        assert dec.weird_counts.sum() >= bin(int(row["weird"])).count("1")

    @settings(max_examples=int(sys.argv[1]) // 4, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(min_size=0, max_size=200), st.integers(0, 3), st.booleans())
    def test_damaged_capture_files(tail, mode, big):
        good = pcap_bytes([(10**18, s) for s in SEEDS], big_endian=big)
        data = [good + tail, good[:24] + tail, good[:len(good) - len(tail) % 40], tail][mode]
        with open("fuzz.pcap", "wb") as fh:
            fh.write(data if data[:4] in (good[:4],) else good[:24] + data)
        cf = CaptureFile("fuzz.pcap", 0, 3)
        dec = Decoder(3)
        n = 0
        for frames in cf.batches():
            n += len(dec.decode(cf.buf, frames).packets)
        assert n == cf.stats()["records"]

    test_random_frames()
    test_mutated_frames()
    test_damaged_capture_files()
    print("fuzz ok")
''')


def test_decoder_and_walker_fuzz(tmp_path):
    run_bounds_checked(CHILD, 1500, tmp_path)
