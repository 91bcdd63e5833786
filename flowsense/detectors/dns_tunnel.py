"""DNS tunnels (T1071.004, T1572): per (client, registered domain, window) over the query names.

Features come from ``flowsense.features.dns_tunnel`` (one Numba call per batch).  A record is one
(client, registered domain) in one ``[dns_tunnel].window_s`` window; dnscat2-style *direct* names
(no domain) are one record per (client, server).

Score (documented in the evidence as ``subscores``), every part in [0, 1]:

* ``information``: unique query bytes U (summed lengths of the distinct subdomains: what a tunnel
  must spend to move data, Paxson et al. 2013; ibHH 2023) on a log scale from
  ``info_floor_bytes`` (0) to ``info_full_bytes`` (1; Paxson's per-day budget of 4 kB, here per
  window);
* ``unique_subdomains``: RITA's buckets 100/500/800/1000 distinct subdomains -> 0.25/0.5/0.75/1
  (linear in between, 0 at 0);
* ``volume`` = max(information, unique_subdomains);
* ``encoding``: share of distinct subdomains that look encoded (hex / base32 / base64 / binary
  charset with a normalised character entropy >= 0.7 over >= 8 characters), full at one half;
* ``qtype``: share of queries of tunnel-friendly types (TXT, NULL, CNAME, MX, ANY);
* ``long_names``: share of distinct names longer than 70 characters (Sigma) or with a first
  label longer than 48 (nDPI);
* ``nxdomain`` rate and ``large_responses`` (share of responses over 512 bytes);
* ``shape`` = 1 - (1-encoding)(1-0.6 qtype)(1-0.5 long_names)(1-0.3 nxdomain)(1-0.3 large_responses);
* **score = 0.4 volume + 0.25 shape + 0.35 volume x shape**.

So volume alone (many plain names: a busy CDN domain, PTR sweeps) stays at or below 0.4, a single
long random-looking query (shape ~1, volume ~0) scores ~0.25, and a tunnel that moves kilobytes
through encoded names scores 0.8-1.  Only records scoring at least ``[alerts].min_score`` become
findings: deny_fallback reads ``Evidence.found`` and counts any dns_tunnel finding as a tunnel, so
weak ones (one odd name) stay out of it.  Allowlisted domains (``[allowlist].domains``) never
produce a finding.

NetFlow has no names: with ``grade == "flows"`` a conservative rule looks for many UDP/53 request
packets with large mean size from one client to one server (see ``detect_flows``), score <= 0.75.
"""

from __future__ import annotations

import numpy as np

from flowsense.alerts import Alert, iso
from flowsense.features import dns_tunnel as F
from flowsense.nets import addr_str

NAME = "dns_tunnel"
Features = F.DnsTunnelFeatures

RITA_BUCKETS = (0, 100, 500, 800, 1000)
RITA_SCORES = (0.0, 0.25, 0.5, 0.75, 1.0)
ENCODED_FULL_SHARE = 0.5
SUM_COLS = [F.C_ROWS, F.C_Q, F.C_R, F.C_UNIQ, F.C_UBYTES, F.C_NX, F.C_RLARGE, F.C_NAME_SUM, F.C_LONG_NAME,
            F.C_LONG_FIRST, F.C_LONG_ANY, F.C_TCP, F.C_ENC, F.C_SAT, F.C_SAMPLES, F.C_LABEL_SUM, F.C_LABEL_N,
            *range(F.C_QT, F.C_QT + 7), *range(F.C_RT, F.C_RT + 7), *range(F.C_CS, F.C_CS + 5)]
MAX_COLS = [F.C_RMAX, F.C_NAME_MAX, F.C_LABEL_MAX, F.C_FIRST_MAX, F.C_LAST_TS, F.C_QLAST_TS]


def detect(ev) -> list[Alert]:
    if ev.grade == "flows":
        return detect_flows(ev)
    feats = ev.features.get(NAME)
    if feats is None:
        return []
    rec = _merge(feats.records())
    if len(rec["domain"]) == 0:
        return []
    cfg = ev.config.dns_tunnel
    sub = subscores(rec["cnt"], cfg)
    floor = ev.config.alerts.min_score
    alerts = []
    for i in np.flatnonzero(sub["score"] >= floor).tolist():
        domain = rec["domain"][i]
        if domain and ev.context.domain_allowed(domain):
            continue
        alerts.append(_alert(rec, sub, i, cfg))
    alerts.sort(key=lambda a: (a.start_ns, a.identifier))
    return alerts


def subscores(cnt: np.ndarray, cfg) -> dict:
    """Every subscore and the score for each record row (vectorised)."""
    cnt = cnt.astype(np.float64)
    uniq = cnt[:, F.C_UNIQ]
    ubytes = cnt[:, F.C_UBYTES]
    floor, full = float(cfg.info_floor_bytes), float(max(cfg.info_full_bytes, cfg.info_floor_bytes + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        info = np.clip(np.log2(np.maximum(ubytes, 1.0) / floor) / np.log2(full / floor), 0.0, 1.0)
        uniq_s = np.interp(uniq, RITA_BUCKETS, RITA_SCORES)
        volume = np.maximum(info, uniq_s)
        per_uniq = np.maximum(uniq, 1.0)
        encoding = np.clip(cnt[:, F.C_ENC] / per_uniq / ENCODED_FULL_SHARE, 0.0, 1.0)
        long_names = np.clip(cnt[:, F.C_LONG_ANY] / per_uniq, 0.0, 1.0)
        qt = np.where((cnt[:, F.C_Q] > 0)[:, None], cnt[:, F.C_QT:F.C_QT + 7], cnt[:, F.C_RT:F.C_RT + 7])
        unusual = qt[:, F.QT_TXT] + qt[:, F.QT_NULL] + qt[:, F.QT_CNAME] + qt[:, F.QT_MX] + qt[:, F.QT_ANY]
        qtype = unusual / np.maximum(qt.sum(axis=1), 1.0)
        resp = np.maximum(cnt[:, F.C_R], 1.0)
        nx = cnt[:, F.C_NX] / resp
        large = cnt[:, F.C_RLARGE] / resp
    shape = 1.0 - (1.0 - encoding) * (1.0 - 0.6 * qtype) * (1.0 - 0.5 * long_names) * (1.0 - 0.3 * nx) * \
        (1.0 - 0.3 * large)
    score = np.clip(0.4 * volume + 0.25 * shape + 0.35 * volume * shape, 0.0, 1.0)
    return {"information": info, "unique_subdomains": uniq_s, "volume": volume, "encoding": encoding,
            "qtype": qtype, "long_names": long_names, "nxdomain": nx, "large_responses": large, "shape": shape,
            "score": score}


def _merge(rec: dict) -> dict:
    """One record per (client, domain, server-if-direct, window): parts of a window closed early
    (full table) or reopened by a late packet are added up (unique counts may then overcount)."""
    keys = rec["keys"]
    if len(keys) < 2:
        return rec
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) == len(keys):
        return rec
    order = np.argsort(first, kind="stable")          # keep first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[inverse]
    m = len(uniq)
    cnt = np.zeros((m, F.NCOL), np.int64)
    np.add.at(cnt, (group[:, None], np.array(SUM_COLS)[None, :]), rec["cnt"][:, SUM_COLS])
    for c in MAX_COLS:
        cnt[:, c] = np.iinfo(np.int64).min
        np.maximum.at(cnt[:, c], group, rec["cnt"][:, c])
    cnt[:, F.C_FIRST_TS] = np.iinfo(np.int64).max
    np.minimum.at(cnt[:, F.C_FIRST_TS], group, rec["cnt"][:, F.C_FIRST_TS])
    qfirst = np.where(rec["cnt"][:, F.C_QFIRST_TS] < 0, np.iinfo(np.int64).max, rec["cnt"][:, F.C_QFIRST_TS])
    cnt[:, F.C_QFIRST_TS] = np.iinfo(np.int64).max
    np.minimum.at(cnt[:, F.C_QFIRST_TS], group, qfirst)
    cnt[cnt[:, F.C_QFIRST_TS] == np.iinfo(np.int64).max, F.C_QFIRST_TS] = -1
    flt = np.zeros((m, F.NFCOL))
    np.add.at(flt[:, F.F_ENT_SUM], group, rec["flt"][:, F.F_ENT_SUM])
    np.add.at(flt[:, F.F_HN_SUM], group, rec["flt"][:, F.F_HN_SUM])
    np.maximum.at(flt[:, F.F_ENT_MAX], group, rec["flt"][:, F.F_ENT_MAX])
    best = np.full(m, -1)
    for j in np.argsort(-rec["server_rows"], kind="stable").tolist():
        if best[group[j]] < 0:
            best[group[j]] = j
    head = first[order]                                 # first row of each group, in output order
    out = {"keys": rec["keys"][head], "cnt": cnt, "flt": flt, "server": rec["server"][best],
           "server_rows": rec["server_rows"][best], "servers": rec["servers"][best],
           "domain": [rec["domain"][j] for j in head.tolist()], "samples": [[] for _ in range(m)]}
    for j in range(len(keys)):
        bucket = out["samples"][group[j]]
        bucket += [s for s in rec["samples"][j] if s not in bucket][:F.SAMPLES - len(bucket)]
    return out


def _zone(samples: list[str], domain: str) -> str:
    """The longest label suffix every sample shares (e.g. t.exfil-demo.test), at least the domain."""
    if len(samples) < 2 or not domain:
        return domain
    parts = [s.lower().rstrip(".").split(".") for s in samples]
    zone = []
    for labels in zip(*[reversed(p[1:]) for p in parts]):   # never the first label (data)
        if len(set(labels)) != 1:
            break
        zone.append(labels[0])
    zone = ".".join(reversed(zone))
    return zone if zone.endswith(domain) and len(zone) > len(domain) else domain


def _tool_hint(c: np.ndarray, direct: bool, samples: list[str]) -> str | None:
    qt = c[F.C_QT:F.C_QT + 7] if c[F.C_Q] > 0 else c[F.C_RT:F.C_RT + 7]
    total = max(int(qt.sum()), 1)
    if any(s.lower().startswith("dnscat.") for s in samples) or (direct and c[F.C_CS + F.CS_HEX] > 0):
        return "dnscat2 (dnscat. prefix / direct mode)"
    if qt[F.QT_NULL] / total >= 0.5:
        return "iodine-like (NULL records)"
    hexy = c[F.C_CS + F.CS_HEX] >= 0.5 * max(c[F.C_UNIQ], 1)
    if hexy and qt[F.QT_TXT] + qt[F.QT_CNAME] + qt[F.QT_MX] >= 0.8 * total and qt[F.QT_MX] > 0:
        return "dnscat2-like (hex labels, TXT/CNAME/MX mix)"
    if qt[F.QT_TXT] / total >= 0.8 and c[F.C_CS + F.CS_B64] >= 0.5 * max(c[F.C_UNIQ], 1):
        return "dns2tcp-like (TXT, base64 labels)"
    return None


def _alert(rec: dict, sub: dict, i: int, cfg) -> Alert:
    c = rec["cnt"][i]
    k = rec["keys"][i]
    client = (int(k[F.K_CHI]), int(k[F.K_CLO]))
    server = (int(rec["server"][i][0]), int(rec["server"][i][1]))
    direct = int(k[F.K_DOM]) == int(F.DIRECT_HASH)
    domain = rec["domain"][i]
    client_s, server_s = addr_str(*client), addr_str(*server)
    if c[F.C_Q] > 0:
        start, end = int(c[F.C_QFIRST_TS]), int(c[F.C_QLAST_TS])
    else:
        start, end = int(c[F.C_FIRST_TS]), int(c[F.C_LAST_TS])
    span_s = max((end - start) / 1e9, 1.0)
    uniq = int(c[F.C_UNIQ])
    qt_q = c[F.C_QT:F.C_QT + 7]
    qt_r = c[F.C_RT:F.C_RT + 7]
    charsets = {name: int(c[F.C_CS + j]) for j, name in enumerate(F.CHARSETS) if c[F.C_CS + j]}
    samples = rec["samples"][i]
    evidence = {
        "domain": domain,
        "zone": _zone(samples, domain),
        "mode": "direct" if direct else "domain",
        "client": client_s,
        "server": server_s,
        "servers_seen": int(rec["servers"][i]),
        "window_start": iso(int(k[F.K_WIN]) * int(cfg.window_s * 1e9)),
        "queries": int(c[F.C_Q]),
        "responses": int(c[F.C_R]),
        "unique_subdomains": uniq,
        "unique_subdomains_capped": bool(c[F.C_SAT] > 0),
        "unique_query_bytes": int(c[F.C_UBYTES]),
        "unique_query_bytes_per_s": round(float(c[F.C_UBYTES]) / span_s, 2),
        "span_s": round((end - start) / 1e9, 3),
        "mean_name_len": round(float(c[F.C_NAME_SUM]) / max(int(c[F.C_ROWS]), 1), 1),
        "max_name_len": int(c[F.C_NAME_MAX]),
        "mean_label_len": round(float(c[F.C_LABEL_SUM]) / max(int(c[F.C_LABEL_N]), 1), 1),
        "max_label_len": int(c[F.C_LABEL_MAX]),
        "max_first_label_len": int(c[F.C_FIRST_MAX]),
        "long_names": int(c[F.C_LONG_NAME]),
        "long_first_labels": int(c[F.C_LONG_FIRST]),
        "mean_entropy_bits": round(float(rec["flt"][i][F.F_ENT_SUM]) / max(uniq, 1), 3),
        "max_entropy_bits": round(float(rec["flt"][i][F.F_ENT_MAX]), 3),
        "mean_normalised_entropy": round(float(rec["flt"][i][F.F_HN_SUM]) / max(uniq, 1), 3),
        "charset": max(charsets, key=charsets.get) if charsets else None,
        "charset_counts": charsets,
        "encoded_subdomains": int(c[F.C_ENC]),
        "qtypes": {name: int(v) for name, v in zip(F.QTYPE_NAMES, qt_q) if v},
        "response_qtypes": {name: int(v) for name, v in zip(F.QTYPE_NAMES, qt_r) if v},
        "nxdomain_rate": round(float(c[F.C_NX]) / max(int(c[F.C_R]), 1), 3),
        "responses_over_large": int(c[F.C_RLARGE]),
        "max_response_bytes": int(c[F.C_RMAX]),
        "samples": samples,
        "subscores": {name: round(float(v[i]), 3) for name, v in sub.items() if name != "score"},
        "thresholds": {
            "window_s": cfg.window_s, "info_floor_bytes": cfg.info_floor_bytes,
            "info_full_bytes": cfg.info_full_bytes, "rita_unique_buckets": list(RITA_BUCKETS[1:]),
            "long_name_chars": cfg.long_name_chars, "long_first_label_chars": cfg.long_label_chars,
            "large_response_bytes": cfg.large_response_bytes, "encoded_min_chars": F.ENC_MIN_LEN,
            "encoded_min_normalised_entropy": F.ENC_MIN_NORM_ENTROPY, "encoded_full_share": ENCODED_FULL_SHARE,
        },
    }
    hint = _tool_hint(c, direct, samples)
    if hint:
        evidence["tool_hint"] = hint
    top_qtype = max(evidence["qtypes"] or evidence["response_qtypes"] or {"?": 0},
                    key=lambda q: (evidence["qtypes"] or evidence["response_qtypes"] or {"?": 0})[q])
    evidence["summary"] = (f"{client_s} sent {int(c[F.C_UBYTES]):,} bytes of distinct subdomain data in {uniq:,} names "
                           f"({evidence['charset']}, mostly {top_qtype}) "
                           f"{'directly to ' + server_s if direct else 'under ' + evidence['zone']} "
                           f"over {evidence['span_s']:.0f} s")
    ident_domain = domain if not direct else f"direct:{server_s}"
    return Alert(rule=NAME, start_ns=start, end_ns=end, src=client, score=float(sub["score"][i]),
                 identifier=f"dns_tunnel:{client_s}-{ident_domain}", evidence=evidence, grade="packets",
                 dst=server, dport=53, transport="tcp" if 2 * c[F.C_TCP] > c[F.C_ROWS] else "udp",
                 name="DNS tunnel (direct to server, no domain)" if direct else None)


def detect_flows(ev) -> list[Alert]:
    """NetFlow grade: per (client, server, window), UDP/53 request packets and their mean IP size.
    Ordinary queries are 60-100 bytes; tunnel queries carry long names (150-300 bytes).  Fires only
    when at least ``flows_min_packets`` requests average ``flows_min_mean_bytes`` or more."""
    cfg = ev.config.dns_tunnel
    f = ev.flows
    m = (f["proto"] == 17) & (f["resp_p"] == 53) & (f["orig_pkts"] > 0)
    f = f[m]
    if len(f) == 0:
        return []
    win = (f["ts"] // int(cfg.window_s * 1e9)).astype(np.int64)
    key = np.stack([f["orig_hi"], f["orig_lo"], f["resp_hi"], f["resp_lo"], win.view(np.uint64)], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    g = len(uniq)
    pkts = np.bincount(inverse, f["orig_pkts"].astype(np.float64), g)
    byts = np.bincount(inverse, f["orig_bytes"].astype(np.float64), g)
    nflows = np.bincount(inverse, minlength=g)
    first = np.full(g, np.iinfo(np.int64).max)
    last = np.full(g, np.iinfo(np.int64).min)
    np.minimum.at(first, inverse, f["ts"])
    np.maximum.at(last, inverse, f["last_ts"])
    mean = byts / np.maximum(pkts, 1.0)
    lo = float(cfg.flows_min_mean_bytes)
    size_s = np.clip((mean - lo) / (lo / 2), 0.0, 1.0)
    count_s = np.clip(np.log10(np.maximum(pkts, 1.0) / cfg.flows_min_packets), 0.0, 1.0)
    score = 0.5 + 0.15 * size_s + 0.1 * count_s
    alerts = []
    for i in np.flatnonzero((pkts >= cfg.flows_min_packets) & (mean >= lo)).tolist():
        client = (int(uniq[i, 0]), int(uniq[i, 1]))
        server = (int(uniq[i, 2]), int(uniq[i, 3]))
        evidence = {
            "domain": "", "mode": "flows", "client": addr_str(*client), "server": addr_str(*server),
            "window_start": iso(int(uniq[i, 4].astype(np.int64)) * int(cfg.window_s * 1e9)),
            "request_packets": int(pkts[i]), "request_bytes": int(byts[i]), "flows": int(nflows[i]),
            "mean_request_bytes": round(float(mean[i]), 1),
            "subscores": {"request_size": round(float(size_s[i]), 3), "request_count": round(float(count_s[i]), 3)},
            "thresholds": {"window_s": cfg.window_s, "flows_min_packets": cfg.flows_min_packets,
                           "flows_min_mean_bytes": cfg.flows_min_mean_bytes},
            "note": "NetFlow carries no DNS names: large, numerous UDP/53 requests only; "
                    "score = 0.5 + 0.15 request_size + 0.1 request_count",
        }
        alerts.append(Alert(rule=NAME, start_ns=int(first[i]), end_ns=int(last[i]), src=client,
                            score=float(score[i]), identifier=f"dns_tunnel:{addr_str(*client)}-{addr_str(*server)}",
                            evidence=evidence, grade="flows", dst=server, dport=53, transport="udp",
                            name="DNS tunnel suspected from flow sizes"))
    return alerts
