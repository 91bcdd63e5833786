"""Differential test against tshark on every corpus capture.

Per packet, the outermost IP 5-tuple must agree with tshark on >= 99.9 % of the packets tshark
decodes as IPv4/IPv6 (the few that may differ are listed in the failure message); DNS query
names must agree on every DNS packet tshark finds well formed; flow packet and byte totals must
equal the packet totals.  tshark runs with reassembly off so that both sides see single packets.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import corpus_captures, decode_file, flows_of

FIELDS = ["frame.number", "frame.protocols", "ip.src", "ip.dst", "ip.proto", "ipv6.src", "ipv6.dst",
          "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "sctp.srcport", "sctp.dstport",
          "dns.qry.name", "_ws.malformed", "ipv6.fraghdr.nxt", "dns.flags.response", "dns.a", "dns.aaaa"]
TRANSPORTS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "esp": 50, "ah": 51, "gre": 47, "ip": 4,
              "ipv6": 41}
PREFS = ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE",
         "-o", "ip.check_checksum:FALSE"]


def tshark_rows(path) -> list[dict]:
    cmd = ["tshark", "-n", "-r", str(path), *PREFS, "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    return [dict(zip(FIELDS, line.split("\t"))) for line in out.splitlines()]


def expected_tuple(row: dict):
    """The outermost IP header's (src, dst, proto, sport, dport) as tshark dissected it, or None."""
    layers = row["frame.protocols"].split(":")
    ip_at = next((i for i, name in enumerate(layers) if name in ("ip", "ipv6")), None)
    if ip_at is None:
        return None
    version = 4 if layers[ip_at] == "ip" else 6
    src, dst = (row["ip.src"], row["ip.dst"]) if version == 4 else (row["ipv6.src"], row["ipv6.dst"])
    if not src:
        return None
    transport = next((name for name in layers[ip_at + 1:] if not name.startswith("ipv6.")), None)
    proto = TRANSPORTS.get(transport)
    if version == 4 and row["ip.proto"]:
        proto = int(row["ip.proto"])
    elif version == 6 and proto is None and row["ipv6.fraghdr.nxt"]:  # a later fragment: no transport
        proto = int(row["ipv6.fraghdr.nxt"])
    sport = dport = None
    if proto in (6, 17, 132) and transport in ("tcp", "udp", "sctp"):
        sport, dport = row[f"{transport}.srcport"], row[f"{transport}.dstport"]
        sport, dport = (int(sport), int(dport)) if sport and dport else (None, None)
    return src, dst, proto, sport, dport


def ours(pk, addr_text):
    src = addr_text(pk["src_hi"], pk["src_lo"]).to_pylist()
    dst = addr_text(pk["dst_hi"], pk["dst_lo"]).to_pylist()
    return src, dst


@pytest.fixture(scope="module")
def differential(corpus):
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `sh scripts/setup.sh --test`")
    from flowsense.sinks.tables import addr_text

    paths = corpus_captures("pcap")
    with ThreadPoolExecutor(2) as pool:
        tshark = dict(zip(paths, pool.map(tshark_rows, paths)))
    results = {}
    for path in paths:
        pk, dn, names, _cf, _dec = decode_file(path)
        src, dst = ours(pk, addr_text)
        by_frame = {int(n): i for i, n in enumerate(pk["frame_no"])}
        dns_by_frame = {int(f): names[i] for i, f in enumerate(dn["frame_no"])}
        dns_weird = {int(f): int(w) for f, w in zip(dn["frame_no"], dn["weird"])}
        has = dn[dn["answers"] > 0]
        answers = dict(zip(has["frame_no"].tolist(), addr_text(has["answer_hi"], has["answer_lo"]).to_pylist()))
        results[path] = (tshark[path], pk, src, dst, by_frame, dns_by_frame, dns_weird, answers)
    return results


def test_every_capture_has_tshark_rows(differential):
    empty = [p.name for p, (rows, pk, *_rest) in differential.items() if len(rows) != len(pk)]
    assert not empty, f"frame counts differ from tshark for {empty}"


def test_five_tuple_agrees_with_tshark(differential):
    total, mismatches = 0, []
    for path, (rows, pk, src, dst, by_frame, *_rest) in differential.items():
        for row in rows:
            expected = expected_tuple(row)
            if expected is None:
                continue
            total += 1
            i = by_frame.get(int(row["frame.number"]))
            got = None
            if i is not None and pk["ip_ver"][i]:
                sport, dport = (int(pk["sport"][i]), int(pk["dport"][i])) if expected[3] is not None else (None, None)
                got = (src[i], dst[i], int(pk["proto"][i]), sport, dport)
            if got != expected:
                mismatches.append(f"{path.name}#{row['frame.number']}: tshark {expected} flowsense {got}")
    agreement = 1 - len(mismatches) / total
    assert total > 50_000, total
    assert agreement >= 0.999, f"{agreement:.5f} of {total}; first mismatches:\n" + "\n".join(mismatches[:30])


def well_formed_dns(row: dict) -> bool:
    """A DNS message carried directly by the outer UDP/TCP on a DNS port, not malformed per tshark,
    whose name tshark prints without escapes (so the text comparison is exact)."""
    layers = row["frame.protocols"].split(":")
    ip_at = next((i for i, name in enumerate(layers) if name in ("ip", "ipv6")), None)
    if ip_at is None or row["_ws.malformed"] or not row["dns.qry.name"]:
        return False
    after = [name for name in layers[ip_at + 1:] if not name.startswith("ipv6.")]
    if after[:2] not in (["udp", "dns"], ["tcp", "dns"]):
        return False
    ports = {row[f"{after[0]}.srcport"], row[f"{after[0]}.dstport"]}
    name = row["dns.qry.name"]
    return bool(ports & {"53", "5353", "5355"}) and name.isascii() and name.isprintable() \
        and "\\" not in name and not name.startswith("<Unknown")


def test_dns_names_agree_on_well_formed_packets(differential):
    checked, mismatches = 0, []
    for path, (rows, pk, src, dst, by_frame, dns_names, dns_weird, _answers) in differential.items():
        for row in rows:
            if not well_formed_dns(row):
                continue
            frame = int(row["frame.number"])
            name = dns_names.get(frame)
            expected = "" if row["dns.qry.name"] == "<Root>" else row["dns.qry.name"]
            checked += 1
            if name is None or dns_weird[frame] or name.decode("utf-8", "backslashreplace") != expected:
                mismatches.append(f"{path.name}#{frame}: tshark {expected!r} flowsense {name!r}")
    assert checked > 10_000, checked
    assert not mismatches, f"{len(mismatches)} of {checked}:\n" + "\n".join(mismatches[:30])


def test_dns_answer_addresses_agree(differential):
    """The first A/AAAA answer flowsense keeps is the first address tshark shows for the response."""
    checked, mismatches = 0, []
    for path, (rows, *_rest, answers) in differential.items():
        for row in rows:
            frame = int(row["frame.number"])
            if frame not in answers or not well_formed_dns(row):
                continue
            checked += 1
            if answers[frame] not in (row["dns.a"], row["dns.aaaa"]):
                mismatches.append(f"{path.name}#{frame}: tshark {row['dns.a']!r}/{row['dns.aaaa']!r} "
                                  f"flowsense {answers[frame]!r}")
    assert checked > 100, checked
    assert not mismatches, f"{len(mismatches)} of {checked}:\n" + "\n".join(mismatches[:30])


@pytest.mark.parametrize("path", corpus_captures("pcap"), ids=lambda p: p.name)
def test_flow_totals_equal_packet_totals(path):
    pk, *_ = decode_file(path)
    flows, meter = flows_of(path)
    ip = pk["ip_ver"] != 0
    assert int(flows["orig_pkts"].sum() + flows["resp_pkts"].sum()) == int(ip.sum())
    assert int(flows["orig_bytes"].sum() + flows["resp_bytes"].sum()) == int(pk["ip_len"][ip].sum())
    assert meter.stats()["flows_created"] >= len(flows) - meter.stats()["active_timeouts"]
    assert np.all(flows["ts"] <= flows["last_ts"])
