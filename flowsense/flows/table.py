"""Bidirectional flow table in Numba: fixed capacity, open addressing, packet-time expiry.

Flow records live in a slab (FLOW structured array) and never move; an int32 index of twice the
capacity (linear probing, backward-shift deletion) maps a direction-independent key hash to slab
slots.  Two intrusive lists order the slab: LRU (last packet) for idle expiry and eviction, and
creation order for the active timeout, so expiry is O(expired) rather than a table scan.

Orientation: TCP orig is the SYN sender (the receiver of a SYN-ACK seen first); ICMP orig is the
sender of the first request-type message; otherwise the first packet's sender.  ICMP is keyed by
(addresses, type family, echo id), stored in the port fields of the slab.

Every packet of a batch goes through one call of ``meter_run``; the call returns early only when
the caller's output buffer is full, so records are never dropped.
"""

import numba as nb
import numpy as np

ST_SYN, ST_SYNACK, ST_FIN_ORIG, ST_FIN_RESP, ST_RST_ORIG, ST_RST_RESP, ST_MIDSTREAM, ST_PENDING = \
    1, 2, 4, 8, 16, 32, 64, 128
END_REASONS = ("open", "idle_timeout", "active_timeout", "tcp_close", "evicted", "end_of_input")
END_IDLE, END_ACTIVE, END_TCP, END_EVICT, END_EOF = 1, 2, 3, 4, 5

# meta slots
M_COUNT, M_LRU_HEAD, M_LRU_TAIL, M_AGE_HEAD, M_AGE_TAIL, M_NOW, M_LAST_SWEEP, M_UNUSED, M_NFREE, \
    M_SWEEP_PENDING, M_MAX_COUNT = range(11)
N_META = 11
# param slots
P_IDLE, P_ACTIVE, P_CLOSED, P_SWEEP = range(4)
# counter slots
COUNTERS = ("flows_created", "records_emitted", "evicted", "active_timeouts", "port_reuse_splits")
C_CREATED, C_EMITTED, C_EVICTED, C_ACTIVE, C_REUSE = range(5)

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


@nb.njit(cache=True, inline="always")
def mix64(x):
    """A 64-bit finaliser (MurmurHash3 fmix64): every input bit flips about half the output bits,
    so open-addressing tables stay evenly filled; shared by every Numba hash table."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@nb.njit(cache=True, inline="always")
def _endpoint(hi, lo, port):
    return mix64(mix64(hi) ^ lo ^ np.uint64(port))


@nb.njit(cache=True, inline="always")
def icmp_family(proto, icmp_type):
    """Request/reply pairs share a family (the request type), other types stand alone."""
    if proto == 1:
        if icmp_type == 0 or icmp_type == 14 or icmp_type == 16 or icmp_type == 18:
            return 8 if icmp_type == 0 else icmp_type - 1
        return icmp_type
    if icmp_type == 129:
        return 128
    return icmp_type


@nb.njit(cache=True, inline="always")
def _is_reply(proto, icmp_type):
    if proto == 1:
        return icmp_type == 0 or icmp_type == 14 or icmp_type == 16 or icmp_type == 18
    return icmp_type == 129


@nb.njit(cache=True, inline="always")
def _key_hash(shi, slo, dhi, dlo, sp, dp, proto, icmp):
    if icmp:
        ea = _endpoint(shi, slo, 0)
        eb = _endpoint(dhi, dlo, 0)
        extra = (np.uint64(sp) << np.uint64(16)) | np.uint64(dp)
    else:
        ea = _endpoint(shi, slo, sp)
        eb = _endpoint(dhi, dlo, dp)
        extra = np.uint64(0)
    return np.uint32(mix64((ea + eb) ^ mix64(ea ^ eb) ^ (np.uint64(proto) << np.uint64(32)) ^ extra)
                     & np.uint64(0xFFFFFFFF))


@nb.njit(cache=True, inline="always")
def _match(f, shi, slo, dhi, dlo, sp, dp, proto, icmp):
    """0 no match, 1 packet goes orig->resp, 2 packet goes resp->orig."""
    if f.proto != proto:
        return 0
    if f.orig_hi == shi and f.orig_lo == slo and f.resp_hi == dhi and f.resp_lo == dlo \
            and f.orig_p == sp and f.resp_p == dp:
        return 1
    if f.orig_hi == dhi and f.orig_lo == dlo and f.resp_hi == shi and f.resp_lo == slo:
        if icmp:
            if f.orig_p == sp and f.resp_p == dp:
                return 2
        elif f.orig_p == dp and f.resp_p == sp:
            return 2
    return 0


@nb.njit(cache=True, inline="always")
def _unlink_lru(flows, meta, s):
    p = flows[s].lru_prev
    n = flows[s].lru_next
    if p >= 0:
        flows[p].lru_next = n
    else:
        meta[M_LRU_HEAD] = n
    if n >= 0:
        flows[n].lru_prev = p
    else:
        meta[M_LRU_TAIL] = p


@nb.njit(cache=True, inline="always")
def _push_lru(flows, meta, s):
    h = meta[M_LRU_HEAD]
    flows[s].lru_prev = -1
    flows[s].lru_next = h
    if h >= 0:
        flows[h].lru_prev = s
    else:
        meta[M_LRU_TAIL] = s
    meta[M_LRU_HEAD] = s


@nb.njit(cache=True, inline="always")
def _unlink_age(flows, meta, s):
    p = flows[s].age_prev
    n = flows[s].age_next
    if p >= 0:
        flows[p].age_next = n
    else:
        meta[M_AGE_HEAD] = n
    if n >= 0:
        flows[n].age_prev = p
    else:
        meta[M_AGE_TAIL] = p


@nb.njit(cache=True, inline="always")
def _append_age(flows, meta, s):
    t = meta[M_AGE_TAIL]
    flows[s].age_next = -1
    flows[s].age_prev = t
    if t >= 0:
        flows[t].age_next = s
    else:
        meta[M_AGE_HEAD] = s
    meta[M_AGE_TAIL] = s


@nb.njit(cache=True)
def _index_remove(flows, index, s):
    mask = index.shape[0] - 1
    j = np.int64(flows[s].hash) & mask
    while index[j] != s + 1:
        j = (j + 1) & mask
    index[j] = 0
    k = (j + 1) & mask
    while index[k] != 0:
        home = np.int64(flows[index[k] - 1].hash) & mask
        # move k back to the hole at j unless its home lies cyclically in (j, k]
        if (j < k and (home <= j or home > k)) or (j > k and home <= j and home > k):
            index[j] = index[k]
            index[k] = 0
            j = k
        k = (k + 1) & mask


@nb.njit(cache=True)
def _emit(flows, out, n_out, s, reason, counters):
    out[n_out] = flows[s]
    out[n_out].end_reason = reason
    counters[C_EMITTED] += 1
    return n_out + 1


@nb.njit(cache=True)
def _remove(flows, index, free, meta, s):
    _unlink_lru(flows, meta, s)
    if not flows[s].state & ST_PENDING:
        _unlink_age(flows, meta, s)
    _index_remove(flows, index, s)
    free[meta[M_NFREE]] = s
    meta[M_NFREE] += 1
    meta[M_COUNT] -= 1


@nb.njit(cache=True)
def _end(flows, index, free, meta, out, n_out, s, reason, counters):
    """Emit (unless it holds no packets since an active-timeout split) and remove."""
    if not flows[s].state & ST_PENDING:
        n_out = _emit(flows, out, n_out, s, reason, counters)
    _remove(flows, index, free, meta, s)
    return n_out


@nb.njit(cache=True)
def _split_active(flows, meta, out, n_out, s, counters):
    """Emit the record of a flow that reached the active timeout; the flow stays in the table
    (same orientation) and starts a continuation record with its next packet."""
    n_out = _emit(flows, out, n_out, s, END_ACTIVE, counters)
    counters[C_ACTIVE] += 1
    _unlink_age(flows, meta, s)
    f = flows[s]
    f.state = (f.state & ~ST_MIDSTREAM) | ST_PENDING
    _reset_counters(f)
    return n_out


@nb.njit(cache=True, inline="always")
def _reset_counters(f):
    f.orig_pkts = 0
    f.resp_pkts = 0
    f.orig_bytes = 0
    f.resp_bytes = 0
    f.orig_payload_bytes = 0
    f.resp_payload_bytes = 0
    f.orig_flags = 0
    f.resp_flags = 0


@nb.njit(cache=True, inline="always")
def _closed(f):
    st = f.state
    return (st & ST_FIN_ORIG and st & ST_FIN_RESP) or st & (ST_RST_ORIG | ST_RST_RESP)


@nb.njit(cache=True, inline="always")
def _idle_reason(f, now, params):
    """END_IDLE or END_TCP if the flow has been quiet past its timeout at ``now``, else 0."""
    gap = now - f.last_ts
    if _closed(f):
        return END_TCP if gap >= params[P_CLOSED] or gap >= params[P_IDLE] else 0
    return END_IDLE if gap >= params[P_IDLE] else 0


@nb.njit(cache=True)
def sweep(flows, index, free, meta, counters, params, out, n_out):
    """Active timeouts (creation order) then idle/closed timeouts (LRU order), both on packet time.
    Stops with M_SWEEP_PENDING set when ``out`` is full."""
    now = meta[M_NOW]
    limit = out.shape[0]
    meta[M_SWEEP_PENDING] = 1
    s = meta[M_AGE_HEAD]
    while s >= 0 and now - flows[s].ts >= params[P_ACTIVE]:
        if n_out >= limit:
            return n_out
        nxt = flows[s].age_next
        reason = _idle_reason(flows[s], now, params)
        if reason:  # went quiet long ago: that, not its age, is why it ends
            n_out = _end(flows, index, free, meta, out, n_out, s, reason, counters)
        else:
            n_out = _split_active(flows, meta, out, n_out, s, counters)
        s = nxt
    s = meta[M_LRU_TAIL]
    while s >= 0:
        idle = now - flows[s].last_ts
        if idle < params[P_CLOSED] and idle < params[P_IDLE]:
            break
        prv = flows[s].lru_prev
        reason = _idle_reason(flows[s], now, params)
        if reason:
            if n_out >= limit:
                return n_out
            n_out = _end(flows, index, free, meta, out, n_out, s, reason, counters)
        s = prv
    meta[M_SWEEP_PENDING] = 0
    meta[M_LAST_SWEEP] = now
    return n_out


@nb.njit(cache=True)
def _create(flows, index, free, meta, counters, r, shi, slo, dhi, dlo, sp, dp, h, icmp, flip):
    if meta[M_NFREE] > 0:
        meta[M_NFREE] -= 1
        s = free[meta[M_NFREE]]
    else:
        s = meta[M_UNUSED]
        meta[M_UNUSED] += 1
    f = flows[s]
    if flip:
        f.orig_hi, f.orig_lo, f.resp_hi, f.resp_lo = dhi, dlo, shi, slo
        f.orig_p, f.resp_p = (sp, dp) if icmp else (dp, sp)
    else:
        f.orig_hi, f.orig_lo, f.resp_hi, f.resp_lo = shi, slo, dhi, dlo
        f.orig_p, f.resp_p = sp, dp
    f.proto = r.proto
    f.ip_ver = r.ip_ver
    f.icmp_type = sp if (icmp and flip) else r.icmp_type
    f.icmp_code = r.icmp_code
    f.ts = r.ts
    f.last_ts = r.ts
    _reset_counters(f)
    f.state = 0
    if r.proto == 6 and not r.tcp_flags & 2:
        f.state = ST_MIDSTREAM
    f.end_reason = 0
    f.vlan = r.vlan
    f.file_id = r.file_id
    f.first_frame = r.frame_no
    f.orig_head_len = 0
    f.resp_head_len = 0
    f.app = 0
    f.hash = h
    mask = index.shape[0] - 1
    j = np.int64(h) & mask
    while index[j] != 0:
        j = (j + 1) & mask
    index[j] = s + 1
    _push_lru(flows, meta, s)
    _append_age(flows, meta, s)
    meta[M_COUNT] += 1
    if meta[M_COUNT] > meta[M_MAX_COUNT]:
        meta[M_MAX_COUNT] = meta[M_COUNT]
    counters[C_CREATED] += 1
    return s


@nb.njit(cache=True, nogil=True)
def meter_run(pk, start, flows, index, free, meta, counters, params, out):
    """Account packets pk[start:] to flows; expired records go to ``out``.
    Returns (next packet index, records in out)."""
    n_out = 0
    limit = out.shape[0] - 2  # room for an eviction and a port-reuse split per packet
    capacity = flows.shape[0]
    mask = index.shape[0] - 1
    i = start
    if meta[M_SWEEP_PENDING]:
        n_out = sweep(flows, index, free, meta, counters, params, out, n_out)
        if meta[M_SWEEP_PENDING]:
            return i, n_out
    while i < pk.shape[0]:
        if n_out >= limit:
            return i, n_out
        r = pk[i]
        i += 1
        if r.ip_ver == 0:
            continue
        ts = r.ts
        if ts > meta[M_NOW]:
            meta[M_NOW] = ts
        proto = r.proto
        icmp = proto == 1 or proto == 58
        if icmp:
            sp = icmp_family(proto, r.icmp_type)
            dp = np.int64(r.icmp_id)
        else:
            sp = np.int64(r.sport)
            dp = np.int64(r.dport)
        shi, slo, dhi, dlo = r.src_hi, r.src_lo, r.dst_hi, r.dst_lo
        h = _key_hash(shi, slo, dhi, dlo, sp, dp, proto, icmp)
        s = -1
        direction = 0
        j = np.int64(h) & mask
        while index[j] != 0:
            c = index[j] - 1
            if flows[c].hash == h:
                direction = _match(flows[c], shi, slo, dhi, dlo, sp, dp, proto, icmp)
                if direction:
                    s = c
                    break
            j = (j + 1) & mask
        flags = r.tcp_flags
        if s >= 0:
            # timeouts are decided per packet too, so they do not depend on batch boundaries
            reason = _idle_reason(flows[s], ts, params)
            if reason:
                n_out = _end(flows, index, free, meta, out, n_out, s, reason, counters)
                s = -1
            elif proto == 6 and flags & 2 and not flags & 16 and _closed(flows[s]):
                n_out = _end(flows, index, free, meta, out, n_out, s, END_TCP, counters)
                counters[C_REUSE] += 1
                s = -1
            elif not flows[s].state & ST_PENDING and ts - flows[s].ts >= params[P_ACTIVE]:
                n_out = _split_active(flows, meta, out, n_out, s, counters)
        if s < 0:
            if meta[M_COUNT] >= capacity:
                n_out = _end(flows, index, free, meta, out, n_out, meta[M_LRU_TAIL], END_EVICT, counters)
                counters[C_EVICTED] += 1
            if icmp:
                flip = _is_reply(proto, r.icmp_type)
            else:
                flip = proto == 6 and flags & 18 == 18
            s = _create(flows, index, free, meta, counters, r, shi, slo, dhi, dlo, sp, dp, h, icmp, flip)
            direction = 2 if flip else 1
        f = flows[s]
        if f.state & ST_PENDING:
            f.state &= ~ST_PENDING
            f.ts = ts
            _append_age(flows, meta, s)
        if ts > f.last_ts:
            f.last_ts = ts
        if ts < f.ts:
            f.ts = ts
        if direction == 1:
            f.orig_pkts += 1
            f.orig_bytes += r.ip_len
            f.orig_payload_bytes += r.l4_len
            f.orig_flags |= flags
            if f.orig_head_len == 0 and r.head_len:
                f.orig_head, f.orig_head_len = r.head, r.head_len
        else:
            f.resp_pkts += 1
            f.resp_bytes += r.ip_len
            f.resp_payload_bytes += r.l4_len
            f.resp_flags |= flags
            if f.resp_head_len == 0 and r.head_len:
                f.resp_head, f.resp_head_len = r.head, r.head_len
        if proto == 6:
            st = f.state
            if direction == 1:
                if flags & 2 and not flags & 16:
                    st |= ST_SYN
                if flags & 1:
                    st |= ST_FIN_ORIG
                if flags & 4:
                    st |= ST_RST_ORIG
            else:
                if flags & 18 == 18:
                    st |= ST_SYNACK
                if flags & 1:
                    st |= ST_FIN_RESP
                if flags & 4:
                    st |= ST_RST_RESP
            f.state = st
        if meta[M_LRU_HEAD] != s:
            _unlink_lru(flows, meta, s)
            _push_lru(flows, meta, s)
    if meta[M_NOW] - meta[M_LAST_SWEEP] >= params[P_SWEEP]:
        n_out = sweep(flows, index, free, meta, counters, params, out, n_out)
    return i, n_out


@nb.njit(cache=True, nogil=True)
def flush(flows, index, free, meta, counters, out):
    """End every flow (end of input), oldest first, as many as fit in ``out``."""
    n_out = 0
    while meta[M_LRU_TAIL] >= 0 and n_out < out.shape[0]:
        n_out = _end(flows, index, free, meta, out, n_out, meta[M_LRU_TAIL], END_EOF, counters)
    return n_out
