"""One TOML file -> frozen dataclasses, validated once at load.

Every knob has a default, a unit in its name and a doc string; unknown sections or keys are
errors that list the valid ones.  ``flowsense config show --defaults`` prints this as TOML.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from flowsense.errors import UsageError, reading


def knob(default, doc: str, minimum=None):
    """A config value with its documentation; list values are given as tuples (TOML arrays)."""
    return field(default=default, metadata={"doc": doc, "min": minimum})


@dataclass(frozen=True)
class FlowsConfig:
    idle_timeout_s: float = knob(120.0, "a flow with no packet for this long (packet time) ends", 0.001)
    active_timeout_s: float = knob(1800.0, "a flow older than this is emitted and continues as a new record", 1.0)
    tcp_closed_timeout_s: float = knob(
        5.0, "after FIN from both sides or a RST, trailing packets join the flow for this long", 0.0)
    capacity: int = knob(1_000_000, "most flows held at once; beyond it the least recently seen is evicted "
                         "(memory ~150 bytes per flow)", 16)


@dataclass(frozen=True)
class PcapConfig:
    batch_frames: int = knob(65536, "frames decoded per batch (one Numba call each)", 1)


@dataclass(frozen=True)
class DenylogConfig:
    timezone: str = knob("UTC", "IANA zone for syslog stamps that carry none (RFC 3164), e.g. Europe/Berlin")

    def __post_init__(self):
        _check_zone("denylog", self.timezone)


@dataclass(frozen=True)
class CollectConfig:
    rotate_s: float = knob(3600.0, "flowsense collect starts a new flows-<time>.parquet this often", 1.0)


@dataclass(frozen=True)
class NetworksConfig:
    internal: tuple = knob(("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
                            "fe80::/10"),
                           "CIDRs of your own networks: traffic to anything else is egress")

    def __post_init__(self):
        _check_cidrs("networks", "internal", self.internal)


@dataclass(frozen=True)
class AllowlistConfig:
    hosts: tuple = knob((), "addresses or CIDRs never alerted on (as source or destination)")
    domains: tuple = knob((), "registered domains (and their subdomains) exempt from DNS-tunnel and beacon alerts, "
                              "e.g. CDN or telemetry domains")
    ports: tuple = knob((), "destination ports exempt from port/protocol rarity alerts, e.g. [8080, 8443]")
    pingers: tuple = knob((), "monitoring hosts (addresses or CIDRs) whose ICMP is expected: no ICMP alerts for them")

    def __post_init__(self):
        _check_cidrs("allowlist", "hosts", self.hosts)
        _check_cidrs("allowlist", "pingers", self.pingers)


@dataclass(frozen=True)
class CalendarConfig:
    timezone: str = knob("UTC", "IANA zone of the business-hours calendar")
    business_hours: str = knob("08:00-18:00", "working hours (local time, HH:MM-HH:MM)")
    business_days: tuple = knob(("Mon", "Tue", "Wed", "Thu", "Fri"), "working days")
    off_hours_weight: float = knob(1.25, "egress and scan scores are multiplied by this outside business hours "
                                   "(capped at 1)", 1.0)

    def __post_init__(self):
        _check_zone("calendar", self.timezone)
        import re
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", self.business_hours):
            raise UsageError(f"config: [calendar].business_hours must look like 08:00-18:00, "
                             f"got {self.business_hours!r}")
        bad = [d for d in self.business_days if d not in DAYS]
        if bad:
            raise UsageError(f"config: [calendar].business_days has {bad}; use {', '.join(DAYS)}")


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class AlertsConfig:
    min_score: float = knob(0.5, "alerts scoring below this are not written", 0.0)
    suppress_window_s: float = knob(3600.0, "a finding with the same identifier within this time of the last "
                                    "one is merged into it, not repeated", 0.0)


def _check_zone(section: str, zone: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"config: [{section}].timezone {zone!r} is not an IANA zone name "
                         "(e.g. UTC, Europe/Berlin, America/New_York)") from None


def _check_cidrs(section: str, key: str, values: tuple):
    import ipaddress
    for v in values:
        try:
            ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            raise UsageError(f"config: [{section}].{key} entry {v!r} is not an address or CIDR "
                             "(e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)") from None


# --- detector sections: each detector owns its section (flowsense/detectors/<name>.py reads it) ---

@dataclass(frozen=True)
class IcmpTunnelConfig:
    min_packets: int = knob(10, "echo packets a conversation needs before it is judged", 2)


@dataclass(frozen=True)
class DnsTunnelConfig:
    window_s: float = knob(3600.0, "per (client, registered domain) features are judged over windows this long", 1.0)


@dataclass(frozen=True)
class PairingConfig:
    alpha: float = knob(1.0, "additive smoothing of the rarity estimate -log((c+a)/(N+aK))", 0.0)


@dataclass(frozen=True)
class BeaconConfig:
    min_connections: int = knob(4, "distinct connection starts a pair needs before it is judged (RITA: 4)", 3)


@dataclass(frozen=True)
class EgressConfig:
    scan_window_s: float = knob(300.0, "fan-out is counted per source over windows this long", 1.0)


@dataclass(frozen=True)
class FallbackConfig:
    window_s: float = knob(900.0, "a new channel this soon after a block counts as a fallback", 1.0)
    clock_skew_s: float = knob(5.0, "tolerance between firewall log clocks and packet time", 0.0)


@dataclass(frozen=True)
class Config:
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    pcap: PcapConfig = field(default_factory=PcapConfig)
    denylog: DenylogConfig = field(default_factory=DenylogConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    allowlist: AllowlistConfig = field(default_factory=AllowlistConfig)
    calendar: CalendarConfig = field(default_factory=CalendarConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    icmp_tunnel: IcmpTunnelConfig = field(default_factory=IcmpTunnelConfig)
    dns_tunnel: DnsTunnelConfig = field(default_factory=DnsTunnelConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    beacon: BeaconConfig = field(default_factory=BeaconConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)


def _section(cls, name: str, raw: dict):
    valid = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in valid:
            raise UsageError(f"config: unknown key [{name}].{key}; valid keys: {', '.join(valid)}")
        spec = valid[key]
        kind = type(spec.default)
        if kind is tuple:
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                      for v in value):
                raise UsageError(f"config: [{name}].{key} must be a list of strings or numbers, got {value!r}")
            value = tuple(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise UsageError(f"config: [{name}].{key} must be a {kind.__name__}, got {value!r}")
        if spec.metadata["min"] is not None and value < spec.metadata["min"]:
            raise UsageError(f"config: [{name}].{key} must be >= {spec.metadata['min']}, got {value!r}")
        values[key] = value
    return cls(**values)


def load(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    try:
        with reading(f"config file {path}"):
            text = Path(path).read_text()
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path} is not valid TOML ({err}); "
                         "see `flowsense config show --defaults`") from None
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for name, body in raw.items():
        if name not in sections or not isinstance(body, dict):
            raise UsageError(f"config: unknown section [{name}]; valid sections: {', '.join(sections)}")
        built[name] = _section(sections[name].default_factory, name, body)
    return Config(**built)


def _toml_scalar(v) -> str:
    return f'"{v}"' if isinstance(v, str) else repr(v)


def to_toml(config: Config) -> str:
    lines = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        value = getattr(config, section.name)
        for spec in dataclasses.fields(value):
            lines.append(f"# {spec.metadata['doc']}")
            item = getattr(value, spec.name)
            if isinstance(item, str):
                lines.append(f'{spec.name} = "{item}"')
            elif isinstance(item, tuple):
                lines.append(f"{spec.name} = [{', '.join(map(_toml_scalar, item))}]")
            elif isinstance(item, int) and not isinstance(item, bool):
                lines.append(f"{spec.name} = {item:_}")
            else:
                lines.append(f"{spec.name} = {item!r}")
        lines.append("")
    return "\n".join(lines)
