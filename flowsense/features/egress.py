"""Features for AN0081: scanning (packet-grade tool fingerprints, flow-grade fan-out), sustained
egress per pair and proxy-like relaying.

Packet grade — ``ScanPrints``: one Numba call per decoded batch updates a fixed-capacity
open-addressing table keyed by source address (the probing host) with counters of probe
packets that carry a scanner's fingerprint:

  masscan   IPv4 SYN whose IP id == (dst ip ^ dst port ^ tcp seq) & 0xFFFF (masscan's
            templ-pkt.c; checked on corpus masscan-tcp-0-1000_esnet.pcap: 1001 of 1001 SYNs)
  zmap      probe (SYN, echo request, UDP) with IP id 54321 (zmap's fixed id)
  nmap_syn  -sS SYN: window 1024/2048/3072/4096 and a single 4-byte option (MSS), no payload
  nmap_odd  -sF/-sN/-sX probe (FIN, no flags, FIN+PSH+URG) with one of those windows, no options
  nmap_os   -O probe set: SEQ SYNs with windows 1/63/4/16/512, ECN (SYN+ECE+CWR win 3), T2-T7
            (flags/window pairs), IE (echo request code 9), U1 (UDP, IP id 0x1042, 300 bytes);
            a bit per probe kind, judged on how many kinds one source sent
  syn_noopt SYN without any TCP option (raw-socket scanners; every OS stack sends at least MSS)
  odd       TCP packet with neither SYN, ACK nor RST (NULL/FIN/Xmas...) or SYN+FIN: invalid opener
  unreach   ICMP/ICMPv6 destination unreachable received (port / admin-prohibited / quoting UDP)

When the table is three-quarters full it is rebuilt keeping only sources with fingerprint
evidence (evicted sources counted); if that is not enough, new sources are counted as untracked.
The TCP header length is taken as ip_len - l4_len - 20 (IPv4) / - 40 (IPv6): IP options or IPv6
extension headers would read as TCP options, which only weakens the no-option fingerprints.

Flow grade (works on NetFlow too): ``scan_windows`` counts, per source and window, probe flows
(attempts that exchanged no payload / got no reply), failed ones (no SYN-ACK / no reply), distinct
hosts, (host, proto, port) pairs, the vertical and horizontal maxima and the per-minute rate;
``pair_egress`` sums per (orig, resp) pair to non-internal destinations (covered time, bytes);
``proxy_relays`` matches inbound and outbound connections of one host with symmetric payloads.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from flowsense.flows.table import ST_SYN, ST_SYNACK, mix64
from flowsense.weird import BIT

W_TCP_DAMAGED = (1 << BIT["truncated_TCP_header"]) | (1 << BIT["bad_TCP_header_len"])

# --- packet grade --------------------------------------------------------------------------------

(C_FIRST_TS, C_LAST_TS, C_SYN, C_SYN_NOOPT, C_MASSCAN, C_ZMAP, C_ZMAP_BASE, C_NMAP_SYN, C_NMAP_ODD, C_ODD,
 C_OS_BITS, C_UDP_EMPTY, C_ECHO, C_UNREACH, C_UNREACH_PORT, C_UNREACH_ADMIN, C_UNREACH_UDP) = range(17)
N_COUNTERS = 17
COUNTER_NAMES = ("first_ts", "last_ts", "syn", "syn_noopt", "masscan", "zmap", "zmap_base", "nmap_syn", "nmap_odd",
                 "odd", "os_bits", "udp_empty", "echo", "unreach", "unreach_port", "unreach_admin", "unreach_udp")
M_COUNT, M_EVICTED, M_REBUILDS, M_UNTRACKED = range(4)

ZMAP_IP_ID = 54321
NMAP_U1_IP_ID = 0x1042
NMAP_WINDOWS = (1024, 2048, 3072, 4096)
# nmap -O probes as (tcp flags, window) -> bit; 12 = IE (echo code 9), 13 = U1
OS_PROBES = ((0x02, 1), (0x02, 63), (0x02, 4), (0x02, 16), (0x02, 512), (0xC2, 3), (0x00, 128), (0x2B, 256),
             (0x10, 1024), (0x02, 31337), (0x10, 32768), (0x29, 65535))
OS_PROBE_NAMES = ("SEQ win1", "SEQ win63", "SEQ win4", "SEQ win16", "SEQ win512", "ECN", "T2", "T3", "T4", "T5",
                  "T6", "T7", "IE", "U1")
_OS_FLAGS = np.array([p[0] for p in OS_PROBES], np.int64)
_OS_BY_WIN = np.full(65536, -1, np.int8)      # every probe uses its own window value
for _b, (_flags, _win) in enumerate(OS_PROBES):
    _OS_BY_WIN[_win] = _b


@nb.njit(cache=True, inline="always")
def _hash(hi, lo):
    return mix64(hi * np.uint64(0x9E3779B97F4A7C15) ^ lo)


@nb.njit(cache=True)
def _keep_level(row, level):
    """Whether a source survives a rebuild at this strictness (0: any evidence, 1: strong)."""
    if level == 0:
        return (row[C_MASSCAN] + row[C_ZMAP] + row[C_NMAP_SYN] + row[C_NMAP_ODD] + row[C_ODD] + row[C_OS_BITS]
                + row[C_UNREACH] > 0) or row[C_SYN] >= 8
    return row[C_MASSCAN] >= 2 or row[C_ZMAP] >= 2 or row[C_NMAP_SYN] >= 8 or row[C_ODD] >= 2 or row[C_SYN] >= 64


@nb.njit(cache=True)
def _rebuild(keys_hi, keys_lo, used, counters, meta):
    cap = used.shape[0]
    for level in range(2):
        n = 0
        for s in range(cap):
            if used[s]:
                n += 1
        khi = np.empty(n, np.uint64)
        klo = np.empty(n, np.uint64)
        rows = np.empty((n, counters.shape[1]), np.int64)
        j = 0
        for s in range(cap):
            if used[s]:
                khi[j], klo[j] = keys_hi[s], keys_lo[s]
                rows[j] = counters[s]
                j += 1
        used[:] = 0
        kept = 0
        mask = np.uint64(cap - 1)
        for j in range(n):
            if not _keep_level(rows[j], level):
                meta[M_EVICTED] += 1
                continue
            s = np.int64(_hash(khi[j], klo[j]) & mask)
            while used[s]:
                s = (s + 1) & (cap - 1)
            used[s] = 1
            keys_hi[s], keys_lo[s] = khi[j], klo[j]
            counters[s] = rows[j]
            kept += 1
        meta[M_COUNT] = kept
        meta[M_REBUILDS] += 1
        if kept < cap // 2:
            return


@nb.njit(cache=True)
def _slot(keys_hi, keys_lo, used, counters, meta, hi, lo, ts):
    """The slot of a source, created if needed; -1 when the table cannot take it."""
    cap = used.shape[0]
    mask = np.uint64(cap - 1)
    s = np.int64(_hash(hi, lo) & mask)
    while used[s]:
        if keys_hi[s] == hi and keys_lo[s] == lo:
            return s
        s = (s + 1) & (cap - 1)
    if meta[M_COUNT] >= (cap * 3) // 4:
        _rebuild(keys_hi, keys_lo, used, counters, meta)
        if meta[M_COUNT] >= (cap * 3) // 4:
            meta[M_UNTRACKED] += 1
            return -1
        s = np.int64(_hash(hi, lo) & mask)
        while used[s]:
            s = (s + 1) & (cap - 1)
    used[s] = 1
    keys_hi[s], keys_lo[s] = hi, lo
    counters[s, :] = 0
    counters[s, C_FIRST_TS] = ts
    counters[s, C_LAST_TS] = ts
    meta[M_COUNT] += 1
    return s


@nb.njit(cache=True, nogil=True)
def scan_prints_update(pk, blob, keys_hi, keys_lo, used, counters, meta):
    """Account one PACKET batch to the per-source fingerprint table."""
    for i in range(pk.shape[0]):
        r = pk[i]
        proto = r.proto
        flags = np.int64(r.tcp_flags)
        # fast path: established TCP (ACK without SYN) matters only as nmap's T4/T6 probes
        if proto == 6 and (flags & 0x12) == 0x10 and (flags != 0x10 or (r.tcp_win != 1024 and r.tcp_win != 32768)):
            continue
        if r.ip_ver == 0 or r.frag == 2:
            continue
        v4 = r.ip_ver == 4
        key_hi, key_lo = r.src_hi, r.src_lo
        kind = 0   # 1 TCP probe, 2 UDP probe, 3 echo request, 4 unreachable received
        win = np.int64(r.tcp_win)
        os_bit = -1
        if proto == 6:
            if r.frag != 0 or r.weird & W_TCP_DAMAGED:
                continue   # a fragmented or cut TCP header has no flags to trust
            if (flags & 0x12) == 0x02 or (flags & 0x16) == 0 or (flags & 0x13) == 0x03:
                kind = 1
            b = _OS_BY_WIN[win]
            if b >= 0 and flags == _OS_FLAGS[b]:
                os_bit = b
                kind = 1
        elif proto == 17:
            if r.l4_len == 0 or r.ip_id == ZMAP_IP_ID or (v4 and r.ip_id == NMAP_U1_IP_ID):
                kind = 2
        elif (proto == 1 and r.icmp_type == 8) or (proto == 58 and r.icmp_type == 128):
            kind = 3
        elif (proto == 1 and r.icmp_type == 3) or (proto == 58 and r.icmp_type == 1):
            kind = 4
            key_hi, key_lo = r.dst_hi, r.dst_lo
        if kind == 0:
            continue
        s = _slot(keys_hi, keys_lo, used, counters, meta, key_hi, key_lo, r.ts)
        if s < 0:
            continue
        c = counters[s]
        c[C_FIRST_TS] = min(c[C_FIRST_TS], r.ts)
        c[C_LAST_TS] = max(c[C_LAST_TS], r.ts)
        if kind == 1:
            tcp_hdr = np.int64(r.ip_len) - np.int64(r.l4_len) - (20 if v4 else 40)
            nmap_win = win == 1024 or win == 2048 or win == 3072 or win == 4096
            if os_bit >= 0:
                c[C_OS_BITS] |= np.int64(1) << os_bit
            if (flags & 0x12) == 0x02 and (flags & 0x01) == 0:
                c[C_SYN] += 1
                c[C_ZMAP_BASE] += 1
                if tcp_hdr == 20:
                    c[C_SYN_NOOPT] += 1
                if nmap_win and tcp_hdr == 24 and r.l4_len == 0:
                    c[C_NMAP_SYN] += 1
                if v4 and ((np.int64(r.dst_lo & np.uint64(0xFFFFFFFF)) ^ np.int64(r.dport) ^ np.int64(r.tcp_seq))
                           & 0xFFFF) == np.int64(r.ip_id):
                    c[C_MASSCAN] += 1
                if r.ip_id == ZMAP_IP_ID:
                    c[C_ZMAP] += 1
            elif (flags & 0x16) == 0 or (flags & 0x13) == 0x03:
                c[C_ODD] += 1
                if nmap_win and tcp_hdr == 20 and r.l4_len == 0 and (flags == 0x01 or flags == 0x00 or flags == 0x29):
                    c[C_NMAP_ODD] += 1
        elif kind == 2:
            c[C_ZMAP_BASE] += 1
            if r.l4_len == 0:
                c[C_UDP_EMPTY] += 1
            if r.ip_id == ZMAP_IP_ID:
                c[C_ZMAP] += 1
            if v4 and r.ip_id == NMAP_U1_IP_ID and r.l4_len == 300:
                c[C_OS_BITS] |= np.int64(1) << 13
        elif kind == 3:
            c[C_ECHO] += 1
            c[C_ZMAP_BASE] += 1
            if r.ip_id == ZMAP_IP_ID:
                c[C_ZMAP] += 1
            if proto == 1 and r.icmp_code == 9:
                c[C_OS_BITS] |= np.int64(1) << 12
        else:
            c[C_UNREACH] += 1
            code = r.icmp_code
            if (proto == 1 and code == 3) or (proto == 58 and code == 4):
                c[C_UNREACH_PORT] += 1
            elif (proto == 1 and (code == 9 or code == 10 or code == 13)) or (proto == 58 and code == 1):
                c[C_UNREACH_ADMIN] += 1
            # the quoted header: IPv4 protocol at byte 9, IPv6 next header at byte 6
            n, o = np.int64(r.pl_len), np.int64(r.pl_off)
            if n >= 20 and o + n <= blob.shape[0]:
                ver = blob[o] >> 4
                inner = blob[o + 9] if ver == 4 else (blob[o + 6] if ver == 6 and n >= 40 else 0)
                if inner == 17:
                    c[C_UNREACH_UDP] += 1


SUMMARY = np.dtype([("hi", "u8"), ("lo", "u8"), ("c", "i8", (N_COUNTERS,))])


class ScanPrints:
    """Per-source fingerprint counters over a whole run (state in arrays, one kernel call a batch)."""

    def __init__(self, capacity: int = 65536):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.keys_hi = np.zeros(cap, np.uint64)
        self.keys_lo = np.zeros(cap, np.uint64)
        self.used = np.zeros(cap, np.uint8)
        self.counters = np.zeros((cap, N_COUNTERS), np.int64)
        self.meta = np.zeros(4, np.int64)

    def update(self, packets: np.ndarray, blob: np.ndarray) -> None:
        if len(packets):
            scan_prints_update(packets, blob, self.keys_hi, self.keys_lo, self.used, self.counters, self.meta)

    def summary(self) -> np.ndarray:
        """One row per tracked source (table order)."""
        idx = np.flatnonzero(self.used)
        out = np.empty(len(idx), SUMMARY)
        out["hi"], out["lo"], out["c"] = self.keys_hi[idx], self.keys_lo[idx], self.counters[idx]
        return out

    def stats(self) -> dict:
        return {"sources": int(self.meta[M_COUNT]), "evicted": int(self.meta[M_EVICTED]),
                "rebuilds": int(self.meta[M_REBUILDS]), "untracked_packets": int(self.meta[M_UNTRACKED]),
                "capacity": len(self.used)}


def os_probe_kinds(bits: int) -> list[str]:
    return [name for b, name in enumerate(OS_PROBE_NAMES) if int(bits) >> b & 1]


# --- flow grade: shared helpers ------------------------------------------------------------------

class Cols:
    """Rows ``idx`` of a FLOW array, read column by column on demand: gathering a few columns is
    several times cheaper than copying whole structured rows."""

    def __init__(self, flows: np.ndarray, idx: np.ndarray | None = None):
        self.flows = flows
        self.idx = np.arange(len(flows)) if idx is None else idx
        self._cache = {}

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, name: str) -> np.ndarray:
        col = self._cache.get(name)
        if col is None:
            col = self._cache[name] = self.flows[name][self.idx]
        return col

    def sub(self, mask_or_index) -> Cols:
        return Cols(self.flows, self.idx[mask_or_index])

    def rows(self) -> np.ndarray:
        return self.flows[self.idx]


@nb.njit(cache=True)
def _hash_ids(keys):
    """Dense ids of the rows of a (n, k) key matrix in order of first appearance (open addressing)."""
    n, k = keys.shape
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = cap - 1
    slot_row = np.full(cap, -1, np.int64)
    slot_id = np.empty(cap, np.int64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        h = np.uint64(k)
        for c in range(k):
            h = _hash(h, keys[i, c])
        s = np.int64(h & np.uint64(mask))
        while True:
            r = slot_row[s]
            if r < 0:
                slot_row[s] = i
                slot_id[s] = m
                ids[i] = m
                first[m] = i
                m += 1
                break
            same = True
            for c in range(k):
                if keys[r, c] != keys[i, c]:
                    same = False
                    break
            if same:
                ids[i] = slot_id[s]
                break
            s = (s + 1) & mask
    return ids, first[:m]


def dense_ids(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids of the rows' key tuples (integer columns), numbered in order of first appearance,
    and per id the index of its first row."""
    n = len(cols[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.empty((n, len(cols)), np.uint64)
    for j, c in enumerate(cols):
        keys[:, j] = c.view(np.uint64) if c.dtype == np.int64 else c.astype(np.uint64, copy=False)
    return _hash_ids(keys)


@nb.njit(cache=True)
def _fanout_kernel(gid, a, b, n_groups):
    """Rows sorted by (gid, a, b).  Per group: distinct a, distinct (a, b), the largest number of
    distinct b under one a, and that a."""
    n_a = np.zeros(n_groups, np.int64)
    n_ab = np.zeros(n_groups, np.int64)
    best = np.zeros(n_groups, np.int64)
    best_a = np.full(n_groups, -1, np.int64)
    i = 0
    n = gid.shape[0]
    while i < n:
        g = gid[i]
        j = i
        while j < n and gid[j] == g:
            a0 = a[j]
            k = j
            cnt = 0
            while k < n and gid[k] == g and a[k] == a0:
                if k == j or b[k] != b[k - 1]:
                    cnt += 1
                k += 1
            n_a[g] += 1
            n_ab[g] += cnt
            if cnt > best[g]:
                best[g] = cnt
                best_a[g] = a0
            j = k
        i = j
    return n_a, n_ab, best, best_a


def fanout(gid: np.ndarray, a: np.ndarray, b: np.ndarray, n_groups: int):
    order = np.lexsort((b, a, gid))
    return _fanout_kernel(gid[order], a[order], b[order], n_groups)


def is_multicast(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Multicast and limited-broadcast destinations (IPv4-mapped or IPv6): never probe targets."""
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    a = (lo & np.uint64(0xFFFFFFFF))
    v4_multi = v4 & (((a >> np.uint64(28)) == np.uint64(0xE)) | (a == np.uint64(0xFFFFFFFF)))
    v6_multi = ~v4 & ((hi >> np.uint64(56)) == np.uint64(0xFF))
    return v4_multi | v6_multi


def _head_word(text: bytes) -> int:
    return int.from_bytes(text[:8].ljust(8, b"\0"), "big")


# Request openings (first 8 payload bytes) of probe paths nmap's NSE HTTP scripts request (all seen in
# corpus nmap-A-port80-os-version-scripts_esnet.pcap); "/nmaplowercheck<time>" is nmap's own 404 probe.
SCANNER_HEADS = {
    _head_word(b"GET /nmaplowercheck"): "/nmaplowercheck (nmap 404 probe)",
    _head_word(b"GET /HNAP1"): "/HNAP1",
    _head_word(b"GET /evox/about"): "/evox/about",
    _head_word(b"POST /sdk"): "POST /sdk",
    _head_word(b"GET /.git/HEAD"): "/.git/HEAD",
}
NMAP_OWN_HEAD = _head_word(b"GET /nmaplowercheck")
SCANNER_HEAD_WORDS = np.array(sorted(SCANNER_HEADS), np.uint64)

TCP, UDP = 6, 17
PORTED = (6, 17, 132, 136)   # protocols whose flows carry ports
ECHO_FAMILIES_V4 = (8, 13)   # echo, timestamp request (ICMP key family in orig_p)


HEADER_BYTES = 80   # per packet: IPv6 (40) + TCP with options (40); without payload counts, less is "no payload"


def payload(f, payload_known: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Transport payload bytes each way; estimated from IP bytes and packets when the records carry
    no payload counts (NetFlow)."""
    if payload_known:
        return f["orig_payload_bytes"].astype(np.int64), f["resp_payload_bytes"].astype(np.int64)
    up = f["orig_bytes"].astype(np.int64) - HEADER_BYTES * f["orig_pkts"].astype(np.int64)
    down = f["resp_bytes"].astype(np.int64) - HEADER_BYTES * f["resp_pkts"].astype(np.int64)
    return np.maximum(up, 0), np.maximum(down, 0)


def probe_flags(f, payload_known: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per flow: probe (an attempt that exchanged no payload, or got no reply), failed (no SYN-ACK,
    no reply) and odd (a TCP opener with neither SYN, ACK nor RST, or SYN+FIN)."""
    tcp = f["proto"] == TCP
    up, down = payload(f, payload_known)
    no_payload = (up == 0) & (down == 0)
    no_reply = f["resp_pkts"] == 0
    synack = (f["state"] & ST_SYNACK) != 0
    sent = f["orig_pkts"] > 0           # a capture may hold only the answer (orig oriented by a SYN-ACK)
    probe = np.where(tcp, no_payload, no_reply) & sent
    failed = np.where(tcp, no_payload & ~synack, no_reply) & sent
    of = f["orig_flags"].astype(np.int64)
    ported = (f["orig_p"] != 0) & (f["resp_p"] != 0)   # later IP fragments meter as port-0 "flows" without flags
    odd = tcp & sent & ported & (((of & 0x16) == 0) | ((of & 0x13) == 0x03)) & (up == 0)
    return probe, failed, odd


TRACEROUTE_PORTS = (33434, 33534)   # UDP traceroute: base port 33434, +1 per probe (30 hops x 3 probes)


def scan_candidates(f: np.ndarray) -> np.ndarray:
    """Flows that can be a probe from their originator: ICMP only as echo/timestamp requests (errors
    come from the target), no multicast/broadcast targets, no unspecified sources, no UDP traceroute
    probes (each to the next port from 33434: a port scan's shape, a path's purpose)."""
    proto = f["proto"]
    icmp_ok = ((proto == 1) & np.isin(f["orig_p"], ECHO_FAMILIES_V4)) | ((proto == 58) & (f["orig_p"] == 128))
    keep = (f["ip_ver"] != 0) & (((proto != 1) & (proto != 58)) | icmp_ok)
    keep &= ~is_multicast(f["resp_hi"], f["resp_lo"])
    keep &= ~((proto == UDP) & (f["resp_p"] >= TRACEROUTE_PORTS[0]) & (f["resp_p"] <= TRACEROUTE_PORTS[1]))
    keep &= ~((f["orig_hi"] == 0) & ((f["orig_lo"] == 0) | (f["orig_lo"] == np.uint64(0xFFFF00000000))))
    return keep


WINDOW = np.dtype([
    ("src_hi", "u8"), ("src_lo", "u8"), ("grid", "u1"), ("start", "i8"), ("end", "i8"),
    ("first_ts", "i8"), ("last_ts", "i8"), ("flows", "i8"), ("probes", "i8"), ("failed", "i8"), ("odd", "i8"),
    ("hosts", "i8"), ("pairs", "i8"), ("ports", "i8"), ("vertical", "i8"), ("vertical_dst_hi", "u8"),
    ("vertical_dst_lo", "u8"), ("horizontal", "i8"), ("horizontal_proto", "u1"), ("horizontal_port", "u2"),
    ("per_minute", "i8"), ("scanner_heads", "i8"), ("nmap_head", "u1"), ("proto", "u1"), ("sport_reuse", "f8"),
])
GRID_NAMES = ("aligned", "half-shifted", "whole run")
MINUTE_NS = 60_000_000_000


def scan_windows(flows: np.ndarray, window_ns: int, payload_known: bool = True) -> np.ndarray:
    """Per (source, window) probe statistics on three grids: windows aligned to multiples of the
    window length, the same shifted by half a window (so a scan straddling a boundary is seen whole
    in one of them), and the whole run (for slow scans).  Rows without any probe, odd opener or
    scanner request are left out."""
    if len(flows) == 0:
        return np.zeros(0, WINDOW)
    cand = scan_candidates(flows)
    probe, failed, odd = probe_flags(flows, payload_known)
    heads = np.isin(flows["orig_head"], SCANNER_HEAD_WORDS) & (flows["proto"] == TCP)
    interesting = cand & (probe | odd | heads)
    if not interesting.any():
        return np.zeros(0, WINDOW)
    # only sources with something to judge (most hosts never send a probe) go further, with all
    # their candidate flows (the denominators)
    ci = np.flatnonzero(cand)
    src, _ = dense_ids(flows["orig_hi"][ci], flows["orig_lo"][ci])
    judged = np.zeros(int(src.max()) + 1, np.bool_)
    judged[src[interesting[ci]]] = True
    keep = ci[judged[src]]
    f = Cols(flows, keep)
    probe, failed, odd, heads = probe[keep], failed[keep], odd[keep], heads[keep]
    src, _ = dense_ids(f["orig_hi"], f["orig_lo"])
    dst, dst_row = dense_ids(f["resp_hi"], f["resp_lo"])
    port = np.where(np.isin(f["proto"], PORTED), f["resp_p"], 0).astype(np.int64)
    pp = (f["proto"].astype(np.int64) << 16) | port
    ts = f["ts"]
    t0 = int(ts.min())
    minute = ts // MINUTE_NS - t0 // MINUTE_NS   # whole minutes: they nest in windows of whole minutes
    out = []
    for grid, offset in ((0, 0), (1, window_ns // 2), (2, None)):
        if offset is None:
            win = np.zeros(len(f), np.int64)
        else:
            win = (ts - (t0 // window_ns) * window_ns + (window_ns - offset)) // window_ns
        gid, grow = dense_ids(src, win)
        n = len(grow)
        flows_n = np.bincount(gid, minlength=n)
        probes_n = np.bincount(gid, probe, minlength=n).astype(np.int64)
        keep = (probes_n > 0) | (np.bincount(gid, odd, minlength=n) > 0) | (np.bincount(gid, heads, minlength=n) > 0)
        w = np.zeros(n, WINDOW)
        w["grid"] = grid
        w["src_hi"], w["src_lo"] = f["orig_hi"][grow], f["orig_lo"][grow]
        if offset is None:
            w["start"], w["end"] = t0, int(f["last_ts"].max())
        else:
            base = (t0 // window_ns) * window_ns - (window_ns - offset)
            w["start"] = base + win[grow] * window_ns
            w["end"] = w["start"] + window_ns
        first = np.full(n, np.iinfo(np.int64).max, np.int64)
        last = np.full(n, np.iinfo(np.int64).min, np.int64)
        np.minimum.at(first, gid, ts)
        np.maximum.at(last, gid, f["last_ts"])
        w["first_ts"], w["last_ts"] = first, last
        w["flows"] = flows_n
        w["probes"] = probes_n
        w["failed"] = np.bincount(gid, failed, minlength=n)
        p = probe
        if p.any():
            n_hosts, n_pairs, vert, vert_dst = fanout(gid[p], dst[p], pp[p], n)
            n_ports, _, horiz, horiz_pp = fanout(gid[p], pp[p], dst[p], n)
            w["hosts"], w["pairs"], w["ports"] = n_hosts, n_pairs, n_ports
            w["vertical"], w["horizontal"] = vert, horiz
            has = vert_dst >= 0
            w["vertical_dst_hi"][has] = f["resp_hi"][dst_row[vert_dst[has]]]
            w["vertical_dst_lo"][has] = f["resp_lo"][dst_row[vert_dst[has]]]
            hp = np.maximum(horiz_pp, 0)
            w["horizontal_proto"], w["horizontal_port"] = hp >> 16, hp & 0xFFFF
            # the busiest minute of each window: distinct (host, proto, port) per (source, minute)
            mid, mrow = dense_ids(src[p], minute[p])
            _, per_min, _, _ = fanout(mid, dst[p], pp[p], len(mrow))
            gid_of_minute = gid[np.flatnonzero(p)[mrow]]
            best = np.zeros(n, np.int64)
            np.maximum.at(best, gid_of_minute, per_min)
            w["per_minute"] = best
            # source-port reuse: the share of probes sent from the most used source port
            sid, srow = dense_ids(gid[p], f["orig_p"][p].astype(np.int64))
            counts = np.bincount(sid)
            top = np.zeros(n, np.int64)
            np.maximum.at(top, gid[p][srow], counts)
            w["sport_reuse"] = np.where(probes_n > 0, top / np.maximum(probes_n, 1), 0.0)
        if odd.any():
            _, orow = dense_ids(gid[odd], dst[odd], pp[odd])
            w["odd"] = np.bincount(gid[odd][orow], minlength=n)
        if heads.any():
            _, hrow = dense_ids(gid[heads], f["orig_head"][heads].astype(np.int64))
            w["scanner_heads"] = np.bincount(gid[heads][hrow], minlength=n)
            own = heads & (f["orig_head"] == np.uint64(NMAP_OWN_HEAD))
            w["nmap_head"] = np.bincount(gid[own], minlength=n) > 0
        # majority transport: of the probes when there are any, else of every flow
        basis = np.where(probes_n[gid] > 0, probe, True)
        kid, krow = dense_ids(gid[basis], f["proto"][basis].astype(np.int64))
        kc = np.bincount(kid)
        kg = gid[basis][krow]
        order = np.lexsort((-kc, kg))            # per group, the most frequent proto first
        firsts = order[np.r_[True, kg[order][1:] != kg[order][:-1]]]
        w["proto"][kg[firsts]] = f["proto"][basis][krow[firsts]]
        out.append(w[keep])
    res = np.concatenate(out)
    return res[np.lexsort((res["start"], res["grid"], res["src_lo"], res["src_hi"]))]


def source_rows(flows: np.ndarray, hi: int, lo: int, start: int, end: int) -> np.ndarray:
    """Scan-candidate flows of one source starting within [start, end] (for an alert's evidence)."""
    m = (flows["orig_hi"] == np.uint64(hi)) & (flows["orig_lo"] == np.uint64(lo))
    m &= (flows["ts"] >= start) & (flows["ts"] <= end)
    f = flows[m]
    return f[scan_candidates(f)]


# --- flow grade: sustained egress ------------------------------------------------------------------

PAIR = np.dtype([
    ("orig_hi", "u8"), ("orig_lo", "u8"), ("resp_hi", "u8"), ("resp_lo", "u8"), ("flows", "i8"), ("first_ts", "i8"),
    ("last_ts", "i8"), ("covered_ns", "i8"), ("orig_bytes", "u8"), ("resp_bytes", "u8"), ("orig_pkts", "u8"),
    ("resp_pkts", "u8"), ("proto", "u1"), ("port", "u2"), ("port_flows", "i8"), ("ports", "i8"),
])


@nb.njit(cache=True)
def _coverage(gid, start, end, n_groups):
    """Rows sorted by (gid, start): per group the length of the union of [start, end] intervals."""
    out = np.zeros(n_groups, np.int64)
    i = 0
    n = gid.shape[0]
    while i < n:
        g = gid[i]
        cur_s, cur_e = start[i], end[i]
        total = 0
        while i < n and gid[i] == g:
            if start[i] > cur_e:
                total += cur_e - cur_s
                cur_s, cur_e = start[i], end[i]
            elif end[i] > cur_e:
                cur_e = end[i]
            i += 1
        out[g] = total + (cur_e - cur_s)
    return out


def pair_egress(flows: np.ndarray, internal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (orig, resp) pair whose responder is outside the internal networks (and not multicast):
    flows, covered time (union of flow intervals, so parallel or active-timeout-split records are not
    double counted), bytes and packets each way, the main (proto, port).  Returns (pairs, the flows
    considered as ``Cols``, each flow's pair id)."""
    f = Cols(flows, np.flatnonzero((flows["ip_ver"] != 0) & ~internal.contains(flows["resp_hi"], flows["resp_lo"])
                                   & ~is_multicast(flows["resp_hi"], flows["resp_lo"])))
    if len(f) == 0:
        return np.zeros(0, PAIR), f, np.zeros(0, np.int64)
    gid, grow = dense_ids(f["orig_hi"], f["orig_lo"], f["resp_hi"], f["resp_lo"])
    n = len(grow)
    p = np.zeros(n, PAIR)
    for k in ("orig_hi", "orig_lo", "resp_hi", "resp_lo"):
        p[k] = f[k][grow]
    p["flows"] = np.bincount(gid, minlength=n)
    order = np.lexsort((f["ts"], gid))
    starts = np.searchsorted(gid[order], np.arange(n))
    fo = f.sub(order)
    p["first_ts"] = fo["ts"][starts]
    p["last_ts"] = np.maximum.reduceat(fo["last_ts"], starts)
    for k in ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"):
        p[k] = np.add.reduceat(fo[k], starts)
    p["covered_ns"] = _coverage(gid[order], fo["ts"], np.maximum(fo["last_ts"], fo["ts"]), n)
    port = np.where(np.isin(f["proto"], PORTED), f["resp_p"], 0).astype(np.int64)
    kid, krow = dense_ids(gid, f["proto"].astype(np.int64), port)
    kc = np.bincount(kid)
    kg = gid[krow]
    p["ports"] = np.bincount(kg, minlength=n)
    order = np.lexsort((-kc, kg))
    firsts = order[np.r_[True, kg[order][1:] != kg[order][:-1]]]
    p["proto"][kg[firsts]] = f["proto"][krow[firsts]]
    p["port"][kg[firsts]] = port[krow[firsts]]
    p["port_flows"][kg[firsts]] = kc[firsts]
    return p, f, gid


# --- flow grade: proxy-like relaying ---------------------------------------------------------------

@nb.njit(cache=True)
def _relay_kernel(in_h, in_ts, in_end, in_up, in_down, in_peer_hi, in_peer_lo,
                  out_h, out_ts, out_end, out_up, out_down, out_peer_hi, out_peer_lo,
                  max_lag, tol, min_bytes):
    """Inbound rows (host = responder) and outbound rows (host = originator), each sorted by
    (host, start).  Greedy one-to-one matching: an outbound connection that starts within max_lag
    after an inbound one, ends within max_lag (+10 % of its length) of it, goes to another peer and
    carries the same payload both ways within the relative tolerance.  Returns the matched
    (inbound index, outbound index) pairs."""
    n_in = in_h.shape[0]
    n_out = out_h.shape[0]
    taken = np.zeros(n_out, np.bool_)
    mi = np.empty(min(n_in, n_out), np.int64)
    mo = np.empty(min(n_in, n_out), np.int64)
    m = 0
    lo = 0
    for i in range(n_in):
        h = in_h[i]
        if in_up[i] + in_down[i] < min_bytes:
            continue
        while lo < n_out and (out_h[lo] < h or (out_h[lo] == h and out_ts[lo] < in_ts[i])):
            lo += 1
        k = lo
        while k < n_out and out_h[k] == h and out_ts[k] <= in_ts[i] + max_lag:
            if not taken[k] and not (out_peer_hi[k] == in_peer_hi[i] and out_peer_lo[k] == in_peer_lo[i]):
                up_a, up_b = in_up[i], out_up[k]
                dn_a, dn_b = in_down[i], out_down[k]
                span = max(in_end[i] - in_ts[i], out_end[k] - out_ts[k])
                if abs(up_a - up_b) <= tol * max(up_a, up_b) and abs(dn_a - dn_b) <= tol * max(dn_a, dn_b) \
                        and abs(in_end[i] - out_end[k]) <= max_lag + span // 10:
                    taken[k] = True
                    mi[m] = i
                    mo[m] = k
                    m += 1
                    break
            k += 1
    return mi[:m], mo[:m]


def proxy_relays(flows: np.ndarray, max_lag_ns: int, tolerance: float, min_bytes: int, payload_known: bool = True):
    """TCP connections that carried payload both ways, matched as relays (see ``_relay_kernel``).
    Returns (inbound flows, outbound flows) of the matches, index-aligned, in host then time order,
    and their (upstream, downstream) payload byte counts."""
    from flowsense.features.app import DNS as APP_DNS
    up_all, down_all = payload(flows, payload_known)
    f = Cols(flows, np.flatnonzero((flows["proto"] == TCP) & (up_all > 0) & (down_all > 0)
                                   & (flows["app"] != APP_DNS)))
    empty = (flows[:0], flows[:0], np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
    if len(f) < 2:
        return empty
    n = len(f)
    hid, _ = dense_ids(np.concatenate([f["resp_hi"], f["orig_hi"]]), np.concatenate([f["resp_lo"], f["orig_lo"]]))
    in_h, out_h = hid[:n], hid[n:]
    both = (np.bincount(in_h, minlength=hid.max() + 1) > 0) & (np.bincount(out_h, minlength=hid.max() + 1) > 0)
    ii, oi = np.flatnonzero(both[in_h]), np.flatnonzero(both[out_h])
    if len(ii) == 0 or len(oi) == 0:
        return empty
    ts = f["ts"]
    io = ii[np.lexsort((ts[ii], in_h[ii]))]
    oo = oi[np.lexsort((ts[oi], out_h[oi]))]
    fi, fo = f.sub(io), f.sub(oo)
    sel = f.idx
    up_i, dn_i = up_all[sel[io]], down_all[sel[io]]
    up_o, dn_o = up_all[sel[oo]], down_all[sel[oo]]
    mi, mo = _relay_kernel(in_h[io], fi["ts"], fi["last_ts"], up_i, dn_i, fi["orig_hi"], fi["orig_lo"],
                           out_h[oo], fo["ts"], fo["last_ts"], up_o, dn_o, fo["resp_hi"], fo["resp_lo"],
                           np.int64(max_lag_ns), float(tolerance), np.int64(min_bytes))
    return (fi.sub(mi).rows(), fo.sub(mo).rows(), np.stack([up_i[mi], dn_i[mi]], axis=1),
            np.stack([up_o[mo], dn_o[mo]], axis=1))


# --- unidirectional records (NetFlow) --------------------------------------------------------------

def unidirectional(flows: np.ndarray) -> bool:
    """Records that never count a reply (NetFlow exports one record per direction)."""
    return len(flows) > 0 and not (flows["resp_pkts"] > 0).any()


@nb.njit(cache=True)
def _pair_kernel(gid, ts, last_ts, forward, gap):
    """Rows sorted by (conversation, start).  Pairs each record with the first later record of the
    same conversation in the opposite direction that starts before it ends (+ gap).  Returns the
    partner row of every row (-1: none)."""
    n = gid.shape[0]
    partner = np.full(n, -1, np.int64)
    for i in range(n):
        if partner[i] >= 0:
            continue
        j = i + 1
        while j < n and gid[j] == gid[i] and ts[j] <= last_ts[i] + gap:
            if partner[j] < 0 and forward[j] != forward[i]:
                partner[i] = j
                partner[j] = i
                break
            j += 1
    return partner


def stitch(flows: np.ndarray, gap_ns: int = 5_000_000_000) -> np.ndarray:
    """Unidirectional records joined into bidirectional ones: each record is paired with the
    opposite-direction record of the same 5-tuple that overlaps it in time; the originator is the
    TCP side that sent a SYN without ACK, otherwise the earlier record.  Unpaired records stay."""
    if len(flows) == 0:
        return flows
    a = (flows["orig_hi"], flows["orig_lo"], flows["orig_p"].astype(np.uint64))
    b = (flows["resp_hi"], flows["resp_lo"], flows["resp_p"].astype(np.uint64))
    fwd = (a[0] < b[0]) | ((a[0] == b[0]) & ((a[1] < b[1]) | ((a[1] == b[1]) & (a[2] <= b[2]))))
    lo_end = [np.where(fwd, x, y) for x, y in zip(a, b)]
    hi_end = [np.where(fwd, y, x) for x, y in zip(a, b)]
    gid, _ = dense_ids(*lo_end, *hi_end, flows["proto"].astype(np.uint64))
    order = np.lexsort((flows["ts"], gid))
    partner_sorted = _pair_kernel(gid[order], flows["ts"][order], flows["last_ts"][order], fwd[order],
                                  np.int64(gap_ns))
    partner = np.full(len(flows), -1, np.int64)
    partner[order] = np.where(partner_sorted >= 0, order[np.maximum(partner_sorted, 0)], -1)
    idx = np.arange(len(flows))
    has = partner >= 0
    opener = (flows["orig_flags"] & 0x12) == 0x02
    other_opener = np.zeros(len(flows), np.bool_)
    other_opener[has] = opener[partner[has]]
    # keep the record that originates: an opener when the partner is not one, else the earlier one
    earlier = np.zeros(len(flows), np.bool_)
    earlier[has] = (flows["ts"][has] < flows["ts"][partner[has]]) | (
        (flows["ts"][has] == flows["ts"][partner[has]]) & (idx[has] < partner[has]))
    keep_orig = ~has | np.where(opener != other_opener, opener, earlier)
    out = flows[keep_orig].copy()
    p = partner[keep_orig]
    m = p >= 0
    rev = flows[p[m]]
    sub = out[m]
    sub["resp_pkts"], sub["resp_bytes"] = rev["orig_pkts"], rev["orig_bytes"]
    sub["resp_payload_bytes"], sub["resp_flags"] = rev["orig_payload_bytes"], rev["orig_flags"]
    sub["resp_head"], sub["resp_head_len"] = rev["orig_head"], rev["orig_head_len"]
    sub["ts"] = np.minimum(sub["ts"], rev["ts"])
    sub["last_ts"] = np.maximum(sub["last_ts"], rev["last_ts"])
    sub["state"] |= np.where((rev["orig_flags"] & 0x12) == 0x12, ST_SYNACK, 0).astype(np.uint8)
    out[m] = sub
    tcp = out["proto"] == TCP
    out["state"] |= np.where(tcp & ((out["orig_flags"] & 0x12) == 0x02), ST_SYN, 0).astype(np.uint8)
    return out[np.argsort(out["ts"], kind="stable")]
