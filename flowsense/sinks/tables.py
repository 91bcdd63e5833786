"""FLOW and DNS batches -> Arrow tables with analyst-facing columns (Zeek conn.log names,
addresses as text, UTC timestamps, protocol names, Zeek-style conn_state, community_id)."""

from __future__ import annotations

import numba as nb
import numpy as np
import pyarrow as pa

from flowsense.decode.packets import PROTO_NAMES
from flowsense.flows import table as t
from flowsense.flows.community_id import community_ids

UTC_NS = pa.timestamp("ns", tz="UTC")
_PROTO_TABLE = np.array([PROTO_NAMES.get(i, str(i)) for i in range(256)], object)


@nb.njit(cache=True, inline="always")
def _put_decimal(out, k, v):
    if v >= 100:
        out[k] = 48 + v // 100
        k += 1
    if v >= 10:
        out[k] = 48 + (v // 10) % 10
        k += 1
    out[k] = 48 + v % 10
    return k + 1


@nb.njit(cache=True)
def _format_addrs(hi, lo, offsets, out):
    """Dotted quad for IPv4-mapped addresses, RFC 5952 text for IPv6; Arrow string layout."""
    hexdigits = np.frombuffer(b"0123456789abcdef", np.uint8)
    k = 0
    groups = np.zeros(8, np.int64)
    for i in range(hi.shape[0]):
        offsets[i] = k
        h, low = hi[i], lo[i]
        if h == 0 and (low >> np.uint64(32)) == 0xFFFF:
            for j in range(4):
                if j:
                    out[k] = 46
                    k += 1
                k = _put_decimal(out, k, np.int64((low >> np.uint64(24 - 8 * j)) & np.uint64(0xFF)))
            continue
        for j in range(4):
            groups[j] = np.int64((h >> np.uint64(48 - 16 * j)) & np.uint64(0xFFFF))
            groups[4 + j] = np.int64((low >> np.uint64(48 - 16 * j)) & np.uint64(0xFFFF))
        best, best_len, run = -1, 1, 0
        for j in range(8):
            run = run + 1 if groups[j] == 0 else 0
            if run > best_len:
                best, best_len = j - run + 1, run
        j = 0
        while j < 8:
            if j == best:
                out[k] = 58
                out[k + 1] = 58
                k += 2
                j += best_len
                continue
            if j and j != best + best_len:
                out[k] = 58
                k += 1
            g = groups[j]
            started = False
            for shift in (12, 8, 4, 0):
                nib = (g >> shift) & 15
                if nib or started or shift == 0:
                    out[k] = hexdigits[nib]
                    k += 1
                    started = True
            j += 1
    offsets[hi.shape[0]] = k


def addr_text(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """Addresses as an Arrow string array, formatted in one Numba pass."""
    offsets = np.empty(len(hi) + 1, np.int32)
    out = np.empty(len(hi) * 39, np.uint8)
    _format_addrs(np.ascontiguousarray(hi), np.ascontiguousarray(lo), offsets, out)
    return pa.StringArray.from_buffers(len(hi), pa.py_buffer(offsets), pa.py_buffer(out[:offsets[-1]]))


def conn_state(f: np.ndarray) -> np.ndarray:
    """Zeek conn_state from the table's TCP progress bits; S0/SF for connectionless protocols."""
    st = f["state"].astype(np.int64)
    syn, synack = st & t.ST_SYN > 0, st & t.ST_SYNACK > 0
    fin_o, fin_r = st & t.ST_FIN_ORIG > 0, st & t.ST_FIN_RESP > 0
    rst_o, rst_r = st & t.ST_RST_ORIG > 0, st & t.ST_RST_RESP > 0
    est = syn & synack
    tcp = f["proto"] == 6
    answered = f["resp_pkts"] > 0
    choices = [
        (~tcp & answered, "SF"), (~tcp, "S0"),
        (est & rst_o, "RSTO"), (est & rst_r, "RSTR"),
        (est & fin_o & fin_r, "SF"), (est & fin_o, "S2"), (est & fin_r, "S3"), (est, "S1"),
        (syn & rst_r, "REJ"), (syn & rst_o, "RSTOS0"), (syn & fin_o, "SH"), (syn & ~answered, "S0"),
        (synack & rst_r, "RSTRH"), (synack & fin_r, "SHR"),
    ]
    return np.select([c for c, _ in choices], [s for _, s in choices], "OTH").astype(object)


def flow_table(f: np.ndarray, files: list[str]) -> pa.Table:
    icmp = (f["proto"] == 1) | (f["proto"] == 58)
    orig_p = np.where(icmp, f["icmp_type"], f["orig_p"]).astype(np.uint16)
    resp_p = np.where(icmp, f["icmp_code"], f["resp_p"]).astype(np.uint16)
    orig_h = addr_text(f["orig_hi"], f["orig_lo"])
    resp_h = addr_text(f["resp_hi"], f["resp_lo"])
    cols = {
        "ts": pa.array(f["ts"], UTC_NS),
        "last_ts": pa.array(f["last_ts"], UTC_NS),
        "duration": (f["last_ts"] - f["ts"]) / 1e9,
        "orig_h": orig_h,
        "orig_p": orig_p,
        "resp_h": resp_h,
        "resp_p": resp_p,
        "proto": pa.array(_PROTO_TABLE[f["proto"]], pa.string()),
        "ip_ver": f["ip_ver"],
        "icmp_id": np.where(icmp, f["resp_p"], 0).astype(np.uint16),
        "orig_pkts": f["orig_pkts"],
        "orig_bytes": f["orig_bytes"],
        "resp_pkts": f["resp_pkts"],
        "resp_bytes": f["resp_bytes"],
        "orig_payload_bytes": f["orig_payload_bytes"],
        "resp_payload_bytes": f["resp_payload_bytes"],
        "orig_tcp_flags": f["orig_flags"],
        "resp_tcp_flags": f["resp_flags"],
        "conn_state": pa.array(conn_state(f), pa.string()),
        "end_reason": pa.array(np.array(t.END_REASONS, object)[f["end_reason"]], pa.string()),
        "vlan": f["vlan"],
        "community_id": pa.array(community_ids(f["proto"], f["ip_ver"], f["orig_hi"], f["orig_lo"],
                                               f["resp_hi"], f["resp_lo"], orig_p, resp_p), pa.string()),
        "file": pa.array(np.array(files, object)[f["file_id"]], pa.string()),
        "first_frame": f["first_frame"],
    }
    return pa.table({k: pa.array(v) if isinstance(v, np.ndarray) else v for k, v in cols.items()})


def _names(blob: np.ndarray, off: np.ndarray, length: np.ndarray) -> np.ndarray:
    raw = blob.tobytes()
    return np.array([raw[o:o + n].decode("utf-8", "backslashreplace") for o, n in zip(off.tolist(), length.tolist())],
                    object)


def dns_table(d: np.ndarray, blob: np.ndarray, files: list[str]) -> pa.Table:
    cols = {
        "ts": pa.array(d["ts"], UTC_NS),
        "src_h": addr_text(d["src_hi"], d["src_lo"]),
        "src_p": d["sport"],
        "dst_h": addr_text(d["dst_hi"], d["dst_lo"]),
        "dst_p": d["dport"],
        "proto": pa.array(_PROTO_TABLE[d["proto"]], pa.string()),
        "txid": d["txid"], "qr": d["qr"], "opcode": d["opcode"], "rcode": d["rcode"], "flags": d["flags"],
        "qdcount": d["qdcount"], "ancount": d["ancount"], "nscount": d["nscount"], "arcount": d["arcount"],
        "qname": pa.array(_names(blob, d["qname_off"], d["qname_len"]), pa.string()),
        "qtype": d["qtype"], "qclass": d["qclass"], "msg_len": d["msg_len"], "weird": d["weird"],
        "file": pa.array(np.array(files, object)[d["file_id"]], pa.string()),
        "frame_no": d["frame_no"],
    }
    return pa.table({k: pa.array(v) if isinstance(v, np.ndarray) else v for k, v in cols.items()})
