"""One TOML file -> frozen dataclasses, validated once at load.

Every knob has a default, a unit in its name and a doc string; unknown sections or keys are
errors that list the valid ones.  ``flowsense config show --defaults`` prints this as TOML.
"""

from __future__ import annotations

import dataclasses
import json
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
    detect_every_s: float = knob(900.0, "flowsense collect runs the detectors over the records of this much wall "
                                 "time (and at stop), appending to alerts.jsonl", 1.0)


@dataclass(frozen=True)
class SenseConfig:
    interfaces: tuple = knob((), "interfaces `flowsense sense` and `flowsense run` capture from (--iface adds more)")
    bpf: str = knob("", "kernel BPF filter in tcpdump syntax (--bpf overrides), e.g. \"not port 22\"; empty: all")
    snaplen: int = knob(65535, "bytes kept of each packet (headers, DNS and payload heads need a few hundred)", 96)
    promiscuous: bool = knob(True, "put the interfaces in promiscuous mode (a mirror port carries others' frames)")
    ring_block_kib: int = knob(1024, "TPACKET_V3 ring block size in KiB, a power of two", 4)
    ring_blocks: int = knob(64, "blocks per interface ring (ring memory = blocks x block size)", 2)
    block_timeout_ms: int = knob(100, "the kernel hands over a part-filled block after this long", 1)
    fanout_group: int = knob(0, "PACKET_FANOUT group (1-65535): sensor processes on one interface with the same group "
                                "share its flows by hash, each with its own --out; 0: no fanout", 0)
    rotate_s: float = knob(3600.0, "start new flows-/dns-<time>.parquet files this often (wall time)", 1.0)
    detect_every_s: float = knob(900.0, "run the detectors over this much packet time (and at stop), appending to "
                                 "alerts.jsonl", 1.0)
    window_flows: int = knob(2_000_000, "flow records kept for the next detection; more run it early (bounds memory)",
                             1000)
    stats_every_s: float = knob(5.0, "rewrite stats.json this often", 0.5)
    metrics_listen: str = knob("127.0.0.1:9108", "HOST:PORT serving Prometheus /metrics; empty: no endpoint")
    netflow_listen: tuple = knob((), "`flowsense run` also collects NetFlow/IPFIX on these HOST:PORT (into OUT/netflow)")
    syslog_listen: tuple = knob((), "also take firewall deny logs by syslog (UDP and TCP) on these HOST:PORT")
    deny_logs: tuple = knob((), "also follow these firewall log files (new lines, across rotation)")

    def __post_init__(self):
        if self.fanout_group > 65535:
            raise UsageError(f"config: [sense].fanout_group must be 0-65535, got {self.fanout_group}")


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
    forward_syslog: str = knob("", "sense/collect/run: also send each alert as CEF over syslog (UDP) to this "
                                   "HOST:PORT, e.g. a SIEM's collector; empty: none")
    forward_stdout: bool = knob(False, "sense/collect/run: also print each alert as a JSON line on stdout")


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
    min_packets: int = knob(10, "packets an ICMP conversation needs before its behaviour (size variety, interval "
                            "entropy, volume) adds to the score; content evidence (tool signature, inner IP header, "
                            "payload that is no OS ping pattern, replies that do not echo) counts from the first", 2)
    capacity: int = knob(32768, "ICMP conversations held at once (~800 bytes each); when 3/4 full the least recently "
                         "seen half is evicted, those without tunnel evidence first", 16)
    histogram_rows: int = knob(4096, "conversations with non-OS payload that get a 256-bin byte histogram "
                               "(1 KiB each); beyond it byte entropy is left out of their evidence", 1)
    retired_max: int = knob(4096, "evicted conversations with tunnel evidence kept for the end-of-run verdict", 1)
    flows_min_packets: int = knob(20, "NetFlow grade: echo requests a host pair needs before it is judged", 2)
    flows_min_bytes: int = knob(65536, "NetFlow grade: IP bytes (both directions) a host pair needs before it is "
                                "judged", 0)


@dataclass(frozen=True)
class DnsTunnelConfig:
    window_s: float = knob(3600.0, "per (client, registered domain) features are judged over windows this long", 1.0)
    info_floor_bytes: int = knob(256, "unique query bytes (summed lengths of distinct subdomains) per window below "
                                 "which the information subscore is 0", 1)
    info_full_bytes: int = knob(4096, "unique query bytes per window at which the information subscore is 1 "
                                "(Paxson et al. 2013 budget 4 kB per domain per day; log scale in between)", 2)
    long_name_chars: int = knob(70, "a query name longer than this is long (Sigma DNS tunnel rules: > 70)", 1)
    long_label_chars: int = knob(48, "a first label longer than this is long (nDPI: > 48)", 1)
    large_response_bytes: int = knob(512, "DNS responses larger than this count as large (classic UDP DNS limit)", 1)
    capacity: int = knob(32768, "(client, registered domain) pairs held per window; a full table closes the "
                         "window early, counted (up to ~1 kB per pair)", 16)
    unique_capacity: int = knob(500_000, "distinct subdomains held per window over all pairs (up to ~32 bytes "
                                "each)", 16)
    flows_min_packets: int = knob(200, "NetFlow only: UDP/53 request packets from one client to one server per "
                                  "window before they are judged", 1)
    flows_min_mean_bytes: int = knob(160, "NetFlow only: mean IP bytes per request packet that looks like "
                                     "tunnel queries (ordinary queries are ~60-100 B)", 1)


@dataclass(frozen=True)
class PairingConfig:
    alpha: float = knob(1.0, "additive smoothing of the rarity estimate -log2((c+a)/(N+aK))", 0.0)
    rare_fraction: float = knob(0.02, "a pairing used by at most this share of hosts (and at least by one) is rare",
                                0.0)
    confident_hosts: int = knob(20, "hosts a reference (baseline or capture) needs before rarity counts fully; "
                                "with fewer, rarity adds proportionally less", 1)


@dataclass(frozen=True)
class BeaconConfig:
    min_connections: int = knob(6, "check-ins (distinct connection starts, or bursts inside one session) a series "
                                "needs before it is judged; RITA uses 4, 6 keeps a 4-5 times seen timer (an hourly "
                                "update check in a short capture) quiet", 3)
    min_span_s: float = knob(30.0, "a series must last this long (first to last check-in) to be judged: scanners "
                             "and retry loops repeat on a seconds timer for seconds (nmap -sT: 6 tries in 5 s)", 0.0)
    burst_gap_s: float = knob(1.0, "payload after this much silence in a conversation is a new check-in; connection "
                              "starts closer than this are one check-in", 0.001)
    jitter_ok_ratio: float = knob(0.04, "jitter ratio (std of the per-beat phase residuals / period, judged at "
                                  "x (1 + 1.5/sqrt(in-phase intervals))) up to this gets full periodicity credit; "
                                  "a +-j uniform timer measures j/sqrt(3): +-7 % -> 0.04", 0.0)
    jitter_max_ratio: float = knob(0.13, "jitter ratio at or above this gets none (+-22 % uniform; a benign update "
                                   "checker with 20-30 % jitter sits here); credit falls linearly in between",
                                   0.001)
    min_beat_ratio: float = knob(0.7, "share of the expected beats that must be seen for full periodicity credit "
                                 "(missed beats below it lower the score proportionally: sparse events fit some "
                                 "period by chance when most beats may be missing)", 0.01)
    infrastructure_factor: float = knob(0.45, "score multiplier for NTP on UDP/123, DHCP on UDP/67 or 547, and DNS "
                                        "on 53 to an internal or listed public resolver (protocol checked from "
                                        "payload, not just the port); below 0.5 even a perfect timer stays under "
                                        "the default alert floor", 0.0)
    resolvers: tuple = knob(("8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
                             "208.67.222.222", "208.67.220.220", "2001:4860:4860::8888", "2001:4860:4860::8844",
                             "2606:4700:4700::1111", "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9"),
                            "public DNS resolvers (addresses or CIDRs) whose periodic DNS is damped like an internal "
                            "resolver's")
    table_capacity: int = knob(262_144, "conversations tracked at once for in-session bursts (32 bytes each); "
                               "beyond it the least recently active of a probe window is evicted (counted)", 16)

    def __post_init__(self):
        _check_cidrs("beacon", "resolvers", self.resolvers)


@dataclass(frozen=True)
class EgressConfig:
    scan_window_s: float = knob(300.0, "fan-out is counted per source over windows this long (Zeek scan.zeek: 5 min)",
                                1.0)
    scan_hosts: int = knob(25, "distinct hosts one source probed on one port within a window that make an address "
                           "scan (Zeek Scan::addr_scan_threshold)", 1)
    scan_ports: int = knob(15, "distinct ports one source probed on one host within a window that make a port scan "
                           "(Zeek Scan::port_scan_threshold)", 1)
    scan_ports_per_minute: int = knob(50, "distinct (host, port) pairs one source probed within a minute that make a "
                                      "fast scan (Elastic)", 1)
    scan_slow_factor: float = knob(4.0, "over the whole run (slow scans) the thresholds above are multiplied by this",
                                   1.0)
    scan_fingerprint_packets: int = knob(8, "probe packets matching a scanner fingerprint (masscan/zmap IP id, nmap "
                                         "windows, no TCP options) before the fingerprint counts", 1)
    scan_sources_capacity: int = knob(65536, "probing sources the packet fingerprint table tracks at once (~150 bytes "
                                      "each); when full, sources without fingerprint evidence are evicted", 16)
    upload_mb: float = knob(50.0, "upload (originator bytes, 1 MB = 10^6) to one outside peer that counts as "
                            "high-volume egress (scores 0.5 when upload-heavy)", 0.001)
    long_connection_h: float = knob(1.0, "covered time with one outside peer that starts the long-connection "
                                    "buckets (RITA: 1/4/8/12 h)", 0.001)
    sustained_rate_bytes_s: float = knob(1000.0, "mean upload rate over the covered time above which a long "
                                         "connection counts as sustained egress rather than an idle session", 0.0)
    mining_ports: tuple = knob((3333, 4444, 5555, 14444, 45700), "ports of cryptocurrency mining pools "
                               "(stratum): long sessions or relays on them add T1496 Resource Hijacking")
    proxy_max_lag_s: float = knob(2.0, "a relayed outbound connection starts (and ends) within this time of the "
                                  "inbound one", 0.0)
    proxy_byte_tolerance: float = knob(0.2, "relative difference allowed between the payload a relay receives and "
                                       "sends, each direction", 0.0)
    proxy_min_relays: int = knob(5, "matched inbound/outbound connection pairs a host needs to score 0.5 as a "
                                 "relay", 1)
    proxy_min_bytes: int = knob(1000, "payload bytes (both ways) an inbound connection needs to be matched as a "
                                "relay (empty or tiny exchanges match by chance)", 0)


@dataclass(frozen=True)
class FallbackConfig:
    window_s: float = knob(900.0, "a new channel this soon after a block counts as a fallback", 1.0)
    clock_skew_s: float = knob(5.0, "tolerance between firewall log clocks and packet time", 0.0)
    min_attempts: int = knob(2, "refused or unanswered connection attempts to one destination port that make "
                             "traffic evidence of a block (one deny-log line or one ICMP prohibited suffices)", 1)
    scan_ports: int = knob(10, "a host blocked on more distinct ports than this in one window is scanning, "
                           "not falling back: its blocks are left to the scan detector", 2)
    max_gap_bonus_s: float = knob(120.0, "a new channel within this time of the last block scores higher", 0.0)


@dataclass(frozen=True)
class Config:
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    pcap: PcapConfig = field(default_factory=PcapConfig)
    denylog: DenylogConfig = field(default_factory=DenylogConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    sense: SenseConfig = field(default_factory=SenseConfig)
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
    return json.dumps(v) if isinstance(v, str) else repr(v)  # a JSON string is a valid TOML basic string


def to_toml(config: Config) -> str:
    lines = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        value = getattr(config, section.name)
        for spec in dataclasses.fields(value):
            lines.append(f"# {spec.metadata['doc']}")
            item = getattr(value, spec.name)
            if isinstance(item, bool):
                lines.append(f"{spec.name} = {'true' if item else 'false'}")
            elif isinstance(item, str):
                lines.append(f'{spec.name} = {_toml_scalar(item)}')
            elif isinstance(item, tuple):
                lines.append(f"{spec.name} = [{', '.join(map(_toml_scalar, item))}]")
            elif isinstance(item, int) and not isinstance(item, bool):
                lines.append(f"{spec.name} = {item:_}")
            else:
                lines.append(f"{spec.name} = {item!r}")
        lines.append("")
    return "\n".join(lines)
