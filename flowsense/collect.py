"""`flowsense collect`: NetFlow v5/v9/IPFIX over UDP until SIGINT/SIGTERM.

One reader thread per listening socket receives datagrams (``recvmmsg``) back to back into a
chunk buffer and hands full chunks to the main thread through a bounded queue (a full queue drops
and counts); the main thread decodes a chunk at a time (one ``NetflowDecoder.decode_batch`` call)
and rewrites ``stats.json`` and ``templates.json`` every few seconds.  Two worker processes, each
with a GIL of its own, do the rest: one converts the records to Arrow and writes rotating Parquet
files (``flows-<UTC start>.parquet``, queryable together with DuckDB), the other runs the detectors
over closed windows at idle priority.  Templates saved by a previous run in the same folder are
loaded at start, so a restart loses no data waiting for a template refresh.  On a stop signal each
reader drains its socket, the queue is decoded, the files closed, the last window analysed and
the final stats written; exit 0.  Kernel-level drops are read from /proc/net/udp[6].
"""

from __future__ import annotations

import contextlib
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
from flowsense.nets import AddressSet
from flowsense.sources.mmsg import SLOTS, BatchReceiver, pack

QUEUE_DATAGRAMS = 100_000       # deny-log lines waiting for the main thread
QUEUE_CHUNKS = 64               # received chunks waiting for the decoder (a full queue drops and counts)
CHUNK_BYTES = 1 << 20           # one chunk's buffer ...
BATCH_DATAGRAMS = 1024          # ... and at most this many datagrams in it
COALESCE_S = 0.002             # a reader that drained its socket sleeps this long: batches, not wake-ups
CHUNK_MAX_WAIT_S = 0.1          # a chunk that is not full goes to the decoder after this long
STATS_EVERY_S = 5.0
WRITES_AHEAD = 4                # converted tables waiting for the Parquet writer thread
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
    """Datagrams received back to back into one buffer: what the decoder takes as one batch.
    Chunks are recycled: ``reset`` empties one for reuse."""

    def __init__(self):
        self.bytes = np.zeros(CHUNK_BYTES, np.uint8)
        self.bounds = np.zeros(BATCH_DATAGRAMS + 1, np.int64)
        self.ids = np.zeros(BATCH_DATAGRAMS, np.int64)
        self.reset()

    def reset(self) -> Chunk:
        self.count = 0
        self.hosts: dict[str, int] = {}   # exporter address -> id within this chunk
        return self

    def take(self, receiver: BatchReceiver, first: int, n: int) -> int:
        """Copy the receiver's datagrams ``first``.. while they fit; returns the next one not taken."""
        done = pack(receiver.landing, receiver.lengths(n), first, self.bytes, self.bounds, self.count, BATCH_DATAGRAMS)
        for host, lo, hi in receiver.peer_runs(first, done):
            self.ids[self.count + lo - first:self.count + hi - first] = self.hosts.setdefault(host, len(self.hosts))
        self.count += done - first
        return done

    def batch(self):
        """(buffer, bounds, exporter ids, exporter names) for NetflowDecoder.decode_batch."""
        return self.bytes, self.bounds[:self.count + 1], self.ids[:self.count], list(self.hosts)


class Listener:
    """A UDP socket and its reader thread: datagrams are received many per system call
    (``recvmmsg``) and copied back to back into a chunk buffer, and a chunk goes to the queue when
    it is full, or when the socket has nothing more and its first datagram waited CHUNK_MAX_WAIT_S
    (a decoder call per datagram would cost far more than the datagram).  Chunk buffers are recycled."""

    def __init__(self, host: str, port: int, inbox: queue.Queue, v6_only: bool = False):
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        if v6_only:  # an IPv4 listener on the same port takes the IPv4 datagrams
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
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
        self.receiver = BatchReceiver(self.sock)
        self.port = self.sock.getsockname()[1]
        self.name = f"{host}:{self.port}"
        self.inbox = inbox
        self.free: queue.SimpleQueue = queue.SimpleQueue()  # decoded chunks, for reuse
        warm = Chunk()
        warm.take(self.receiver, 0, 0)  # compiled (or loaded from the cache) before datagrams wait on it
        self.free.put(warm)
        self.received = self.queue_drops = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"flowsense-udp-{self.port}", daemon=True)
        self.thread.start()

    def _chunk(self) -> Chunk:
        try:
            return self.free.get_nowait().reset()
        except queue.Empty:
            return Chunk()

    def _run(self):
        chunk, started = self._chunk(), 0.0
        readable = select.poll()
        readable.register(self.sock, select.POLLIN)
        receiver = self.receiver
        while True:
            try:
                n = receiver.receive()
            except OSError:
                return
            if not n:  # nothing more for now: hand over what waited long enough, then wait
                waited = time.monotonic() - started
                if chunk.count and (waited >= CHUNK_MAX_WAIT_S or self.stop.is_set()):
                    self._hand_over(chunk)
                    chunk = self._chunk()
                if self.stop.is_set() and not chunk.count:
                    return  # stopping: what the kernel held has been delivered
                readable.poll(max(CHUNK_MAX_WAIT_S - waited, 0.001) * 1000 if chunk.count else 200)
                continue
            self.received += n
            first = 0
            while first < n:
                if not chunk.count:
                    started = time.monotonic()
                first = chunk.take(receiver, first, n)
                if first < n:  # full: the rest goes into the next chunk
                    self._hand_over(chunk)
                    chunk = self._chunk()
            if n < SLOTS:  # drained: let datagrams gather in the kernel buffer rather than wake per datagram
                time.sleep(COALESCE_S)

    def _hand_over(self, chunk: Chunk):
        try:
            self.inbox.put_nowait((self, chunk))
        except queue.Full:
            self.queue_drops += chunk.count
            self.free.put(chunk)

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


def spawn_worker(target, *args):
    """(process, connection) of a worker process running ``target(connection, *args)``.  Started
    with spawn: a fork would copy the reader threads' locks.  Its own interpreter also means its
    own GIL, which is the point: the receiving threads never wait for it."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    return process, conn


class FlowFiles:
    """The flow files (``flows-<UTC start>.parquet``, rotated) written by a worker process: NFLOW
    rows go down a pipe, and the worker converts them to Arrow and writes Parquet.  When the worker
    falls behind, the pipe is full and the caller waits, and the receive queue, which counts what it
    drops, takes the backlog.  A write error (disk full, ...) ends the run with its message."""

    def __init__(self, out_dir: Path, rotate_s: float):
        self.process, self.conn = spawn_worker(_flow_files_worker, out_dir, rotate_s)
        self.rows, self.files = 0, []
        self.ended = False  # the worker said its last word (closed, or an error)

    def _receive(self, until: str | None = None):
        while self.conn.poll() or until:
            try:
                kind, payload = self.conn.recv()
            except EOFError:
                self.ended = True
                raise InputError("the flow-file writer process ended unexpectedly; see the messages above") from None
            if kind in ("error", "closed"):
                self.ended = True
            if kind == "error":
                raise InputError(payload)
            if kind == "file":
                self.files.append(payload)
            if kind == "closed":
                self.rows = payload
            if kind == until:
                return

    def write(self, records: np.ndarray):
        try:
            self.conn.send_bytes(memoryview(records).cast("B"))
        except OSError:  # the worker ended: its last message says why
            self._receive(until="closed")
        self.rows += len(records)
        self._receive()

    def close(self):
        """Write what is queued, close the file, end the worker; after the worker's error has been
        raised (this is then called on the way out) there is nothing more to say."""
        if not self.ended:
            self.conn.send_bytes(b"")
            self._receive(until="closed")
        self.process.join(timeout=10)


def _flow_files_worker(conn, out_dir: Path, rotate_s: float):
    """Converts on this thread while the previous tables are written on another (the Numba
    kernels and Parquet's encoder both run outside the GIL): two cores for the two halves."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from flowsense.schema import NFLOW
    from flowsense.sinks.tables import nflow_table

    for sig in (signal.SIGINT, signal.SIGTERM):  # the collector says when the last rows have come
        signal.signal(sig, signal.SIG_IGN)
    out = RotatingParquet(out_dir, "flows", nflow_table(NFLOW.empty(0)),
                          ("orig_h", "resp_h", "proto", "exporter", "conn_state", "end_reason", "source"), rotate_s)
    announced, pending = 0, deque()

    def settle(limit: int):
        nonlocal announced
        while len(pending) > limit:
            pending.popleft().result()
        for path in out.files[announced:]:
            conn.send(("file", path))
        announced = len(out.files)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="flowsense-parquet") as writer:
            for data in _batches(conn):
                pending.append(writer.submit(out.write, nflow_table(np.frombuffer(data, NFLOW.dtype))))
                settle(WRITES_AHEAD)
            settle(0)
        out.close()
        reply = ("closed", out.rows)
    except OSError as err:
        reply = ("error", f"writing flow files in {out_dir}: {err.strerror or err}; free space or fix the "
                          + "folder's permissions")
    with contextlib.suppress(OSError):  # a collector that was killed reads no reply
        conn.send(reply)


def _batches(conn):
    """Row batches until the collector's empty message, or until the collector is gone (then the
    file is still closed properly, footer and all)."""
    try:
        while data := conn.recv_bytes():
            yield data
    except EOFError:
        return


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


HASH_BUCKETS = 1024


def host_sample(records: np.ndarray, internal: AddressSet, share: float) -> np.ndarray:
    """Which records belong to the ``share`` of hosts kept: keyed by the record's internal address
    (its source if both or neither are internal), so both directions of a host's conversations go
    together, and by a fixed hash, so the same hosts stay kept from window to window."""
    src_in = internal.contains(records["src_hi"], records["src_lo"])
    dst_only = ~src_in & internal.contains(records["dst_hi"], records["dst_lo"])
    hi = np.where(dst_only, records["dst_hi"], records["src_hi"])
    lo = np.where(dst_only, records["dst_lo"], records["src_lo"])
    bucket = ((hi ^ lo) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(54)  # Fibonacci hash: 10 bits
    return bucket < np.uint64(int(share * HASH_BUCKETS))


def next_share(share: float, analysed: int, shed: int) -> float:
    """The host share for the next window: shrunk to what the worker got through when a full
    window turned records away, grown back by a quarter when nothing was turned away."""
    if shed:
        return max(share * analysed / (analysed + shed), 1 / HASH_BUCKETS)
    return min(1.0, share * 1.25)


class LiveDetection:
    """The detectors over collected records, one window at a time, in a worker process at idle
    priority (SCHED_IDLE) so that receiving, decoding and writing keep the GIL and the CPU they need:
    each window's NFLOW rows go to the worker through a pipe, and the worker appends the findings
    to alerts.jsonl through its ``AlertLog`` (an identifier already reported within the
    suppression window is not repeated by later windows).  A window closes after
    ``detect_every_s`` seconds or once it holds MAX_WINDOW_RECORDS records, so memory stays bounded
    whatever the export rate; nothing is lost to the flow files.

    When the worker cannot keep up (a full window waits for it while records keep coming), load is
    shed by host, not by time: only the records of a share of the hosts (a hash of each record's
    internal address) go to the detectors, the share shrinking to what the worker got through and
    growing back when it keeps up.  An analyst then sees every beacon, scan and fallback of fewer
    hosts rather than fragments of everyone's.  What the detectors did not see is counted
    (``records_not_analysed``, ``detection.host_share``).  A worker that dies is counted and replaced."""

    def __init__(self, config: Config, out_dir: Path):
        self.config, self.out_dir = config, out_dir
        self.not_analysed = self.analysed = self.worker_restarts = self.in_flight = 0
        self.internal = AddressSet(config.networks.internal)
        self.share, self.shed = 1.0, 0  # hosts whose records are analysed; records a full window turned away
        self.report = {"alerts": 0}
        self.sender: threading.Thread | None = None
        self._spawn()
        self._receive(wait=True)  # the worker's config check (e.g. a bad forward_syslog) fails the start
        self._open()

    def _spawn(self):
        self.worker, self.conn = spawn_worker(_detection_worker, self.config, self.out_dir, self.report)
        self.busy = True  # until its first message

    def _open(self):
        self.parts, self.opened, self.records = [], time.time(), 0

    def _receive(self, wait: bool = False):
        """Take the worker's messages.  A worker that died is replaced; the window it was analysing
        is counted as not analysed."""
        while self.busy and (wait or self.conn.poll()):
            try:
                kind, payload = self.conn.recv()
            except (EOFError, OSError):
                self._replace()
                continue
            if kind == "error":
                raise UsageError(payload)
            self.report = payload
            self.busy, self.in_flight = False, 0

    def _replace(self):
        self.worker.join(timeout=5)
        self.worker_restarts += 1
        self.not_analysed += self.in_flight
        self.analysed -= self.in_flight
        self.in_flight = 0
        self._spawn()

    def add(self, records: np.ndarray):
        """Take the records of the hosts in the share into the window.  ``records`` is the decoder's
        reused buffer: what the window keeps is copied, what it turns away is only counted."""
        owned = False
        if self.share < 1.0:
            kept = records[host_sample(records, self.internal, self.share)]  # boolean indexing copies
            self.not_analysed += len(records) - len(kept)
            records, owned = kept, True
        if self.records >= MAX_WINDOW_RECORDS:
            self.not_analysed += len(records)
            self.shed += len(records)
            return
        self.parts.append(records if owned else records.copy())
        self.records += len(records)

    def due(self) -> bool:
        self._receive()
        return not self.busy and (time.time() - self.opened >= self.config.collect.detect_every_s
                                  or self.records >= MAX_WINDOW_RECORDS)

    def run(self, denies=None, wait: bool = False):
        """Close the window and hand it to the worker on a thread of its own: the worker reads it at
        idle priority, and the receiving side must not wait for that.  The deny rows are taken now,
        on the caller's thread."""
        from flowsense.detection import Denies

        self._receive(wait=True)
        if self.sender is not None:
            self.sender.join()
        if not self.worker.is_alive():  # died while idle: replaced before it is handed a window
            self._replace()
            self._receive(wait=True)
        self.share, self.shed = next_share(self.share, self.records, self.shed), 0
        message = ("window", len(self.parts), Denies.of(denies.reader) if denies else None)
        self.sender = threading.Thread(target=_send_window, args=(self.conn, message, self.parts),
                                       name="flowsense-window", daemon=True)
        self.sender.start()
        self.analysed += self.records
        self.busy, self.in_flight = True, self.records
        self._open()
        if wait:
            self._receive(wait=True)

    def stats(self) -> dict:
        self._receive()
        return {**self.report, "records_analysed": self.analysed, "host_share": round(self.share, 4),
                "worker_restarts": self.worker_restarts}

    def close(self):
        """Let the worker finish its window and end; on an error path (busy or not) it is ended."""
        if self.worker.is_alive() and not self.busy:
            self.conn.send(("stop", 0, None))
            self.worker.join(timeout=10)
        if self.worker.is_alive():
            self.worker.terminate()
            self.worker.join()


def _send_window(conn, message, parts):
    try:
        conn.send(message)
        for part in parts:
            conn.send_bytes(memoryview(part).cast("B"))
    except OSError:
        pass  # the worker died: LiveDetection sees the closed pipe and replaces it


def _detection_worker(conn, config: Config, out_dir: Path, previous: dict):
    """The worker process: windows of NFLOW rows in, alerts.jsonl out, its AlertLog's counts (carried
    over from a worker it replaces, in ``previous``) and its own CPU time back."""
    import os
    import resource

    from flowsense.alerts import AlertLog
    from flowsense.detection import Detection
    from flowsense.pipeline import flow_rows
    from flowsense.schema import NFLOW

    for sig in (signal.SIGINT, signal.SIGTERM):  # the collector decides when the last window is done
        signal.signal(sig, signal.SIG_IGN)
    try:  # runs on CPU the receiving side leaves
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # a seccomp profile may refuse it: the weakest nice value is the next best thing
        os.nice(19)
    try:
        log = AlertLog(config, out_dir)
    except UsageError as err:
        conn.send(("error", str(err)))
        return
    log.alerts, log.by_analytic = previous.get("alerts", 0), dict(previous.get("alerts_by_analytic", {}))

    def report():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("report", {**log.stats(), "worker_pid": os.getpid(),
                              "worker_cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}))

    report()
    try:
        while (message := conn.recv())[0] == "window":
            _, parts, denies = message
            records = np.concatenate([np.frombuffer(conn.recv_bytes(), NFLOW.dtype) for _ in range(parts)]) \
                if parts else NFLOW.empty(0)
            detection = Detection(config, grade="flows")
            detection.add_flows(flow_rows(records))
            del records
            found, _ = detection.finish(denies)
            del detection
            log.write(found, min((a.start_ns for a in found), default=None))
            report()
    except EOFError:
        pass  # the collector is gone


def collect(listen: list[str], config: Config, out_dir: Path, syslog: list[str] = (), deny_logs: list[str] = (),
            deny_format: str | None = None, stop: threading.Event | None = None) -> dict:
    from flowsense.decode.netflow import FW_DENIED
    from flowsense.pipeline import _prepare_out, write_json, write_stats

    _prepare_out(out_dir)
    rotate_s = config.collect.rotate_s
    stop = stop or threading.Event()
    inbox: queue.Queue = queue.Queue(QUEUE_CHUNKS)
    flows = FlowFiles(out_dir, rotate_s)  # both workers start up side by side
    detection = LiveDetection(config, out_dir)
    addresses = [parse_listen(text) for text in listen]
    v4_ports = {port for host, port in addresses if ":" not in host}
    listeners = [Listener(host, port, inbox, v6_only=":" in host and port in v4_ports) for host, port in addresses]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    decoder = NetflowDecoder()
    denies = LiveDenies(config, out_dir, list(syslog), list(deny_logs), deny_format, rotate_s) \
        if syslog or deny_logs else None
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
                  "alerts": detection.report["alerts"], "detection": detection.stats(),
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
        listener.free.put(chunk)
        if len(rows):
            flows.write(rows)
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
        detection.close()
        flows.close()
        if denies:
            denies.out.close()
        for lst in listeners:
            lst.close()
