"""What every detector shares: config sections and validation, ATT&CK data, the alert format and
its determinism, suppression, baselines on disk, and the eval command."""

from __future__ import annotations

import json

import pytest

from flowsense.alerts import Alert, route, severity
from flowsense.attack import ANALYTICS, RULES, TECHNIQUES
from flowsense.config import Config, load
from flowsense.detectors import DETECTORS
from flowsense.errors import UsageError

from conftest import PCAPS, run_cli

DEMO = PCAPS / "demo-egress.pcap"
LABELS = PCAPS / "demo-egress.labels.jsonl"


def test_attack_data_is_consistent():
    for rule in RULES.values():
        assert set(rule.techniques) <= set(TECHNIQUES)
        assert set(rule.analytics) <= set(ANALYTICS)
    assert DETECTORS[-1].NAME == "deny_fallback"   # it reads what the others found


@pytest.mark.parametrize("text,message", [
    ("[networks]\ninternal = ['10.0.0.0/33']\n", "not an address or CIDR"),
    ("[networks]\ninternal = '10.0.0.0/8'\n", "must be a list"),
    ("[allowlist]\nhostz = []\n", "valid keys: hosts, domains, ports, pingers"),
    ("[calendar]\nbusiness_hours = '9-5'\n", "08:00-18:00"),
    ("[calendar]\nbusiness_days = ['Monday']\n", "Mon, Tue"),
    ("[fallback]\nwindow_s = -1\n", "must be >= 1"),
])
def test_bad_detection_config_is_a_usage_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load(path)
    result = run_cli("analyze", DEMO, "-c", path, "--out", tmp_path / "o")
    assert result.returncode == 2 and message.split()[0] in result.stderr


def test_config_lists_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[allowlist]\nhosts = ['10.0.0.5', '192.0.2.0/24']\nports = [8443]\n")
    config = load(path)
    assert config.allowlist.hosts == ("10.0.0.5", "192.0.2.0/24") and config.allowlist.ports == (8443,)
    shown = run_cli("config", "show", "-c", path).stdout
    assert 'hosts = ["10.0.0.5", "192.0.2.0/24"]' in shown
    (tmp_path / "again.toml").write_text(shown)
    assert load(tmp_path / "again.toml") == config


def _alert(start, ident="x", score=0.8, src=(0, 0xFFFF0A000001)):
    return Alert(rule="beacon", start_ns=start, end_ns=start + 10, src=src, score=score, identifier=ident,
                 evidence={})


def test_route_merges_repeats_within_the_window_and_filters():
    alerts = [_alert(0), _alert(5 * 10**9), _alert(100 * 10**9), _alert(0, "low", score=0.2),
              _alert(0, "allowed", src=(0, 0xFFFF0A000009))]
    kept = route(alerts, 0.5, 60.0, lambda hi, lo: lo == 0xFFFF0A000009)
    assert [(a.identifier, a.start_ns, a.repeats) for a in kept] == [("x", 0, 1), ("x", 100 * 10**9, 0)]
    assert kept[0].end_ns == 5 * 10**9 + 10


def test_severity_buckets():
    assert [severity(s) for s in (0.5, 0.7, 0.85, 0.95)] == ["low", "medium", "high", "critical"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    runs = []
    for name in ("a", "b"):
        result = run_cli("analyze", DEMO, "--out", out / name)
        assert result.returncode == 0, result.stderr
        runs.append(out / name)
    return runs


def test_alerts_are_ecs_shaped_and_deterministic(demo_run):
    a, b = demo_run
    text = (a / "alerts.jsonl").read_text()
    assert text == (b / "alerts.jsonl").read_text()
    alerts = [json.loads(line) for line in text.splitlines()]
    assert alerts, "the demo capture holds several stories"
    for alert in alerts:
        assert list(alert)[:4] == ["@timestamp", "event", "rule", "source"]
        assert alert["event"]["start"] <= alert["event"]["end"] == alert["@timestamp"]
        assert alert["@timestamp"].endswith("Z") and "T" in alert["@timestamp"]
        fs = alert["flowsense"]
        assert 0.5 <= fs["score"] <= 1 and fs["evidence_grade"] in ("packets", "flows", "logs")
        assert fs["identifier"].startswith(alert["rule"]["id"] + ":")
        assert alert["threat"]["technique"]["id"] and set(alert["threat"]["technique"]["id"]) <= set(TECHNIQUES)
    stats = json.loads((a / "stats.json").read_text())
    assert stats["alerts"] == len(alerts)
    assert set(stats["detection"]["findings"]) == {d.NAME for d in DETECTORS}


def test_eval_reports_precision_and_recall(demo_run):
    result = run_cli("eval", demo_run[0], "--labels", LABELS, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    fallback = report["by_rule"]["deny_fallback"]
    assert fallback["labels"] == 1 and fallback["detected"] == 1 and fallback["precision"] == 1.0
    assert report["by_analytic"]["AN1376"]["recall"] == 1.0
    text = run_cli("eval", demo_run[0], "--labels", LABELS).stdout
    assert "precision" in text and "alerts on benign hosts" in text


def test_eval_and_baseline_operator_errors(tmp_path, demo_run):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"src": "10.0.0.1"}\n')
    result = run_cli("eval", demo_run[0], "--labels", bad)
    assert result.returncode == 2 and "labels.jsonl:1" in result.stderr
    result = run_cli("eval", tmp_path, "--labels", LABELS)
    assert result.returncode == 3 and "no alerts.jsonl" in result.stderr
    not_npz = tmp_path / "x.npz"
    not_npz.write_text("hello")
    result = run_cli("analyze", DEMO, "-b", not_npz, "--out", tmp_path / "o")
    assert result.returncode == 2 and "baseline build" in result.stderr
    result = run_cli("analyze", DEMO, "-b", tmp_path / "missing.npz", "--out", tmp_path / "o2")
    assert result.returncode == 3 and "no such file" in result.stderr


def test_baseline_build_learns_into_a_copy(tmp_path):
    first = tmp_path / "one.npz"
    result = run_cli("baseline", "build", DEMO, "-o", first)
    assert result.returncode == 0, result.stderr
    assert "hosts" in result.stdout
    from flowsense.baseline import Baseline
    one = Baseline.load(first)
    assert one.pairings.hosts >= 8 and one.meta["captures"] == [str(DEMO)]
    second = tmp_path / "two.npz"
    assert run_cli("baseline", "build", DEMO, "-b", first, "-o", second).returncode == 0
    two = Baseline.load(second)
    assert len(two.meta["captures"]) == 2 and Baseline.load(first).meta["captures"] == [str(DEMO)]
    import numpy as np
    with np.load(first, allow_pickle=False) as data:     # no pickle anywhere in the file
        assert set(data.files) == {"host_pairs", "meta"}
    result = run_cli("analyze", DEMO, "-b", first, "--out", tmp_path / "scored", "--json")
    stats = json.loads(result.stdout)
    assert stats["detection"]["baseline"]["hosts"] == one.pairings.hosts


def test_config_default_is_documented():
    text = run_cli("config", "show", "--defaults").stdout
    for section in ("networks", "allowlist", "calendar", "alerts", "icmp_tunnel", "dns_tunnel", "pairing", "beacon",
                    "egress", "fallback"):
        assert f"[{section}]" in text
    assert Config() == load(None)


def test_unwritable_baseline_output_is_an_output_error(tmp_path):
    result = run_cli("baseline", "build", DEMO, "-o", tmp_path / "missing-folder" / "b.npz")
    assert result.returncode == 3 and "cannot write baseline file" in result.stderr
