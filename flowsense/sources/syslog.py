"""Live deny-log inputs for the sensor and the collector: a syslog listener and a file tail.

SyslogListener takes UDP datagrams and TCP streams with either RFC 6587 framing (octet counting,
``LEN SP MSG``, detected per message) or newline framing, on IPv4 or IPv6, and hands each
message to ``on_line(line, source)`` from its own threads.  FileTail follows a log file across
rotation (rename + new file, or truncation) by polling, like ``tail -F``.  Both stop on
``stop()``; neither ever raises on bad input, it just passes the bytes on as text.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from pathlib import Path

MAX_MESSAGE = 64 * 1024
MAX_PENDING = 1 << 20  # a TCP peer sending this much without a frame boundary is cut off


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").rstrip("\r\n\0")


class TcpFramer:
    """Splits a TCP syslog byte stream into messages: octet counting when a message starts with
    digits and a space, newline framing otherwise (RFC 6587 allows both on one port)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        out = []
        while self.buf:
            head = self.buf[:8]
            space = head.find(b" ")
            if space > 0 and head[:space].isdigit():
                size = int(head[:space])
                if len(self.buf) < space + 1 + size:
                    break
                out.append(_text(self.buf[space + 1:space + 1 + size]))
                self.buf = self.buf[space + 1 + size:]
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_PENDING:
                    out.append(_text(self.buf))
                    self.buf = b""
                break
            out.append(_text(self.buf[:nl]))
            self.buf = self.buf[nl + 1:]
        return [m for m in out if m]


class SyslogListener:
    def __init__(self, host: str, port: int, on_line, udp: bool = True, tcp: bool = True):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.on_line = on_line
        self.sockets = []
        self.received = 0
        if udp:
            u = socket.socket(family, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            u.bind((host, port))
            port = port or u.getsockname()[1]
            self.sockets.append(u)
        if tcp:
            t = socket.socket(family, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, port))
            t.listen(64)
            self.sockets.append(t)
        self.address = (host, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="flowsense-syslog", daemon=True)
        self._thread.start()

    def _serve(self):
        sel = selectors.DefaultSelector()
        framers: dict[socket.socket, tuple[TcpFramer, tuple]] = {}
        for s in self.sockets:
            sel.register(s, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                if s.type == socket.SOCK_DGRAM:
                    data, peer = s.recvfrom(MAX_MESSAGE)
                    self._deliver([_text(line) for line in data.splitlines()], peer)
                elif s in framers:
                    framer, peer = framers[s]
                    try:
                        data = s.recv(MAX_MESSAGE)
                    except OSError:
                        data = b""
                    if data:
                        self._deliver(framer.feed(data), peer)
                    else:  # peer closed: flush an unterminated last message
                        sel.unregister(s)
                        del framers[s]
                        self._deliver(framer.feed(b"\n"), peer)
                        s.close()
                else:
                    conn, peer = s.accept()
                    framers[conn] = (TcpFramer(), peer)
                    sel.register(conn, selectors.EVENT_READ)
        for conn in framers:
            conn.close()
        sel.close()

    def _deliver(self, lines: list[str], peer):
        for line in lines:
            if line:
                self.received += 1
                self.on_line(line, peer)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        for s in self.sockets:
            s.close()


class FileTail:
    """Follows ``path`` from its current end (or start), surviving rotation and truncation."""

    def __init__(self, path: str | Path, on_line, from_start: bool = False, interval_s: float = 0.2):
        self.path = Path(path)
        self.on_line = on_line
        self.interval_s = interval_s
        self.lines = 0
        self.rotations = 0
        self._fh = None
        self._inode = None
        self._partial = b""
        self._open(seek_end=not from_start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowsense-tail", daemon=True)
        self._thread.start()

    def _open(self, seek_end: bool):
        try:
            fh = self.path.open("rb")
        except OSError:
            self._fh = self._inode = None
            return
        if seek_end:
            fh.seek(0, os.SEEK_END)
        self._fh, self._inode = fh, os.fstat(fh.fileno()).st_ino

    def _drain(self):
        data = self._fh.read()
        if not data:
            return
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            if raw.strip():
                self.lines += 1
                self.on_line(_text(raw), str(self.path))

    def _run(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)
        self.poll()

    def poll(self):
        if self._fh is None:
            self._open(seek_end=False)
            if self._fh is None:
                return
        self._drain()
        try:
            st = os.stat(self.path)
        except OSError:
            return  # rotated away, the new file is not there yet
        if st.st_ino != self._inode or st.st_size < self._fh.tell():
            self._drain()  # whatever the old file got after our last read
            self._fh.close()
            self.rotations += 1
            self._partial = b""
            self._open(seek_end=False)
            if self._fh is not None:
                self._drain()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        if self._fh:
            self._fh.close()

