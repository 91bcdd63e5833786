"""Precision and recall of an output folder's alerts against labels, per rule and per analytic.

A label line says which source should raise which rule (and analytics) during a time window:
``{"story": ..., "src": "198.18.10.50", "start": ISO, "end": ISO, "rule": "beacon", "analytics": ["AN0597"]}``;
a label with ``"rule": null`` marks a benign host (any alert from it is a false positive).  A label may
list ``"accept": [rule, ...]``: findings of those rules from that source in that window are true side
findings (an HTTP beacon on port 443 is also HTTP on 443), counted as neither hit nor false positive.
An alert matches a label when the source address is the label's, the rule (or analytic) agrees and
the alert's [start, end] overlaps the label window widened by ``slack_s``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from flowsense.errors import InputError, UsageError, reading


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_labels(path: str | Path) -> list[dict]:
    with reading(f"labels file {path}"):
        lines = Path(path).read_text().splitlines()
    labels = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            label = json.loads(line)
            label["_start"], label["_end"] = _ts(label["start"]), _ts(label["end"])
            label.setdefault("analytics", [])
            label.setdefault("rule", None)
            label.setdefault("accept", [])
            label["src"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{path}:{n}: not a label line ({err}); expected JSON with src, start, end, rule, "
                             "analytics") from None
        labels.append(label)
    return labels


def load_alerts(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "alerts.jsonl"
    if not path.exists():
        raise InputError(f"{out_dir}: no alerts.jsonl; give the output folder of `flowsense analyze`")
    with reading(f"alerts file {path}"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _overlaps(alert: dict, label: dict, slack_s: float) -> bool:
    start, end = _ts(alert["event"]["start"]), _ts(alert["event"]["end"])
    return start <= label["_end"] + slack_s and end >= label["_start"] - slack_s


def evaluate(labels: list[dict], alerts: list[dict], slack_s: float = 5.0) -> dict:
    """Per rule and per analytic: true/false positives, missed labels, precision, recall."""
    def matches(alert, label, kind, value):
        if alert["source"]["ip"] != label["src"] or not _overlaps(alert, label, slack_s):
            return False
        return (label["rule"] == value) if kind == "rule" else (value in label["analytics"])

    def values(kind):
        names = set()
        for label in labels:
            names |= {label["rule"]} if kind == "rule" else set(label["analytics"])
        for a in alerts:
            names |= {a["rule"]["id"]} if kind == "rule" else set(a["flowsense"]["analytic"])
        return sorted(names - {None})

    result = {}
    for kind in ("rule", "analytic"):
        table = {}
        for value in values(kind):
            emitted = [a for a in alerts if (a["rule"]["id"] == value if kind == "rule"
                                             else value in a["flowsense"]["analytic"])]
            wanted = [lb for lb in labels if (lb["rule"] == value if kind == "rule" else value in lb["analytics"])]
            tp = [a for a in emitted if any(matches(a, lb, kind, value) for lb in wanted)]
            found = [lb for lb in wanted if any(matches(a, lb, kind, value) for a in emitted)]
            side = [a for a in emitted if a not in tp and any(
                a["rule"]["id"] in lb["accept"] and a["source"]["ip"] == lb["src"] and _overlaps(a, lb, slack_s)
                for lb in labels)]
            table[value] = {
                "alerts": len(emitted), "true_positives": len(tp), "accepted_side_findings": len(side),
                "false_positives": len(emitted) - len(tp) - len(side),
                "labels": len(wanted), "detected": len(found),
                "precision": round(len(tp) / (len(emitted) - len(side)), 3) if len(emitted) > len(side) else None,
                "recall": round(len(found) / len(wanted), 3) if wanted else None,
                "missed": [lb.get("story", lb["src"]) for lb in wanted if lb not in found],
            }
        result[f"by_{kind}"] = table
    benign = {lb["src"] for lb in labels if lb["rule"] is None}
    result["alerts_on_benign_hosts"] = [
        {"src": a["source"]["ip"], "rule": a["rule"]["id"], "name": a["rule"]["name"], "score": a["flowsense"]["score"]}
        for a in alerts if a["source"]["ip"] in benign]
    return result


def render(result: dict) -> str:
    lines = []
    for kind in ("rule", "analytic"):
        lines.append(f"{kind:18} {'alerts':>6} {'TP':>4} {'side':>4} {'FP':>4} {'labels':>6} {'found':>5} "
                     f"{'precision':>9} {'recall':>6}")
        for name, r in result[f"by_{kind}"].items():
            p = "-" if r["precision"] is None else f"{r['precision']:.2f}"
            rc = "-" if r["recall"] is None else f"{r['recall']:.2f}"
            lines.append(f"{name:18} {r['alerts']:6} {r['true_positives']:4} {r['accepted_side_findings']:4} "
                         f"{r['false_positives']:4} "
                         f"{r['labels']:6} {r['detected']:5} {p:>9} {rc:>6}"
                         + (f"   missed: {', '.join(r['missed'])}" if r["missed"] else ""))
        lines.append("")
    benign = result["alerts_on_benign_hosts"]
    lines.append(f"alerts on benign hosts: {len(benign)}")
    lines += [f"  {b['src']}: {b['rule']} ({b['name']}, score {b['score']})" for b in benign]
    return "\n".join(lines)
