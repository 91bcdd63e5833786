"""Sustained egress, proxy-like relaying and scanning (AN0081).

Rules:
  scan              T1046  fan-out of unanswered/empty attempts per source and window, invalid TCP
                           openers, scanner fingerprints from packets, scanner HTTP requests
  egress_sustained  T1048  long or high-volume, upload-heavy traffic to one outside peer
  egress_proxy      T1090  a host whose inbound connections are mirrored by outbound ones with the
                           same payload both ways, within seconds, across several peers
T1496 (Resource Hijacking) is added when the sustained session or the relays run on mining-pool ports.

A probe is a flow from its originator that exchanged no payload (TCP) or got no reply (UDP, ICMP
echo, other protocols); it failed when no SYN-ACK / no reply came back.  Not probes: ICMP errors
(they come from the target), multicast/broadcast targets, UDP traceroute (ports 33434-33534).
One-way records (NetFlow) are stitched into conversations first; their payload is estimated as IP
bytes less 80 per packet, and the evidence says so.

Scores (all in [0, 1], multiplied by the business-hours weight ``1 + (off_hours_weight - 1) *
off_hours_fraction`` and capped at 1):

scan, per source and window (``[egress].scan_window_s``, on an aligned grid, a half-shifted grid and
the whole run with thresholds x ``scan_slow_factor``):
  r        = max(vertical / scan_ports, horizontal / scan_hosts, per-minute pairs / scan_ports_per_minute,
                 hosts / (4 * scan_hosts))            (Zeek scan.zeek 15 ports / 25 hosts in 5 min;
                                                       Elastic 50 ports a minute and 100-host sweep)
  fanout   = r^2 / (1 + r^2) * (0.5 + 0.5 * failure ratio)     (0.5 at a threshold when all failed)
  odd      = (n/3)^2 / (1 + (n/3)^2) for n (host, port) pairs opened with NULL/FIN/Xmas/SYN+FIN (at
             packet grade n is capped by the source's such packets with a whole, unfragmented header)
  print    = strongest packet fingerprint of the source (masscan/zmap IP id 0.9, nmap -O probe set
             0.85, nmap -sS/-sF/-sN/-sX probe shape 0.7, SYN without options 0.5) x min(1, probes / 5)
  requests = nmap NSE / scanner HTTP request paths: 0.85 with nmap's own 404 probe among >= 2, 0.7 for
             >= 2 others, 0.6 for the nmap probe alone
  score    = 1 - (1 - fanout)(1 - odd)(1 - print)(1 - requests)
Hot windows of one source that overlap are one alert (an episode); the whole-run window alerts only
for a source with no hot window of its own (a slow scan).

egress_sustained, per (orig, resp) pair with the responder outside ``[networks].internal``:
  share    = orig bytes / (orig + resp bytes); upload-heavy a = clip((share - 0.5) / 0.3, 0, 1)
  volume   = v^2 / (1 + v^2) * (0.4 + 0.6 a), v = upload / upload_mb
  duration = RITA bucket of the covered time (1/4/8/12 x long_connection_h -> 0.6/0.75/0.85/0.95,
             below: 0.6 (t / long)^2) x (0.5 + 0.5 a), x 0.6 more when the mean upload rate is below
             sustained_rate_bytes_s (an idle long session); on a mining port at least bucket x 0.6
  score    = 1 - (1 - volume)(1 - duration)

egress_proxy, per relaying host: r = relays / proxy_min_relays,
  score = r^2 / (1 + r^2) * (0.6 + 0.4 * relayed share of its inbound connections) * min(1, peers / 4)
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np

from flowsense.alerts import Alert, iso
from flowsense.decode.packets import PROTO_NAMES
from flowsense.features import egress as fx
from flowsense.features.calendar import BusinessCalendar
from flowsense.nets import addr_str

NAME = "egress"
NS = 1_000_000_000
SWEEP_FACTOR = 4          # hosts on any port: 4 x scan_hosts (= Elastic's 100-host network sweep)
PRINT_GATE_PROBES = 5     # probe flows in a window for a packet fingerprint to count fully
ODD_K = 3                 # distinct (host, port) pairs opened with NULL/FIN/Xmas/SYN+FIN that score 0.5
PRINTS = {"masscan": 0.9, "zmap": 0.9, "nmap_os": 0.85, "nmap_probes": 0.7, "syn_no_options": 0.5}
NMAP_OS_MIN_KINDS = 4


class Features:
    """Packet-grade scanner fingerprints, per source (see flowsense.features.egress.ScanPrints)."""

    def __init__(self, context):
        self.prints = fx.ScanPrints(context.config.egress.scan_sources_capacity)

    def update(self, batch) -> None:
        self.prints.update(batch.packets, batch.blob)


def _r2(r):
    r = np.asarray(r, np.float64)
    return r * r / (1.0 + r * r)


def _proto(p: int) -> str:
    return PROTO_NAMES.get(int(p), str(int(p)))


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(int(ns) // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- scan --------------------------------------------------------------------------------------------

def fingerprint_score(c: np.ndarray | None, min_packets: int) -> tuple[float, dict]:
    """Strongest tool fingerprint in one source's packet counters (``ScanPrints`` row), with the
    evidence of every fingerprint seen."""
    if c is None:
        return 0.0, {}
    found, score = {}, 0.0
    syn = int(c[fx.C_SYN])
    if c[fx.C_MASSCAN] >= min_packets and c[fx.C_MASSCAN] * 2 >= syn:
        found["masscan"] = {"ip_id_matches": int(c[fx.C_MASSCAN]), "syns": syn,
                            "rule": "IPv4 id == (dst ip ^ dst port ^ tcp seq) & 0xFFFF"}
    base = int(c[fx.C_ZMAP_BASE])
    if c[fx.C_ZMAP] >= min_packets and c[fx.C_ZMAP] * 2 >= base:
        found["zmap"] = {"ip_id_54321": int(c[fx.C_ZMAP]), "probes": base}
    kinds = fx.os_probe_kinds(int(c[fx.C_OS_BITS]))
    if len(kinds) >= NMAP_OS_MIN_KINDS:
        found["nmap_os"] = {"probe_kinds": kinds}
    if (c[fx.C_NMAP_SYN] >= min_packets and c[fx.C_NMAP_SYN] * 2 >= syn) or c[fx.C_NMAP_ODD] >= 3:
        found["nmap_probes"] = {"syn_win_1024_4096_mss_only": int(c[fx.C_NMAP_SYN]), "syns": syn,
                                "fin_null_xmas_win_1024_4096": int(c[fx.C_NMAP_ODD])}
    if c[fx.C_SYN_NOOPT] >= min_packets and c[fx.C_SYN_NOOPT] * 2 >= syn:
        found["syn_no_options"] = {"syns_without_tcp_options": int(c[fx.C_SYN_NOOPT]), "syns": syn}
    for name in found:
        score = max(score, PRINTS[name])
    return score, found


def fingerprint_scores(c: np.ndarray, min_packets: int) -> np.ndarray:
    """``fingerprint_score`` for every row of a counter matrix at once (the score only)."""
    syn, base = c[:, fx.C_SYN], c[:, fx.C_ZMAP_BASE]
    bits = c[:, fx.C_OS_BITS]
    kinds = sum((bits >> b) & 1 for b in range(len(fx.OS_PROBE_NAMES)))
    tests = [
        (c[:, fx.C_MASSCAN] >= min_packets) & (c[:, fx.C_MASSCAN] * 2 >= syn), PRINTS["masscan"],
        (c[:, fx.C_ZMAP] >= min_packets) & (c[:, fx.C_ZMAP] * 2 >= base), PRINTS["zmap"],
        kinds >= NMAP_OS_MIN_KINDS, PRINTS["nmap_os"],
        ((c[:, fx.C_NMAP_SYN] >= min_packets) & (c[:, fx.C_NMAP_SYN] * 2 >= syn)) | (c[:, fx.C_NMAP_ODD] >= 3),
        PRINTS["nmap_probes"],
        (c[:, fx.C_SYN_NOOPT] >= min_packets) & (c[:, fx.C_SYN_NOOPT] * 2 >= syn), PRINTS["syn_no_options"],
    ]
    out = np.zeros(len(c))
    for hit, value in zip(tests[::2], tests[1::2]):
        out = np.where(hit, np.maximum(out, value), out)
    return out


def scan_scores(w: np.ndarray, prints: np.ndarray, odd_pairs: np.ndarray, cfg) -> tuple[np.ndarray, dict]:
    """Score every window row (``fx.WINDOW``) before the calendar weight.  ``prints`` is each row's
    source fingerprint score (0 when none), ``odd_pairs`` its count of invalid-opener (host, port)
    pairs (capped by the packet count at packet grade).  Returns (score, subscores by name)."""
    slow = np.where(w["grid"] == 2, cfg.scan_slow_factor, 1.0)
    ratios = np.stack([w["vertical"] / (cfg.scan_ports * slow), w["horizontal"] / (cfg.scan_hosts * slow),
                       w["per_minute"] / (cfg.scan_ports_per_minute * slow),
                       w["hosts"] / (SWEEP_FACTOR * cfg.scan_hosts * slow)])
    r = ratios.max(axis=0)
    fail = w["failed"] / np.maximum(w["flows"], 1)
    fan = _r2(r) * (0.5 + 0.5 * fail)
    odd = _r2(odd_pairs / ODD_K)
    prn = prints * np.minimum(1.0, w["probes"] / PRINT_GATE_PROBES)
    req = np.where((w["scanner_heads"] >= 2) & (w["nmap_head"] > 0), 0.85,
                   np.where(w["scanner_heads"] >= 2, 0.7, np.where(w["nmap_head"] > 0, 0.6, 0.0)))
    score = 1.0 - (1.0 - fan) * (1.0 - odd) * (1.0 - prn) * (1.0 - req)
    return score, {"fanout": fan, "odd_openers": odd, "fingerprint": prn, "scanner_requests": req,
                   "ratios": ratios, "failure_ratio": fail}


KINDS = ("vertical", "horizontal", "fast", "sweep")


def _scan_alerts(ev, cal: BusinessCalendar) -> list[Alert]:
    cfg = ev.config.egress
    floor = ev.config.alerts.min_score
    window_ns = int(cfg.scan_window_s * NS)
    w = fx.scan_windows(ev.flows, window_ns, ev.payload_known)
    if len(w) == 0:
        return []
    feats = ev.features.get(NAME)
    summary = feats.prints.summary() if feats is not None else None
    min_packets = cfg.scan_fingerprint_packets
    prints = np.zeros(len(w))
    odd_pairs = w["odd"].astype(np.float64)
    idx = np.full(len(w), -1)
    if summary is not None:
        # packet grade: invalid openers must show in packets with a whole TCP header (not a cut or
        # fragmented one, which a flow cannot tell apart)
        odd_pairs = np.zeros(len(w))
        if len(summary):
            idx = _lookup(summary["hi"], summary["lo"], w["src_hi"], w["src_lo"])
            prints = np.where(idx >= 0, fingerprint_scores(summary["c"], min_packets)[np.maximum(idx, 0)], 0.0)
            odd_pkts = np.where(idx >= 0, summary["c"][np.maximum(idx, 0), fx.C_ODD], 0)
            odd_pairs = np.minimum(w["odd"], odd_pkts).astype(np.float64)
    raw, subs = scan_scores(w, prints, odd_pairs, cfg)
    subs["odd_pairs"] = odd_pairs
    # the calendar only raises a score, so windows that cannot reach the floor are dropped first
    hot = np.flatnonzero(raw * cal.weight_max >= floor)
    if len(hot) == 0:
        return []
    off = cal.outside_fraction(w["first_ts"][hot], w["last_ts"][hot])
    score = np.zeros(len(w))
    off_all = np.zeros(len(w))
    score[hot] = np.minimum(1.0, raw[hot] * cal.weight(off))
    off_all[hot] = off
    hot = hot[score[hot] >= floor]
    cand = _sorted_candidates(ev.flows)
    alerts = []
    srcs = {}
    for i in hot:
        srcs.setdefault((int(w["src_hi"][i]), int(w["src_lo"][i])), []).append(int(i))
    for rows in srcs.values():
        windowed = [i for i in rows if w["grid"][i] != 2]
        rows = windowed or rows
        rows.sort(key=lambda i: (int(w["start"][i]), int(w["grid"][i])))
        episode, end = [], None
        for i in rows + [None]:
            if i is not None and (end is None or int(w["start"][i]) < end):
                episode.append(i)
                end = max(end or 0, int(w["end"][i]))
                continue
            if episode:
                alerts.append(_scan_alert(ev, w, episode, score, subs, off_all, idx, cal, cfg, cand, summary))
            episode, end = ([i], int(w["end"][i])) if i is not None else ([], None)
    return alerts


def _lookup(keys_hi, keys_lo, hi, lo) -> np.ndarray:
    """Index of each (hi, lo) among the (keys_hi, keys_lo) rows, -1 when absent."""
    nk = len(keys_hi)
    ids, _ = fx.dense_ids(np.concatenate([keys_hi, hi]), np.concatenate([keys_lo, lo]))
    pos = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, np.int64)
    pos[ids[:nk]] = np.arange(nk)
    return pos[ids[nk:]]


def _sorted_candidates(flows: np.ndarray) -> np.ndarray:
    f = flows[fx.scan_candidates(flows)]
    return f[np.lexsort((f["ts"], f["orig_lo"], f["orig_hi"]))]


def _source_slice(cand: np.ndarray, hi: int, lo: int) -> np.ndarray:
    a = np.searchsorted(cand["orig_hi"], np.uint64(hi), "left")
    b = np.searchsorted(cand["orig_hi"], np.uint64(hi), "right")
    sub = cand["orig_lo"][a:b]
    c = np.searchsorted(sub, np.uint64(lo), "left")
    d = np.searchsorted(sub, np.uint64(lo), "right")
    return cand[a + c:a + d]


def _scan_alert(ev, w, episode, score, subs, off, idx, cal, cfg, cand, summary) -> Alert:
    best = max(episode, key=lambda i: (score[i], -int(w["grid"][i]), -int(w["start"][i])))
    r = w[best]
    src = (int(r["src_hi"]), int(r["src_lo"]))
    ratios = subs["ratios"][:, best]
    kind = KINDS[int(np.argmax(ratios))]
    if r["hosts"] == 1:
        kind = "vertical"
    if ratios.max() < 0.5:
        kind = "probe" if r["hosts"] != 1 else "vertical"
    dst = None
    if kind == "vertical" and (r["vertical_dst_hi"] or r["vertical_dst_lo"]):
        dst = (int(r["vertical_dst_hi"]), int(r["vertical_dst_lo"]))
    start = min(int(w["first_ts"][i]) for i in episode)
    end = max(int(w["last_ts"][i]) for i in episode)
    slow = cfg.scan_slow_factor if r["grid"] == 2 else 1.0
    # evidence details from the best window's own flows
    rows = _source_slice(cand, *src)
    within = rows["ts"] < r["end"] if r["grid"] != 2 else rows["ts"] <= r["end"]
    rows = rows[(rows["ts"] >= r["start"]) & within]
    probe, _, odd = fx.probe_flags(rows, ev.payload_known)
    ports = Counter(f"{_proto(p)}/{int(q)}" if p in fx.PORTED else _proto(p)
                    for p, q in zip(rows["proto"][probe].tolist(), rows["resp_p"][probe].tolist()))
    protos = Counter(rows["proto"][probe].tolist() if probe.any() else rows["proto"].tolist())
    top_proto, top_n = protos.most_common(1)[0] if protos else (None, 0)
    transport = _proto(top_proto) if top_proto is not None and top_n * 2 >= sum(protos.values()) else None
    odd_kinds = Counter(_flag_name(int(x)) for x in rows["orig_flags"][odd].tolist())
    heads = sorted({fx.SCANNER_HEADS[h] for h in rows["orig_head"].tolist() if h in fx.SCANNER_HEADS})
    ev_subs = {k: round(float(subs[k][best]), 3) for k in ("fanout", "odd_openers", "fingerprint", "scanner_requests")}
    evidence = {
        "kind": kind,
        "window": {"grid": fx.GRID_NAMES[int(r["grid"])], "start": iso(int(r["start"])), "end": iso(int(r["end"])),
                   "length_s": cfg.scan_window_s if r["grid"] != 2 else round((int(r["end"]) - int(r["start"])) / NS, 3)},
        "episode_windows": len(episode),
        "flows": int(r["flows"]), "probes": int(r["probes"]), "failed": int(r["failed"]),
        "failure_ratio": round(float(subs["failure_ratio"][best]), 3),
        "distinct_hosts": int(r["hosts"]), "distinct_host_ports": int(r["pairs"]), "distinct_ports": int(r["ports"]),
        "vertical": {"ports_on_one_host": int(r["vertical"]),
                     "host": addr_str(int(r["vertical_dst_hi"]), int(r["vertical_dst_lo"])) if r["vertical"] else None},
        "horizontal": {"hosts_on_one_port": int(r["horizontal"]),
                       "port": f"{_proto(r['horizontal_proto'])}/{int(r['horizontal_port'])}"
                       if r["horizontal"] >= 2 else None},
        "busiest_minute_host_ports": int(r["per_minute"]),
        "source_port_reuse": round(float(r["sport_reuse"]), 3),
        "top_ports": [[p, n] for p, n in sorted(ports.items(), key=lambda kv: (-kv[1], kv[0]))[:8]],
        "odd_openers": {"host_ports": int(subs["odd_pairs"][best]), "flags": dict(sorted(odd_kinds.items()))}
        if subs["odd_pairs"][best] else None,
        "scanner_requests": heads or None,
        "subscores": ev_subs,
        "ratios": {k: round(float(v), 3) for k, v in zip(KINDS, ratios)},
        "thresholds": {"hosts_on_one_port": cfg.scan_hosts * slow, "ports_on_one_host": cfg.scan_ports * slow,
                       "host_ports_per_minute": cfg.scan_ports_per_minute * slow,
                       "sweep_hosts": SWEEP_FACTOR * cfg.scan_hosts * slow, "window_s": cfg.scan_window_s,
                       "fingerprint_packets": cfg.scan_fingerprint_packets},
        "calendar": {"off_hours_fraction": round(float(off[best]), 3),
                     "weight": round(float(cal.weight(off[best])), 3)},
    }
    if idx[best] >= 0:
        c = summary["c"][idx[best]]
        evidence["fingerprints"] = fingerprint_score(c, cfg.scan_fingerprint_packets)[1] or None
        if c[fx.C_UNREACH]:
            evidence["icmp_unreachable_received"] = {"total": int(c[fx.C_UNREACH]), "port": int(c[fx.C_UNREACH_PORT]),
                                                     "admin_prohibited": int(c[fx.C_UNREACH_ADMIN]),
                                                     "quoting_udp": int(c[fx.C_UNREACH_UDP])}
    if ev.stitched:
        evidence["records"] = "one-way flow records, stitched into conversations by 5-tuple and time"
    evidence = {k: v for k, v in evidence.items() if v is not None}
    return Alert(rule="scan", start_ns=start, end_ns=end, src=src, score=float(score[best]),
                 identifier=f"scan:{addr_str(*src)}@{_stamp(start - start % int(cfg.scan_window_s * NS))}", evidence=evidence,
                 grade=ev.grade if ev.grade == "packets" else "flows", dst=dst, dport=None,
                 transport=transport)


def _flag_name(flags: int) -> str:
    if flags & 0x13 == 0x03:
        return "SYN+FIN"
    names = {0x00: "NULL", 0x01: "FIN", 0x29: "XMAS"}
    return names.get(flags, f"flags={flags:#04x}")


# --- sustained egress ----------------------------------------------------------------------------------

def sustained_scores(p: np.ndarray, cfg) -> dict:
    """Subscores of every pair row (``fx.PAIR``) before the calendar weight."""
    up = p["orig_bytes"].astype(np.float64)
    down = p["resp_bytes"].astype(np.float64)
    share = np.where(up + down > 0, up / np.maximum(up + down, 1), 0.5)
    heavy = np.clip((share - 0.5) / 0.3, 0.0, 1.0)
    volume = _r2(up / (cfg.upload_mb * 1e6)) * (0.4 + 0.6 * heavy)
    hours = p["covered_ns"] / (3600.0 * NS)
    long_h = cfg.long_connection_h
    bucket = np.select([hours >= 12 * long_h, hours >= 8 * long_h, hours >= 4 * long_h, hours >= long_h],
                       [0.95, 0.85, 0.75, 0.6], 0.6 * np.minimum(1.0, hours / long_h) ** 2)
    rate = up / np.maximum(p["covered_ns"] / NS, 1e-3)
    sustained = rate >= cfg.sustained_rate_bytes_s
    duration = bucket * (0.5 + 0.5 * heavy) * np.where(sustained, 1.0, 0.6)
    mining = np.isin(p["port"], np.array(cfg.mining_ports, np.int64)) & np.isin(p["proto"], (6, 17))
    duration = np.where(mining, np.maximum(duration, bucket * 0.6), duration)
    score = 1.0 - (1.0 - volume) * (1.0 - duration)
    return {"score": score, "volume": volume, "duration": duration, "bucket": bucket, "share": share,
            "rate": rate, "sustained": sustained, "mining": mining, "hours": hours}


def _bucket_name(hours: float, long_h: float) -> str:
    for k in (12, 8, 4, 1):
        if hours >= k * long_h:
            return f">={k * long_h:g}h"
    return f"<{long_h:g}h"


def _sustained_alerts(ev, cal: BusinessCalendar) -> list[Alert]:
    cfg = ev.config.egress
    floor = ev.config.alerts.min_score
    pairs, f, gid = fx.pair_egress(ev.flows, ev.context.internal)
    if len(pairs) == 0:
        return []
    s = sustained_scores(pairs, cfg)
    hot = np.flatnonzero(s["score"] * cal.weight_max >= floor)
    if len(hot) == 0:
        return []
    sel = np.isin(gid, hot)
    fs, gs = f.sub(sel), gid[sel]
    off = cal.outside_fraction(fs["ts"], fs["last_ts"])
    dur = np.maximum(fs["last_ts"] - fs["ts"], 1).astype(np.float64)
    byt = fs["orig_bytes"].astype(np.float64)
    n = len(pairs)
    off_t = np.bincount(gs, off * dur, n) / np.maximum(np.bincount(gs, dur, n), 1e-9)
    off_b = np.where(np.bincount(gs, byt, n) > 0, np.bincount(gs, off * byt, n) / np.maximum(np.bincount(gs, byt, n),
                                                                                              1e-9), off_t)
    alerts = []
    for i in hot:
        v, d = float(s["volume"][i]), float(s["duration"][i])
        frac = (v * off_b[i] + d * off_t[i]) / (v + d) if v + d > 0 else 0.0
        weight = float(cal.weight(frac))
        score = min(1.0, float(s["score"][i]) * weight)
        if score < floor:
            continue
        p = pairs[i]
        rows = fs.sub(gs == i)
        ports = Counter(f"{_proto(a)}/{int(b)}" if a in fx.PORTED else _proto(a)
                        for a, b in zip(rows["proto"].tolist(), rows["resp_p"].tolist()))
        src, dst = (int(p["orig_hi"]), int(p["orig_lo"])), (int(p["resp_hi"]), int(p["resp_lo"]))
        mining = bool(s["mining"][i]) and s["hours"][i] >= cfg.long_connection_h
        evidence = {
            "covered_s": round(int(p["covered_ns"]) / NS, 3), "long_connection_bucket":
                _bucket_name(float(s["hours"][i]), cfg.long_connection_h),
            "flows": int(p["flows"]), "upload_bytes": int(p["orig_bytes"]), "download_bytes": int(p["resp_bytes"]),
            "upload_share": round(float(s["share"][i]), 3),
            "upload_rate_bytes_s": round(float(s["rate"][i]), 1), "sustained_rate": bool(s["sustained"][i]),
            "packets": {"orig": int(p["orig_pkts"]), "resp": int(p["resp_pkts"])},
            "top_ports": [[k, c] for k, c in sorted(ports.items(), key=lambda kv: (-kv[1], kv[0]))[:5]],
            "subscores": {"volume": round(v, 3), "duration": round(d, 3)},
            "thresholds": {"upload_mb": cfg.upload_mb, "long_connection_h": [k * cfg.long_connection_h
                                                                              for k in (1, 4, 8, 12)],
                           "sustained_rate_bytes_s": cfg.sustained_rate_bytes_s},
            "calendar": {"off_hours_fraction_time": round(float(off_t[i]), 3),
                         "off_hours_fraction_bytes": round(float(off_b[i]), 3), "weight": round(weight, 3),
                         "timezone": cal.zone_name},
        }
        if mining:
            evidence["mining_port"] = int(p["port"])
        alerts.append(Alert(rule="egress_sustained", start_ns=int(p["first_ts"]), end_ns=int(p["last_ts"]), src=src,
                            score=score, identifier=f"egress_sustained:{addr_str(*src)}-{addr_str(*dst)}",
                            evidence=evidence, grade="flows", dst=dst,
                            dport=int(p["port"]) if p["proto"] in fx.PORTED else None,
                            transport=_proto(p["proto"]), techniques=("T1496",) if mining else ()))
    return alerts


# --- proxy-like relaying ---------------------------------------------------------------------------------

def proxy_score(relays: int, relayed_share: float, peers: int, cfg) -> float:
    r = relays / cfg.proxy_min_relays
    return float(_r2(r) * (0.6 + 0.4 * relayed_share) * min(1.0, peers / 4))


def _proxy_alerts(ev, cal: BusinessCalendar) -> list[Alert]:
    cfg = ev.config.egress
    floor = ev.config.alerts.min_score
    fi, fo, pi, po = fx.proxy_relays(ev.flows, int(cfg.proxy_max_lag_s * NS), cfg.proxy_byte_tolerance,
                                     cfg.proxy_min_bytes, ev.payload_known)
    if len(fi) == 0:
        return []
    hosts, hrow = fx.dense_ids(fi["resp_hi"], fi["resp_lo"])
    up, down = fx.payload(ev.flows, ev.payload_known)
    tcp = ev.flows[(ev.flows["proto"] == 6) & (up > 0) & (down > 0)]
    alerts = []
    for h in range(len(hrow)):
        m = hosts == h
        a, b, pa, pb = fi[m], fo[m], pi[m].astype(np.float64), po[m].astype(np.float64)
        H = (int(a["resp_hi"][0]), int(a["resp_lo"][0]))
        inbound = int(((tcp["resp_hi"] == np.uint64(H[0])) & (tcp["resp_lo"] == np.uint64(H[1]))).sum())
        in_peers = {(int(x), int(y)) for x, y in zip(a["orig_hi"].tolist(), a["orig_lo"].tolist())}
        out_peers = Counter((int(x), int(y), int(p)) for x, y, p in zip(b["resp_hi"].tolist(), b["resp_lo"].tolist(),
                                                                         b["resp_p"].tolist()))
        out_hosts = {(x, y) for x, y, _ in out_peers}
        share = len(a) / max(inbound, 1)
        raw = proxy_score(len(a), share, len(in_peers) + len(out_hosts), cfg)
        if raw * cal.weight_max < floor:
            continue
        off = float(cal.outside(a["ts"]).mean())
        weight = float(cal.weight(off))
        score = min(1.0, raw * weight)
        if score < floor:
            continue
        lag = (b["ts"] - a["ts"]) / NS
        up_diff = np.abs(pa[:, 0] - pb[:, 0]) / np.maximum(np.maximum(pa[:, 0], pb[:, 0]), 1)
        dn_diff = np.abs(pa[:, 1] - pb[:, 1]) / np.maximum(np.maximum(pa[:, 1], pb[:, 1]), 1)
        out_ports = Counter(int(p) for p in b["resp_p"].tolist())
        mining = sum(n for p, n in out_ports.items() if p in cfg.mining_ports) * 2 > len(b)
        svc = Counter(int(p) for p in a["resp_p"].tolist()).most_common(1)[0][0]
        top_up, top_n = Counter((x, y) for x, y, _ in out_peers.elements()).most_common(1)[0]
        dst = top_up if top_n * 2 >= len(b) else None
        dport = Counter(p for x, y, p in out_peers.elements() if (x, y) == dst).most_common(1)[0][0] if dst else None
        evidence = {
            "relays": len(a), "inbound_connections_with_payload": inbound, "relayed_share": round(share, 3),
            "inbound_peers": len(in_peers), "outbound_peers": len(out_hosts), "service_port": svc,
            "top_outbound_ports": [[p, n] for p, n in sorted(out_ports.items(), key=lambda kv: (-kv[1], kv[0]))[:5]],
            "lag_s": {"median": round(float(np.median(lag)), 4), "max": round(float(lag.max()), 4)},
            "payload_difference": {"upstream_median": round(float(np.median(up_diff)), 4),
                                   "downstream_median": round(float(np.median(dn_diff)), 4)},
            "payload_bytes_relayed": int(pa.sum()), "payload_counts": "exact" if ev.payload_known else
            "estimated from IP bytes - 80 per packet",
            "examples": [{"in": f"{addr_str(x['orig_hi'], x['orig_lo'])}:{int(x['orig_p'])}",
                          "out": f"{addr_str(y['resp_hi'], y['resp_lo'])}:{int(y['resp_p'])}",
                          "up_bytes": [int(u[0]), int(v[0])], "down_bytes": [int(u[1]), int(v[1])],
                          "lag_s": round((int(y["ts"]) - int(x["ts"])) / NS, 4)}
                         for x, y, u, v in zip(a[:3], b[:3], pa[:3], pb[:3])],
            "thresholds": {"min_relays": cfg.proxy_min_relays, "max_lag_s": cfg.proxy_max_lag_s,
                           "byte_tolerance": cfg.proxy_byte_tolerance, "min_bytes": cfg.proxy_min_bytes},
            "calendar": {"off_hours_fraction": round(off, 3), "weight": round(weight, 3)},
        }
        alerts.append(Alert(rule="egress_proxy", start_ns=int(a["ts"].min()), end_ns=int(max(a["last_ts"].max(),
                                                                                            b["last_ts"].max())),
                            src=H, sport=svc, score=score, identifier=f"egress_proxy:{addr_str(*H)}",
                            evidence=evidence, grade="flows", dst=dst, dport=dport, transport="tcp",
                            techniques=("T1496",) if mining else ()))
    return alerts


class _View:
    """The evidence a detector pass reads: flows (stitched when they are one-way NetFlow records)
    and whether their payload counts are real."""

    def __init__(self, ev):
        self.ev, self.config, self.context, self.features, self.grade = ev, ev.config, ev.context, ev.features, ev.grade
        self.stitched = ev.grade != "packets" and fx.unidirectional(ev.flows)
        self.flows = fx.stitch(ev.flows) if self.stitched else ev.flows
        self.payload_known = ev.grade == "packets"


def detect(ev) -> list[Alert]:
    cal = BusinessCalendar(ev.config.calendar)
    view = _View(ev)
    return _scan_alerts(view, cal) + _sustained_alerts(view, cal) + _proxy_alerts(view, cal)
