"""pcap replay: captures -> FRAME -> PACKET/DNS -> flow meter -> Parquet, stats.

Several captures are merged in time order: each is decoded on its own (batches are
self-contained), then batches are released up to a horizon, the earliest "last timestamp" among
the captures still being read, so memory stays at about one batch per capture.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flowsense import __version__
from flowsense.config import Config, to_toml
from flowsense.decode.l2 import LINK_NAMES
from flowsense.decode.packets import Decoded, Decoder
from flowsense.errors import InputError
from flowsense.flows.meter import FlowMeter
from flowsense.schema import DNS, FLOW
from flowsense.sources.pcap import CaptureFile


def _decode_stream(cf: CaptureFile, decoder: Decoder):
    for frames in cf.batches():
        yield decoder.decode(cf.buf, frames)


def decoded_batches(captures: list[CaptureFile], decoder: Decoder, on_batch=None):
    """Decoded batches of all captures, merged in time order when there are several.  A stream's
    decoder buffers are reused only once its pending rows have been released (as copies)."""
    streams = [_decode_stream(cf, decoder if k == 0 else Decoder(cf.batch_frames, decoder.weird_counts))
               for k, cf in enumerate(captures)]
    if len(streams) == 1:
        for batch in streams[0]:
            if on_batch:
                on_batch()
            yield batch
        return
    pending: list[Decoded | None] = [None] * len(streams)
    live = set(range(len(streams)))
    while live or any(p is not None for p in pending):
        for k in sorted(live):
            if pending[k] is None or len(pending[k].packets) == 0:
                nxt = next(streams[k], None)
                if nxt is None:
                    live.discard(k)
                else:
                    pending[k] = nxt
                    if on_batch:
                        on_batch()
        ready = [p for p in pending if p is not None and len(p.packets)]
        if not ready:
            break
        limits = [int(pending[k].packets["ts"].max()) for k in live
                  if pending[k] is not None and len(pending[k].packets)]
        horizon = min(limits) if limits else np.iinfo(np.int64).max
        out = []
        for k, p in enumerate(pending):
            if p is not None and len(p.packets):
                now, later = p.split(horizon)
                out.append(now)
                pending[k] = later
        yield Decoded.merge(out)


class Totals:
    """Packet-level counts a run reports (stats.json and the summary)."""

    def __init__(self):
        self.frames = self.bytes = self.ip_packets = self.ip_bytes = self.fragments = self.dns = 0
        self.first_ts = self.last_ts = None
        self.links: dict[int, int] = {}

    def add(self, batch: Decoded):
        pk = batch.packets
        if not len(pk):
            return
        ip = pk["ip_ver"] != 0
        self.frames += len(pk)
        self.bytes += int(pk["wire_len"].sum())
        self.ip_packets += int(ip.sum())
        self.ip_bytes += int(pk["ip_len"][ip].sum())
        self.fragments += int((pk["frag"] != 0).sum())
        self.dns += len(batch.dns)
        lo, hi = int(pk["ts"].min()), int(pk["ts"].max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        for link, count in zip(*np.unique(pk["link"], return_counts=True)):
            self.links[int(link)] = self.links.get(int(link), 0) + int(count)


def write_json(path: Path, value, indent: int | None = 2) -> None:
    """Replace a JSON file whole (write a sibling, then rename): a live run rewrites its stats every few
    seconds, and whoever reads them meanwhile must never see half a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(value, indent=indent) + "\n")
    os.replace(part, path)


def write_stats(out_dir: Path, stats: dict) -> None:
    write_json(out_dir / "stats.json", stats)


def default_out_dir(first: Path) -> Path:
    """A new folder in the working directory named after the first capture."""
    stem = first.name.split(".")[0] or "capture"
    candidate = Path(f"{stem}.flowsense")
    n = 2
    while candidate.exists():
        candidate = Path(f"{stem}.flowsense-{n}")
        n += 1
    return candidate


def _prepare_out(out_dir: Path):
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise InputError(f"cannot write output folder {out_dir} ({err.strerror}); "
                         "choose a writable folder with --out") from None


def _progress(captures: list[CaptureFile], quiet: bool):
    """A byte-based progress bar on a terminal for inputs big enough to wait for."""
    total = sum(len(cf.buf) for cf in captures)
    if quiet or not sys.stderr.isatty() or total < 64 << 20:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="analyzing", leave=False)

    def tick():
        bar.update(sum(cf.position for cf in captures) - bar.n)
    return bar, tick


def read_deny_logs(paths: list[str], captures: list[CaptureFile], config: Config, deny_format: str | None):
    """DENY rows of the deny logs; stamps without a year take the year of the traffic."""
    from flowsense.denylog.framing import TimeContext
    from flowsense.denylog.reader import DenyLogReader

    starts = [ts for ts in (cf.first_ts() for cf in captures) if ts is not None]
    year = time.gmtime(min(starts) / 1e9).tm_year if starts else time.gmtime().tm_year
    reader = DenyLogReader(TimeContext(year, config.denylog.timezone, min(starts) if starts else None), deny_format)
    for path in paths:
        reader.read_file(path)
    return reader


def write_denies(denies, out_dir: Path) -> list[str]:
    """deny.parquet; returns the warnings worth a line in the summary."""
    import pyarrow.parquet as pq

    from flowsense.sinks.tables import deny_table

    pq.write_table(deny_table(denies.rows(), denies.text_columns(), denies.sources), out_dir / "deny.parquet",
                   compression="zstd")
    failed = sum(v["failed"] for v in denies.stats()["vendors"].values())
    return [f"deny logs: {failed:,} line(s) could not be used; reasons and samples in stats.json"] if failed else []


def analyze(paths: list[str], config: Config, out_dir: Path, deny_logs: list[str] = (), quiet: bool = False,
            deny_format: str | None = None, baseline=None) -> dict:
    from flowsense.alerts import write_jsonl
    from flowsense.detection import Denies, Detection
    from flowsense.sinks.parquet import ParquetSink
    from flowsense.sinks.tables import dns_table, flow_table

    started = time.perf_counter()
    captures = [CaptureFile(p, i, config.pcap.batch_frames) for i, p in enumerate(paths)]
    warnings = []
    denies = read_deny_logs(list(deny_logs), captures, config, deny_format) if deny_logs else None
    _prepare_out(out_dir)
    files = [str(cf.path) for cf in captures]
    decoder, meter, totals = Decoder(config.pcap.batch_frames), FlowMeter(config.flows), Totals()
    detection = Detection(config, baseline)
    flows_out = ParquetSink(out_dir / "flows.parquet", flow_table(FLOW.empty(0), files),
                            ("orig_h", "resp_h", "proto", "conn_state", "app", "end_reason", "file"))
    dns_out = ParquetSink(out_dir / "dns.parquet", dns_table(DNS.empty(0), np.zeros(0, np.uint8), files),
                          ("src_h", "dst_h", "proto", "qname", "file"))
    bar, tick = _progress(captures, quiet)
    meter_s = features_s = 0.0
    # Output conversion and Parquet writing run on one worker thread (FIFO keeps the order) while
    # the nogil kernels decode the next batch: the second core hides most of the output cost.
    with ThreadPoolExecutor(1, thread_name_prefix="flowsense-out") as writer:
        written = []
        for batch in decoded_batches(captures, decoder, tick):
            totals.add(batch)
            t0 = time.perf_counter()
            detection.update(batch)
            features_s += time.perf_counter() - t0
            if len(batch.dns):
                written.append(writer.submit(lambda d=batch.dns.copy(), b=batch.blob.copy():
                                             dns_out.write(dns_table(d, b, files))))
            t0 = time.perf_counter()
            ended = [detection.add_flows(flows) for flows in meter.update(batch.packets)]
            meter_s += time.perf_counter() - t0
            written += [writer.submit(lambda f=flows: flows_out.write(flow_table(f, files))) for flows in ended]
        written += [writer.submit(lambda f=flows: flows_out.write(flow_table(f, files)))
                    for flows in map(detection.add_flows, meter.flush())]
        for done in written:
            done.result()
    flows_out.close()
    dns_out.close()
    if bar:
        bar.close()
    if denies is not None:
        warnings += write_denies(denies, out_dir)
    t0 = time.perf_counter()
    alerts, detection_stats = detection.finish(Denies.of(denies))
    detection_stats["detect_s"] = round(time.perf_counter() - t0, 3)
    detection_stats["features_s"] = round(features_s, 3)
    detection_stats["baseline"] = baseline.describe() if baseline is not None else None
    write_jsonl(alerts, out_dir / "alerts.jsonl")
    wall = time.perf_counter() - started
    for cf in captures:
        if cf.counters.any() and (cf.stats()["truncated_record"] or cf.stats()["damaged_record"]):
            warnings.append(f"{cf.path}: capture damaged or cut short; read {cf.stats()['records']} records "
                            "up to the damage")
    stats = {
        "flowsense_version": __version__,
        "inputs": [cf.stats() for cf in captures],
        "packets": totals.frames,
        "bytes": totals.bytes,
        "ip_packets": totals.ip_packets,
        "ip_bytes": totals.ip_bytes,
        "non_ip_frames": totals.frames - totals.ip_packets,
        "fragments": totals.fragments,
        "dns_messages": totals.dns,
        "flows": flows_out.rows,
        "alerts": len(alerts),
        "alerts_by_rule": {rule: sum(a.rule == rule for a in alerts) for rule in sorted({a.rule for a in alerts})},
        "first_ts": totals.first_ts,
        "last_ts": totals.last_ts,
        "duration_s": (totals.last_ts - totals.first_ts) / 1e9 if totals.first_ts is not None else 0.0,
        "wall_s": round(wall, 3),
        "packets_per_s": round(totals.frames / wall, 1) if wall > 0 else 0.0,
        "link_types": {LINK_NAMES.get(k, str(k)): v for k, v in sorted(totals.links.items())},
        "weird": decoder.stats(),
        "capture": {name: sum(cf.stats()[name] for cf in captures)
                    for name in captures[0].stats() if name not in ("path", "format", "bytes")},
        "flow_meter": {**meter.stats(), "meter_s": round(meter_s, 3)},
        "denylog": denies.stats() if denies is not None else None,
        "detection": detection_stats,
        "config": to_toml(config),
        "warnings": warnings,
        "outputs": {name: str(out_dir / name) for name in ("flows.parquet", "dns.parquet", "alerts.jsonl",
                                                           "stats.json") + (("deny.parquet",) if denies else ())},
    }
    write_stats(out_dir, stats)
    return stats


def learn_baseline(paths: list[str], config: Config, baseline):
    """Decode and meter captures of normal traffic and learn their flows into a copy of ``baseline``."""
    from flowsense.features.app import label_apps

    captures = [CaptureFile(p, i, config.pcap.batch_frames) for i, p in enumerate(paths)]
    decoder, meter, flows = Decoder(config.pcap.batch_frames), FlowMeter(config.flows), []
    for batch in decoded_batches(captures, decoder):
        flows += [label_apps(f) for f in meter.update(batch.packets)]
    flows += [label_apps(f) for f in meter.flush()]
    return baseline.learn(np.concatenate(flows) if flows else FLOW.empty(0), [str(cf.path) for cf in captures])


def measure_steady_rate(path: str, config: Config = Config(), repeat: int = 3) -> dict:
    """Decode + flow meter time for one capture after a JIT warm-up, best of ``repeat`` passes
    (benchmark helper: the steady rate without start-up and output costs)."""
    best = None
    for _ in range(repeat + 1):  # the first pass warms the JIT and the page cache
        cf = CaptureFile(path, 0, config.pcap.batch_frames)
        decoder, meter = Decoder(config.pcap.batch_frames), FlowMeter(config.flows)
        packets = 0
        t0 = time.perf_counter()
        for batch in decoded_batches([cf], decoder):
            packets += len(batch.packets)
            for _ in meter.update(batch.packets):
                pass
        for _ in meter.flush():
            pass
        seconds = time.perf_counter() - t0
        best = seconds if best is None or seconds < best else best
    return {"packets": packets, "seconds": best}


def nsel_denies(rows: np.ndarray, source: int) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Cisco NSEL 'flow denied' events as DENY rows (vendor cisco_nsel, device = the exporter)."""
    from flowsense.decode.netflow import FW_DENIED
    from flowsense.schema import DENY
    from flowsense.sinks.tables import addr_text

    denied = rows[rows["fw_event"] == FW_DENIED]
    out = DENY.empty(len(denied))
    for name in ("ts", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto"):
        out[name] = denied[name]
    out["source"] = source
    exporters = addr_text(denied["exporter_hi"], denied["exporter_lo"]).to_pylist()
    return out, {"vendor": ["cisco_nsel"] * len(denied), "device": exporters, "rule": [""] * len(denied)}


@functools.cache
def _icmp_families() -> np.ndarray:
    """The flow meter's ICMP key family per (ICMPv4 | ICMPv6, type), as a lookup table."""
    from flowsense.flows.table import icmp_family
    return np.array([[icmp_family(proto, t) for t in range(256)] for proto in (1, 58)], np.uint16)


def flow_rows(records: np.ndarray) -> np.ndarray:
    """NetFlow/IPFIX records as FLOW rows for the detectors: one-way (originator = source),
    counters scaled by the sampling rate, no payload (``app`` none), TCP progress from the flags."""
    from flowsense.flows.table import ST_SYNACK
    from flowsense.schema import FLOW

    f = FLOW.empty(len(records))
    for a, b in (("orig", "src"), ("resp", "dst")):
        f[f"{a}_hi"], f[f"{a}_lo"] = records[f"{b}_hi"], records[f"{b}_lo"]
    icmp = np.isin(records["proto"], (1, 58))
    families = _icmp_families()
    f["orig_p"] = np.where(icmp, families[(records["proto"] == 58).astype(np.intp), records["icmp_type"]],
                           records["sport"])
    f["resp_p"] = np.where(icmp, 0, records["dport"])
    for name in ("ts", "last_ts", "proto", "icmp_type", "icmp_code"):
        f[name] = records[name]
    f["ip_ver"] = np.where((records["src_hi"] == 0) & ((records["src_lo"] >> np.uint64(32)) == 0xFFFF), 4, 6)
    scale = np.maximum(records["sampling"], 1).astype(np.uint64)
    f["orig_pkts"], f["orig_bytes"] = records["packets"] * scale, records["bytes"] * scale
    f["orig_flags"] = records["tcp_flags"]
    # One-way records cannot show an unanswered SYN (the answer is another record): only an ACK
    # says the connection got through, which is all deny_fallback asks of a fallback channel.
    f["state"] = np.where((records["proto"] == 6) & ((records["tcp_flags"] & 16) != 0), ST_SYNACK, 0)
    return f


def analyze_netflow(paths: list[str], config: Config, out_dir: Path, deny_logs: list[str] = (),
                    deny_format: str | None = None) -> dict:
    """Captures of NetFlow/IPFIX export traffic: every UDP payload that looks like an export
    message is decoded (templates carried across datagrams and files) into flows.parquet."""
    from flowsense.alerts import write_jsonl
    from flowsense.decode.netflow import FW_DENIED, NetflowDecoder, looks_like_export
    from flowsense.detection import Denies, Detection
    from flowsense.schema import NFLOW
    from flowsense.sinks.parquet import ParquetSink
    from flowsense.sinks.tables import addr_text, nflow_table

    started = time.perf_counter()
    captures = [CaptureFile(p, i, config.pcap.batch_frames) for i, p in enumerate(paths)]
    denies = read_deny_logs(list(deny_logs), captures, config, deny_format) if deny_logs else None
    _prepare_out(out_dir)
    decoder, netflow = Decoder(config.pcap.batch_frames), NetflowDecoder()
    sink = ParquetSink(out_dir / "flows.parquet", nflow_table(NFLOW.empty(0)), ("orig_h", "resp_h", "proto", "exporter"))
    packets = other_udp = 0
    denied = []
    detection = Detection(config, grade="flows")
    for cf in captures:
        for frames in cf.batches():
            pk = decoder.decode(cf.buf, frames).packets
            packets += len(pk)
            udp = np.flatnonzero((pk["proto"] == 17) & (pk["pay_off"] > 0) & (pk["frag"] == 0))
            exporters = addr_text(pk["src_hi"][udp], pk["src_lo"][udp]).to_pylist()
            payloads, names, ids = [], {}, []  # the batch's export datagrams, decoded in one call
            for i, exporter in zip(udp.tolist(), exporters):
                start = int(frames["off"][i]) + int(pk["pay_off"][i])
                size = min(int(pk["l4_len"][i]), int(frames["cap_len"][i]) - int(pk["pay_off"][i]))
                payload = cf.buf[start:start + size].tobytes()
                if looks_like_export(payload):
                    payloads.append(payload)
                    ids.append(names.setdefault(exporter, len(names)))
                else:
                    other_udp += 1
            rows = netflow.decode_batch(np.frombuffer(b"".join(payloads), np.uint8),
                                        np.cumsum([0] + [len(p) for p in payloads], dtype=np.int64),
                                        np.array(ids, np.int64), list(names))
            if len(rows):
                sink.write(nflow_table(rows))
                detection.add_flows(flow_rows(rows))
                denied.append(rows[rows["fw_event"] == FW_DENIED])
    sink.close()
    nsel = np.concatenate(denied) if denied else None
    if nsel is not None and len(nsel):
        from flowsense.denylog.framing import TimeContext
        from flowsense.denylog.reader import DenyLogReader
        denies = denies or DenyLogReader(TimeContext(time.gmtime().tm_year, config.denylog.timezone))
        denies.add_rows(*nsel_denies(nsel, denies.add_source("netflow NSEL events")))
    warnings = write_denies(denies, out_dir) if denies is not None else []
    alerts, detection_stats = detection.finish(Denies.of(denies))
    write_jsonl(alerts, out_dir / "alerts.jsonl")
    exporters = netflow.stats()
    wall = time.perf_counter() - started
    stats = {
        "flowsense_version": __version__,
        "mode": "netflow",
        "inputs": [cf.stats() for cf in captures],
        "packets": packets,
        "export_datagrams": sum(e.get("datagrams", 0) for e in exporters.values()),
        "other_udp_datagrams": other_udp,
        "flows": sink.rows,
        "alerts": len(alerts),
        "alerts_by_rule": {rule: sum(a.rule == rule for a in alerts) for rule in sorted({a.rule for a in alerts})},
        "exporters": exporters,
        "wall_s": round(wall, 3),
        "weird": decoder.stats(),
        "denylog": denies.stats() if denies is not None else None,
        "detection": detection_stats,
        "config": to_toml(config),
        "warnings": warnings,
        "nsel_denied_events": int(len(nsel)) if nsel is not None else 0,
        "outputs": {name: str(out_dir / name) for name in ("flows.parquet", "alerts.jsonl", "stats.json")
                    + (("deny.parquet",) if denies else ())},
    }
    write_stats(out_dir, stats)
    return stats
