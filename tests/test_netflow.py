"""NetFlow v5/v9/IPFIX datagram decoding on the corpus: every export sample decodes into plausible
records, pmacct's expected output agrees, data before its template is replayed, and fuzzed
datagrams never raise nor grow memory."""

from __future__ import annotations

import collections
import ipaddress
import json
import re
import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CORPUS
from flowsense.decode.netflow import MAX_WAITING_SETS, NetflowDecoder
from flowsense.sinks.tables import addr_text

NETFLOW = CORPUS / "netflow"
LOGSTASH = NETFLOW / "logstash-codec-netflow"
EXPORTER = "198.18.0.9"


def text(rows, side):
    return addr_text(rows[f"{side}_hi"], rows[f"{side}_lo"]).to_pylist()


def errors(decoder) -> dict:
    return {k: v for s in decoder.stats().values() for k, v in s.items() if k.startswith("error")}


def udp_payloads(path):
    """(exporter address, UDP payload) of every export datagram in a capture."""
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        link = reader.datalink()
        for _, frame in reader:
            ip = (dpkt.ethernet.Ethernet(frame) if link == 1 else dpkt.sll.SLL(frame)).data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.udp.UDP):
                yield str(ipaddress.ip_address(ip.src)), bytes(ip.data.data)


def test_v5_records():
    d = NetflowDecoder()
    rows = d.decode((NETFLOW / "python-netflow/packet_v5.bin").read_bytes(), EXPORTER)
    assert len(rows) == 3 and (rows["version"] == 5).all()
    assert text(rows, "src")[:2] == ["172.17.0.2", "172.17.0.1"]
    assert rows["proto"][0] == 1 and (rows["icmp_type"][0], rows["icmp_code"][0]) == (8, 0)  # type in dport
    assert (rows["packets"][0], rows["bytes"][0]) == (10, 840)
    assert rows["last_ts"][0] - rows["ts"][0] == 9_002_000_000
    assert text(rows, "exporter") == [EXPORTER] * 3


def test_v9_template_then_data_and_data_before_template():
    d = NetflowDecoder()
    first = d.decode((NETFLOW / "python-netflow/packet_v9_template.bin").read_bytes(), EXPORTER)
    more = d.decode((NETFLOW / "python-netflow/packets_v9_1.bin").read_bytes(), EXPORTER)
    assert (len(first), len(more)) == (8, 12) and not errors(d)
    assert (first["sport"][0], first["dport"][0], first["proto"][0], first["packets"][0], first["bytes"][0]) == \
        (80, 37932, 6, 75, 102416)
    mixed = NetflowDecoder()
    replayed = mixed.decode((NETFLOW / "python-netflow/packet_v9_template_mixed.bin").read_bytes(), EXPORTER)
    stats = mixed.stats()[EXPORTER]
    assert len(replayed) == 8 and stats["waiting_sets"] == 1 and stats["replayed_sets"] == 1
    assert np.array_equal(replayed[["ts", "sport", "dport", "bytes"]], first[["ts", "sport", "dport", "bytes"]])


def test_ipfix_times_from_system_init_option():
    d = NetflowDecoder()
    d.decode((NETFLOW / "python-netflow/packet_ipfix_template.bin").read_bytes(), EXPORTER)
    rows = d.decode((NETFLOW / "python-netflow/packet_ipfix.bin").read_bytes(), EXPORTER)
    assert len(rows) == 3 and text(rows, "src")[0] == "fe80::42:acff:fe11:2"
    assert str(np.datetime64(int(rows["ts"][0]), "ns"))[:10] == "2020-05-21"  # not the 1994 export time
    assert (rows["last_ts"] >= rows["ts"]).all()


def _devices():
    """logstash-codec-netflow samples grouped by device, template files first."""
    groups = collections.defaultdict(list)
    for path in sorted(LOGSTASH.glob("*.dat")):
        groups[re.sub(r"_(tpl|data|opttpl|tpldata|tpls)\S*$|\.dat$", "", path.name)].append(path)
    return {dev: sorted(paths, key=lambda p: ("tpl" not in p.name, p.name)) for dev, paths in groups.items()}


# Deliberately invalid or cut samples (see the MANIFEST) and the outcome they must be counted as.
EXPECTED_ERRORS = {
    "netflow5_test_invalid01": {"error:truncated records": 1},
    "netflow5_test_invalid02": {"error:truncated records": 1},
    "netflow9_test_cisco_aci": {"error:bad set length": 1},
    "netflow9_test_paloalto_81": {"error:bad set length": 1},
}


@pytest.mark.parametrize("device", sorted(_devices()))
def test_logstash_samples_decode_into_plausible_records(device):
    d = NetflowDecoder()
    rows = [d.decode(p.read_bytes(), EXPORTER) for p in _devices()[device]]
    rows = np.concatenate(rows)
    assert errors(d) == EXPECTED_ERRORS.get(device, {})
    for side in ("src", "dst"):
        for address in set(text(rows, side)):
            ipaddress.ip_address(address)
    assert (rows["last_ts"] >= rows["ts"]).all()
    assert (rows["version"] == rows["version"][0]).all() if len(rows) else True


PMACCT = ["100-ipfix-cisco-asr9k", "101-nfv9-cisco-asr9k", "102-nfv9-cisco-asr9k-2sources",
          "104-ipfix-ipv6-cisco-sampling-option", "112-ipfix-cisco-options-vrf-reassignment"]


@pytest.mark.parametrize("name", PMACCT)
def test_agrees_with_pmacct(name):
    """Per flow key, packets and bytes equal nfacctd's output (scaled by the sampling rate, as
    nfacctd renormalises); the record counts are equal."""
    d = NetflowDecoder()
    rows = [d.decode(payload, exporter) for exporter, payload in udp_payloads(NETFLOW / f"pmacct/{name}.pcap")]
    rows = np.concatenate(rows)
    src, dst = text(rows, "src"), text(rows, "dst")
    ours = collections.Counter(
        (src[i], dst[i], int(rows["sport"][i]), int(rows["dport"][i]), int(rows["packets"][i] * rows["sampling"][i]),
         int(rows["bytes"][i] * rows["sampling"][i])) for i in range(len(rows)))
    expected = collections.Counter()
    for line in (NETFLOW / f"pmacct/{name}.expected-nfacctd-flows.json").read_text().splitlines():
        j = json.loads(line)
        expected[(j["ip_src"], j["ip_dst"], j["port_src"], j["port_dst"], j["packets"], j["bytes"])] += 1
    assert ours == expected


def test_akvorado_samples(tmp_path):
    d = NetflowDecoder()
    rows = []
    for template, data in (("template", "data"), ("icmp-template", "icmp-data"), ("ipfixprobe-templates", "ipfixprobe-data"),
                           ("options-template", "options-data"), ("nfv5", None)):
        for part in (template, data):
            if part:
                rows += [d.decode(p, e) for e, p in udp_payloads(NETFLOW / f"akvorado/{part}.pcap")]
    rows = np.concatenate(rows)
    icmp = rows[(rows["proto"] == 1) | (rows["proto"] == 58)]
    assert {(int(r["icmp_type"]), int(r["icmp_code"])) for r in icmp} >= {(8, 0), (128, 0)}
    assert not errors(d)


def _datagrams():
    blobs = [p.read_bytes() for p in sorted(LOGSTASH.glob("*.dat"))]
    blobs += [p.read_bytes() for p in sorted((NETFLOW / "python-netflow").glob("*.bin"))]
    return blobs


SEEDS = _datagrams()


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=10),
       st.integers(0, 1500), st.binary(max_size=64))
def test_fuzzed_datagrams_never_raise(seed, flips, cut, tail):
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    d = NetflowDecoder()
    for blob in (bytes(data[:cut]) + tail, bytes(data)):
        rows = d.decode(blob, EXPORTER)
        assert rows.dtype.names is not None


def test_templates_are_bounded(monkeypatch):
    import flowsense.decode.netflow as nf
    monkeypatch.setattr(nf, "MAX_TEMPLATES", 100)
    d = NetflowDecoder()
    for k in range(300):
        body = struct.pack(">HHHH", 256 + k, 1, 8, 4)
        d.decode(struct.pack(">HHIII", 10, 16 + 4 + len(body), 1_700_000_000, 0, 7) + struct.pack(">HH", 2, 4 + len(body))
                 + body, EXPORTER)
    assert len(d.templates) == 100 and d.stats()[EXPORTER]["templates_evicted"] == 200


def test_waiting_data_is_bounded():
    d = NetflowDecoder()
    for k in range(MAX_WAITING_SETS * 3):
        body = struct.pack(">HH", 300 + k % 50, 12) + bytes(8)
        d.decode(struct.pack(">HHIII", 10, 16 + len(body), 1_700_000_000, k, 7) + body, EXPORTER)
    stats = d.stats()[EXPORTER]
    assert sum(map(len, d.waiting.values())) <= MAX_WAITING_SETS
    assert stats["dropped_sets_no_template"] == MAX_WAITING_SETS * 2


def test_analyze_netflow_capture(tmp_path):
    from conftest import run_cli
    capture = NETFLOW / "pmacct/101-nfv9-cisco-asr9k.pcap"
    result = run_cli("analyze", "--netflow", capture, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "export   40 datagrams from 1 exporter(s)" in result.stdout and "flows    51 records" in result.stdout
    flows = __import__("pyarrow.parquet", fromlist=["read_table"]).read_table(tmp_path / "o" / "flows.parquet")
    assert flows.num_rows == 51 and set(flows.column("source").to_pylist()) == {"netflow"}
    assert set(flows.column("exporter").to_pylist()) == {"138.187.57.55"}
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["exporters"]["138.187.57.55"]["records"] == 51


def test_nsel_denied_events_become_deny_rows(tmp_path):
    """A Cisco ASA NSEL v9 export with one 'flow denied' event (firewall event 3) feeds deny.parquet."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from conftest import run_cli
    from craft import pcap_bytes
    export_ms = 1_772_443_200_000
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (233, 1), (323, 8)]
    template = struct.pack(">HH", 256, len(fields)) + b"".join(struct.pack(">HH", *f) for f in fields)
    record = (bytes([198, 18, 10, 53]) + bytes([198, 19, 88, 8]) + struct.pack(">HHBBQ", 40000, 443, 6, 3, export_ms))
    data = record + b"\0\0"
    datagram = (struct.pack(">HHIIII", 9, 2, 5000, export_ms // 1000, 1, 0)
                + struct.pack(">HH", 0, 4 + len(template)) + template + struct.pack(">HH", 256, 4 + len(data)) + data)
    frame = Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=50000, dport=2055) / datagram
    (tmp_path / "nsel.pcap").write_bytes(pcap_bytes([(export_ms * 1_000_000, bytes(frame))]))
    result = run_cli("analyze", "--netflow", tmp_path / "nsel.pcap", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nsel_denied_events"] == 1
    rows = __import__("pyarrow.parquet", fromlist=["read_table"]).read_table(tmp_path / "o" / "deny.parquet").to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert (row["src_h"], row["dst_h"], row["dst_p"], row["proto"], row["vendor"], row["device"]) == \
        ("198.18.10.53", "198.19.88.8", 443, "tcp", "cisco_nsel", "198.18.0.1")
    assert row["ts"].value == export_ms * 1_000_000
