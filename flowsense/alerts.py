"""Findings -> ECS-style alert objects: severity buckets, suppression by identifier, stable order.

A detector returns ``Alert`` values; the router here drops allowlisted and low-scoring ones, merges
repeats of one identifier within the suppression window (the merged alert carries ``repeats``) and
writes one JSON object per line in a fixed key order, so the same input gives the same bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from flowsense.attack import RULES, TECHNIQUES
from flowsense.nets import addr_str

SEVERITIES = ((0.9, "critical"), (0.8, "high"), (0.65, "medium"), (0.0, "low"))


def severity(score: float) -> str:
    return next(name for floor, name in SEVERITIES if score >= floor)


def iso(ns: int) -> str:
    """ISO 8601 UTC with microseconds."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


@dataclass
class Alert:
    """One finding.  ``src``/``dst`` are (hi, lo) address halves as in the batches."""
    rule: str
    start_ns: int
    end_ns: int
    src: tuple[int, int]
    score: float
    identifier: str
    evidence: dict
    grade: str = "packets"
    sport: int | None = None
    dst: tuple[int, int] | None = None
    dport: int | None = None
    transport: str | None = None
    name: str | None = None              # a more specific rule name, e.g. "SSH on TCP/443"
    analytics: tuple[str, ...] = ()      # replaces the rule's analytics when set
    techniques: tuple[str, ...] = ()     # added to the rule's techniques
    repeats: int = field(default=0)

    def to_json(self) -> dict:
        rule = RULES[self.rule]
        techniques = list(dict.fromkeys(rule.techniques + tuple(self.techniques)))
        out = {
            "@timestamp": iso(self.end_ns),
            "event": {"kind": "alert", "category": ["network"], "start": iso(self.start_ns), "end": iso(self.end_ns)},
            "rule": {"id": self.rule, "name": self.name or rule.name, "ruleset": "flowsense"},
            "source": {"ip": addr_str(*self.src), "port": self.sport},
        }
        if self.dst is not None:
            out["destination"] = {"ip": addr_str(*self.dst), "port": self.dport}
        out["network"] = {"transport": self.transport}
        out["threat"] = {"framework": "MITRE ATT&CK",
                         "technique": {"id": techniques, "name": [TECHNIQUES[t] for t in techniques]}}
        out["flowsense"] = {"analytic": list(self.analytics or rule.analytics), "score": round(float(self.score), 3),
                            "severity": severity(self.score), "evidence_grade": self.grade,
                            "evidence": self.evidence, "identifier": self.identifier, "repeats": self.repeats}
        return out


def route(alerts: list[Alert], min_score: float, suppress_window_s: float, allowed) -> list[Alert]:
    """Alerts worth writing, in a deterministic order: allowlisted sources/destinations dropped,
    scores below ``min_score`` dropped, repeats of an identifier within the window merged.
    ``allowed(hi, lo) -> bool`` says whether an address is allowlisted."""
    window = int(suppress_window_s * 1e9)
    kept: list[Alert] = []
    last: dict[str, Alert] = {}
    for a in sorted(alerts, key=lambda a: (a.start_ns, a.rule, a.identifier, -a.score)):
        if a.score < min_score or allowed(*a.src) or (a.dst is not None and allowed(*a.dst)):
            continue
        prev = last.get(a.identifier)
        if prev is not None and a.start_ns - prev.end_ns <= window:
            prev.end_ns = max(prev.end_ns, a.end_ns)
            prev.repeats += 1
            if a.score > prev.score:
                prev.score, prev.evidence = a.score, a.evidence
            continue
        last[a.identifier] = a
        kept.append(a)
    return kept


def write_jsonl(alerts: list[Alert], path, append: bool = False) -> None:
    with open(path, "a" if append else "w") as out:
        for a in alerts:
            out.write(json.dumps(a.to_json(), separators=(", ", ": "), default=_plain) + "\n")


def _plain(value):
    """NumPy scalars and arrays inside evidence become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"evidence value of type {type(value).__name__} is not JSON")


class AlertLog:
    """alerts.jsonl of a long-running front door (sense, collect), written one detection window at a
    time: an identifier already reported within the suppression window is not repeated by a later
    window, new alerts are also forwarded (``[alerts] forward_*``), and counts by analytic are kept."""

    def __init__(self, config, out_dir):
        from flowsense.sinks.forward import Forwarder

        self.config, self.path = config, out_dir / "alerts.jsonl"
        self.path.touch()
        self.forward = Forwarder(config.alerts)
        self.reported: dict[str, int] = {}
        self.by_analytic: dict[str, int] = {}
        self.alerts = 0

    def write(self, found: list[Alert], since_ns: int | None = None) -> None:
        """Append the window's alerts not already reported; ``since_ns`` (the window's start) lets
        identifiers too old to suppress anything be forgotten, so the record stays bounded."""
        window = int(self.config.alerts.suppress_window_s * 1e9)
        if since_ns is not None:
            self.reported = {k: v for k, v in self.reported.items() if v >= since_ns - window}
        new = [a for a in found if a.start_ns - self.reported.get(a.identifier, -(2**62)) > window]
        for a in new:
            self.reported[a.identifier] = a.end_ns
            for analytic in a.analytics or RULES[a.rule].analytics or ("none",):
                self.by_analytic[analytic] = self.by_analytic.get(analytic, 0) + 1
        write_jsonl(new, self.path, append=True)
        self.forward.send([a.to_json() for a in new])
        self.alerts += len(new)

    def stats(self) -> dict:
        return {"alerts": self.alerts, "alerts_by_analytic": dict(self.by_analytic), "forwarded": self.forward.stats()}
