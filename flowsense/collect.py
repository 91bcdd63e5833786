"""`flowsense collect`: NetFlow v5/v9/IPFIX over UDP until SIGINT/SIGTERM.

One reader thread per listening socket receives datagrams back to back into a chunk buffer and
hands full chunks to the main thread through a bounded queue (a full queue drops and counts); the
main thread decodes a chunk at a time (one ``NetflowDecoder.decode_batch`` call), writes rotating
Parquet files (``flows-<UTC start>.parquet``, queryable together with DuckDB) and rewrites
``stats.json`` and ``templates.json`` every few seconds; the detectors run over closed windows in
a background thread.  Templates saved by a previous run in the same folder are loaded at start, so
a restart loses no data waiting for a template refresh.  On a stop signal each reader drains its
socket, the queue is decoded, the last window analysed, the files closed and the final stats
written; exit 0.  Kernel-level drops are read from /proc/net/udp[6].
"""

from __future__ import annotations

import json
import queue
import select
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np

from flowsense import __version__
from flowsense.config import Config, to_toml
from flowsense.decode.netflow import NetflowDecoder
from flowsense.errors import InputError, UsageError

QUEUE_DATAGRAMS = 100_000       # deny-log lines waiting for the main thread
QUEUE_CHUNKS = 64               # received chunks waiting for the decoder (a full queue drops and counts)
CHUNK_BYTES = 1 << 20           # one chunk's buffer ...
BATCH_DATAGRAMS = 1024          # ... and at most this many datagrams in it
CHUNK_MAX_WAIT_S = 0.1          # a chunk that is not full goes to the decoder after this long
MAX_DATAGRAM = 65535
STATS_EVERY_S = 5.0
MAX_WINDOW_RECORDS = 2_000_000  # records held for the detectors before a window closes early (~320 MB)
RCVBUF = 32 << 20               # kernel receive buffer asked for: bursts wait here, not dropped
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux
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


class Chunk:
    """Datagrams received back to back into one buffer: what the decoder takes as one batch."""

    def __init__(self, buf: bytearray):
        self.buf, self.view = buf, memoryview(buf)
        self.ends: list[int] = []
        self.hosts: dict[str, int] = {}   # exporter address -> id within this chunk
        self.ids: list[int] = []

    @property
    def size(self) -> int:
        return self.ends[-1] if self.ends else 0

    def room(self) -> bool:
        return len(self.buf) - self.size >= MAX_DATAGRAM and len(self.ends) < BATCH_DATAGRAMS

    def add(self, n: int, host: str):
        self.ends.append(self.size + n)
        self.ids.append(self.hosts.setdefault(host, len(self.hosts)))

    def batch(self):
        """(buffer, bounds, exporter ids, exporter names) for NetflowDecoder.decode_batch."""
        return (np.frombuffer(self.buf, np.uint8), np.array([0, *self.ends], np.int64),
                np.array(self.ids, np.int64), list(self.hosts))


class Listener:
    """A UDP socket and its reader thread: datagrams are received straight into a chunk buffer
    (one ``recvfrom_into`` each, no object per datagram), and a chunk goes to the queue when it
    is full, or when the socket has nothing more and its first datagram waited CHUNK_MAX_WAIT_S
    (a decoder call per datagram would cost far more than the datagram).  Chunk buffers are recycled."""

    def __init__(self, host: str, port: int, inbox: queue.Queue):
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:  # root / CAP_NET_ADMIN may go past net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        try:
            self.sock.bind((host, port))
        except OSError as err:
            raise InputError(f"--listen {host}:{port}: cannot bind ({err.strerror}); pick a free port, or run "
                             "as root for ports below 1024") from None
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.name = f"{host}:{self.port}"
        self.inbox = inbox
        self.free: queue.SimpleQueue = queue.SimpleQueue()  # decoded chunks' buffers, for reuse
        self.received = self.queue_drops = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"flowsense-udp-{self.port}", daemon=True)
        self.thread.start()

    def _chunk(self) -> Chunk:
        try:
            return Chunk(self.free.get_nowait())
        except queue.Empty:
            return Chunk(bytearray(CHUNK_BYTES))

    def _run(self):
        chunk, started = self._chunk(), 0.0
        readable = select.poll()
        readable.register(self.sock, select.POLLIN)
        while True:
            try:
                n, peer = self.sock.recvfrom_into(chunk.view[chunk.size:], MAX_DATAGRAM)
            except BlockingIOError:  # nothing more for now: hand over what waited long enough, then wait
                waited = time.monotonic() - started
                if chunk.ends and (waited >= CHUNK_MAX_WAIT_S or self.stop.is_set()):
                    self._hand_over(chunk)
                    chunk = self._chunk()
                if self.stop.is_set() and not chunk.ends:
                    return  # stopping: what the kernel held has been delivered
                readable.poll(max(CHUNK_MAX_WAIT_S - waited, 0.001) * 1000 if chunk.ends else 200)
                continue
            except OSError:
                return
            if not chunk.ends:
                started = time.monotonic()
            self.received += 1
            chunk.add(n, peer[0])
            if not chunk.room():
                self._hand_over(chunk)
                chunk = self._chunk()

    def _hand_over(self, chunk: Chunk):
        try:
            self.inbox.put_nowait((self, chunk))
        except queue.Full:
            self.queue_drops += len(chunk.ends)
            self.free.put(chunk.buf)

    def stats(self) -> dict:
        return {"datagrams": self.received, "queue_drops": self.queue_drops,
                "kernel_drops": kernel_drops(self.port, self.family), "receive_buffer_bytes": self.rcvbuf}

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
        if self.reader.row_count > self.written:
            start, self.written = self.written, self.reader.row_count
            self.out.write(deny_table(self.reader.rows(start), self.reader.text_columns(start), self.reader.sources))

    def stats(self) -> dict:
        return {**self.reader.stats(), "queue_drops": self.dropped, "files_written": self.out.files}

    def close(self):
        for source in self.inputs:
            source.stop()
        self.flush()
        self.out.close()


class LiveDetection:
    """The detectors over collected records, one window of wall time at a time, in a background
    thread so that receiving, decoding and writing go on meanwhile: each window's findings are
    appended to alerts.jsonl; an identifier already reported within the suppression window is
    not repeated by later windows.  A window also closes once it holds MAX_WINDOW_RECORDS
    records; while the previous window is still being analysed, records beyond that are written
    to the flow files but not analysed, and counted (``records_not_analysed``): memory stays
    bounded whatever the export rate."""

    def __init__(self, config: Config, out_dir: Path):
        from flowsense.alerts import AlertLog

        self.config = config
        self.log = AlertLog(config, out_dir)
        self.not_analysed = 0
        self.worker: threading.Thread | None = None
        self._start()

    def _start(self):
        from flowsense.detection import Detection
        self.detection, self.opened, self.records = Detection(self.config, grade="flows"), time.time(), 0

    def add(self, records):
        from flowsense.pipeline import flow_rows
        if self.records >= MAX_WINDOW_RECORDS:
            self.not_analysed += len(records)
            return
        self.detection.add_flows(flow_rows(records))
        self.records += len(records)

    def due(self) -> bool:
        busy = self.worker is not None and self.worker.is_alive()
        return not busy and (time.time() - self.opened >= self.config.collect.detect_every_s
                             or self.records >= MAX_WINDOW_RECORDS)

    def run(self, denies=None, wait: bool = False):
        """Close the window and analyse it (in the background unless ``wait``); the deny rows
        are taken now, on the caller's thread."""
        from flowsense.detection import Denies

        self.join()
        detection, deny_rows = self.detection, Denies.of(denies.reader) if denies else None
        self._start()
        self.worker = threading.Thread(target=self._analyse, args=(detection, deny_rows), name="flowsense-detect",
                                       daemon=True)
        self.worker.start()
        if wait:
            self.join()

    def _analyse(self, detection, deny_rows):
        found, _ = detection.finish(deny_rows)
        self.log.write(found, min((a.start_ns for a in found), default=None))

    def join(self):
        if self.worker is not None:
            self.worker.join()


def collect(listen: list[str], config: Config, out_dir: Path, syslog: list[str] = (), deny_logs: list[str] = (),
            deny_format: str | None = None, stop: threading.Event | None = None) -> dict:
    from flowsense.decode.netflow import FW_DENIED
    from flowsense.pipeline import _prepare_out, write_json, write_stats
    from flowsense.schema import NFLOW
    from flowsense.sinks.tables import nflow_table

    _prepare_out(out_dir)
    rotate_s = config.collect.rotate_s
    stop = stop or threading.Event()
    inbox: queue.Queue = queue.Queue(QUEUE_CHUNKS)
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
                  "alerts": detection.log.alerts, "detection": detection.log.stats(),
                  "records_not_analysed": detection.not_analysed,
                  "denylog": denies.stats() if denies else None,
                  "exporters": decoder.stats(), "config": to_toml(config)}
        write_stats(out_dir, result)
        write_json(out_dir / TEMPLATES_FILE, decoder.save_templates(), indent=None)
        return result

    def decode_chunk(timeout_s: float) -> bool:
        """Decode one received chunk; False when none came."""
        try:
            listener, chunk = inbox.get(timeout=timeout_s)
        except queue.Empty:
            return False
        rows = decoder.decode_batch(*chunk.batch())
        listener.free.put(chunk.buf)
        if len(rows):
            flows.write(nflow_table(rows))
            detection.add(rows)
            if denies:
                denies.flush(rows[rows["fw_event"] == FW_DENIED])
        return True

    try:
        while not stop.is_set():
            decode_chunk(0.2)
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
        while decode_chunk(0):
            pass
        if denies:
            denies.close()
        flows.close()
        detection.run(denies, wait=True)
        return stats()  # while the sockets are still open, so their kernel drop counts can be read
    finally:
        flows.close()
        if denies:
            denies.out.close()
        for lst in listeners:
            lst.close()
