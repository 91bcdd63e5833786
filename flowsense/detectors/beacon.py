"""Beaconing (AN0597; T1071): a host checking in with a server on a timer.

Key: (orig, resp, resp_p, proto) over TCP and UDP flows.  Each key is judged on up to two kinds
of check-in series (see ``flowsense.features.beacon`` for the maths):

* **connections** — the starts of the key's flows (RITA's view; the only one at flows grade).
  Starts closer than ``burst_gap_s`` are one check-in (a browser opens six at once), continuation
  records of one long flow (split by the active timeout) are not starts, and the size of a
  check-in is the originator's IP bytes (RITA's ``orig_ip_bytes``).
* **session** — at packet grade, the bursts inside one flow that the originator opened after at
  least ``burst_gap_s`` of silence, sized by the originator's payload bytes in the burst.  This is
  how C2 that keeps one connection (Covenant and Empire HTTP polling over keep-alive, Merlin over
  one QUIC/UDP flow, a RAT heartbeat on its control session) is seen at all; flow starts alone
  never show it.  Bursts the responder opened (server pushes) are left out.

The key's finding is its best-scoring series (the other is summarised in the evidence); one alert
per key, identifier ``beacon:<src>-<dst>-<proto>/<port>``.  Score = periodicity x RITA v5 mean
of the timestamp, size, histogram and duration subscores: the timer's regularity (jitter of the
phase residuals, beats seen, intervals in phase) and RITA's profile (regular intervals and sizes,
spread over the window, lasting) must both be high.  Only findings at or above
``[alerts].min_score`` are returned (deny_fallback counts any beacon finding on a channel as
evidence, so a score-0 "finding" for every busy pair would mislead it).

Scope and damping:
* ICMP is out of scope (``icmp_tunnel`` judges echo channels; monitoring pings are periodic by
  design and keyed per echo id).  Multicast and broadcast destinations (SSDP, mDNS, DHCP
  discovery, NetBIOS announcements to an internal x.x.x.255) cannot be C2 and are skipped.
  Allowlisted hosts are skipped.
* A series must last ``min_span_s`` (30 s) and hold ``min_connections`` (6) check-ins: scanners,
  retry loops and brute force repeat on a seconds timer for seconds (nmap -sT retrying one port
  six times in 5 s is perfectly periodic).
* Infrastructure timers are damped, not excluded: NTP on UDP/123, DHCP on UDP/67/547, DNS on 53 to
  an internal or listed public resolver — each only when the payload really is that protocol
  (``features.app``), so C2 on port 53/123 that does not speak it is scored in full.  DNS to any
  other server is scored in full too (malware beacons over direct DNS).  Damping multiplies by
  ``infrastructure_factor`` (0.45: even a perfect timer stays under the default alert floor) and is
  said in the evidence.  DNS beacons *through* a resolver hide in the resolver's aggregate: that is
  the (client, registered domain) key, not computed here (see dns_tunnel).
* ``allowlist.domains`` does not apply yet: without a (client, domain) key there is no domain to
  test.

Limits: RITA's histogram and duration subscores are relative to the observation window (the whole
run), as in RITA: a beacon that runs for a tenth of a long capture scores about half what it scores
alone (analyze the relevant slice, or lower ``[alerts].min_score``, to hunt short-lived ones);
a keep-alive that carries no payload (TCP keep-alive probes, 0-1 byte) is not a check-in;
a series needs ``min_connections`` check-ins (6 by default, RITA uses 4); timers jittered by more
than ~20 % are not told apart from human or application noise by timing alone (by design: the
benign update checkers this must stay quiet on look exactly like that).
"""

from __future__ import annotations

import numpy as np

from flowsense.alerts import Alert, iso
from flowsense.features.app import APPS, DHCP, DNS, NTP
from flowsense.features.beacon import (
    IN_PHASE,
    MAX_RUN,
    O_BINS,
    O_COV,
    O_DS,
    O_DUR,
    O_ELIG,
    O_FIRST,
    O_FIT,
    O_HIST,
    O_INPHASE,
    O_JR,
    O_JS,
    O_LAST,
    O_MEDB,
    O_MISSING,
    O_N,
    O_PER,
    O_PERIOD,
    O_RITA,
    O_SCORE,
    O_TS,
    BurstTable,
    assign_events,
    flow_keys,
    make_params,
    score_series,
)
from flowsense.flows.table import END_ACTIVE
from flowsense.nets import AddressSet, addr_str

NAME = "beacon"
NOT_UNICAST = AddressSet(("224.0.0.0/4", "255.255.255.255/32", "ff00::/8"))
IPV4 = AddressSet(("0.0.0.0/0",))
CONNECTIONS, SESSION = 0, 1
SERIES = ("connections", "session")


def _broadcast(f: np.ndarray, internal: AddressSet) -> np.ndarray:
    """Multicast, limited broadcast, or an internal IPv4 address ending in .255 (taken as a subnet
    broadcast: NetBIOS and browser announcements go there on a timer)."""
    hi, lo = f["resp_hi"], f["resp_lo"]
    out = NOT_UNICAST.contains(hi, lo)
    out |= IPV4.contains(hi, lo) & ((lo & np.uint64(0xFF)) == 0xFF) & internal.contains(hi, lo)
    return out


class Features:
    """In-session bursts per conversation (one kernel call per batch)."""

    def __init__(self, context):
        cfg = context.config.beacon
        self.table = BurstTable(cfg.table_capacity, cfg.burst_gap_s)

    def update(self, batch) -> None:
        self.table.update(batch.packets)

    def stats(self) -> dict:
        return self.table.stats()


def _r(x, nd=4):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _keys(f: np.ndarray) -> np.ndarray:
    """Key id per flow for (orig, resp, resp_p, proto), numbered in key order."""
    cols = (f["proto"], f["resp_p"], f["resp_lo"], f["resp_hi"], f["orig_lo"], f["orig_hi"])
    order = np.lexsort(cols)
    new = np.ones(len(f), np.bool_)
    for c in cols:
        s = c[order]
        new[1:] &= s[1:] == s[:-1]
    new = ~new
    new[0] = True
    ids = np.empty(len(f), np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _infrastructure(f: np.ndarray, internal: AddressSet, resolvers: AddressSet) -> np.ndarray:
    app, port, udp = f["app"], f["resp_p"], f["proto"] == 17
    ntp = (app == NTP) & udp & (port == 123)
    dhcp = (app == DHCP) & udp & np.isin(port, (67, 547))
    to_resolver = internal.contains(f["resp_hi"], f["resp_lo"])
    if resolvers:
        to_resolver |= resolvers.contains(f["resp_hi"], f["resp_lo"])
    dns = (app == DNS) & (port == 53) & to_resolver
    reason = np.full(len(f), "", object)
    reason[ntp] = "NTP on UDP/123"
    reason[dhcp] = "DHCP on its server port"
    reason[dns] = "DNS on port 53 to an internal or well-known resolver"
    return reason


def _groups(rows, group, min_n, t, b, kind, key, with_flow):
    """Series of the runs of equal ``group`` values (rows sorted by group, then time) that hold at
    least ``min_n`` rows: (times, sizes, counts, kinds, keys, flows), no Python loop per group."""
    empty = (np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
             np.zeros(0, np.int64))
    if not len(rows):
        return empty
    first = np.ones(len(rows), np.bool_)
    first[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(rows)))
    keep = counts >= min_n
    if not keep.any():
        return empty
    take = np.repeat(keep, counts)
    heads = rows[starts[keep]]
    flows = heads if with_flow else np.full(len(heads), -1, np.int64)
    return (t[take], b[take].astype(np.float64), counts[keep].astype(np.int64),
            np.full(len(heads), kind, np.int64), key[heads].astype(np.int64), flows.astype(np.int64))


def _series_summary(row) -> dict:
    return {"check_ins": int(row[O_N]), "score": _r(row[O_SCORE], 3), "period_s": _r(row[O_PERIOD], 3),
            "jitter_ratio": _r(row[O_JR])}


def detect(ev) -> list[Alert]:
    f = ev.flows
    if not len(f):
        return []
    cfg, ctx = ev.config.beacon, ev.context
    origin = int(f["ts"].min())
    w1 = (int(f["last_ts"].max()) - origin) / 1e9
    sel = np.isin(f["proto"], (6, 17)) & ~_broadcast(f, ctx.internal)
    if ctx.allow_hosts:
        sel &= ~ctx.allow_hosts.contains(f["orig_hi"], f["orig_lo"]) & \
            ~ctx.allow_hosts.contains(f["resp_hi"], f["resp_lo"])
    fl = f[sel]
    if not len(fl):
        return []
    key = _keys(fl)
    h, oside = flow_keys(fl["orig_hi"], fl["orig_lo"], fl["orig_p"], fl["resp_hi"], fl["resp_lo"], fl["resp_p"],
                         fl["proto"])
    # flows in conversation order; a record continuing the one before it is no connection start
    corder = np.lexsort((fl["ts"], h))
    hs, ts_sorted = h[corder], fl["ts"][corder]
    same = np.zeros(len(fl), np.bool_)
    same[1:] = (hs[1:] == hs[:-1]) & (oside[corder][1:] == oside[corder][:-1])
    prev = np.roll(corder, 1)
    if ev.grade == "packets":
        cont_sorted = same & (fl["end_reason"][prev] == END_ACTIVE)
    else:
        cont_sorted = same & (fl["ts"][corder] - fl["last_ts"][prev] <= int(cfg.burst_gap_s * 1e9))
    start = np.ones(len(fl), np.bool_)
    start[corder[cont_sorted]] = False

    min_n = cfg.min_connections
    # connection series, per key: flow starts in (key, time) order
    idx = np.flatnonzero(start)
    idx = idx[np.lexsort((fl["ts"][idx], key[idx]))]
    parts = [_groups(idx, key[idx], min_n, (fl["ts"][idx] - origin) / 1e9, fl["orig_bytes"][idx], CONNECTIONS,
                     key, with_flow=False)]
    # session series, per flow (packet grade): the bursts its originator opened
    feats = ev.features.get(NAME) if ev.features else None
    burst_stats = None
    if feats is not None:
        events = feats.table.events()
        burst_stats = feats.table.stats()
        if len(events):
            at = assign_events(events["hash"], events["ts"], hs, ts_sorted)
            ok = at >= 0
            fidx = np.where(ok, corder[np.maximum(at, 0)], -1)
            ok &= events["side"] == oside[np.maximum(fidx, 0)]
            events, fidx = events[ok], fidx[ok]
            order = np.lexsort((events["ts"], fidx))
            events, fidx = events[order], fidx[order]
            parts.append(_groups(fidx, fidx, min_n, (events["ts"] - origin) / 1e9, events["bytes"], SESSION, key,
                                 with_flow=True))
    times = np.concatenate([p[0] for p in parts])
    if not len(times):
        return []
    sizes = np.concatenate([p[1] for p in parts])
    counts = np.concatenate([p[2] for p in parts])
    s_kind = np.concatenate([p[3] for p in parts])
    s_key = np.concatenate([p[4] for p in parts])
    s_flow = np.concatenate([p[5] for p in parts])
    offsets = np.zeros(len(counts) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    params = make_params(min_events=min_n, merge_s=cfg.burst_gap_s, jitter_ok_ratio=cfg.jitter_ok_ratio,
                         jitter_max_ratio=cfg.jitter_max_ratio, min_beat_ratio=cfg.min_beat_ratio,
                         min_span_s=cfg.min_span_s)
    res = score_series(times, sizes, offsets, 0.0, w1, params)

    infra = _infrastructure(fl, ctx.internal, AddressSet(cfg.resolvers))
    floor = ev.config.alerts.min_score
    thresholds = {"min_connections": min_n, "min_span_s": cfg.min_span_s, "burst_gap_s": cfg.burst_gap_s,
                  "jitter_ok_ratio": cfg.jitter_ok_ratio, "jitter_max_ratio": cfg.jitter_max_ratio,
                  "min_beat_ratio": cfg.min_beat_ratio, "in_phase_tolerance": IN_PHASE, "gap_periods": MAX_RUN,
                  "alert_floor": floor, "observation_window_s": round(w1, 3)}
    alerts = []
    # only keys with a series that can reach the floor (the damping factor is at most 1)
    for k in np.unique(s_key[res[:, O_SCORE] >= floor]).tolist():
        mine = np.flatnonzero((s_key == k) & (res[:, O_ELIG] > 0))
        if not len(mine):
            continue
        # best series: highest score, then connections before sessions, then earliest flow
        best = mine[np.lexsort((s_flow[mine], s_kind[mine], -res[mine, O_SCORE]))[0]]
        row = res[best]
        members = np.flatnonzero(key == k)
        r0 = fl[members[0]]
        src, dst = (int(r0["orig_hi"]), int(r0["orig_lo"])), (int(r0["resp_hi"]), int(r0["resp_lo"]))
        proto, port = int(r0["proto"]), int(r0["resp_p"])
        domain = ev.names.domain_of(src, dst)
        if domain and ctx.domain_allowed(domain):
            continue
        transport = "tcp" if proto == 6 else "udp"
        apps, app_counts = np.unique(fl["app"][members], return_counts=True)
        app = APPS[int(apps[np.argmax(app_counts)])]
        reasons, reason_counts = np.unique(infra[members], return_counts=True)
        reason = str(reasons[np.argmax(reason_counts)])
        factor = min(1.0, cfg.infrastructure_factor) if reason else 1.0
        score = float(row[O_SCORE]) * factor
        if score < floor:
            continue
        kind = int(s_kind[best])
        evidence = {
            "series": SERIES[kind],
            "connections": int(start[members].sum()),
            "check_ins": int(row[O_N]),
            "period_s": _r(row[O_PERIOD], 3),
            "jitter_s": _r(row[O_JS], 3),
            "jitter_ratio": _r(row[O_JR]),
            "in_phase": int(row[O_INPHASE]) if np.isfinite(row[O_INPHASE]) else None,
            "fit": _r(row[O_FIT], 3),
            "beat_coverage": _r(row[O_COV], 3),
            "missing_beats": int(row[O_MISSING]) if np.isfinite(row[O_MISSING]) else None,
            "subscores": {name: _r(row[col], 3) for name, col in
                          (("timestamp", O_TS), ("size", O_DS), ("histogram", O_HIST), ("duration", O_DUR),
                           ("periodicity", O_PER)) if np.isfinite(row[col])},
            "rita_score": _r(row[O_RITA], 3),
            "median_bytes": _r(row[O_MEDB], 1),
            "bytes_measure": ("originator IP bytes per connection" if kind == CONNECTIONS
                              else "originator payload bytes per burst"),
            "first_start": iso(origin + round(float(row[O_FIRST]) * 1e9)),
            "last_start": iso(origin + round(float(row[O_LAST]) * 1e9)),
            "app": app,
            "domain": domain,
            "histogram_bins": int(row[O_BINS]) if np.isfinite(row[O_BINS]) else None,
            "thresholds": thresholds,
            "score_formula": "periodicity x mean(timestamp, size, histogram, duration)"
                             + (" x infrastructure_factor" if reason else ""),
        }
        if reason:
            evidence["damped"] = {"factor": factor, "reason": reason, "undamped_score": _r(row[O_SCORE], 3)}
        if kind == SESSION:
            fr = fl[s_flow[best]]
            evidence["session"] = {"orig_port": int(fr["orig_p"]), "flow_start": iso(int(fr["ts"])),
                                   "flow_end": iso(int(fr["last_ts"]))}
        others = [i for i in mine.tolist() if i != best]
        if others:
            other = max(others, key=lambda i: (res[i, O_SCORE], -s_kind[i]))
            evidence["other_series"] = {"series": SERIES[int(s_kind[other])], **_series_summary(res[other])}
        if burst_stats is not None and burst_stats.get("evicted"):
            evidence["burst_table_evictions"] = burst_stats["evicted"]
        period = row[O_PERIOD]
        name = None
        if np.isfinite(period):
            name = f"Beaconing every {period:.3g} s ({'one session' if kind == SESSION else 'new connections'})"
        alerts.append(Alert(
            rule=NAME, start_ns=origin + round(float(row[O_FIRST]) * 1e9),
            end_ns=origin + round(float(row[O_LAST]) * 1e9), src=src, dst=dst, dport=port, transport=transport,
            sport=int(fl[s_flow[best]]["orig_p"]) if kind == SESSION else None,
            score=min(1.0, max(0.0, score)), evidence=evidence, name=name,
            identifier=f"beacon:{addr_str(*src)}-{addr_str(*dst)}-{transport}/{port}",
            grade="packets" if kind == SESSION else "flows"))
    alerts += _domain_beacons(ev, fl, start, origin, w1, params, floor, thresholds, alerts)
    return alerts


def _domain_beacons(ev, fl, start, origin, w1, params, floor, thresholds, done) -> list[Alert]:
    """Series of connection starts per (orig, registered domain) over every address the client
    was given for it (DNS answers): a C2 behind rotating addresses beacons to one domain, not one
    address.  Reported only when the series spans several addresses and no per-address beacon of
    that host already names the domain."""
    dom = ev.names.lookup(fl["orig_hi"], fl["orig_lo"], fl["resp_hi"], fl["resp_lo"])
    idx = np.flatnonzero(start & (dom >= 0))
    if not len(idx):
        return []
    idx = idx[np.lexsort((fl["ts"][idx], dom[idx], fl["orig_lo"][idx], fl["orig_hi"][idx]))]
    new = np.zeros(len(idx), np.bool_)
    for col in (dom[idx], fl["orig_lo"][idx], fl["orig_hi"][idx]):
        new[1:] |= col[1:] != col[:-1]
    new[0] = True
    gid = np.zeros(len(fl), np.int64)
    gid[idx] = np.cumsum(new) - 1
    bounds = np.searchsorted(gid[idx], np.arange(int(gid[idx][-1]) + 2))
    times, sizes, counts, _kinds, keys, _flows = _groups(idx, gid[idx], ev.config.beacon.min_connections,
                                                         (fl["ts"][idx] - origin) / 1e9, fl["orig_bytes"][idx],
                                                         CONNECTIONS, gid, with_flow=False)
    if not len(counts):
        return []
    offsets = np.zeros(len(counts) + 1, np.int64)
    offsets[1:] = np.cumsum(counts)
    res = score_series(times, sizes, offsets, 0.0, w1, params)
    named = {(a.src, a.evidence.get("domain")) for a in done}
    out = []
    for g, row in zip(keys.tolist(), res):
        if row[O_SCORE] < floor:
            continue
        members = idx[bounds[g]:bounds[g + 1]]
        r0 = fl[members[0]]
        src = (int(r0["orig_hi"]), int(r0["orig_lo"]))
        domain = ev.names.domains[int(dom[members[0]])]
        addresses = np.unique(fl[members][["resp_hi", "resp_lo"]])
        if row[O_ELIG] <= 0 or len(addresses) < 2 or (src, domain) in named \
                or ev.context.domain_allowed(domain):
            continue
        ports, port_counts = np.unique(fl["resp_p"][members], return_counts=True)
        port = int(ports[np.argmax(port_counts)])
        transport = "tcp" if int(r0["proto"]) == 6 else "udp"
        evidence = {
            "series": "connections to a registered domain", "domain": domain,
            "addresses": len(addresses), "sample_addresses": [addr_str(int(a[0]), int(a[1])) for a in addresses[:5]],
            "check_ins": int(row[O_N]), "period_s": _r(row[O_PERIOD], 3), "jitter_s": _r(row[O_JS], 3),
            "jitter_ratio": _r(row[O_JR]),
            "subscores": {name: _r(row[col], 3) for name, col in
                          (("timestamp", O_TS), ("size", O_DS), ("histogram", O_HIST), ("duration", O_DUR),
                           ("periodicity", O_PER)) if np.isfinite(row[col])},
            "first_start": iso(origin + round(float(row[O_FIRST]) * 1e9)),
            "last_start": iso(origin + round(float(row[O_LAST]) * 1e9)),
            "thresholds": thresholds,
        }
        out.append(Alert(rule=NAME, start_ns=origin + round(float(row[O_FIRST]) * 1e9),
                         end_ns=origin + round(float(row[O_LAST]) * 1e9), src=src, dst=None, dport=port,
                         transport=transport, score=min(1.0, float(row[O_SCORE])), evidence=evidence,
                         name=f"Beaconing to {domain} every {row[O_PERIOD]:.3g} s across {len(addresses)} addresses",
                         identifier=f"beacon:{addr_str(*src)}-domain:{domain}", grade="flows"))
    return out
