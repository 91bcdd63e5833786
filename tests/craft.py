"""Writers for crafted captures: classic pcap in every flavour and multi-section pcapng."""

from __future__ import annotations

import struct


def pcap_bytes(frames, link: int = 1, nano: bool = False, big_endian: bool = False, snaplen: int = 262144) -> bytes:
    """``frames``: list of (ts_ns, frame bytes) or (ts_ns, frame bytes, wire_len)."""
    e = ">" if big_endian else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link)]
    for item in frames:
        ts, data = item[0], item[1]
        wire = item[2] if len(item) > 2 else len(data)
        sec, frac = divmod(ts, 1_000_000_000)
        out.append(struct.pack(e + "IIII", sec, frac if nano else frac // 1000, len(data), wire) + data)
    return b"".join(out)


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _option(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_section(interfaces, packets, big_endian: bool = False) -> bytes:
    """``interfaces``: list of (link, tsresol byte or None, tsoffset s or None);
    ``packets``: list of (iface, ts units, frame bytes) for EPBs, or (None, None, bytes) for an SPB."""
    e = ">" if big_endian else "<"
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for link, tsresol, tsoffset in interfaces:
        opts = b""
        if tsresol is not None:
            opts += _option(e, 9, bytes([tsresol]))
        if tsoffset is not None:
            opts += _option(e, 14, struct.pack(e + "q", tsoffset))
        if opts:
            opts += _option(e, 0, b"")
        out.append(_block(e, 1, struct.pack(e + "HHI", link, 0, 0) + opts))
    for iface, units, data in packets:
        if iface is None:
            out.append(_block(e, 3, struct.pack(e + "I", len(data)) + data))
        else:
            out.append(_block(e, 6, struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data),
                                                len(data)) + data))
    out.append(_block(e, 5, struct.pack(e + "III", 0, 0, 0)))  # an interface statistics block, skipped
    return b"".join(out)
