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


class RotatingFlows:
    """flows-<UTC start>.parquet, a new file every ``rotate_s`` seconds of wall time."""

    def __init__(self, out_dir: Path, rotate_s: float):
        self.out_dir, self.rotate_s = out_dir, rotate_s
        self.sink, self.opened, self.files, self.rows = None, 0.0, [], 0

    def write(self, rows):
        from flowsense.schema import NFLOW
        from flowsense.sinks.parquet import ParquetSink
        from flowsense.sinks.tables import nflow_table

        now = time.time()
        if self.sink is not None and now - self.opened >= self.rotate_s:
            self.close()
        if self.sink is None:
            name = time.strftime("flows-%Y%m%dT%H%M%SZ.parquet", time.gmtime(now))
            path = self.out_dir / name
            n = 1
            while path.exists():  # a restart within the same second appends a new file, never overwrites
                n += 1
                path = self.out_dir / name.replace(".parquet", f"-{n}.parquet")
            self.sink = ParquetSink(path, nflow_table(NFLOW.empty(0)), ("orig_h", "resp_h", "proto", "exporter"))
            self.opened = now
            self.files.append(str(path))
        self.sink.write(nflow_table(rows))
        self.rows += len(rows)

    def close(self):
        if self.sink is not None:
            self.sink.close()
            self.sink = None


def collect(listen: list[str], config: Config, out_dir: Path, rotate_s: float = 3600.0,
            stop: threading.Event | None = None) -> dict:
    import numpy as np

    from flowsense.pipeline import _prepare_out

    _prepare_out(out_dir)
    stop = stop or threading.Event()
    inbox: queue.Queue = queue.Queue(QUEUE_DATAGRAMS)
    listeners = [Listener(*parse_listen(text), inbox) for text in listen]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    decoder, flows = NetflowDecoder(), RotatingFlows(out_dir, rotate_s)
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
            flows.write(np.concatenate(rows))
        return bool(batch)

    try:
        while not stop.is_set():
            decode_batch(0.2)
            if time.time() - last_stats >= STATS_EVERY_S:
                stats()
                last_stats = time.time()
        for lst in listeners:  # each reader drains its socket into the queue before it ends
            lst.stop.set()
            lst.thread.join(timeout=2)
        while decode_batch(0):
            pass
        flows.close()
        (out_dir / "alerts.jsonl").touch()
        return stats()  # while the sockets are still open, so their kernel drop counts can be read
    finally:
        flows.close()
        for lst in listeners:
            lst.close()
