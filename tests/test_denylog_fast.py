"""The deny-log fast path (flowsense/denylog/fast.py) against the Python decoders it stands in for:
reading a file must give the rows, text columns and stats (reasons, samples, their order) that
feeding every line to the decoders gives, on the corpus, on edge cases and on Hypothesis lines."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CORPUS
from flowsense.denylog import fast, reader as reader_module
from flowsense.denylog.framing import TimeContext
from flowsense.denylog.reader import DenyLogReader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from denylog_bench import TEMPLATES, write_log  # noqa: E402

CTX = TimeContext(2026, "Europe/Paris", reference_ns=1_767_225_600 * 10**9)  # 2026-01-01: Dec stamps -> 2025
CORPUS_FILES = sorted((CORPUS / "firewall").rglob("*.log"))
EDGE = [
    # framing: years, yearless, fractions, zones, impossible dates and times, tags
    "Dec 31 23:59:59 gw kernel: drop IN=eth0 OUT= SRC=198.18.0.1 DST=198.19.0.1 PROTO=UDP SPT=53 DPT=5353",
    "Aug 06 2016 20:39:42: %ASA-4-106023: Deny udp src outside:198.18.0.2/53 dst inside:198.19.0.2/53 by "
    'access-group "acl in" [0x0, 0x0]',
    "Feb 30 10:00:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 24:00:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:60.123: gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:61:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw drop: IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "<4>Mar  2 10:00:00 gw kernel[0]: [ 12.5] REJECT-in IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=ICMP TYPE=8 CODE=0",
    "<14>1 2026-03-02T09:00:00.123456789+01:30 srx1 RT_FLOW - RT_FLOW_SESSION_DENY [junos@2636 "
    'source-address="198.18.0.3" source-port="1" destination-address="198.19.0.3" destination-port="2" '
    'protocol-id="1" icmp-type="8" policy-name="p" reason="Rejected by policy"] tail',
    "<14>1 2026-03-02T09:00:00Z srx1 RT_FLOW - RT_FLOW_SESSION_CREATE [junos@2636 source-address=\"198.18.0.3\"]",
    "<14>1 2026-03-02T09:00:00 srx1 RT_FLOW - RT_FLOW_SESSION_DENY [x source-address=\"198.18.0.3\" "
    'destination-address="198.19.0.3" protocol-id="6"]',
    "<14>1 - srx1 RT_FLOW - RT_FLOW_SESSION_DENY [x source-address=\"198.18.0.3\" destination-address=\"198.19.0.3\" "
    'protocol-id="17" source-port="1" destination-port="70000"]',
    '<14>1 2026-02-29T09:00:00Z srx1 RT_FLOW - RT_FLOW_SESSION_DENY [x a="\\"]" source-address="198.18.0.3" '
    'destination-address="198.19.0.3" protocol-id="tcp"][y source-address="198.18.0.9"]',
    '<14>1 2026-03-02T09:00:00Z srx1 RT_FLOW - RT_FLOW_SESSION_DENY [x loguid:"{0x1}" source-address="198.18.0.3" '
    'destination-address="198.19.0.3" protocol-id="6" action:"drop"]',
    '<14>1 2026-03-02T09:00:00Z srx1 RT_FLOW - RT_FLOW_SESSION_DENY [x a="loguid:" source-address="198.18.0.3" '
    'destination-address="198.19.0.3" protocol-id="6"]',
    "2026-03-02T09:00:00+01:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    # iptables: prefixes, Proxmox times, accept, odd fields
    "Mar  2 10:00:00 pve pvefw-logger[1]: 0 5 tap100i0-IN 02/Mar/2026:10:00:01 +0100 policy DROP: IN=fwbr SRC=198.18.0.1 "
    "DST=198.19.0.1 PROTO=TCP SPT=1 DPT=22",
    "Mar  2 10:00:00 gw kernel: [WAN_LOCAL-A-1] IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: blocked DST=198.19.0.9 IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=6 SPT= DPT=2",
    "Mar  2 10:00:00 gw kernel: x IN=eth0 SRC=198.18.0.01 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: x IN=eth0 SRC=2001:db8::1 DST=2001:db8::2 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: x IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=65536",
    "Mar  2 10:00:00 gw kernel: x IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=WEIRD SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: x SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1\tPROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: dröp IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2 %ASA-4-106023:",
    "Mar  2 10:00:00 gw kernel: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2 logid=1 action=deny",
    "Mar  2 10:00:00 gw RT_FLOW: drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    "Mar  2 10:00:00 gw kernel: firewall,info IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2",
    # Cisco ASA / FTD
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106023: Deny icmp src outside:198.18.0.2 dst inside:198.19.0.2 (type 8, code 0) "
    'by access-group "outside_in"',
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106023: Deny tcp src outside:198.18.0.2/1 dst inside:198.19.0.2/2 by "
    'access-group ""',
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106023: Deny inbound tcp src outside:198.18.0.2/1 dst inside:198.19.0.2/2",
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106023: Deny protocol 47 src outside:198.18.0.2/1 dst dmz:198.19.0.2/2",
    "<166>Mar  2 10:00:00 asa1 %ASA-session-4-106023: Deny IP src NP Identity Ifc:198.18.0.2/0 dst i:198.19.0.2/0",
    "<166>Mar  2 10:00:00 asa1 %FTD-4-1060231 Deny tcp src o:198.18.0.2/1 dst i:198.19.0.2/2",
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106100: access-list acl denied tcp o/198.18.0.2(1) -> i/198.19.0.2(2) hit-cnt 1",
    "<166>Mar  2 10:00:00 asa1 %ASA-6-302013: Built outbound TCP connection 1 for o:198.19.0.2/443",
    "<166>Mar  2 10:00:00 asa1 %ASA-x-106023: Deny tcp src o:198.18.0.2/1 dst i:198.19.0.2/2",
    "<166>Mar  2 10:00:00 asa1 %ASA-4-106023: Deny tcp src o:198.18.0.2/1 dst i:fe80::1/2",
    # pfSense filterlog
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,1000000103,em0,match,pass,in,4,0x0,,64,1,0,DF,17,udp,60,198.18.0.4,"
    "198.19.0.4,53,53,40",
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,,em0,match,reject,out,4,0x0,,64,1,0,DF,1,icmp,60,198.18.0.4,198.19.0.4,"
    "unreachport,1",
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,1000000103,em0,match,block,in,4,0x0,,64,1,0,DF,6,tcp,60,198.18.0.4,"
    "198.19.0.4,80",
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,1000000103,em0,match,block,in,4,0x0,,64,1,0,DF,6,tcp,60,198.18.0.4",
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,1000000103,em0,match,block,in,6,0x0,,64,tcp,6,60,2001:db8::1,2001:db8::2,"
    "1,2,0",
    "Mar  2 10:00:00 pf filterlog[1]: 5,,,1000000103,em0,match,block,in,4,0x0,,64,1,0,DF,132,sctp,60,198.18.0.4,"
    "198.19.0.4,1,2",
    "Mar  2 10:00:00 pf filterlog[1]: 5,ab,,1000000103,em0,match,block,in,4,0x0,,64,1,0,DF,6,tcp,60,198.18.0.4,"
    "198.19.0.4,1,2",
    "1,2015/01/05 12:51:33,0003C105690,TRAFFIC,drop,1,2015/01/05 12:51:33,198.18.0.5,198.19.0.5,,,,r,,,,,,,,,,,,1,2,,,,tcp,drop",
    # FortiGate
    '<189>date=2026-03-02 time=09:00:01 devname="fgt 1" logid="0000000013" type="traffic" srcip=198.18.0.6 '
    'srcport=1 dstip=198.19.0.6 dstport=2 proto=6 action="deny" policyid=7 eventtime=1772442001',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=1 icmptype=0x08 '
    'icmpcode=0x00 action=deny policyname="a \\"b\\" c" eventtime=1772442001123456789',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action=accept',
    '<189>logid="0000000013" srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action=deny eventtime=9999999999999999999',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 type=event subtype=system action=deny',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 '
    'action="deny" tz="+0100"',
    '<189>date=2026-03-29 time=02:30:00 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action=deny',
    '<189>date=2026-13-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action=deny',
    '<189>time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action=deny',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 proto=6 action="deny',
    '<189>date=2026-03-02 time=09:00:01 logid=0000000013 srcip=198.18.0.6 dstip=198.19.0.6 action=deny status=close '
    'msg="x action=drop" proto=17 srcport=99999',
    "Mar  2 10:00:00 fgt1 date=2026-03-02 time=09:00:01 xlogid=1 srcip=198.18.0.6 dstip=198.19.0.6 action=deny",
    # other vendors and shapes the fast path leaves to Python
    '{"MESSAGE": "drop IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2", "__REALTIME_TIMESTAMP": "1"}',
    'Mar  2 10:00:00 gw ulogd: {"oob.prefix": "drop", "src_ip": "198.18.0.1", "dest_ip": "198.19.0.1"}',
    "Mar  2 10:00:00 mt firewall,info drop input: in:ether1 out:(unknown 0), proto TCP (SYN), "
    "198.18.0.7:1->198.19.0.7:2, len 40",
    "", "   ", "\t", "just noise", "Mar  2 10:00:00 gw kernel: nothing here",
]


@pytest.fixture(autouse=True)
def fast_path_on_small_files(monkeypatch):
    monkeypatch.setattr(reader_module, "FAST_BYTES", 0)


def by_lines(path: Path, ctx=CTX, deny_format=None) -> DenyLogReader:
    """The reference: every line of the file through DenyLogReader.feed (the Python decoders)."""
    reader = DenyLogReader(ctx, deny_format)
    source = reader.add_source(str(path))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            reader.feed(line, source, line_no)
    return reader


def assert_same(path: Path, ctx=CTX, deny_format=None) -> DenyLogReader:
    got = DenyLogReader(ctx, deny_format)
    got.read_file(path)
    want = by_lines(path, ctx, deny_format)
    assert got.stats() == want.stats()
    for vendor, counts in want.stats()["vendors"].items():  # reasons in the order first seen, as JSON shows them
        for key in ("skipped_by_reason", "failed_by_reason"):
            assert list(got.stats()["vendors"][vendor][key]) == list(counts[key])
    rows, expected = got.rows(), want.rows()
    assert len(rows) == len(expected) == got.row_count
    assert (rows == expected).all()
    assert got.text_columns() == want.text_columns()
    return got


def fast_share(text: str) -> float:
    """Share of the non-blank lines of ``text`` that the fast path finishes itself."""
    buf = np.frombuffer(text.encode(), np.uint8)
    starts, ends, kinds, _ = fast.lines(buf)
    block = fast.parse_block(buf, starts, ends, kinds, CTX, {"iptables", "cisco_asa", "pfsense", "juniper_srx",
                                                              "fortigate"})
    return len(block.claimed) / max(1, len(starts) - block.blank)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_corpus_file_reads_as_line_by_line(path):
    assert_same(path)


def test_edge_lines_read_as_line_by_line(tmp_path):
    log = tmp_path / "edge.log"
    log.write_text("\n".join(EDGE * 2) + "\r\n" + EDGE[0])  # CRLF too, and a last line without newline
    assert_same(log)
    assert_same(log, TimeContext(2026, "UTC"))


def test_bench_lines_take_the_fast_path_with_the_same_result(tmp_path):
    log = tmp_path / "bench.log"
    write_log(log, 6 * 50)
    assert fast_share(log.read_text()) == 1.0
    got = assert_same(log)
    assert got.stats()["deny_rows"] == 250


def test_blocks_threads_gzip_and_forced_format_give_the_same_result(tmp_path, monkeypatch):
    log = tmp_path / "mixed.log"
    write_log(log, 600)
    log.write_text(log.read_text() + "\n".join(EDGE) + "\n" + log.read_text())
    monkeypatch.setattr(reader_module, "BLOCK_BYTES", 3000)  # many blocks, lines across block ends
    monkeypatch.setattr(fast, "MIN_LINES_PER_THREAD", 7)
    monkeypatch.setattr(fast, "MIN_BYTES_PER_THREAD", 500)
    assert_same(log)
    packed = tmp_path / "mixed.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    assert_same(packed)
    for vendor in ("iptables", "fortigate", "panos"):
        assert_same(log, deny_format=vendor)


def test_a_line_two_vendors_claim_goes_to_the_previous_lines_vendor_as_before(tmp_path):
    """The decoders try the previous line's vendor first; lines the fast path finished count too."""
    both = "Mar  2 10:00:00 gw kernel: x IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 PROTO=TCP SPT=1 DPT=2 %ASA-4-106023:"
    log = tmp_path / "order.log"
    pfsense_pass = next(line for line in EDGE if ",pass," in line)
    log.write_text("\n".join([EDGE[1], both, EDGE[0], both, pfsense_pass, both]) + "\n")  # ASA, iptables, pfSense
    assert fast_share(log.read_text()) == 0.5
    got = assert_same(log)
    assert got.stats()["vendors"]["cisco_asa"]["failed_by_reason"] == {"unparsed 106023": 1}
    assert got.text_columns()["vendor"].count("iptables") == 3


def test_lone_carriage_returns_end_lines_as_text_mode_does(tmp_path):
    log = tmp_path / "cr.log"
    log.write_bytes("\r".join(EDGE[:8]).encode() + b"\r\r\n" + EDGE[8].encode() + b"\r")
    got = assert_same(log)
    assert got.lines == 10


def test_rows_fed_before_a_file_stay_first(tmp_path):
    log = tmp_path / "bench.log"
    write_log(log, 12)
    reader = DenyLogReader(CTX)
    reader.feed(EDGE[0], reader.add_source("live"), 1)
    reader.read_file(log)
    rows = reader.rows()
    assert list(rows["source"][:2]) == [0, 1] and rows["line_no"][0] == 1
    assert reader.row_count == len(rows) == 11
    assert reader.rows(5).tolist() == rows[5:].tolist()
    assert reader.text_columns(5)["rule"] == reader.text_columns()["rule"][5:]


LINES = [t.format(d=2, m=5, s=7, n=99, a="198.18.3.4", b="198.19.5.6", p=40000, q=443) for t in TEMPLATES] + EDGE
STRUCTURE = "0123456789 .:,=\"'[]()/<>-_%\\|{}aAsSdDtTzZ\t\u00e9"


def test_small_files_skip_the_fast_path(tmp_path, monkeypatch):
    log = tmp_path / "small.log"
    write_log(log, 12)
    monkeypatch.undo()
    monkeypatch.setattr(fast, "parse_block", None)  # would fail if called
    reader = DenyLogReader(CTX)
    reader.read_file(log)
    assert reader.stats()["deny_rows"] == 10


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(LINES),
                          st.lists(st.tuples(st.integers(0, 500), st.integers(0, 3), st.sampled_from(STRUCTURE)),
                                   max_size=4)), min_size=1, max_size=12))
def test_edited_lines_read_as_line_by_line(tmp_path_factory, lines):
    """Lines with a few characters replaced, inserted or deleted where the lexers look."""
    out = []
    for line, edits in lines:
        chars = list(line)
        for pos, how, ch in edits:
            pos = min(pos, len(chars))
            if how == 0:
                chars.insert(pos, ch)
            elif how == 1 and pos < len(chars):
                del chars[pos]
            elif pos < len(chars):
                chars[pos] = ch
        out.append("".join(chars))
    log = tmp_path_factory.mktemp("edited") / "edited.log"
    log.write_text("\n".join(out) + "\n", encoding="utf-8")
    assert_same(log)
