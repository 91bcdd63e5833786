"""The `flowsense analyze` contract: outputs, summary, exit codes and one-line errors, determinism,
multi-file merge, and every robustness capture of the corpus without a traceback."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import PCAPS, corpus_captures, run_cli
from flowsense import __version__

DEMO = PCAPS / "demo-egress.pcap"
REQUIRED = ["ts", "last_ts", "orig_h", "orig_p", "resp_h", "resp_p", "proto", "orig_pkts", "orig_bytes",
            "resp_pkts", "resp_bytes", "conn_state", "end_reason", "community_id"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_cli("analyze", DEMO, "--out", out)
    return result, out


def test_analyze_writes_the_contracted_outputs(demo_run):
    result, out = demo_run
    assert result.returncode == 0, result.stderr
    flows = pq.read_table(out / "flows.parquet")
    assert set(REQUIRED) <= set(flows.column_names)
    assert str(flows.schema.field("ts").type) == "timestamp[ns, tz=UTC]"
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert {a["rule"]["id"] for a in alerts} >= {"beacon", "icmp_tunnel", "dns_tunnel", "deny_fallback", "scan"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["packets"] == 2992 and stats["non_ip_frames"] == 8
    assert stats["flows"] == flows.num_rows > 0
    assert stats["packets_per_s"] > 0 and stats["duration_s"] == pytest.approx(2054.968, abs=0.01)
    assert set(stats["weird"]) == set(__import__("flowsense.weird", fromlist=["WEIRDS"]).WEIRDS)
    rows = flows.to_pylist()
    assert sum(r["orig_pkts"] + r["resp_pkts"] for r in rows) == stats["ip_packets"]
    assert sum(r["orig_bytes"] + r["resp_bytes"] for r in rows) == stats["ip_bytes"]
    assert all(r["community_id"].startswith("1:") and len(r["community_id"]) == 30 for r in rows)
    for line in ("packets  2,992", "flows    ", "output   "):
        assert line in result.stdout


def test_output_is_deterministic(demo_run, tmp_path):
    _, first = demo_run
    assert run_cli("analyze", DEMO, "--out", tmp_path / "again", "--quiet").returncode == 0
    for name in ("flows.parquet", "dns.parquet"):
        assert pq.read_table(first / name).equals(pq.read_table(tmp_path / "again" / name))


def test_default_out_is_a_new_folder_named_after_the_capture(tmp_path):
    shutil.copy(DEMO, tmp_path / "case-42.pcap")
    for expected in ("case-42.flowsense", "case-42.flowsense-2"):
        result = run_cli("analyze", "case-42.pcap", "--quiet", cwd=tmp_path)
        assert result.returncode == 0 and (tmp_path / expected / "flows.parquet").is_file()


def test_several_files_merge_in_time_order(tmp_path, corpus):
    late, early = corpus / "pcap/benign/dns-udp_tcpdump.pcap", corpus / "pcap/benign/dns-mixed-queries_ppa.pcap"
    result = run_cli("analyze", late, early, "--out", tmp_path / "m", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["packets"] == 2 + 249 and len(stats["inputs"]) == 2
    dns = pq.read_table(tmp_path / "m" / "dns.parquet").column("ts").to_pylist()
    assert dns == sorted(dns)
    files = pq.read_table(tmp_path / "m" / "flows.parquet").column("file").to_pylist()
    assert {str(late), str(early)} == set(files)


def test_gzip_input(tmp_path):
    (tmp_path / "d.pcap.gz").write_bytes(gzip.compress(DEMO.read_bytes()))
    result = run_cli("analyze", tmp_path / "d.pcap.gz", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["packets"] == 2992


def test_truncated_capture_is_processed_and_reported(tmp_path):
    data = DEMO.read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[:len(data) // 2])
    result = run_cli("analyze", tmp_path / "cut.pcap", "--out", tmp_path / "o")
    assert result.returncode == 0
    assert "damage   truncated_record 1" in result.stdout and "cut short" in result.stdout
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["capture"]["truncated_record"] == 1 and 1000 < stats["packets"] < 2992


@pytest.mark.parametrize("args,code,message", [
    (["analyze", "missing.pcap"], 3, "no such file"),
    (["analyze", "not-a-capture.txt"], 3, "not a pcap or pcapng capture"),
    (["analyze", "."], 3, "is a folder"),
    (["analyze", "DEMO", "-c", "bad.toml"], 2, "valid keys: idle_timeout_s"),
    (["analyze", "DEMO", "-c", "broken.toml"], 2, "not valid TOML"),
    (["analyze", "DEMO", "-c", "nope.toml"], 3, "config file nope.toml: no such file"),
    (["analyze", "DEMO", "--out", "/proc/flowsense"], 3, "choose a writable folder with --out"),
    (["analyze", "DEMO", "--deny-log", "nofile.log"], 3, "no such file"),
    (["analyze"], 2, "the following arguments are required"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_operator_errors_are_one_line_with_exit_codes(tmp_path, args, code, message):
    (tmp_path / "not-a-capture.txt").write_text("hello\n")
    (tmp_path / "bad.toml").write_text("[flows]\nidle_timeout = 5\n")
    (tmp_path / "broken.toml").write_text("[flows\n")
    result = run_cli(*[str(DEMO) if a == "DEMO" else a for a in args], cwd=tmp_path)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 3 or "config" in message or "TOML" in message or "valid keys" in message:
        assert len(result.stderr.strip().splitlines()) == 1


def test_config_values_are_validated_and_used(tmp_path):
    (tmp_path / "c.toml").write_text("[flows]\nidle_timeout_s = 1\ncapacity = 100\n")
    result = run_cli("analyze", DEMO, "-c", tmp_path / "c.toml", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0
    stats = json.loads(result.stdout)
    assert stats["flow_meter"]["capacity"] == 100 and "idle_timeout_s = 1.0" in stats["config"]
    (tmp_path / "neg.toml").write_text("[flows]\ncapacity = 0\n")
    bad = run_cli("analyze", DEMO, "-c", tmp_path / "neg.toml")
    assert bad.returncode == 2 and "capacity must be >= 16" in bad.stderr


def test_version_help_and_config_defaults():
    assert run_cli("--version").stdout.strip() == f"flowsense {__version__}"
    assert "analyze" in run_cli("--help").stdout
    shown = run_cli("config", "show", "--defaults").stdout
    assert "[flows]" in shown and "idle_timeout_s = 120.0" in shown and "active_timeout_s = 1800.0" in shown


def test_deny_log_rows_are_reported(tmp_path):
    (tmp_path / "fw.log").write_text("Mar  2 09:20:01 fw kernel: DROP IN=eth0 SRC=198.18.0.1 DST=198.19.0.1 "
                                     "PROTO=TCP SPT=1 DPT=2\n")
    result = run_cli("analyze", DEMO, "--deny-log", tmp_path / "fw.log", "--out", tmp_path / "o")
    assert result.returncode == 0 and "denies   1 rows from 1 lines" in result.stdout
    assert (tmp_path / "o" / "deny.parquet").is_file()


@pytest.mark.parametrize("path", corpus_captures("pcap/robustness"), ids=lambda p: p.name)
def test_robustness_captures_never_crash(path, tmp_path):
    result = run_cli("analyze", path, "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    stats = json.loads(result.stdout)
    assert stats["packets"] == stats["ip_packets"] + stats["non_ip_frames"]
