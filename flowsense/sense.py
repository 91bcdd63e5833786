"""`flowsense sense`: the SPAN-port sensor.  Live capture into the same decode -> flows -> detectors
pipeline as `analyze`, for months at a time.

- Each interface has a TPACKET_V3 ring (``sources/span.py``); one poll waits on all of them, and
  every handed-over block is decoded in one batch straight from the ring.
- Flows expire on packet time and go to hourly ``flows-<UTC>.parquet`` (and ``dns-<UTC>.parquet``);
  a restart with the same --out adds files and appends to alerts.jsonl, never overwrites.
- The detectors run over windows of packet time (``[sense] detect_every_s``, or earlier when
  ``window_flows`` records wait: memory stays bounded), and at stop; an alert already reported
  within the suppression window is not repeated.
- ``stats.json`` is rewritten every few seconds and a Prometheus ``/metrics`` endpoint serves the
  same counters: packets, bytes, kernel drops (PACKET_STATISTICS), ring fill, flow-table load,
  alerts by analytic, decode weirds.
- SIGTERM/SIGINT: drain the rings, flush every open flow, run the last detection, exit 0.
  SIGHUP: reload the config file; allowlists and thresholds apply from the next detection on
  (ring, filter and flow-table settings need a restart, and stats.json says so).
"""

from __future__ import annotations

import gc
import select
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from flowsense import __version__
from flowsense.config import Config, to_toml
from flowsense.errors import FlowsenseError, InputError, UsageError

POLL_S = 0.1
FLOW_DICT_COLUMNS = ("orig_h", "resp_h", "proto", "conn_state", "app", "end_reason", "file")
DNS_DICT_COLUMNS = ("src_h", "dst_h", "proto", "qname", "file")
RESTART_KNOBS = ("flows", "sense", "pcap")  # sections whose changes need a restart


class PacketWindows:
    """Packet-grade detection over windows of packet time, written through an AlertLog."""

    def __init__(self, config: Config, out_dir: Path):
        from flowsense.alerts import AlertLog

        self.config = config
        self.log = AlertLog(config, out_dir)
        self.windows = self.cut_early = 0
        self._start()

    def _start(self):
        from flowsense.detection import Detection
        self.detection, self.opened_ns, self.flows = Detection(self.config), None, 0

    def update(self, batch) -> None:
        if len(batch.packets) and self.opened_ns is None:
            self.opened_ns = int(batch.packets["ts"].min())
        self.detection.update(batch)

    def add_flows(self, flows: np.ndarray) -> None:
        self.detection.add_flows(flows)
        self.flows += len(flows)

    def due(self, now_ns: int | None) -> bool:
        if self.flows >= self.config.sense.window_flows:
            self.cut_early += 1
            return True
        return self.opened_ns is not None and now_ns is not None and \
            now_ns - self.opened_ns >= self.config.sense.detect_every_s * 1e9

    def run(self, denies=None) -> None:
        from flowsense.detection import Context, Denies

        self.detection.context = Context(self.config, None)  # a reloaded config applies from now on
        found, _ = self.detection.finish(Denies.of(denies.reader) if denies else None)
        self.log.write(found, self.opened_ns)
        self.windows += 1
        # the finished window's feature tables sit in reference cycles, which the collector only
        # reaches after many more container allocations: free them now, or each window adds its tables
        self.detection = None
        gc.collect()
        self._start()

    def stats(self) -> dict:
        return {"windows": self.windows, "windows_cut_early": self.cut_early, **self.log.stats()}


class Metrics:
    """A Prometheus text endpoint on its own thread, serving the latest snapshot the loop gave it."""

    def __init__(self, listen: str):
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or int(port) > 65535:
            raise UsageError(f"metrics address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9108 (port 0: any free)")
        port = int(port)
        self.text = ""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = metrics.text.encode() if self.path.split("?")[0] == "/metrics" else b"see /metrics\n"
                self.send_response(200 if self.path.split("?")[0] == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = type("MetricsServer", (ThreadingHTTPServer,),
                      {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
        try:
            self.server = server((host, port), Handler)
        except OSError as err:
            raise InputError(f"metrics endpoint {listen}: cannot bind ({err.strerror}); pick another "
                             "[sense].metrics_listen or --metrics, or '' to turn it off") from None
        self.address = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="flowsense-metrics", daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def render_metrics(stats: dict) -> str:
    """stats.json's live counters in the Prometheus text format."""
    lines = []

    def metric(name: str, kind: str, doc: str, samples: list[tuple[dict, float]]):
        lines.append(f"# HELP flowsense_{name} {doc}")
        lines.append(f"# TYPE flowsense_{name} {kind}")
        for labels, value in samples:
            tags = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"flowsense_{name}{{{tags}}} {value}" if tags else f"flowsense_{name} {value}")

    ifaces = stats["interfaces"]
    metric("packets_total", "counter", "frames decoded", [({"iface": k}, v["packets"]) for k, v in ifaces.items()])
    metric("bytes_total", "counter", "bytes on the wire", [({"iface": k}, v["bytes"]) for k, v in ifaces.items()])
    metric("kernel_drops_total", "counter", "packets the kernel dropped (ring full)",
           [({"iface": k}, v["kernel_drops"]) for k, v in ifaces.items()])
    metric("ring_fill_ratio", "gauge", "share of ring blocks waiting for the sensor",
           [({"iface": k}, v["ring_fill"]) for k, v in ifaces.items()])
    meter = stats["flow_meter"]
    metric("flows_active", "gauge", "flows in the flow table", [({}, meter["active"])])
    metric("flow_table_load_ratio", "gauge", "flow table fill", [({}, round(meter["active"] / meter["capacity"], 6))])
    metric("flows_evicted_total", "counter", "flows evicted from a full table", [({}, meter["evicted"])])
    metric("flows_total", "counter", "flow records written", [({}, stats["flows"])])
    metric("alerts_total", "counter", "alerts written, by analytic",
           [({"analytic": k}, v) for k, v in sorted(stats["detection"]["alerts_by_analytic"].items())])
    metric("weird_total", "counter", "decode problems, by name", [({"name": k}, v) for k, v in stats["weird"].items()])
    metric("uptime_seconds", "gauge", "seconds since start", [({}, stats["uptime_s"])])
    return "\n".join(lines) + "\n"


def _warm_up(decoder) -> None:
    """Load (or compile) the kernels before the loop starts, so the first blocks do not wait on Numba."""
    from flowsense.schema import FRAME
    from flowsense.sources.span import walk_ring

    ring = np.zeros(4096, np.uint8)
    walk_ring(ring, 4096, 1, 0, 1, 0, 0, False, FRAME.empty(1))
    decoder.decode(ring, FRAME.empty(0))


def sense(ifaces: list[str], config: Config, out_dir: Path, bpf: str | None = None, syslog: list[str] = (),
          deny_logs: list[str] = (), deny_format: str | None = None, metrics_listen: str | None = None,
          config_path: str | None = None, stop: threading.Event | None = None) -> dict:
    """Capture until ``stop`` (or SIGINT/SIGTERM when run on the main thread); returns the final stats."""
    s = config.sense
    names = list(dict.fromkeys([*s.interfaces, *ifaces]))
    if not names:
        raise UsageError("no interface to capture from; give --iface IFACE (or [sense].interfaces in the config)")
    sensor = Sensor(config, out_dir, config_path)
    try:
        sensor.open(names, s.bpf if bpf is None else bpf, s.metrics_listen if metrics_listen is None else metrics_listen,
                    [*s.syslog_listen, *syslog], [*s.deny_logs, *deny_logs], deny_format)
        return sensor.run(stop or threading.Event())
    finally:
        sensor.close()


class Sensor:
    """The parts of a sensor run and the loop that drives them."""

    def __init__(self, config: Config, out_dir: Path, config_path: str | None):
        from flowsense.decode.packets import Decoder
        from flowsense.flows.meter import FlowMeter
        from flowsense.pipeline import Totals, _prepare_out

        _prepare_out(out_dir)
        self.config, self.out_dir, self.config_path = config, out_dir, config_path
        self.decoder, self.meter, self.totals = Decoder(), FlowMeter(config.flows), Totals()
        self.captures, self.closers = [], []
        self.metrics = self.denies = None
        self.reloads = {"count": 0, "last_error": None,
                        "note": f"changes to [{'], ['.join(RESTART_KNOBS)}] need a restart"}
        self.started = time.time()

    def open(self, names: list[str], bpf: str, metrics_listen: str, syslog: list[str], deny_logs: list[str],
             deny_format: str | None) -> None:
        from flowsense.collect import LiveDenies, RotatingParquet
        from flowsense.schema import DNS, FLOW
        from flowsense.sinks.tables import dns_table, flow_table
        from flowsense.sources.span import RingCapture

        s = self.config.sense
        for k, name in enumerate(names):
            self.captures.append(RingCapture(name, k, s.snaplen, bpf, s.promiscuous, s.ring_block_kib,
                                             s.ring_blocks, s.block_timeout_ms, s.fanout_group))
            self.closers.append(self.captures[-1].close)
        _warm_up(self.decoder)  # the rings hold what arrives meanwhile
        self.names = names
        self.per_iface = {name: {"packets": 0, "bytes": 0} for name in names}
        if metrics_listen:
            self.metrics = Metrics(metrics_listen)
            self.closers.append(self.metrics.close)
        self.flows_out = RotatingParquet(self.out_dir, "flows", flow_table(FLOW.empty(0), names), FLOW_DICT_COLUMNS,
                                         s.rotate_s)
        self.dns_out = RotatingParquet(self.out_dir, "dns", dns_table(DNS.empty(0), np.zeros(0, np.uint8), names),
                                       DNS_DICT_COLUMNS, s.rotate_s)
        self.closers += [self.flows_out.close, self.dns_out.close]
        if syslog or deny_logs:
            self.denies = LiveDenies(self.config, self.out_dir, syslog, deny_logs, deny_format, s.rotate_s)
            self.closers.append(self.denies.out.close)
        self.windows = PacketWindows(self.config, self.out_dir)

    def take(self, cap) -> bool:
        """Decode what the ring holds; False when it held nothing."""
        from flowsense.sinks.tables import dns_table

        frames = cap.read(0)
        if len(frames):
            batch = self.decoder.decode(cap.ring, frames)
            self.per_iface[cap.iface]["packets"] += len(frames)
            self.per_iface[cap.iface]["bytes"] += int(frames["wire_len"].sum())
            self.totals.add(batch)
            self.windows.update(batch)
            if len(batch.dns):
                self.dns_out.write(dns_table(batch.dns, batch.blob, self.names))
            for flows in self.meter.update(batch.packets):
                self.ended(flows)
        cap.release()
        return bool(len(frames))

    def ended(self, flows: np.ndarray) -> None:
        from flowsense.sinks.tables import flow_table

        self.windows.add_flows(flows)
        self.flows_out.write(flow_table(flows, self.names))

    def reload(self) -> None:
        from flowsense import config as cfg

        try:
            self.windows.config = cfg.load(self.config_path) if self.config_path else Config()
            self.reloads["count"] += 1
            self.reloads["last_error"] = None
        except FlowsenseError as err:
            self.reloads["last_error"] = str(err)  # the running config stays

    def run(self, stop: threading.Event) -> dict:
        reload = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            signal.signal(signal.SIGHUP, lambda *_: reload.set())
        poller = select.poll()
        for cap in self.captures:
            poller.register(cap.sock, select.POLLIN | select.POLLERR)
        last_stats = 0.0
        while not stop.is_set():
            poller.poll(int(POLL_S * 1000))
            for cap in self.captures:
                self.take(cap)
            if self.denies:
                self.denies.flush()
            if reload.is_set():
                reload.clear()
                self.reload()
            if self.windows.due(self.totals.last_ts):
                self.windows.run(self.denies)
            if time.time() - last_stats >= self.config.sense.stats_every_s:
                self.stats()
                last_stats = time.time()
        for cap in self.captures:         # what the kernel already holds is part of the run
            while self.take(cap):
                pass
        for flows in self.meter.flush():
            self.ended(flows)
        if self.denies:
            self.denies.close()
        self.flows_out.close()
        self.dns_out.close()
        self.windows.run(self.denies)
        return self.stats()

    def stats(self) -> dict:
        from flowsense.pipeline import write_stats

        t, w = self.totals, self.windows
        result = {
            "flowsense_version": __version__, "mode": "sense", "started": self.started,
            "uptime_s": round(time.time() - self.started, 1),
            "interfaces": {cap.iface: {**self.per_iface[cap.iface], **_kernel(cap)} for cap in self.captures},
            "packets": t.frames, "bytes": t.bytes, "ip_packets": t.ip_packets, "dns_messages": t.dns,
            "first_ts": t.first_ts, "last_ts": t.last_ts,
            "flows": self.flows_out.rows, "files": self.flows_out.files + self.dns_out.files,
            "flow_meter": {**self.meter.stats(), "active": self.meter.active},
            "weird": self.decoder.stats(),
            "detection": w.stats(),
            "denylog": self.denies.stats() if self.denies else None,
            "metrics": self.metrics.address if self.metrics else None,
            "config_reloads": self.reloads, "config": to_toml(w.config),
        }
        write_stats(self.out_dir, result)
        if self.metrics:
            self.metrics.text = render_metrics(result)
        return result

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers = []


def run_sources(config: Config, config_path: str, out_dir: Path) -> dict:
    """`flowsense run`: every source the config names.  Interfaces (with the syslog and file deny
    inputs) are sensed here; NetFlow listeners are collected by a `flowsense collect` child process
    into OUT/netflow, stopped (SIGTERM, so it flushes) when the sensor stops."""
    import subprocess
    import sys

    from flowsense.collect import collect

    s = config.sense
    if not s.interfaces and not s.netflow_listen:
        raise UsageError(f"{config_path} names no source; set [sense].interfaces and/or [sense].netflow_listen")
    if not s.interfaces:
        return {"netflow": collect(list(s.netflow_listen), config, out_dir, list(s.syslog_listen), list(s.deny_logs))}
    child = None
    if s.netflow_listen:
        listen = [arg for address in s.netflow_listen for arg in ("--listen", address)]
        child = subprocess.Popen([sys.executable, "-m", "flowsense", "collect", *listen, "-c", config_path,
                                  "--out", str(out_dir / "netflow")])
    try:
        return {"sense": sense([], config, out_dir, config_path=config_path)}
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _kernel(cap) -> dict:
    k = cap.kernel_stats()
    return {"kernel_packets": k["packets"], "kernel_drops": k["drops"], "kernel_freezes": k["freezes"],
            "ring_fill": round(cap.ring_fill(), 3), "ring_fill_max": round(cap.fill_max, 3),
            "ring_bytes": cap.block_size * cap.blocks}
