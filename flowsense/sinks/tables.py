"""FLOW and DNS batches -> Arrow tables with analyst-facing columns (Zeek conn.log names,
addresses as text, UTC timestamps, protocol names, Zeek-style conn_state, community_id).

Columns are built from buffers (``pa.Array.from_buffers``) rather than ``pa.array``, which
imports pandas on first use: a third of a second of start-up for every run."""

from __future__ import annotations

import numba as nb
import numpy as np
import pyarrow as pa

from flowsense.decode.packets import PROTO_NAMES
from flowsense.features.app import APPS
from flowsense.flows import table as t
from flowsense.flows.community_id import ID_LEN, community_ids

UTC_NS = pa.timestamp("ns", tz="UTC")
PROTO_VOCAB = [PROTO_NAMES.get(i, str(i)) for i in range(256)]
CONN_STATES = ["S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"]


def column(values: np.ndarray, typ: pa.DataType | None = None) -> pa.Array:
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(typ or pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def strings(texts: list[bytes]) -> pa.Array:
    lengths = np.fromiter(map(len, texts), np.int32, len(texts))
    offsets = np.zeros(len(texts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(len(texts), pa.py_buffer(offsets), pa.py_buffer(b"".join(texts)))


def labels(vocab: list[str], index: np.ndarray) -> pa.Array:
    """Text column from a small vocabulary and an index per row (one Numba gather)."""
    words = [v.encode() for v in vocab] or [b""]
    sizes = np.array([len(w) for w in words], np.int32)
    starts = np.zeros(len(words) + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    index = np.ascontiguousarray(index, np.int64)
    offsets = np.zeros(len(index) + 1, np.int32)
    np.cumsum(sizes[index], out=offsets[1:])
    data = np.empty(offsets[-1], np.uint8)
    _gather_words(np.frombuffer(b"".join(words), np.uint8), starts, index, offsets, data)
    return pa.StringArray.from_buffers(len(index), pa.py_buffer(offsets), pa.py_buffer(data))


@nb.njit(cache=True, nogil=True)
def _gather_words(blob, starts, index, offsets, out):
    for i in range(index.shape[0]):
        w = index[i]
        out[offsets[i]:offsets[i + 1]] = blob[starts[w]:starts[w + 1]]


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


@nb.njit(cache=True, nogil=True)
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
    """Zeek conn_state (index into CONN_STATES) from the table's TCP progress bits; S0/SF for
    connectionless protocols."""
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
    return np.select([c for c, _ in choices], [CONN_STATES.index(s) for _, s in choices], CONN_STATES.index("OTH"))


def _key_columns(ts, last_ts, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ip_ver):
    """The columns every flow-like table starts with, and its Community ID column.  ``sport`` and
    ``dport`` are ports, or ICMP type and code (as Zeek shows them)."""
    community = community_ids(proto, ip_ver, src_hi, src_lo, dst_hi, dst_lo, sport, dport)
    cols = {
        "ts": column(ts, UTC_NS),
        "last_ts": column(last_ts, UTC_NS),
        "duration": column((last_ts - ts) / 1e9),
        "orig_h": addr_text(src_hi, src_lo),
        "orig_p": column(sport),
        "resp_h": addr_text(dst_hi, dst_lo),
        "resp_p": column(dport),
        "proto": labels(PROTO_VOCAB, proto),
        "ip_ver": column(ip_ver),
    }
    n = len(ts)
    ids = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * ID_LEN),
                                      pa.py_buffer(community))
    return cols, ids


def flow_table(f: np.ndarray, files: list[str]) -> pa.Table:
    icmp = (f["proto"] == 1) | (f["proto"] == 58)
    key, community = _key_columns(f["ts"], f["last_ts"], f["orig_hi"], f["orig_lo"], f["resp_hi"], f["resp_lo"],
                                  np.where(icmp, f["icmp_type"], f["orig_p"]).astype(np.uint16),
                                  np.where(icmp, f["icmp_code"], f["resp_p"]).astype(np.uint16), f["proto"],
                                  f["ip_ver"])
    cols = {
        **key,
        "icmp_id": column(np.where(icmp, f["resp_p"], 0).astype(np.uint16)),
        **{name: column(f[name]) for name in ("orig_pkts", "orig_bytes", "resp_pkts", "resp_bytes",
                                              "orig_payload_bytes", "resp_payload_bytes")},
        "orig_tcp_flags": column(f["orig_flags"]),
        "resp_tcp_flags": column(f["resp_flags"]),
        "conn_state": labels(CONN_STATES, conn_state(f)),
        "app": labels(list(APPS), f["app"]),
        "end_reason": labels(list(t.END_REASONS), f["end_reason"]),
        "vlan": column(f["vlan"]),
        "community_id": community,
        "file": labels(files, f["file_id"]),
        "first_frame": column(f["first_frame"]),
    }
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))


def _names(blob: np.ndarray, off: np.ndarray, length: np.ndarray) -> list[bytes]:
    """DNS names as UTF-8 text: bytes beyond ASCII are written as \\xNN."""
    raw = blob.tobytes()
    names = [raw[o:o + n] for o, n in zip(off.tolist(), length.tolist())]
    if (blob > 0x7E).any():
        names = [n if n.isascii() else n.decode("ascii", "backslashreplace").encode() for n in names]
    return names


def dns_table(d: np.ndarray, blob: np.ndarray, files: list[str]) -> pa.Table:
    cols = {
        "ts": column(d["ts"], UTC_NS),
        "src_h": addr_text(d["src_hi"], d["src_lo"]),
        "src_p": column(d["sport"]),
        "dst_h": addr_text(d["dst_hi"], d["dst_lo"]),
        "dst_p": column(d["dport"]),
        "proto": labels(PROTO_VOCAB, d["proto"]),
        **{name: column(d[name]) for name in ("txid", "qr", "opcode", "rcode", "flags", "qdcount", "ancount",
                                              "nscount", "arcount")},
        "qname": strings(_names(blob, d["qname_off"], d["qname_len"])),
        **{name: column(d[name]) for name in ("qtype", "qclass", "msg_len", "weird")},
        "answers": column(d["answers"]),
        "answer_h": _answer_text(d),
        "file": labels(files, d["file_id"]),
        "frame_no": column(d["frame_no"]),
    }
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))


def _answer_text(d: np.ndarray) -> pa.Array:
    """The first A/AAAA answer as text, null when the response carried none."""
    text = addr_text(d["answer_hi"], d["answer_lo"])
    valid = pa.py_buffer(np.packbits(d["answers"] > 0, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(d), [valid, *text.buffers()[1:]])


def deny_table(rows: np.ndarray, text: dict[str, list[str]], sources: list[str]) -> pa.Table:
    from flowsense.denylog.base import ACTIONS

    cols = {
        "ts": column(rows["ts"], UTC_NS),
        "src_h": addr_text(rows["src_hi"], rows["src_lo"]),
        "src_p": column(rows["sport"]),
        "dst_h": addr_text(rows["dst_hi"], rows["dst_lo"]),
        "dst_p": column(rows["dport"]),
        "proto": labels(PROTO_VOCAB, rows["proto"]),
        "action": labels(list(ACTIONS), rows["action"]),
        **{name: strings([t.encode() for t in text[name]]) for name in ("vendor", "device", "rule")},
        "file": labels(sources or [""], rows["source"]),
        "line_no": column(rows["line_no"]),
    }
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))


def nflow_table(r: np.ndarray) -> pa.Table:
    """NetFlow/IPFIX records with the flow columns of ``flow_table`` (orig = source of the
    unidirectional record, nothing on the responder side) and their export context."""
    icmp = (r["proto"] == 1) | (r["proto"] == 58)
    v4 = (r["src_hi"] == 0) & (r["src_lo"] >> np.uint64(32) == 0xFFFF)
    key, community = _key_columns(r["ts"], r["last_ts"], r["src_hi"], r["src_lo"], r["dst_hi"], r["dst_lo"],
                                  np.where(icmp, r["icmp_type"], r["sport"]).astype(np.uint16),
                                  np.where(icmp, r["icmp_code"], r["dport"]).astype(np.uint16), r["proto"],
                                  np.where(v4, 4, 6).astype(np.uint8))
    zeros = np.zeros(len(r), np.uint64)
    cols = {
        **key,
        "orig_pkts": column(r["packets"]),
        "orig_bytes": column(r["bytes"]),
        "resp_pkts": column(zeros),
        "resp_bytes": column(zeros),
        "orig_tcp_flags": column(r["tcp_flags"]),
        "conn_state": labels(["OTH"], np.zeros(len(r), np.int32)),
        "end_reason": labels(["exported"], np.zeros(len(r), np.int32)),
        "community_id": community,
        "source": labels(["netflow"], np.zeros(len(r), np.int32)),
        "exporter": addr_text(r["exporter_hi"], r["exporter_lo"]),
        **{name: column(r[name]) for name in ("version", "domain", "sampling", "in_if", "out_if", "fw_event")},
    }
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))
