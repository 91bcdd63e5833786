"""Beacon features: check-ins per conversation, and the periodicity maths that judge them.

**Check-ins.**  A beacon is a program that "checks in" with its server on a timer.  A check-in is
seen two ways:

* a new connection (a flow start) — RITA's view, and the only one NetFlow gives;
* a burst inside one long-lived flow: payload after at least ``[beacon].burst_gap_s`` of silence
  in that conversation (either direction).  Covenant and Empire poll over one kept-alive HTTP connection,
  Merlin over one QUIC (UDP) flow, the RAT in the corpus sends a 9-byte heartbeat every 10 s over
  its control session: none of them opens a new connection per beat, so flow starts alone never
  see them.

``BurstTable`` finds the bursts at packet grade with one Numba call per batch: an open-addressing
table keyed by a direction-free 64-bit hash of the TCP/UDP conversation (fixed capacity, a probe
window of ``PROBE`` slots, the least recently active entry of the window evicted and counted; an
evicted entry's burst is kept, so eviction only loses the silence test for that conversation's next
packet).  Each entry holds the open burst (start time, the opener's payload bytes, which side
opened it); when the next burst starts the finished one is written out as an ``EVENT`` row.  Only
TCP/UDP payload packets count (TCP payloads of one byte or less are keep-alive probes); ICMP is
out of scope here (``icmp_tunnel`` owns it).

**Scoring** (``score_series``: one kernel call over every series, a series being the check-in times
and sizes of one conversation, concatenated and indexed by offsets):

* RITA v5 subscores (activecm/rita ``analysis/beacons.go``): *timestamp* = mean of 1-|Bowley skew|
  and (median-MAD)/median of the intervals; *size* = the same over bytes; *histogram* = max of
  1-CV of the counts per bin and RITA's bimodal fit; *duration* = max of coverage (first..last
  over the observation window) and the longest run of non-empty bins over half the bins.  RITA
  bins 24 h into 24 hourly bins; here the window (a capture can last two minutes or two weeks) is
  cut into ``min(24, window / (2 x period))`` bins so each bin can hold a beat; fewer than 4 bins
  and the histogram is left out (duration is then coverage alone).
* Periodicity (beyond RITA): the period P is fitted so that each interval is close to a whole
  number of periods (a missed beat makes a 2P interval, still in phase); candidates come from the
  interval quantiles (and half of each), each refined by least squares over its in-phase intervals
  (within ``IN_PHASE`` = P/4 of a multiple), and the candidate maximising
  fit x beat coverage / (1 + (jitter / jitter_ok)^2) wins, so a sub-multiple P/2 (half the beats
  "missing", twice the relative jitter) or a multiple 2P (half the intervals out of phase) lose to
  the true period.  Reported: the period; the jitter = standard deviation of the per-beat phase
  residuals (interval - m x P, divided by sqrt(m): a sleep timer's jitter adds up beat by beat) of
  the in-phase intervals after 3-sigma clipping around 1.4826 x their median |residual| (a robust
  std: the in-phase window and the clipping trim extra check-ins and gaps); the jitter ratio
  (jitter / P; a +-j uniform timer measures j/sqrt(3)); the fit (share of intervals in phase); the
  beat coverage (check-ins seen / beats the in-phase intervals span) and the missing beats.  An
  interval over ``MAX_RUN`` periods is a gap (host asleep): out of phase, but no run of missing
  beats.  The periodicity subscore is g(jr x (1 + 1.5/sqrt(k))) x q(fit) x min(1, coverage /
  min_beat_ratio), k the in-phase intervals (few beats must show a clearly small jitter: with 5
  intervals a +-20 % timer can measure like a +-10 % one), g falling linearly from 1 at
  ``jitter_ok_ratio`` to 0 at ``jitter_max_ratio``, q rising linearly from 0 at a fit of
  ``FIT_CHANCE`` (what the best candidate reaches on random arrivals) to 1 at ``FIT_FULL``.
* Score = periodicity x RITA mean: both must be high.  The RITA mean alone is too lenient for
  alerting: a timer with +/-30 % jitter still gets ~0.85 on its timestamp subscore (the MAD of
  a uniform +/-30 % spread is 15 % of the median), the exact profile of benign update checkers;
  the phase-residual jitter separates them.  Periodicity alone is not enough either: among many
  sessions a handful of random bursts (8, say) line up with some period by chance, and then
  RITA's size, histogram and duration subscores (erratic sizes, a short-lived series) hold the
  score down.
  Measured on synthetic timers (300 draws each, default knobs, intervals P x (1 + U(-j, j)),
  constant sizes): Poisson arrivals reach 0.5 under 1 % of the time with 6 check-ins, never with
  10; +-20 % and +-30 % timers 6-8 % of the time with 6 check-ins, 2-3 % with 10, never with 30;
  +-5 % timers always do from 6 check-ins; +-10 % timers about half the time with 12, 94 % with
  30, always with 60.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from flowsense.config import BeaconConfig
from flowsense.features._kernels import bowley_skew_sorted, mad_sorted, quantile_sorted
from flowsense.flows.table import mix64 as _mix

EVENT = np.dtype([("ts", "i8"), ("hash", "u8"), ("bytes", "u4"), ("side", "u1")])
PROBE = 8
COUNTERS = ("payload_packets", "bursts", "evicted")
C_PACKETS, C_BURSTS, C_EVICTED = range(3)

_S56 = np.uint64(56)


_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_S48 = np.uint64(48)


@nb.njit(cache=True, inline="always")
def _endpoint(hi, lo, port):
    """Injective for IPv4-mapped addresses (the port fills the 16 bits an IPv4-mapped ``lo`` leaves
    zero; odd multipliers are bijections); IPv6 endpoints may collide only by sheer chance."""
    return (np.uint64(lo) ^ (np.uint64(port) << _S48)) * _K1 ^ np.uint64(hi) * _K2


@nb.njit(cache=True, inline="always")
def conv_key(ahi, alo, ap, bhi, blo, bp, proto):
    """(hash, side) of a TCP/UDP conversation: the hash is the same from both ends (never 0);
    side is 0 when endpoint a is the lower one, 1 otherwise."""
    first = ahi < bhi or (ahi == bhi and (alo < blo or (alo == blo and ap <= bp)))
    if first:
        e1, e2, side = _endpoint(ahi, alo, ap), _endpoint(bhi, blo, bp), 0
    else:
        e1, e2, side = _endpoint(bhi, blo, bp), _endpoint(ahi, alo, ap), 1
    h = _mix(_mix(e1 ^ (np.uint64(proto) << _S56)) + e2)
    if h == 0:
        h = np.uint64(1)
    return h, side


# one table slot: 32 bytes, so a probe touches one cache line
ENTRY = np.dtype([("key", "u8"), ("last", "i8"), ("start", "i8"), ("bytes", "u4"), ("side", "u1")], align=True)


@nb.njit(cache=True, nogil=True)
def burst_run(pk, table, gap_ns, out, counters):
    """Account one PACKET batch; finished bursts go to ``out`` (at most one per packet).
    Returns the number of rows written."""
    mask = table.shape[0] - 1
    n_out = 0
    big = np.iinfo(np.int64).max
    for i in range(pk.shape[0]):
        r = pk[i]
        p = r.proto
        if r.ip_ver == 0 or (p != 6 and p != 17) or r.frag == 2:
            continue
        pl = r.l4_len
        if pl == 0 or (p == 6 and pl <= 1):
            continue
        counters[C_PACKETS] += 1
        h, s = conv_key(r.src_hi, r.src_lo, r.sport, r.dst_hi, r.dst_lo, r.dport, p)
        ts = r.ts
        j0 = np.int64(h & np.uint64(mask))
        slot = -1
        free = -1
        oldest = -1
        oldest_ts = big
        for k in range(PROBE):
            j = (j0 + k) & mask
            kk = table[j].key
            if kk == h:
                slot = j
                break
            if kk == 0:  # slots are replaced, never emptied: the key is not further on
                free = j
                break
            if table[j].last < oldest_ts:
                oldest_ts = table[j].last
                oldest = j
        if slot >= 0:
            t = table[slot]
            if ts - t.last >= gap_ns:
                e = out[n_out]
                e.ts, e.hash, e.bytes, e.side = t.start, h, t.bytes, t.side
                n_out += 1
                t.start = ts
                t.bytes = 0
                t.side = s
                counters[C_BURSTS] += 1
            if s == t.side:
                t.bytes = min(np.uint64(t.bytes) + np.uint64(pl), np.uint64(0xFFFFFFFF))
            t.last = max(t.last, ts)
            continue
        if free >= 0:
            j = free
        else:
            j = oldest
            t = table[j]
            e = out[n_out]
            e.ts, e.hash, e.bytes, e.side = t.start, t.key, t.bytes, t.side
            n_out += 1
            counters[C_EVICTED] += 1
        t = table[j]
        t.key = h
        t.last = ts
        t.start = ts
        t.bytes = pl
        t.side = s
        counters[C_BURSTS] += 1
    return n_out


@nb.njit(cache=True)
def open_bursts(table, out):
    """The bursts still open in the table (end of input), in slot order; returns their count."""
    n = 0
    for j in range(table.shape[0]):
        t = table[j]
        if t.key != 0:
            e = out[n]
            e.ts, e.hash, e.bytes, e.side = t.start, t.key, t.bytes, t.side
            n += 1
    return n


class BurstTable:
    """Packet-grade burst finder; state in one fixed array, one kernel call per batch."""

    def __init__(self, capacity: int, gap_s: float):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.table = np.zeros(cap, ENTRY)
        self.gap_ns = np.int64(round(gap_s * 1e9))
        self.counters = np.zeros(len(COUNTERS), np.int64)
        self._out = np.zeros(0, EVENT)
        self._done: list[np.ndarray] = []

    def update(self, packets: np.ndarray) -> None:
        if len(packets) == 0:
            return
        if len(self._out) < len(packets):
            self._out = np.zeros(len(packets), EVENT)
        n = burst_run(packets, self.table, self.gap_ns, self._out, self.counters)
        if n:
            self._done.append(self._out[:n].copy())

    def events(self) -> np.ndarray:
        """Every burst seen so far: the finished ones in the order they ended, then the still open
        ones in slot order (deterministic for the same input)."""
        live = np.zeros(int(np.count_nonzero(self.table["key"])), EVENT)
        open_bursts(self.table, live)
        return np.concatenate(self._done + [live]) if self._done else live

    def stats(self) -> dict:
        return {name: int(v) for name, v in zip(COUNTERS, self.counters)}


@nb.njit(cache=True)
def flow_keys(orig_hi, orig_lo, orig_p, resp_hi, resp_lo, resp_p, proto):
    """(conversation hash, side of the originator) per flow row, as ``conv_key`` gives them."""
    n = orig_hi.shape[0]
    h = np.zeros(n, np.uint64)
    s = np.zeros(n, np.uint8)
    for i in range(n):
        h[i], s[i] = conv_key(orig_hi[i], orig_lo[i], orig_p[i], resp_hi[i], resp_lo[i], resp_p[i], proto[i])
    return h, s


@nb.njit(cache=True)
def assign_events(ev_hash, ev_ts, f_hash, f_ts):
    """For each event, the row (in the (hash, ts)-sorted flow arrays) of its flow: the latest flow of
    the same conversation that started at or before it (else the first one); -1 when none."""
    out = np.full(ev_hash.shape[0], -1, np.int64)
    for i in range(ev_hash.shape[0]):
        lo = np.searchsorted(f_hash, ev_hash[i], side="left")
        hi = np.searchsorted(f_hash, ev_hash[i], side="right")
        if lo == hi:
            continue
        k = lo + np.searchsorted(f_ts[lo:hi], ev_ts[i], side="right") - 1
        out[i] = max(k, lo)
    return out


# --- scoring -----------------------------------------------------------------------------------

# params
P_MERGE, P_MIN_EVENTS, P_JIT_OK, P_JIT_MAX, P_BEAT_FULL, P_MAX_BINS, P_MIN_SPAN, P_Z = range(8)
N_PARAMS = 8
# output columns
OUT = ("events", "eligible", "period_s", "jitter_ratio", "jitter_s", "fit", "beat_coverage", "missing_beats",
       "timestamp", "size", "histogram", "duration", "periodicity", "rita", "score", "median_bytes", "first_s",
       "last_s", "bins", "in_phase")
(O_N, O_ELIG, O_PERIOD, O_JR, O_JS, O_FIT, O_COV, O_MISSING, O_TS, O_DS, O_HIST, O_DUR, O_PER, O_RITA, O_SCORE,
 O_MEDB, O_FIRST, O_LAST, O_BINS, O_INPHASE) = range(len(OUT))
NF = len(OUT)

IN_PHASE = 0.25        # an interval within this share of a period from a multiple is "in phase"
UPPER_Z = 1.5          # jitter judged at jr x (1 + UPPER_Z / sqrt(in-phase intervals)): few beats, clear timer
FIT_CHANCE = 0.4       # best-candidate fit of random (Poisson) arrivals is ~0.3-0.4: no credit here
FIT_FULL = 0.9         # full credit from here (a few extra check-ins between beats are tolerated)
MAX_RUN = 10.0         # an interval of more periods than this is a gap, not missed beats
TS_MIN_IQR = 0.05      # Bowley skew of intervals ignored below this IQR (share of the median; RITA: 10 s)
DS_MIN_IQR = 10.0      # ... of sizes below this IQR in bytes (RITA's constant)
BIMODAL_MIN_SHARE = 11.0 / 24.0   # RITA: bimodal fit needs 11 of 24 bins with connections
BIMODAL_SENSITIVITY = 0.05        # RITA HistModeSensitivity
DUR_MIN_SHARE = 6.0 / 24.0        # RITA DurMinHours of 24
DUR_IDEAL_SHARE = 12.0 / 24.0     # RITA DurIdealNumberOfConsistentHours of 24
MIN_BINS = 4


@nb.njit(cache=True)
def _phase(d, period, res):
    """Fit of the intervals to multiples of ``period``: (in-phase count, beats they span, sum m*d and
    sum m*m over in-phase intervals); the per-beat phase residuals (r / sqrt(m), in periods) of the
    in-phase intervals go to ``res[:count]``.  An interval is in phase when within ``IN_PHASE``
    periods of a multiple m >= 1; dividing by sqrt(m) because a sleep timer's jitter adds up beat
    by beat.  An interval longer than ``MAX_RUN`` periods is a gap (host asleep, agent paused): its
    phase says nothing, so it counts as out of phase but spans no beats."""
    inl = 0
    beats = 0.0
    smd = 0.0
    smm = 0.0
    for i in range(d.shape[0]):
        x = d[i] / period
        m = np.floor(x + 0.5)
        if m >= 1.0 and m <= MAX_RUN:
            r = x - m
            if abs(r) <= IN_PHASE:
                res[inl] = r / np.sqrt(m)
                inl += 1
                beats += m
                smd += m * d[i]
                smm += m * m
    return inl, beats, smd, smm


@nb.njit(cache=True)
def _jitter(res, k):
    """Standard deviation of the residuals after 3-sigma clipping around a robust scale (1.4826 x
    median |r|): efficient on clean timers, deaf to the few in-phase-window hangers-on that extra
    check-ins leave; one degree of freedom goes to the fitted period."""
    a = np.abs(res[:k])
    scale = 1.4826 * np.median(a)
    lim = max(3.0 * scale, 1e-12)
    ss = 0.0
    used = 0
    for i in range(k):
        if a[i] <= lim:
            ss += a[i] * a[i]
            used += 1
    return np.sqrt(ss / max(used - 1, 1))


@nb.njit(cache=True)
def _periodicity(d, d_sorted, jit_ok):
    """Best (period, jitter ratio, fit, coverage, in-phase count, beats) over the candidates.  A
    candidate needs 3 in-phase intervals to be judged at all."""
    n = d.shape[0]
    res = np.empty(n, np.float64)
    best_j = -1.0
    best = (np.nan, np.nan, 0.0, 0.0, 0, 0.0)
    cands = np.empty(20, np.float64)
    nc = 0
    for qi in range(10):
        base = quantile_sorted(d_sorted, 0.05 + 0.1 * qi)
        for div in (1.0, 2.0):
            cands[nc] = base / div
            nc += 1
    cands = -np.sort(-cands[:nc])     # descending: among equal objectives the longest period wins
    tried = np.empty(nc, np.float64)
    nt = 0
    for ci in range(nc):
        p = cands[ci]
        if not (p > 0.0) or not np.isfinite(p):
            continue
        dup = False
        for k in range(nt):
            if abs(tried[k] - p) <= 0.005 * p:
                dup = True
                break
        if dup:
            continue
        tried[nt] = p
        nt += 1
        for _ in range(3):   # least-squares refinement over the in-phase intervals
            inl, beats, smd, smm = _phase(d, p, res)
            if smm <= 0.0:
                break
            q = smd / smm
            if not (q > 0.0) or abs(q - p) <= 1e-12 * p:
                break
            p = q
        inl, beats, smd, smm = _phase(d, p, res)
        if inl < 3:
            continue
        jr = _jitter(res, inl)
        fit = inl / n
        cov = inl / beats if beats > 0 else 0.0
        obj = fit * cov / (1.0 + (jr / jit_ok) ** 2)
        if obj > best_j * (1.0 + 1e-9):
            best_j = obj
            best = (p, jr, fit, cov, inl, beats)
    return best


@nb.njit(cache=True)
def _stat_score(x_sorted, min_iqr, default_mad_score):
    """RITA's statistical score: mean of 1-|Bowley skew| and (median-MAD)/median, in [0, 1]."""
    skew = bowley_skew_sorted(x_sorted, min_iqr)
    med = quantile_sorted(x_sorted, 0.5)
    mad = mad_sorted(x_sorted)
    madm = default_mad_score
    if med > 0.0:
        madm = (med - mad) / med
    if not (madm > 0.0):
        madm = 0.0
    return min(1.0, max(0.0, ((1.0 - abs(skew)) + min(1.0, madm)) / 2.0))


@nb.njit(cache=True)
def _hist_dur(t, w0, w, nb_bins):
    """RITA histogram score (max of 1-CV and bimodal fit) and duration score over ``nb_bins`` bins."""
    counts = np.zeros(nb_bins, np.int64)
    for i in range(t.shape[0]):
        k = int((t[i] - w0) / w * nb_bins)
        counts[min(max(k, 0), nb_bins - 1)] += 1
    total = counts.sum()
    mean = total / nb_bins
    sd = 0.0
    largest = 0
    bars = 0
    for k in range(nb_bins):
        sd += (counts[k] - mean) ** 2
        largest = max(largest, counts[k])
        if counts[k] > 0:
            bars += 1
    sd = np.sqrt(sd / nb_bins)
    cv_score = max(0.0, 1.0 - sd / mean) if mean > 0 else 0.0
    # bimodal fit: the two most common bar heights (bucketed by 5 % of the tallest) cover most bars
    fit = 0.0
    if bars >= max(2, int(np.ceil(BIMODAL_MIN_SHARE * nb_bins))):
        size = max(1.0, np.ceil(largest * BIMODAL_SENSITIVITY))
        buckets = np.zeros(int(largest / size) + 2, np.int64)
        for k in range(nb_bins):
            if counts[k] > 0:
                buckets[int(np.floor(counts[k] / size))] += 1
        buckets.sort()
        top = buckets[-1] + (buckets[-2] if buckets.shape[0] > 1 else 0)
        fit = min(1.0, top / max(bars - 1, 1))
    hist = max(cv_score, fit)
    # duration: coverage of the window, or the longest run of non-empty bins (wrapping)
    run = 0
    longest = 0
    for k in range(2 * nb_bins):
        if counts[k % nb_bins] > 0:
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    longest = min(longest, nb_bins)
    dur = 0.0
    if bars >= max(1, int(np.ceil(DUR_MIN_SHARE * nb_bins))):
        coverage = min(1.0, (t[t.shape[0] - 1] - t[0]) / w)
        consistency = min(1.0, longest / max(1.0, np.ceil(DUR_IDEAL_SHARE * nb_bins)))
        dur = max(coverage, consistency)
    return hist, dur


@nb.njit(cache=True)
def _score_one(t_in, b_in, w0, w1, params, out):
    n_in = t_in.shape[0]
    for k in range(NF):
        out[k] = np.nan
    out[O_N] = 0
    out[O_ELIG] = 0
    out[O_SCORE] = 0.0
    if n_in == 0:
        return
    order = np.argsort(t_in, kind="mergesort")
    merge = params[P_MERGE]
    t = np.empty(n_in, np.float64)
    b = np.zeros(n_in, np.float64)
    n = 0
    for i in range(n_in):   # check-ins closer than the merge gap are one (summed bytes)
        ti = t_in[order[i]]
        if n > 0 and (ti - t[n - 1] < merge or ti == t[n - 1]):
            b[n - 1] += b_in[order[i]]
        else:
            t[n] = ti
            b[n] = b_in[order[i]]
            n += 1
    t = t[:n]
    b = b[:n]
    out[O_N] = n
    out[O_FIRST] = t[0]
    out[O_LAST] = t[n - 1]
    bs = np.sort(b)
    out[O_MEDB] = quantile_sorted(bs, 0.5)
    if n < max(3, params[P_MIN_EVENTS]) or t[n - 1] - t[0] < params[P_MIN_SPAN]:
        return
    out[O_ELIG] = 1
    d = np.empty(n - 1, np.float64)
    for i in range(n - 1):
        d[i] = t[i + 1] - t[i]
    ds = np.sort(d)
    med = quantile_sorted(ds, 0.5)
    ts_score = _stat_score(ds, TS_MIN_IQR * med, 1.0)
    ds_score = _stat_score(bs, DS_MIN_IQR, 0.0)
    out[O_TS] = ts_score
    out[O_DS] = ds_score

    p, jr, fit, cov, inl, beats = _periodicity(d, ds, params[P_JIT_OK])
    per = 0.0
    if inl >= 3 and np.isfinite(jr):
        ok, mx = params[P_JIT_OK], params[P_JIT_MAX]
        jr_hi = jr * (1.0 + params[P_Z] / np.sqrt(inl))   # few intervals: judge the upper bound
        g = 1.0 if jr_hi <= ok else (0.0 if jr_hi >= mx else (mx - jr_hi) / (mx - ok))
        q = min(1.0, max(0.0, (fit - FIT_CHANCE) / (FIT_FULL - FIT_CHANCE)))
        per = g * q * min(1.0, cov / params[P_BEAT_FULL])
    out[O_PERIOD] = p
    out[O_JR] = jr
    out[O_JS] = jr * p
    out[O_FIT] = fit
    out[O_COV] = cov
    out[O_MISSING] = beats - inl
    out[O_INPHASE] = inl
    out[O_PER] = min(1.0, max(0.0, per))

    span = t[n - 1] - t[0]
    lo = min(w0, t[0])
    w = max(w1, t[n - 1]) - lo
    ref = p if (p > 0.0 and np.isfinite(p)) else med
    nb_bins = 0
    if ref > 0.0 and w > 0.0 and np.isfinite(w):
        nb_bins = int(min(params[P_MAX_BINS], np.floor(w / (2.0 * ref))))
    out[O_BINS] = nb_bins
    total = ts_score + ds_score
    parts = 2.0
    if nb_bins >= MIN_BINS:
        hist, dur = _hist_dur(t, lo, w, nb_bins)
        out[O_HIST] = hist
        total += hist + dur
        parts += 2.0
    else:
        dur = min(1.0, span / w) if w > 0.0 else 1.0
        total += dur
        parts += 1.0
    out[O_DUR] = dur
    rita = total / parts
    out[O_RITA] = rita
    out[O_SCORE] = min(1.0, max(0.0, out[O_PER] * rita))


@nb.njit(cache=True, nogil=True)
def score_series(t, b, offsets, w0, w1, params):
    """Score every series: ``t[offsets[k]:offsets[k+1]]`` are the check-in times (s) of series k,
    ``b`` their sizes; [w0, w1] is the observation window (s).  Returns an (n, NF) array (NaN where a
    value could not be computed)."""
    ns = offsets.shape[0] - 1
    out = np.empty((max(ns, 0), NF), np.float64)
    for k in range(ns):
        _score_one(t[offsets[k]:offsets[k + 1]], b[offsets[k]:offsets[k + 1]], w0, w1, params, out[k])
    return out


def make_params(min_events=None, merge_s=None, jitter_ok_ratio=None, jitter_max_ratio=None, min_beat_ratio=None,
                min_span_s=None, max_bins=24, z=UPPER_Z) -> np.ndarray:
    """The kernel's parameter vector; unset values come from ``[beacon]`` defaults."""
    d = BeaconConfig()

    def pick(v, default):
        return default if v is None else v

    ok = pick(jitter_ok_ratio, d.jitter_ok_ratio)
    p = np.zeros(N_PARAMS, np.float64)
    p[P_MERGE] = pick(merge_s, d.burst_gap_s)
    p[P_MIN_EVENTS] = pick(min_events, d.min_connections)
    p[P_JIT_OK] = max(ok, 1e-9)
    p[P_JIT_MAX] = max(pick(jitter_max_ratio, d.jitter_max_ratio), p[P_JIT_OK] + 1e-9)
    p[P_BEAT_FULL] = max(pick(min_beat_ratio, d.min_beat_ratio), 1e-9)
    p[P_MAX_BINS] = max_bins
    p[P_MIN_SPAN] = pick(min_span_s, d.min_span_s)
    p[P_Z] = z
    return p


def score_times(times_s, sizes=None, window=None, **params) -> dict:
    """Score one series of check-in times (seconds, any order) and sizes; ``window`` is the
    (start, end) observation window in seconds (default: the series' own span).  Returns the
    ``OUT`` values by name (None where not computable).  Non-finite times are dropped."""
    t = np.asarray(times_s, np.float64).ravel()
    b = np.zeros(len(t)) if sizes is None else np.asarray(sizes, np.float64).ravel()
    keep = np.isfinite(t) & np.isfinite(b)
    t, b = t[keep], np.maximum(b[keep], 0.0)
    if window is None:
        window = (float(t.min()), float(t.max())) if len(t) else (0.0, 0.0)
    row = score_series(t, b, np.array([0, len(t)], np.int64), float(window[0]), float(window[1]),
                       make_params(**params))[0]
    return {name: (None if np.isnan(v) else float(v)) for name, v in zip(OUT, row)}
