"""Deny-log reader, framing, CLI integration, live inputs (syslog UDP/TCP, tail across rotation)
and Hypothesis fuzzing of every vendor decoder."""

from __future__ import annotations

import gzip
import json
import socket
import time
from datetime import datetime, timezone

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CORPUS, PCAPS, run_cli
from flowsense.denylog import VENDORS
from flowsense.denylog.base import Deny, Fail, Skip
from flowsense.denylog.framing import TimeContext, frame
from flowsense.denylog.reader import DenyLogReader, parse_line
from flowsense.sources.syslog import FileTail, SyslogListener, TcpFramer

CTX = TimeContext(2026, "UTC")
FIREWALL = CORPUS / "firewall"
IPT = ("Mar  2 09:20:01 fw kernel: [123.456] fs-drop IN=eth0 OUT=eth1 SRC=198.18.10.53 DST=198.19.88.8 LEN=60 "
       "TOS=0x00 PREC=0x00 TTL=63 ID=1 DF PROTO=TCP SPT=40000 DPT=443 WINDOW=64240 RES=0x00 SYN URGP=0")


def wait_until(predicate, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not predicate():
        time.sleep(0.02)
    return predicate()


def test_framing_variants():
    hdr, msg = frame("<134>1 2025-11-06T11:32:42.868451+00:00 fw.lan filterlog 92653 - - 7,,,100", CTX)
    assert (hdr.host, hdr.program, msg) == ("fw.lan", "filterlog", "7,,,100")
    assert hdr.ts == 1762428762868451000
    hdr, msg = frame("<14>1 2019-11-14T09:37:51+01:00 SRX RT_FLOW - RT_FLOW_SESSION_DENY [junos@2636 a=\"x]\\\"y\"] tail", CTX)
    assert (hdr.msgid, hdr.sd, msg) == ("RT_FLOW_SESSION_DENY", '[junos@2636 a="x]\\"y"]', "tail")
    hdr, msg = frame("<166>Jan  5 08:52:35 10.22.8.216 %ASA-6-302021: Teardown", CTX)
    assert (hdr.host, msg) == ("10.22.8.216", "%ASA-6-302021: Teardown")
    assert hdr.ts == int(datetime(2026, 1, 5, 8, 52, 35, tzinfo=timezone.utc).timestamp()) * 10**9
    hdr, msg = frame("Sep 28 10:38:09 pfSense filterlog[123]: 53,,,", TimeContext(2024, "Europe/Berlin"))
    assert (hdr.program, msg) == ("filterlog", "53,,,")
    assert hdr.ts == int(datetime(2024, 9, 28, 8, 38, 9, tzinfo=timezone.utc).timestamp()) * 10**9  # CEST = UTC+2


def test_yearless_stamps_near_a_new_year_take_the_neighbouring_year():
    january_traffic = int(datetime(2026, 1, 2, tzinfo=timezone.utc).timestamp()) * 10**9
    ctx = TimeContext(2026, "UTC", january_traffic)
    assert frame("Dec 31 23:59:00 fw kernel: x", ctx)[0].ts == \
        int(datetime(2025, 12, 31, 23, 59, tzinfo=timezone.utc).timestamp()) * 10**9
    assert frame("Jan  2 00:00:05 fw kernel: x", ctx)[0].ts == january_traffic + 5 * 10**9
    december_traffic = int(datetime(2025, 12, 30, tzinfo=timezone.utc).timestamp()) * 10**9
    assert frame("Jan  1 00:00:00 fw kernel: x", TimeContext(2025, "UTC", december_traffic))[0].ts == \
        int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) * 10**9


def test_journald_json_export_record():
    record = json.dumps({"__REALTIME_TIMESTAMP": "1772443201000000", "_HOSTNAME": "gw", "SYSLOG_IDENTIFIER": "kernel",
                         "MESSAGE": IPT.split("kernel: ", 1)[1]})
    vendor, result, hdr = parse_line(record, CTX)
    assert (vendor, hdr.host, hdr.program, hdr.ts) == ("iptables", "gw", "kernel", 1772443201 * 10**9)
    assert isinstance(result, Deny) and result.dport == 443


def test_iptables_line_to_deny():
    vendor, result, hdr = parse_line(IPT, CTX)
    assert vendor == "iptables" and isinstance(result, Deny)
    assert (result.src, result.dst, result.proto, result.sport, result.dport, result.action, result.rule) == \
        ("198.18.10.53", "198.19.88.8", 6, 40000, 443, "drop", "fs-drop")


def test_reader_counts_every_line(tmp_path):
    log = tmp_path / "fw.log"
    log.write_text(IPT + "\n\nthis is not a firewall line\n" + IPT.replace("fs-drop", "fs-accept") + "\n"
                   + IPT.replace("SRC=198.18.10.53", "SRC=999.1.1.1") + "\n")
    reader = DenyLogReader(CTX)
    reader.read_file(log)
    stats = reader.stats()
    assert stats["lines"] == 5 and stats["blank_lines"] == 1 and stats["deny_rows"] == 1
    ipt = stats["vendors"]["iptables"]
    assert (ipt["parsed"], ipt["skipped"], ipt["failed"]) == (1, 1, 1)
    assert ipt["failed_samples"]["bad address"][0].startswith("Mar  2")
    assert stats["vendors"]["unrecognised"]["failed"] == 1
    rows = reader.rows()
    assert rows["line_no"].tolist() == [1] and rows["dport"].tolist() == [443]


def test_an_impossible_proxmox_time_falls_back_to_the_syslog_stamp(tmp_path):
    """Found by Hypothesis: day 00 in a Proxmox firewall time used to raise."""
    line = ("Jun 20 13:09:14 pve 0 3 PVEFW-HOST-IN 00/Jun/2022:13:09:14 +0200 policy DROP: IN=vmbr0 "
            "SRC=10.3.94.11 DST=10.3.94.12 LEN=52 PROTO=UDP SPT=49152 DPT=3784 LEN=32")
    log = tmp_path / "pve.log"
    log.write_text(line + "\n" + line.replace("00/Jun", "20/Jun") + "\n")
    reader = DenyLogReader(CTX)
    reader.read_file(log)
    rows = reader.rows()
    assert rows["dport"].tolist() == [3784, 3784]
    stamps = [datetime.fromtimestamp(int(t) / 1e9, timezone.utc) for t in rows["ts"]]
    assert (stamps[0].month, stamps[0].day, stamps[0].hour) == (6, 20, 13)       # the syslog stamp, zone UTC
    assert stamps[1] == datetime(2022, 6, 20, 11, 9, 14, tzinfo=timezone.utc)  # Proxmox's own time, +0200


def test_every_corpus_line_is_accounted_for():
    reader = DenyLogReader(CTX)
    files = sorted(p for p in FIREWALL.rglob("*.log"))
    for path in files:
        reader.read_file(path)
    stats = reader.stats()
    total = sum(v["parsed"] + v["skipped"] + v["failed"] for v in stats["vendors"].values())
    assert total + stats["blank_lines"] == stats["lines"] == sum(len(p.read_text().splitlines()) for p in files)
    assert stats["deny_rows"] == len(reader.rows()) > 100


def test_not_text_is_an_input_error(tmp_path):
    (tmp_path / "bin.log").write_bytes(bytes(range(256)) * 10)
    result = run_cli("analyze", PCAPS / "demo-egress.pcap", "--deny-log", tmp_path / "bin.log", "--out", tmp_path / "o")
    assert result.returncode == 3 and "not a text log" in result.stderr


def test_unknown_deny_format_is_a_usage_error(tmp_path):
    (tmp_path / "fw.log").write_text(IPT + "\n")
    result = run_cli("analyze", PCAPS / "demo-egress.pcap", "--deny-log", tmp_path / "fw.log", "--deny-format", "nope")
    assert result.returncode == 2 and "choose auto or one of" in result.stderr


def test_analyze_with_gzip_deny_log_writes_rows_and_stats(tmp_path):
    (tmp_path / "fw.log.gz").write_bytes(gzip.compress(((IPT + "\n") * 3 + "garbage\n").encode()))
    result = run_cli("analyze", PCAPS / "demo-egress.pcap", "--deny-log", tmp_path / "fw.log.gz",
                     "--deny-format", "iptables", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "denies   3 rows from 4 lines" in result.stdout
    rows = pq.read_table(tmp_path / "o" / "deny.parquet").to_pylist()
    assert len(rows) == 3 and rows[0]["dst_h"] == "198.19.88.8" and rows[0]["vendor"] == "iptables"
    assert str(rows[0]["ts"]) == "2026-03-02 09:20:01+00:00"  # year of the traffic
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert "year 2026" in stats["denylog"]["time_interpretation"]
    assert stats["denylog"]["vendors"]["unrecognised"]["failed_by_reason"] == {"no vendor decoder claimed the line": 1}


def test_tcp_framer_octet_counting_and_newlines():
    f = TcpFramer()
    assert f.feed(b"11 hello world5 ab") == ["hello world"]
    assert f.feed(b"cde") == ["abcde"]
    assert f.feed(b"plain line\nsecond") == ["plain line"]
    assert f.feed(b"\n") == ["second"]


def test_syslog_listener_udp_and_tcp():
    got = []
    listener = SyslogListener("127.0.0.1", 0, lambda line, peer: got.append(line))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(IPT.encode(), listener.address)
        with socket.create_connection(listener.address, timeout=5) as t:
            t.sendall(f"{len(IPT)} {IPT}".encode() + IPT.encode() + b"\n")
        assert wait_until(lambda: len(got) == 3)
    finally:
        listener.stop()
    assert all(isinstance(parse_line(line, CTX)[1], Deny) for line in got)


def test_file_tail_survives_rotation(tmp_path):
    log = tmp_path / "fw.log"
    log.write_text("old line before start\n")
    got = []
    tail = FileTail(log, lambda line, src: got.append(line), interval_s=0.05)
    try:
        with log.open("a") as fh:
            fh.write("one\ntw")
        assert wait_until(lambda: got == ["one"])
        with log.open("a") as fh:
            fh.write("o\n")
        log.rename(tmp_path / "fw.log.1")
        log.write_text("three\n")
        assert wait_until(lambda: got == ["one", "two", "three"])
        log.write_text("")  # copytruncate-style rotation
        with log.open("a") as fh:
            fh.write("four\n")
        assert wait_until(lambda: got[-1] == "four")
    finally:
        tail.stop()
    assert tail.rotations >= 1


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=400))
def test_fuzzed_lines_never_raise(line):
    hdr, msg = frame(line, CTX)
    for vendor in VENDORS:
        assert isinstance(vendor.parse(msg, hdr), (Deny, Skip, Fail, type(None)))


CORPUS_LINES = [line for p in sorted(FIREWALL.rglob("*.log")) for line in p.read_text().splitlines()]


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(CORPUS_LINES), st.lists(st.tuples(st.integers(0, 600), st.characters()), max_size=6),
       st.integers(0, 600))
def test_mutated_corpus_lines_never_raise(line, edits, cut):
    chars = list(line)
    for pos, ch in edits:
        if pos < len(chars):
            chars[pos] = ch
    hdr, msg = frame("".join(chars)[:cut], CTX)
    for vendor in VENDORS:
        assert isinstance(vendor.parse(msg, hdr), (Deny, Skip, Fail, type(None)))


def test_analyze_joins_every_corpus_vendor(tmp_path):
    logs = sorted(FIREWALL.rglob("*.log"))
    args = [a for log in logs for a in ("--deny-log", log)]
    result = run_cli("analyze", PCAPS / "demo-egress.pcap", *args, "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["denylog"]
    rows = pq.read_table(tmp_path / "o" / "deny.parquet").to_pylist()
    per_vendor = {v: sum(r["vendor"] == v for r in rows) for v in {r["vendor"] for r in rows}}
    assert per_vendor == {v: c["parsed"] for v, c in stats["vendors"].items() if c["parsed"]}
    assert {"iptables", "cisco_asa", "pfsense", "panos", "fortigate", "juniper_srx", "mikrotik"} <= set(per_vendor)
    assert all(r["file"] and r["line_no"] >= 1 for r in rows)
