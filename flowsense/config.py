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
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"config: [denylog].timezone {self.timezone!r} is not an IANA zone name "
                             "(e.g. UTC, Europe/Berlin, America/New_York)") from None


@dataclass(frozen=True)
class CollectConfig:
    rotate_s: float = knob(3600.0, "flowsense collect starts a new flows-<time>.parquet this often", 1.0)


@dataclass(frozen=True)
class Config:
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    pcap: PcapConfig = field(default_factory=PcapConfig)
    denylog: DenylogConfig = field(default_factory=DenylogConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


def _section(cls, name: str, raw: dict):
    valid = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in valid:
            raise UsageError(f"config: unknown key [{name}].{key}; valid keys: {', '.join(valid)}")
        spec = valid[key]
        kind = type(spec.default)
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
            elif isinstance(item, int) and not isinstance(item, bool):
                lines.append(f"{spec.name} = {item:_}")
            else:
                lines.append(f"{spec.name} = {item!r}")
        lines.append("")
    return "\n".join(lines)
