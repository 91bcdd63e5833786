"""Live capture from an interface: Linux AF_PACKET with a TPACKET_V3 memory-mapped ring.

The kernel fills blocks of the ring and hands each over whole (full, or after
``block_timeout_ms``).  One Numba call walks every handed-over block into a FRAME batch whose
offsets point into the ring itself, so the decoder reads packets where the kernel wrote them, with
no copy and no Python per packet; the blocks go back to the kernel once the batch is decoded.
VLAN tags, which the kernel strips into the packet header, are put back in front of the payload
(as libpcap does) so the decoder sees what tcpdump would have written.  Kernel drops and queue
freezes come from PACKET_STATISTICS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import select
import socket
import struct
from pathlib import Path

import numba as nb
import numpy as np

from flowsense.errors import InputError, UsageError
from flowsense.schema import FRAME
from flowsense.sources.pcap import _u16, _u32  # little-endian here: the ring is in host order (x86/arm64)

SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_RX_RING, PACKET_STATISTICS = 263, 1, 5, 6
PACKET_VERSION, PACKET_RESERVE, PACKET_FANOUT, TPACKET_V3, PACKET_MR_PROMISC = 10, 12, 18, 2, 1
PACKET_FANOUT_HASH, PACKET_FANOUT_FLAG_DEFRAG = 0, 0x8000
ETH_P_ALL, SO_ATTACH_FILTER = 0x0003, 26
TP_STATUS_USER, TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 1, 0x10, 0x40
VLAN_TAG_LEN = 4
BATCH_FRAMES = 65536
SLL_PKTTYPE, PACKET_OUTGOING = 48 + 10, 4  # sockaddr_ll follows the 48-byte aligned header
HEADER_ROOM = 80  # TPACKET_ALIGN(tpacket3_hdr) + sockaddr_ll, rounded: space before each frame's MAC header
ARPHRD_LOOPBACK = 772
LINKTYPES = {1: 1, ARPHRD_LOOPBACK: 1, 65534: 101}  # ARPHRD -> LINKTYPE: Ethernet, loopback (Ethernet-framed), none (raw IP)
CAPTURE_HINT = "run as root, or grant the capability: setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which python3))"


@nb.njit(cache=True, nogil=True)
def walk_ring(ring, block_size, block_nr, first, link, file_id, frame_no, skip_outgoing, frames):
    """FRAME rows of the blocks handed to user space, from block ``first`` on, as long as the next
    whole block fits in ``frames``.  ``skip_outgoing`` drops the sent copy of each packet on a
    loopback interface, which the kernel shows twice.  Returns (frames filled, blocks walked, last
    frame number)."""
    n = 0
    walked = 0
    ethernet = link == 1
    while walked < block_nr:
        b = ((first + walked) % block_nr) * block_size
        if _u32(ring, b + 8, False) & TP_STATUS_USER == 0:
            break
        count = _u32(ring, b + 12, False)
        if n + count > frames.shape[0]:
            break
        p = b + _u32(ring, b + 16, False)
        for _ in range(count):
            nxt = _u32(ring, p, False)
            if skip_outgoing and ring[p + SLL_PKTTYPE] == PACKET_OUTGOING:
                p += nxt
                continue
            status = _u32(ring, p + 20, False)
            snap = _u32(ring, p + 12, False)
            wire = _u32(ring, p + 16, False)
            off = p + _u16(ring, p + 24, False)
            if ethernet and status & TP_STATUS_VLAN_VALID and snap >= 12:
                tpid = _u16(ring, p + 36, False) if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                tci = _u32(ring, p + 32, False) & 0xFFFF
                for j in range(12):        # the two MAC addresses move back; the tag goes after them
                    ring[off - VLAN_TAG_LEN + j] = ring[off + j]
                off -= VLAN_TAG_LEN
                ring[off + 12] = tpid >> 8
                ring[off + 13] = tpid & 0xFF
                ring[off + 14] = tci >> 8
                ring[off + 15] = tci & 0xFF
                snap += VLAN_TAG_LEN
                wire += VLAN_TAG_LEN
            frame_no += 1
            f = frames[n]
            f.off = off
            f.cap_len = snap
            f.wire_len = wire
            f.ts = _u32(ring, p + 4, False) * 1_000_000_000 + _u32(ring, p + 8, False)
            f.link = link
            f.file_id = file_id
            f.frame_no = frame_no
            n += 1
            p += nxt
        walked += 1
    return n, walked, frame_no


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


def compile_filter(expression: str, linktype: int, snaplen: int) -> bytes:
    """Classic BPF code for a tcpdump-syntax filter, compiled by libpcap; every accepting return
    carries ``snaplen``, so an empty filter still truncates packets to the snap length."""
    lib = ctypes.util.find_library("pcap")
    if lib is None:
        raise UsageError("libpcap not found: install it (apt-get install libpcap0.8)")
    pcap = ctypes.CDLL(lib)
    pcap.pcap_open_dead.restype = ctypes.c_void_p
    pcap.pcap_geterr.restype = ctypes.c_char_p
    pcap.pcap_geterr.argtypes = [ctypes.c_void_p]
    pcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                  ctypes.c_uint32]
    pcap.pcap_close.argtypes = [ctypes.c_void_p]
    handle = pcap.pcap_open_dead(linktype, snaplen)
    program = _BpfProgram()
    try:
        if pcap.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            raise UsageError(f"BPF filter {expression!r}: {pcap.pcap_geterr(handle).decode()}; "
                             "use tcpdump syntax, e.g. \"not port 22\"")
        code = ctypes.string_at(program.bf_insns, program.bf_len * 8)
        pcap.pcap_freecode(ctypes.byref(program))
        return code
    finally:
        pcap.pcap_close(handle)


def _arphrd(iface: str) -> int:
    try:
        arphrd = int(Path(f"/sys/class/net/{iface}/type").read_text())
    except (OSError, ValueError):
        raise InputError(f"--iface {iface}: no such interface; list them with `ip link`") from None
    if arphrd not in LINKTYPES:
        raise InputError(f"--iface {iface}: link type ARPHRD {arphrd} is not supported (Ethernet, loopback and "
                         "raw-IP interfaces are)")
    return arphrd


class RingCapture:
    """One interface's ring.  ``read(timeout_s)`` returns a FRAME batch pointing into ``self.ring``,
    valid until ``release()`` gives its blocks back to the kernel."""

    def __init__(self, iface: str, file_id: int, snaplen: int, bpf: str, promiscuous: bool, block_kib: int,
                 blocks: int, block_timeout_ms: int, fanout_group: int = 0):
        self.iface, self.file_id = iface, file_id
        arphrd = _arphrd(iface)
        self.link, self.loopback = LINKTYPES[arphrd], arphrd == ARPHRD_LOOPBACK
        self.block_size = block_kib * 1024
        if self.block_size % mmap.PAGESIZE or self.block_size & (self.block_size - 1):
            raise UsageError(f"config: [sense].ring_block_kib must be a power of two of at least "
                             f"{mmap.PAGESIZE // 1024}, got {block_kib}")
        self.blocks = blocks
        filter_code = compile_filter(bpf, self.link, snaplen)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise InputError(f"--iface {iface}: capturing needs CAP_NET_RAW; {CAPTURE_HINT}") from None
        try:
            self._setup(filter_code, snaplen, promiscuous, block_timeout_ms, fanout_group)
        except OSError as err:
            self.sock.close()
            if err.errno in (errno.ENODEV, errno.ENXIO):
                raise InputError(f"--iface {iface}: no such interface; list them with `ip link`") from None
            if err.errno in (errno.EPERM, errno.EACCES):
                raise InputError(f"--iface {iface}: not permitted ({err.strerror}); {CAPTURE_HINT}") from None
            if err.errno == errno.ENOMEM:
                raise InputError(f"--iface {iface}: the kernel refused a {blocks} x {block_kib} KiB ring; lower "
                                 "[sense].ring_blocks or ring_block_kib") from None
            raise InputError(f"--iface {iface}: cannot capture ({err.strerror})") from None
        self.ring = np.frombuffer(self.map, np.uint8)
        self.status = np.frombuffer(self.map, np.uint32)[2::self.block_size // 4]  # each block's status word
        # a read takes whole blocks while they fit; a block holds at most block_size / 96 frames
        self.frames = FRAME.empty(max(BATCH_FRAMES, self.block_size // 96 + 1))
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN | select.POLLERR)
        self.next_block = self.walked = self.frame_no = 0
        self.kernel = {"packets": 0, "drops": 0, "freezes": 0}
        self.fill_max = 0.0

    def _setup(self, filter_code: bytes, snaplen: int, promiscuous: bool, timeout_ms: int, fanout_group: int):
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        s.setsockopt(SOL_PACKET, PACKET_RESERVE, VLAN_TAG_LEN)
        program = ctypes.create_string_buffer(filter_code)
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                     struct.pack("HxxxxxxP", len(filter_code) // 8, ctypes.addressof(program)))
        frame_size = min(self.block_size, (HEADER_ROOM + VLAN_TAG_LEN + snaplen + 15) // 16 * 16)
        per_block = self.block_size // frame_size
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("7I", self.block_size, self.blocks, frame_size,
                                                             per_block * self.blocks, timeout_ms, 0, 0))
        self.map = mmap.mmap(s.fileno(), self.block_size * self.blocks, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        s.bind((self.iface, ETH_P_ALL))
        if promiscuous:
            index = socket.if_nametoindex(self.iface)
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
        if fanout_group:
            mode = (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", fanout_group | mode))

    def read(self, timeout_s: float) -> np.ndarray:
        """Frames of every block the kernel has handed over (waiting up to ``timeout_s`` for one)."""
        if not self.status[self.next_block] & TP_STATUS_USER:
            self.poller.poll(int(timeout_s * 1000))
        self.fill_max = max(self.fill_max, self.ring_fill())
        n, self.walked, self.frame_no = walk_ring(self.ring, self.block_size, self.blocks, self.next_block,
                                                  self.link, self.file_id, self.frame_no, self.loopback,
                                                  self.frames)
        return self.frames[:n]

    def release(self) -> None:
        """Give the blocks of the last read back to the kernel."""
        for k in range(self.walked):
            self.status[(self.next_block + k) % self.blocks] = 0
        self.next_block = (self.next_block + self.walked) % self.blocks
        self.walked = 0

    def ring_fill(self) -> float:
        return float(np.count_nonzero(self.status & TP_STATUS_USER)) / self.blocks

    def kernel_stats(self) -> dict:
        """PACKET_STATISTICS since the start (the kernel resets them at each read, so they are summed)."""
        packets, drops, freezes = struct.unpack("3I", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        self.kernel["packets"] += packets
        self.kernel["drops"] += drops
        self.kernel["freezes"] += freezes
        return dict(self.kernel)

    def close(self) -> None:
        self.poller.unregister(self.sock)
        del self.ring, self.status  # the mapping closes once no array views it
        self.map.close()
        self.sock.close()
