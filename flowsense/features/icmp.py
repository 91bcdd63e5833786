"""ICMP conversation features (AN1258 tunnel-like ICMP), one Numba call per decoded batch.

A conversation is keyed by (orig, resp, message family, identifier): the initiator (orig) is the
sender of the request-type message (echo request, timestamp, information or address-mask request),
so a reply is filed under the request's conversation whichever side the capture saw first.  ICMP
and ICMPv6 echo share one code path (addresses are IPv4-mapped).

Per conversation, in fixed-capacity arrays (no Python object per packet or per conversation):
  packets and payload bytes per direction, first/last time, min/max payload size, a 128-bit map of
  distinct sizes, a 48-bin payload-size histogram (size entropy) and a 48-bin histogram of request
  inter-arrival times (interval entropy, half-octave bins of milliseconds);
  payload content of every packet, judged on the first JUDGED bytes of the kept slice
  (``decode.packets.PAYLOAD_KEEP`` bytes are kept):
    - tool signatures: ptunnel magic 0xD5200880, ptunnel-ng's default magic 0xDEADC0DE (bytes
      DE AD C0 DE on the wire, checked against Debian's ptunnel-ng 1.42), the ptunnel header layout
      with any magic (data_len at offset 20 == payload - 28), hans "hanc"/"hans" (and the forks'
      "hnc2".."hns4") with a type byte, icmptunnel "TUNL", an inner IPv4 header with a valid header
      checksum or an inner IPv6 header whose length fits, at the start of the payload;
    - OS ping fill patterns: a structured tail (bytes incrementing by one - Linux iputils and
      BSD/macOS after their timestamp, traceroute -I - or repeating with a period of 1..23 bytes -
      Windows "abcdefghijklmnopqrstuvwabcdefghi", busybox/fping/nmap zeros, ping -p patterns,
      Cisco 0xABCD) that starts within the first 24 bytes and covers at least 8 (fewer in a payload
      shorter than 24 bytes, but at least 3 repeats);
    - anything else with at least 20 bytes is "non-pattern" content (shorter: mostly a timestamp, not judged);
  a 256-bin byte histogram summed over the non-pattern packets of the conversation (byte entropy
  over the whole conversation: per-packet entropy of a 32-56-byte ping means nothing), drawn from a
  bounded pool of rows;
  echo request/reply payload agreement: a ring of the last RING requests (sequence, hash of the
  first HASHED payload bytes and the length, the request's content verdict); a reply with the same
  sequence either echoes the payload byte-for-byte (ping: it inherits the request's verdict, so a
  ping's reply costs no content check) or not (tunnels), a reply with no request in the ring is an
  orphan.  A first IP fragment declares only its share of the payload, so its length is left out;
  data in non-echo info messages (timestamp > 12, information > 0, address mask > 4 bytes);
  the first 32 bytes of the first non-pattern payload, for the evidence.

When the table is three quarters full the least recently seen half is evicted in one pass
(conversations without any tunnel evidence first); evicted conversations that had evidence are
copied to a bounded "retired" store so the end-of-run verdict still sees them.  Everything is
counted (``stats``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from flowsense.flows.table import mix64 as _mix

# message families (the request type names the family)
FAM_ECHO, FAM_TIMESTAMP, FAM_INFO, FAM_MASK = 0, 1, 2, 3
FAMILIES = ("echo", "timestamp", "information", "address_mask")
FAMILY_DATA = np.array([-1, 12, 0, 4], np.int64)  # bytes of data the message defines (-1: any)

# tool signature bits
T_PTUNNEL, T_PTUNNEL_NG, T_PTUNNEL_LAYOUT, T_HANS, T_ICMPTUNNEL, T_INNER_IPV4, T_INNER_IPV6 = \
    1, 2, 4, 8, 16, 32, 64
TOOLS = {T_PTUNNEL: "ptunnel magic 0xd5200880",
         T_PTUNNEL_NG: "ptunnel-ng default magic 0xdeadc0de",
         T_PTUNNEL_LAYOUT: "ptunnel header layout with a custom magic",
         T_HANS: "hans header (hanc/hans magic + type)",
         T_ICMPTUNNEL: "icmptunnel header (TUNL magic + type)",
         T_INNER_IPV4: "inner IPv4 header (valid checksum) at payload start",
         T_INNER_IPV6: "inner IPv6 header at payload start"}

# OS fill pattern bits
P_INCREMENT, P_WINDOWS, P_ZEROS, P_PERIODIC = 1, 2, 4, 8
PATTERNS = {P_INCREMENT: "incrementing bytes (Linux iputils / BSD / macOS ping, traceroute -I)",
            P_WINDOWS: "Windows abcdefghijklmnopqrstuvw",
            P_ZEROS: "zeros (busybox, fping, nmap)",
            P_PERIODIC: "repeating fill (ping -p, Cisco 0xABCD)"}

# per-packet content classes
C_EMPTY, C_SHORT, C_PATTERN, C_OTHER, C_TOOL = 0, 1, 2, 3, 4

MIN_JUDGED = 20       # payloads shorter than this are mostly a timestamp: not judged
TIMESTAMP = 16        # the longest ping timestamp (Linux: struct timeval on 64-bit)
MAX_PREFIX = 24       # a fill pattern may follow up to this many bytes of timestamp/header
MIN_TAIL = 8          # ... and must cover at least this many bytes (fewer when the payload is short)
MAX_PERIOD = 23       # Windows repeats a..w (23 letters)
RING = 16             # outstanding echo requests remembered per conversation
HASHED = 64           # payload bytes hashed for the request/reply comparison
JUDGED = 64           # payload bytes the content verdict looks at (the byte histogram takes all kept)
SAMPLE = 32           # payload bytes kept for the evidence
NBINS = 48            # size and interval histogram bins each
SIZE_BINS = NBINS
IVL_OFF = NBINS       # interval bins start here in ``hists``

CONV = np.dtype([
    ("used", "u1"), ("fam", "u1"), ("proto", "u1"), ("ip_ver", "u1"),
    ("orig_hi", "u8"), ("orig_lo", "u8"), ("resp_hi", "u8"), ("resp_lo", "u8"),
    ("ident", "u2"), ("pattern_kinds", "u1"), ("tool_kinds", "u1"),
    ("first_ts", "i8"), ("last_ts", "i8"), ("last_req_ts", "i8"),
    ("req_pkts", "u8"), ("rep_pkts", "u8"), ("req_bytes", "u8"), ("rep_bytes", "u8"),
    ("empty_pkts", "u4"), ("short_pkts", "u4"), ("pattern_pkts", "u4"), ("other_pkts", "u4"), ("tool_pkts", "u4"),
    ("matched", "u4"), ("mismatched", "u4"), ("orphans", "u4"), ("ring_pos", "u4"),
    ("extra_pkts", "u4"), ("extra_bytes", "u8"),
    ("min_size", "u4"), ("max_size", "u4"), ("size_bits0", "u8"), ("size_bits1", "u8"),
    ("hist_row", "i4"), ("hist_bytes", "u8"),
    ("sample_len", "u1"), ("sample_dir", "u1"), ("sample_file", "u2"), ("sample_size", "u4"),
    ("sample_frame", "u4"), ("sample_ts", "i8"),
], align=True)

# meta slots
M_COUNT, M_NFREE, M_POOL_FREE, M_RETIRED, M_PACKETS, M_CREATED, M_EVICTIONS, M_EVICTED, M_RETIRE_DROPPED, \
    M_POOL_EXHAUSTED = range(10)
N_META = 10
META_NAMES = ("conversations", "free_slots", "free_histograms", "retired", "icmp_packets", "created",
              "eviction_passes", "evicted", "retired_dropped", "histogram_pool_exhausted")

_FNV_OFF = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
# ring entry: valid bit 63 | echo sequence bits 47-62 | request verdict (class << 4 | pattern) bits 40-46 |
# payload hash bits 0-39
_VALID = np.uint64(1) << np.uint64(63)
_SEQ_SHIFT = np.uint64(47)
_VERDICT_SHIFT = np.uint64(40)
_HASH_MASK = (np.uint64(1) << np.uint64(40)) - np.uint64(1)
_RETIRE_BONUS = np.int64(1) << np.int64(62)

HANS_MAGICS = np.array([int.from_bytes(m.encode(), "big") for m in
                        ("hanc", "hans", "hnc2", "hns2", "hnc3", "hns3", "hnc4", "hns4")], np.uint64)
W_TUNL = np.uint64(int.from_bytes(b"TUNL", "big"))
W_PTUNNEL = np.uint64(0xD5200880)
W_PTUNNEL_NG = np.uint64(0xDEADC0DE)


@nb.njit(cache=True, inline="always")
def _key_hash(ohi, olo, rhi, rlo, ident, fam):
    h = _mix(ohi ^ _mix(olo))
    h = _mix(h ^ rhi ^ _mix(rlo + np.uint64(0x9E3779B97F4A7C15)))
    return _mix(h ^ (np.uint64(ident) << np.uint64(8)) ^ np.uint64(fam))


@nb.njit(cache=True, inline="always")
def _be32(b, p):
    return (np.uint64(b[p]) << np.uint64(24)) | (np.uint64(b[p + 1]) << np.uint64(16)) | \
        (np.uint64(b[p + 2]) << np.uint64(8)) | np.uint64(b[p + 3])


@nb.njit(cache=True, inline="always")
def _be16(b, p):
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@nb.njit(cache=True)
def _inner_ip(b, p, n, declared):
    """T_INNER_IPV4 / T_INNER_IPV6 when an IP header starts at b[p] (n kept bytes from p, declared
    bytes of payload from p), else 0."""
    if n < 20:
        return 0
    v = b[p] >> 4
    if v == 4:
        ihl = np.int64(b[p] & 15) * 4
        if ihl < 20 or ihl > n:
            return 0
        total = _be16(b, p + 2)
        if total < ihl or total > declared:
            return 0
        s = np.int64(0)
        for k in range(0, ihl, 2):
            s += _be16(b, p + k)
        while s > 0xFFFF:
            s = (s & 0xFFFF) + (s >> 16)
        return T_INNER_IPV4 if s == 0xFFFF else 0
    if v == 6 and n >= 40:
        plen = _be16(b, p + 4)
        nh = b[p + 6]
        if 40 + plen == declared and (nh == 6 or nh == 17 or nh == 58 or nh == 0 or nh == 43 or nh == 44
                                      or nh == 60 or nh == 50) and b[p + 7] > 0:
            return T_INNER_IPV6
    return 0


@nb.njit(cache=True)
def _fill_pattern(b, p, n):
    """The OS fill pattern bit when the payload b[p:p+n] ends in a structured tail that starts within
    MAX_PREFIX bytes and covers at least MIN_TAIL bytes, else 0."""
    end = p + n
    tail = min(MIN_TAIL, n - TIMESTAMP)
    best_start = n
    kind = 0
    # incrementing by one (mod 256)
    i = end - 1
    while i > p and b[i] == ((np.int64(b[i - 1]) + 1) & 0xFF):
        i -= 1
    start = i - p
    if n - 1 - start >= 3 and n - start >= tail:
        best_start = start
        kind = P_INCREMENT
    # repeating with a period of 1..MAX_PERIOD
    for period in range(1, MAX_PERIOD + 1):
        if period + 3 > n or best_start == 0:
            break
        i = end - 1
        while i - period >= p and b[i] == b[i - period]:
            i -= 1
        start = i - period + 1 - p       # every byte from start on repeats the one `period` before it
        start = max(start, 0)
        if n - start - period >= 3 and n - start >= tail and start < best_start:
            best_start = start
            last = b[end - 1]
            if period == 1 and last == 0:
                kind = P_ZEROS
            elif period == 23 and 0x61 <= last <= 0x77:
                kind = P_WINDOWS
            else:
                kind = P_PERIODIC
    if best_start <= MAX_PREFIX:
        return kind
    return 0


@nb.njit(cache=True)
def classify_payload(b, p, n, declared):
    """(content class, tool bits, pattern bits) of one payload: n bytes kept at b[p], declared length."""
    if n <= 0:
        return C_EMPTY, 0, 0
    tools = 0
    if n >= 4:
        w = _be32(b, p)
        if w == W_PTUNNEL:
            tools |= T_PTUNNEL
        elif w == W_PTUNNEL_NG:
            tools |= T_PTUNNEL_NG
        elif n >= 5 and w == W_TUNL and b[p + 4] <= 5:
            tools |= T_ICMPTUNNEL
        elif n >= 5 and 1 <= b[p + 4] <= 15:
            for m in HANS_MAGICS:
                if w == m:
                    tools |= T_HANS
    tools |= _inner_ip(b, p, n, declared)
    if tools:
        return C_TOOL, tools, 0
    if n < MIN_JUDGED:
        return C_SHORT, 0, 0
    pat = _fill_pattern(b, p, n)
    if pat:
        return C_PATTERN, 0, pat
    # ptunnel's 28-byte header with another magic: data_len (offset 20) == payload - 28 and a
    # small state (offset 12, low 30 bits; the top bits are the user/proxy flags)
    if n >= 28 and declared >= 28 and _be32(b, p) != np.uint64(0) and \
            _be32(b, p + 20) == np.uint64(declared - 28) and (_be32(b, p + 12) & np.uint64(0x3FFFFFFF)) <= 7:
        return C_TOOL, T_PTUNNEL_LAYOUT, 0
    return C_OTHER, 0, 0


@nb.njit(cache=True, inline="always")
def _payload_hash(b, p, n, declared):
    """64-bit hash of n bytes at b[p] and the declared length, eight bytes per step."""
    h = _FNV_OFF ^ np.uint64(declared)
    k = p
    end = p + n
    while k + 8 <= end:
        w = np.uint64(b[k]) | (np.uint64(b[k + 1]) << np.uint64(8)) | (np.uint64(b[k + 2]) << np.uint64(16)) | \
            (np.uint64(b[k + 3]) << np.uint64(24)) | (np.uint64(b[k + 4]) << np.uint64(32)) | \
            (np.uint64(b[k + 5]) << np.uint64(40)) | (np.uint64(b[k + 6]) << np.uint64(48)) | \
            (np.uint64(b[k + 7]) << np.uint64(56))
        h = (h ^ w) * _FNV_PRIME
        h ^= h >> np.uint64(29)
        k += 8
    while k < end:
        h = (h ^ np.uint64(b[k])) * _FNV_PRIME
        k += 1
    return _mix(h)


@nb.njit(cache=True, inline="always")
def _size_bin(size):
    if size < 256:
        return size >> 3
    b = 32 + ((size - 256) >> 7)
    return b if b < NBINS else NBINS - 1


@nb.njit(cache=True, inline="always")
def _interval_bin(dt_ns):
    """Half-octave bins of milliseconds: 0 for < ~0.4 ms, 20 for ~1 s, 47 beyond ~4.6 h."""
    ms = dt_ns / 1e6
    b = np.int64(2.0 * np.log2(ms + 1.0))
    if b < 0:
        return 0
    return b if b < NBINS else NBINS - 1


@nb.njit(cache=True, inline="always")
def _family(proto, t):
    """(family, 0 request / 1 reply) or (-1, 0) for types that are not judged."""
    if proto == 58:
        if t == 128:
            return FAM_ECHO, 0
        if t == 129:
            return FAM_ECHO, 1
        return -1, 0
    if t == 8:
        return FAM_ECHO, 0
    if t == 0:
        return FAM_ECHO, 1
    if 13 <= t <= 18:
        return (t - 13) // 2 + 1, (t - 13) & 1
    return -1, 0


@nb.njit(cache=True, inline="always")
def _interesting(c):
    return c.other_pkts > 0 or c.tool_pkts > 0 or c.mismatched > 0 or c.extra_pkts > 0


@nb.njit(cache=True)
def _index_insert(index, h, s):
    mask = index.shape[0] - 1
    j = np.int64(h & np.uint64(mask))
    while index[j] >= 0:
        j = (j + 1) & mask
    index[j] = s


@nb.njit(cache=True)
def _evict(conv, index, free, hists, ring, sample, pool, pool_free, r_conv, r_hists, r_sample, r_bytes, meta,
           target):
    """Evict down to ``target`` conversations, least recently seen first, conversations with tunnel
    evidence last; evicted ones with evidence are copied to the retired store."""
    cap = conv.shape[0]
    slots = np.empty(meta[M_COUNT], np.int64)
    keys = np.empty(meta[M_COUNT], np.int64)
    n = 0
    for s in range(cap):
        c = conv[s]
        if c.used:
            slots[n] = s
            keys[n] = c.last_ts + (_RETIRE_BONUS if _interesting(c) else 0)
            n += 1
    order = np.argsort(keys[:n], kind="mergesort")
    victims = n - target
    meta[M_EVICTIONS] += 1
    for k in range(victims):
        s = slots[order[k]]
        c = conv[s]
        if _interesting(c):
            rr = meta[M_RETIRED]
            if rr < r_conv.shape[0]:
                r_conv[rr] = conv[s]
                r_hists[rr, :] = hists[s, :]
                r_sample[rr, :] = sample[s, :]
                if c.hist_row >= 0:
                    r_bytes[rr, :] = pool[c.hist_row, :]
                else:
                    r_bytes[rr, :] = 0
                r_conv[rr].hist_row = rr
                meta[M_RETIRED] += 1
            else:
                meta[M_RETIRE_DROPPED] += 1
        if c.hist_row >= 0:
            pool_free[meta[M_POOL_FREE]] = c.hist_row
            meta[M_POOL_FREE] += 1
        c.used = 0
        free[meta[M_NFREE]] = s
        meta[M_NFREE] += 1
        meta[M_COUNT] -= 1
        meta[M_EVICTED] += 1
    index[:] = -1
    for s in range(cap):
        c = conv[s]
        if c.used:
            _index_insert(index, _key_hash(c.orig_hi, c.orig_lo, c.resp_hi, c.resp_lo, c.ident, c.fam), s)


@nb.njit(cache=True, nogil=True)
def icmp_update(pk, blob, conv, index, free, hists, ring, sample, pool, pool_free, r_conv, r_hists, r_sample,
                r_bytes, meta):
    """Fold one PACKET batch (and its blob) into the conversation table."""
    cap = conv.shape[0]
    imask = index.shape[0] - 1
    high_water = (cap * 3) // 4
    for i in range(pk.shape[0]):
        r = pk[i]
        proto = r.proto
        if proto != 1 and proto != 58:
            continue
        if r.ip_ver == 0 or r.frag == 2 or r.pay_off == 0:
            continue
        fam, direction = _family(proto, np.int64(r.icmp_type))
        if fam < 0:
            continue
        meta[M_PACKETS] += 1
        if direction == 0:
            ohi, olo, rhi, rlo = r.src_hi, r.src_lo, r.dst_hi, r.dst_lo
        else:
            ohi, olo, rhi, rlo = r.dst_hi, r.dst_lo, r.src_hi, r.src_lo
        ident = r.icmp_id
        h = _key_hash(ohi, olo, rhi, rlo, ident, fam)
        j = np.int64(h & np.uint64(imask))
        s = -1
        while index[j] >= 0:
            c = conv[index[j]]
            if c.orig_lo == olo and c.resp_lo == rlo and c.orig_hi == ohi and c.resp_hi == rhi and \
                    c.ident == ident and c.fam == fam:
                s = index[j]
                break
            j = (j + 1) & imask
        if s < 0:
            if meta[M_COUNT] >= high_water:
                _evict(conv, index, free, hists, ring, sample, pool, pool_free, r_conv, r_hists, r_sample,
                       r_bytes, meta, cap // 2)
                j = np.int64(h & np.uint64(imask))
                while index[j] >= 0:
                    j = (j + 1) & imask
            meta[M_NFREE] -= 1
            s = free[meta[M_NFREE]]
            index[j] = s
            meta[M_COUNT] += 1
            meta[M_CREATED] += 1
            c = conv[s]
            c.used = 1
            c.fam = fam
            c.proto = proto
            c.ip_ver = r.ip_ver
            c.orig_hi, c.orig_lo, c.resp_hi, c.resp_lo = ohi, olo, rhi, rlo
            c.ident = ident
            c.pattern_kinds = 0
            c.tool_kinds = 0
            c.first_ts = r.ts
            c.last_ts = r.ts
            c.last_req_ts = 0
            c.req_pkts = c.rep_pkts = c.req_bytes = c.rep_bytes = 0
            c.empty_pkts = c.short_pkts = c.pattern_pkts = c.other_pkts = c.tool_pkts = 0
            c.matched = c.mismatched = c.orphans = c.ring_pos = 0
            c.extra_pkts = 0
            c.extra_bytes = 0
            c.min_size = 0xFFFFFFFF
            c.max_size = 0
            c.size_bits0 = c.size_bits1 = 0
            c.hist_row = -1
            c.hist_bytes = 0
            c.sample_len = 0
            c.sample_dir = 0
            c.sample_file = 0
            c.sample_size = 0
            c.sample_frame = 0
            c.sample_ts = 0
            hists[s, :] = 0
            ring[s, :] = 0
        c = conv[s]
        ts = r.ts
        c.first_ts = min(c.first_ts, ts)
        c.last_ts = max(c.last_ts, ts)
        size = np.int64(r.l4_len)
        if direction == 0:
            c.req_pkts += 1
            c.req_bytes += np.uint64(size)
            if c.last_req_ts != 0 and ts >= c.last_req_ts:
                hists[s, IVL_OFF + _interval_bin(ts - c.last_req_ts)] += 1
            c.last_req_ts = ts
        else:
            c.rep_pkts += 1
            c.rep_bytes += np.uint64(size)
        c.min_size = min(c.min_size, size)
        c.max_size = max(c.max_size, size)
        hists[s, _size_bin(size)] += 1
        bit = _mix(np.uint64(size)) & np.uint64(127)
        if bit < 64:
            c.size_bits0 |= np.uint64(1) << bit
        else:
            c.size_bits1 |= np.uint64(1) << (bit - np.uint64(64))
        # echo request/reply agreement first: a reply that echoes its request's payload inherits the
        # request's verdict (a ping's reply costs no content check)
        p = np.int64(r.pl_off)
        n = np.int64(r.pl_len)
        cls = -1
        tools = pat = 0
        seq = hv = np.uint64(0)
        if fam == FAM_ECHO:
            seq = np.uint64(r.icmp_seq)
            # a first fragment declares only its own share: the two directions may fragment differently
            hv = _payload_hash(blob, p, min(n, HASHED), size if r.frag == 0 else -1) & _HASH_MASK
            if direction == 1:
                found = -1
                for back in range(RING):
                    k = (np.int64(c.ring_pos) - 1 - back) % RING
                    e = ring[s, k]
                    if (e & _VALID) and ((e >> _SEQ_SHIFT) & np.uint64(0xFFFF)) == seq:
                        found = k
                        break
                if found < 0:
                    c.orphans += 1
                else:
                    e = ring[s, found]
                    if (e & _HASH_MASK) == hv:
                        c.matched += 1
                        verdict = np.int64((e >> _VERDICT_SHIFT) & np.uint64(0x7F))
                        if (verdict >> 4) <= C_PATTERN:
                            cls = verdict >> 4
                            pat = verdict & 15
                    else:
                        c.mismatched += 1
                    ring[s, found] = 0
        if cls < 0:
            if fam != FAM_ECHO:
                if size > FAMILY_DATA[fam]:
                    c.extra_pkts += 1
                    c.extra_bytes += np.uint64(size - FAMILY_DATA[fam])
                    cls = C_OTHER
                else:
                    cls = C_SHORT
            else:
                cls, tools, pat = classify_payload(blob, p, min(n, JUDGED), size)
        if fam == FAM_ECHO and direction == 0:
            ring[s, c.ring_pos % RING] = _VALID | (seq << _SEQ_SHIFT) | \
                (np.uint64((cls << 4) | pat) << _VERDICT_SHIFT) | hv
            c.ring_pos += 1
        if cls == C_EMPTY:
            c.empty_pkts += 1
        elif cls == C_SHORT:
            c.short_pkts += 1
        elif cls == C_PATTERN:
            c.pattern_pkts += 1
            c.pattern_kinds |= pat
        else:
            if cls == C_TOOL:
                c.tool_pkts += 1
                c.tool_kinds |= tools
            else:
                c.other_pkts += 1
            if c.sample_len == 0 and n > 0:
                k = min(n, SAMPLE)
                sample[s, :k] = blob[p:p + k]
                c.sample_len = k
                c.sample_dir = direction
                c.sample_size = size
                c.sample_file = r.file_id
                c.sample_frame = r.frame_no
                c.sample_ts = ts
            if c.hist_row < 0 and n > 0:
                if meta[M_POOL_FREE] > 0:
                    meta[M_POOL_FREE] -= 1
                    row = pool_free[meta[M_POOL_FREE]]
                    pool[row, :] = 0
                    c.hist_row = row
                else:
                    meta[M_POOL_EXHAUSTED] += 1
            if c.hist_row >= 0:
                row = c.hist_row
                for k in range(p, p + n):
                    pool[row, blob[k]] += 1
                c.hist_bytes += np.uint64(n)


class IcmpConversations:
    """The conversation table and its bounded side stores; ``update`` is one Numba call."""

    def __init__(self, capacity: int = 32768, histogram_rows: int = 4096, retired_max: int = 4096):
        capacity = max(16, int(capacity))
        self.capacity = capacity
        self.conv = np.zeros(capacity, CONV)
        size = 1
        while size < 2 * capacity:
            size <<= 1
        self.index = np.full(size, -1, np.int32)
        self.free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self.hists = np.zeros((capacity, 2 * NBINS), np.uint32)
        self.ring = np.zeros((capacity, RING), np.uint64)
        self.sample = np.zeros((capacity, SAMPLE), np.uint8)
        rows = max(1, int(histogram_rows))
        self.pool = np.zeros((rows, 256), np.uint32)
        self.pool_free = np.arange(rows - 1, -1, -1, dtype=np.int64)
        retired = max(1, int(retired_max))
        self.r_conv = np.zeros(retired, CONV)
        self.r_hists = np.zeros((retired, 2 * NBINS), np.uint32)
        self.r_sample = np.zeros((retired, SAMPLE), np.uint8)
        self.r_bytes = np.zeros((retired, 256), np.uint32)
        self.meta = np.zeros(N_META, np.int64)
        self.meta[M_NFREE] = capacity
        self.meta[M_POOL_FREE] = rows

    def update(self, packets: np.ndarray, blob: np.ndarray) -> None:
        if len(packets):
            icmp_update(packets, blob, self.conv, self.index, self.free, self.hists, self.ring, self.sample,
                        self.pool, self.pool_free, self.r_conv, self.r_hists, self.r_sample, self.r_bytes,
                        self.meta)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every conversation (retired first, then live ones in slot order): CONV rows, size and
        interval histograms (n, 2*NBINS), payload samples (n, SAMPLE) and byte histograms (n, 256;
        zero rows where none was kept)."""
        nr = int(self.meta[M_RETIRED])
        live = np.flatnonzero(self.conv["used"])
        conv = np.concatenate([self.r_conv[:nr], self.conv[live]])
        hists = np.concatenate([self.r_hists[:nr], self.hists[live]])
        sample = np.concatenate([self.r_sample[:nr], self.sample[live]])
        rows = self.conv["hist_row"][live]
        live_bytes = np.where((rows >= 0)[:, None], self.pool[np.maximum(rows, 0)], 0).astype(np.uint32)
        byte_hist = np.concatenate([self.r_bytes[:nr], live_bytes])
        return conv, hists, sample, byte_hist

    def stats(self) -> dict:
        return {name: int(v) for name, v in zip(META_NAMES, self.meta)}
