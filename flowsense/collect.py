"""`flowsense collect`: NetFlow v5/v9/IPFIX over UDP until SIGINT/SIGTERM.

One reader thread per listening socket (4 MiB receive buffer) hands datagrams to the main thread
through a bounded queue (a full queue drops and counts); the main thread decodes in batches,
writes rotating Parquet files (``flows-<UTC start>.parquet``, queryable together with DuckDB) and
rewrites ``stats.json`` and ``templates.json`` every few seconds; templates saved by a previous run
in the same folder are loaded at start, so a restart loses no data waiting for a template refresh.  On a stop signal it drains the queue, closes the open
file, writes the final stats and exits 0.  Kernel-level drops are read from /proc/net/udp[6].
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
from pathlib import Path

from flowsense import __version__
from flowsense.config import Config, to_toml
from flowsense.decode.netflow import NetflowDecoder
from flowsense.errors import InputError, UsageError

QUEUE_DATAGRAMS = 100_000
BATCH_DATAGRAMS = 512
STATS_EVERY_S = 5.0
RCVBUF = 4 << 20
TEMPLATES_FILE = "templates.json"  # saved with the stats, read at start: a restart decodes at once


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); a usage error names the expected form."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text}: expected HOST:PORT, e.g. 0.0.0.0:2055 or [::]:4739")
    return host, int(port)


def kernel_drops(port: int, family: int) -> int | None:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (Linux), else None."""
    path = Path("/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp")
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 12 and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[-1])
    return None


class Listener:
    def __init__(self, host: str, port: int, inbox: queue.Queue):
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        try:
            self.sock.bind((host, port))
        except OSError as err:
            raise InputError(f"--listen {host}:{port}: cannot bind ({err.strerror}); pick a free port, or run "
                             "as root for ports below 1024") from None
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.name = f"{host}:{self.port}"
        self.inbox = inbox
        self.received = self.queue_drops = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"flowsense-udp-{self.port}", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                self._take(*self.sock.recvfrom(65535))
            except TimeoutError:
                continue
            except OSError:
                return
        self.sock.setblocking(False)  # stopping: what the kernel already holds is still delivered
        try:
            while True:
                self._take(*self.sock.recvfrom(65535))
        except OSError:
            pass

    def _take(self, data: bytes, peer):
        self.received += 1
        try:
            self.inbox.put_nowait((data, peer[0]))
        except queue.Full:
            self.queue_drops += 1

    def stats(self) -> dict:
        return {"datagrams": self.received, "queue_drops": self.queue_drops,
                "kernel_drops": kernel_drops(self.port, self.family)}

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


class RotatingParquet:
    """<prefix>-<UTC start>.parquet, a new file every ``rotate_s`` seconds of wall time; a restart
    adds files and never overwrites one."""

    def __init__(self, out_dir: Path, prefix: str, empty, dictionary_columns: tuple[str, ...], rotate_s: float):
        self.out_dir, self.prefix, self.empty, self.dict_cols, self.rotate_s = \
            out_dir, prefix, empty, dictionary_columns, rotate_s
        self.sink, self.opened, self.files, self.rows = None, 0.0, [], 0

    def write(self, table):
        from flowsense.sinks.parquet import ParquetSink

        now = time.time()
        if self.sink is not None and now - self.opened >= self.rotate_s:
            self.close()
        if self.sink is None:
            name = time.strftime(f"{self.prefix}-%Y%m%dT%H%M%SZ.parquet", time.gmtime(now))
            path = self.out_dir / name
            n = 1
            while path.exists():
                n += 1
                path = self.out_dir / name.replace(".parquet", f"-{n}.parquet")
            self.sink = ParquetSink(path, self.empty, self.dict_cols)
            self.opened = now
            self.files.append(str(path))
        self.sink.write(table)
        self.rows += table.num_rows

    def close(self):
        if self.sink is not None:
            self.sink.close()
            self.sink = None


class LiveDenies:
    """Deny-log lines from syslog listeners and tailed files, parsed on the collector's main thread
    (the inputs' threads only queue lines) and written as deny-<time>.parquet."""

    def __init__(self, config: Config, out_dir: Path, syslog: list[str], files: list[str], deny_format, rotate_s):
        from flowsense.denylog.framing import TimeContext
        from flowsense.denylog.reader import DenyLogReader
        from flowsense.sinks.tables import deny_table
        from flowsense.sources.syslog import FileTail, SyslogListener

        self.reader = DenyLogReader(TimeContext(time.gmtime().tm_year, config.denylog.timezone), deny_format)
        self.lines: queue.Queue = queue.Queue(QUEUE_DATAGRAMS)
        self.line_numbers: dict[int, int] = {}
        self.dropped = self.written = 0
        self.nsel_source = self.reader.add_source("netflow NSEL events")
        self.inputs = []
        for text in syslog:
            host, port = parse_listen(text)
            source = self.reader.add_source(f"syslog {text}")
            try:
                self.inputs.append(SyslogListener(host, port, lambda line, _peer, s=source: self._queue(line, s)))
            except OSError as err:
                raise InputError(f"--syslog {text}: cannot bind ({err.strerror}); pick a free port") from None
        for path in files:
            source = self.reader.add_source(str(path))
            self.inputs.append(FileTail(path, lambda line, _src, s=source: self._queue(line, s)))
        self.out = RotatingParquet(out_dir, "deny", deny_table(self.reader.rows(), self.reader.text_columns(),
                                                               self.reader.sources),
                                   ("src_h", "dst_h", "proto", "action", "vendor", "device", "file"), rotate_s)

    def _queue(self, line: str, source: int):
        try:
            self.lines.put_nowait((line, source))
        except queue.Full:
            self.dropped += 1

    def flush(self, nsel_rows=None):
        """Parse the queued lines, add NSEL 'flow denied' events, write the new DENY rows."""
        from flowsense.pipeline import nsel_denies
        from flowsense.sinks.tables import deny_table

        while True:
            try:
                line, source = self.lines.get_nowait()
            except queue.Empty:
                break
            self.line_numbers[source] = self.line_numbers.get(source, 0) + 1
            self.reader.feed(line, source, self.line_numbers[source])
        if nsel_rows is not None and len(nsel_rows):
            self.reader.add_rows(*nsel_denies(nsel_rows, self.nsel_source))
        if len(self.reader.kept) > self.written:
            start, self.written = self.written, len(self.reader.kept)
            self.out.write(deny_table(self.reader.rows(start), self.reader.text_columns(start), self.reader.sources))

    def stats(self) -> dict:
        return {**self.reader.stats(), "queue_drops": self.dropped, "files_written": self.out.files}

    def close(self):
        for source in self.inputs:
            source.stop()
        self.flush()
        self.out.close()


class LiveDetection:
    """The detectors over collected records, one window of wall time at a time: each window's
    findings are appended to alerts.jsonl; an identifier already reported within the suppression
    window is not repeated by later windows."""

    def __init__(self, config: Config, out_dir: Path):
        self.config, self.path = config, out_dir / "alerts.jsonl"
        self.path.touch()
        self.reported: dict[str, int] = {}
        self.alerts = 0
        self._start()

    def _start(self):
        from flowsense.detection import Detection
        self.detection, self.opened = Detection(self.config, grade="flows"), time.time()

    def add(self, records):
        from flowsense.pipeline import flow_rows
        self.detection.add_flows(flow_rows(records))

    def due(self) -> bool:
        return time.time() - self.opened >= self.config.collect.detect_every_s

    def run(self, denies=None):
        from flowsense.alerts import write_jsonl
        from flowsense.detection import Denies

        found, _ = self.detection.finish(Denies.of(denies.reader) if denies else None)
        window = int(self.config.alerts.suppress_window_s * 1e9)
        new = [a for a in found if a.start_ns - self.reported.get(a.identifier, -(2**62)) > window]
        for a in new:
            self.reported[a.identifier] = a.end_ns
        write_jsonl(new, self.path, append=True)
        self.alerts += len(new)
        self._start()


def collect(listen: list[str], config: Config, out_dir: Path, syslog: list[str] = (), deny_logs: list[str] = (),
            deny_format: str | None = None, stop: threading.Event | None = None) -> dict:
    import numpy as np

    from flowsense.decode.netflow import FW_DENIED
    from flowsense.pipeline import _prepare_out
    from flowsense.schema import NFLOW
    from flowsense.sinks.tables import nflow_table

    _prepare_out(out_dir)
    rotate_s = config.collect.rotate_s
    stop = stop or threading.Event()
    inbox: queue.Queue = queue.Queue(QUEUE_DATAGRAMS)
    listeners = [Listener(*parse_listen(text), inbox) for text in listen]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    decoder = NetflowDecoder()
    flows = RotatingParquet(out_dir, "flows", nflow_table(NFLOW.empty(0)), ("orig_h", "resp_h", "proto", "exporter"),
                            rotate_s)
    denies = LiveDenies(config, out_dir, list(syslog), list(deny_logs), deny_format, rotate_s) \
        if syslog or deny_logs else None
    detection = LiveDetection(config, out_dir)
    saved = out_dir / TEMPLATES_FILE
    restored = 0
    if saved.exists():
        try:
            restored = decoder.load_templates(json.loads(saved.read_text()))
        except (ValueError, KeyError, TypeError):
            restored = -1  # unreadable: templates are re-learned from the exporters' refreshes
    started, last_stats = time.time(), 0.0

    def stats() -> dict:
        result = {"flowsense_version": __version__, "mode": "collect", "started": started,
                  "uptime_s": round(time.time() - started, 1),
                  "listeners": {lst.name: lst.stats() for lst in listeners},
                  "flows": flows.rows, "files": flows.files, "templates_restored": restored,
                  "alerts": detection.alerts,
                  "denylog": denies.stats() if denies else None,
                  "exporters": decoder.stats(), "config": to_toml(config)}
        (out_dir / "stats.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / TEMPLATES_FILE).write_text(json.dumps(decoder.save_templates()))
        return result

    def decode_batch(timeout_s: float) -> bool:
        """Decode up to BATCH_DATAGRAMS queued datagrams; False when none came."""
        batch = []
        try:
            batch.append(inbox.get(timeout=timeout_s))
            while len(batch) < BATCH_DATAGRAMS:
                batch.append(inbox.get_nowait())
        except queue.Empty:
            pass
        rows = [r for data, exporter in batch if len(r := decoder.decode(data, exporter))]
        if rows:
            rows = np.concatenate(rows)
            flows.write(nflow_table(rows))
            detection.add(rows)
            if denies:
                denies.flush(rows[rows["fw_event"] == FW_DENIED])
        return bool(batch)

    try:
        while not stop.is_set():
            decode_batch(0.2)
            if denies:
                denies.flush()
            if detection.due():
                detection.run(denies)
            if time.time() - last_stats >= STATS_EVERY_S:
                stats()
                last_stats = time.time()
        for lst in listeners:  # each reader drains its socket into the queue before it ends
            lst.stop.set()
            lst.thread.join(timeout=2)
        while decode_batch(0):
            pass
        if denies:
            denies.close()
        flows.close()
        detection.run(denies)
        return stats()  # while the sockets are still open, so their kernel drop counts can be read
    finally:
        flows.close()
        if denies:
            denies.out.close()
        for lst in listeners:
            lst.close()
