"""Vendor and RFC corners of the NetFlow decoder, each on a corpus sample: RFC 5103 biflows,
interface names from options, MikroTik and Huawei sysUpTime-relative times, Palo Alto App-ID and
User-ID, Juniper sampling that only options carry."""

from __future__ import annotations

import struct

import numpy as np
from test_netflow import NETFLOW, _devices, text, udp_payloads

from flowsense.decode.netflow import NetflowDecoder
from flowsense.pipeline import flow_rows

EXPORTER = "198.18.0.9"


def device(name: str):
    d = NetflowDecoder()
    return d, np.concatenate([d.decode(p.read_bytes(), EXPORTER) for p in _devices()[name]])


def test_biflow_records_become_two_one_way_rows():
    """ipfixprobe exports 4 biflows with reverse counters (enterprise 29305); the 2 with reverse
    traffic give a second row, from the responder, with the reverse packets, bytes and flags."""
    d = NetflowDecoder()
    rows = np.concatenate([d.decode(p, e) for f in ("ipfixprobe-templates", "ipfixprobe-data")
                           for e, p in udp_payloads(NETFLOW / f"akvorado/{f}.pcap")])
    stats = d.stats()["127.0.0.1"]
    assert (stats["records"], stats["biflow_reverse_rows"], len(rows)) == (4, 2, 6)
    seen = list(zip(text(rows, "src"), text(rows, "dst"), rows["sport"].tolist(), rows["dport"].tolist(),
                    rows["packets"].tolist(), rows["bytes"].tolist(), rows["tcp_flags"].tolist()))
    assert seen[3:5] == [("10.10.1.4", "74.53.140.153", 1470, 25, 28, 21673, 27),
                         ("74.53.140.153", "10.10.1.4", 25, 1470, 25, 1546, 27)]
    assert seen[0][:2] == seen[1][1::-1] and seen[1][4:6] == (1, 128)  # the DNS answer
    assert np.array_equal(rows["ts"][3:5], rows["ts"][[3, 3]])


def test_interface_names_from_options():
    """IPFIX interfaceName per ingressInterface (Cisco IOS XR, pmacct sample) and NetFlow v9
    interface description per "interface" scope (ASR9k) end up in the exporter's stats."""
    d = NetflowDecoder()
    for e, p in udp_payloads(NETFLOW / "pmacct/112-ipfix-cisco-options-vrf-reassignment.pcap"):
        d.decode(p, e)
    names = d.stats()["2001:db8:90::1"]["interfaces"]
    assert names["55"] == "HundredGigE0_0_0_11" and names["185"] == "TenGigE0_0_0_16.22"
    v9, _ = device("netflow9_test_cisco_asr9k")
    assert v9.stats()[EXPORTER]["interfaces"]["162"] == "Bundle-Ether2"


def test_mikrotik_relative_times_keep_durations():
    """RouterOS exports flowStart/EndSysUpTime without systemInitTimeMilliseconds: the flow that
    ended last ends at the export time and durations are kept (they were all 0 before)."""
    _, rows = device("ipfix_test_mikrotik")
    export_ns = 1500481088 * 10**9
    assert len(rows) == 46 and rows["last_ts"].max() == export_ns
    durations = rows["last_ts"] - rows["ts"]
    assert (durations >= 0).all() and (durations > 0).sum() == 6 and durations.max() == 4_300_000_000
    assert rows["ts"].min() >= export_ns - 3600 * 10**9


def test_huawei_boot_time_in_the_data_record():
    """Huawei puts systemInitTimeMilliseconds (160) in the data records themselves."""
    d = NetflowDecoder()
    rows = np.concatenate([d.decode(p, e) for e, p in udp_payloads(NETFLOW / "pmacct/106-ipfix-huawei-vrf-name.pcap")])
    export_s = 1737989317
    assert rows["ts"][0] == 1737989246 * 10**9 and rows["last_ts"][0] == 1737989307 * 10**9
    assert (rows["last_ts"] <= (export_s + 1) * 10**9).all() and (rows["ts"] <= rows["last_ts"]).all()


def test_palo_alto_app_and_user_ids_in_stats():
    """PAN-OS v9 fields 56701 (App-ID) and 56702 (User-ID): NFLOW has no column for them, so the
    exporter's stats count records per App-ID (and per User-ID, none known in this sample)."""
    d, rows = device("netflow9_test_paloalto_panos")
    stats = d.stats()[EXPORTER]
    assert len(rows) == 8 and stats["apps"] == {"incomplete": 7, "ssl": 1}
    assert stats["users"] == {}


def test_juniper_sampling_from_options_only():
    """Juniper MX sends its 1-in-1000 sampling only in options data (domain 524288); data from
    that domain is scaled by it, data from another domain is not."""
    d, _ = device("ipfix_test_juniper_mx240_junos151r6s3")
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 8), (1, 8)]
    template = struct.pack(">HH", 300, len(fields)) + b"".join(struct.pack(">HH", *f) for f in fields)
    record = bytes([198, 18, 0, 1, 198, 19, 0, 2]) + struct.pack(">HHBQQ", 40000, 443, 6, 3, 180)

    def datagram(domain):
        sets = struct.pack(">HH", 2, 4 + len(template)) + template + struct.pack(">HH", 300, 4 + len(record)) + record
        return struct.pack(">HHIII", 10, 16 + len(sets), 1_600_000_000, 0, domain) + sets

    sampled, other = d.decode(datagram(524288), EXPORTER), d.decode(datagram(7), EXPORTER)
    assert (sampled["sampling"][0], other["sampling"][0]) == (1000, 1)
    flows = flow_rows(sampled)
    assert (flows["orig_pkts"][0], flows["orig_bytes"][0]) == (3000, 180_000)
