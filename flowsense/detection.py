"""Detection stage: packet-grade feature extractors per batch, flows and denies gathered, then the
detectors in registry order over everything a run saw (``finish``), then the alert router.

Packet time drives it all: windows and suppression use batch timestamps, never the wall clock.
Each detector module may declare ``Features`` (a per-batch extractor fed ``Decoded`` batches,
its state in arrays) and must declare ``detect(evidence) -> list[Alert]``; a detector that needs
what another found (deny_fallback) reads ``evidence.found``, filled in registry order."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from flowsense.alerts import Alert, route
from flowsense.config import Config
from flowsense.decode.packets import Decoded
from flowsense.features.app import label_apps
from flowsense.features.names import ResolvedNames
from flowsense.features.pairing import Pairings
from flowsense.nets import AddressSet
from flowsense.schema import DENY, FLOW


@dataclass
class Context:
    """What every detector may consult besides the traffic: config, address sets, baseline."""
    config: Config
    baseline: object | None = None

    def __post_init__(self):
        self.internal = AddressSet(self.config.networks.internal)
        self.allow_hosts = AddressSet(self.config.allowlist.hosts)
        self.pingers = AddressSet(self.config.allowlist.pingers)
        self.allow_ports = frozenset(int(p) for p in self.config.allowlist.ports)
        self.allow_domains = tuple(str(d).lower().strip(".") for d in self.config.allowlist.domains)

    def domain_allowed(self, domain: str) -> bool:
        domain = domain.lower().strip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.allow_domains)


@dataclass
class Denies:
    """DENY rows with the text columns (vendor, device, rule) and the files they came from."""
    rows: np.ndarray = field(default_factory=lambda: DENY.empty(0))
    text: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)

    @classmethod
    def of(cls, reader) -> Denies:
        if reader is None:
            return cls()
        return cls(reader.rows(), reader.text_columns(), list(reader.sources))


@dataclass
class Evidence:
    """Everything a run saw, handed to each detector."""
    context: Context
    grade: str                  # "packets" (pcap, sensor) or "flows" (NetFlow)
    flows: np.ndarray           # FLOW rows in start-time order, ``app`` set
    denies: Denies
    features: dict              # detector name -> its Features instance (packet grade only)
    names: ResolvedNames = field(default_factory=ResolvedNames)  # DNS answers: (client, address) -> domain
    found: list[Alert] = field(default_factory=list)   # alerts of the detectors that ran before

    @property
    def config(self) -> Config:
        return self.context.config

    @cached_property
    def pairing_reference(self) -> tuple[Pairings, str]:
        """Which pairings hosts use, and where that comes from: the baseline when one was given,
        else this run's own flows (built once, shared by the detectors that judge rarity)."""
        if self.context.baseline is not None:
            return self.context.baseline.pairings, f"baseline {self.context.baseline.meta.get('file')}"
        return Pairings.of_flows(self.flows), "this capture (no baseline given)"


class Detection:
    def __init__(self, config: Config, baseline=None, grade: str = "packets"):
        from flowsense.detectors import DETECTORS
        self.context = Context(config, baseline)
        self.grade = grade
        self.detectors = DETECTORS
        self.features = {d.NAME: d.Features(self.context) for d in DETECTORS
                         if grade == "packets" and hasattr(d, "Features")}
        self._flows: list[np.ndarray] = []
        self.names = ResolvedNames()

    def update(self, batch: Decoded) -> None:
        """Feed one decoded batch to the packet-grade extractors."""
        self.names.update(batch)
        for extractor in self.features.values():
            extractor.update(batch)

    def add_flows(self, flows: np.ndarray) -> np.ndarray:
        """Keep ended flows for the flow-grade features (app labelled here); returns them."""
        label_apps(flows)
        self._flows.append(flows)
        return flows

    def finish(self, denies: Denies | None = None) -> tuple[list[Alert], dict]:
        """Run every detector; returns the routed alerts and per-detector counts for stats."""
        flows = np.concatenate(self._flows) if self._flows else FLOW.empty(0)
        flows = flows[np.argsort(flows["ts"], kind="stable")]
        ev = Evidence(self.context, self.grade, flows, denies or Denies(), self.features, self.names)
        counts = {}
        for detector in self.detectors:
            found = detector.detect(ev)
            counts[detector.NAME] = len(found)
            ev.found.extend(found)
        alerts_cfg = self.context.config.alerts
        allowed = self.context.allow_hosts
        routed = route(ev.found, alerts_cfg.min_score, alerts_cfg.suppress_window_s,
                       lambda hi, lo: bool(allowed) and allowed.has(hi, lo))
        return routed, {"findings": counts, "alerts": len(routed)}
