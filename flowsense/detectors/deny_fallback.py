"""Deny then fallback (AN1376/AN1377; T1008 plus the technique of the new channel).

A host is *blocked* when a firewall log denies it, or the traffic shows it (features.blocks).  A
later working channel from the same host within ``[fallback].window_s`` is scored by what makes a
fallback different from ordinary traffic:
  same destination as the blocked attempt   +0.30 (same registered domain, from DNS answers: +0.25)
  transport switch to ICMP                  +0.25 (and +0.25 more with an icmp_tunnel finding)
  DNS tunnel finding from the host          +0.50
  pairing the host never used before        +0.15
  pairing rare across hosts                 +0.20 (scaled by the reference's confidence)
  port_pairing / beacon finding on it       +0.15 / +0.10
  starts soon after the last block          +0.10
  the block is in a firewall log            +0.05
A channel needs one of same destination, covert transport or rarity to count at all.  Hosts
blocked on many ports are scanning and are left to the scan detector.
"""

from __future__ import annotations

import gzip

import numpy as np

from flowsense.alerts import Alert, iso
from flowsense.features import blocks as b
from flowsense.features.app import APPS
from flowsense.features.pairing import pairing_keys
from flowsense.flows.table import ST_SYNACK
from flowsense.nets import addr_str

NAME = "deny_fallback"
Features = b.ProhibitedQuotes
CHANNEL = np.dtype([("resp_hi", "u8"), ("resp_lo", "u8"), ("proto", "u1"), ("resp_p", "u2")])
PROTO_TEXT = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}


def _worked(f: np.ndarray) -> np.ndarray:
    """Flows that got through: an answered TCP handshake, or anything answered over UDP/ICMP."""
    tcp_ok = (f["proto"] == 6) & ((f["state"] & ST_SYNACK) != 0)
    other_ok = np.isin(f["proto"], (1, 17, 58)) & (f["resp_pkts"] > 0)
    return tcp_ok | other_ok


def _deny_lines(denies, refs, limit=3) -> list[dict]:
    """The raw text of a few deny rows, read back from their files (evidence for the analyst)."""
    out = []
    for r in refs[:limit]:
        row = denies.rows[int(r)]
        source, line_no = int(row["source"]), int(row["line_no"])
        entry = {"file": denies.sources[source] if source < len(denies.sources) else None, "line": line_no,
                 "vendor": denies.text.get("vendor", [None] * len(denies.rows))[int(r)]}
        try:
            with open(entry["file"], "rb") as probe:
                gz = probe.read(2) == b"\x1f\x8b"
            with (gzip.open if gz else open)(entry["file"], "rt", encoding="utf-8", errors="replace") as fh:
                entry["text"] = next((line.rstrip("\r\n")[:500] for n, line in enumerate(fh, 1) if n == line_no), None)
        except (OSError, TypeError, EOFError):
            entry["text"] = None
        out.append(entry)
    return out


def _host_blocks(events: np.ndarray, cfg) -> list[np.ndarray]:
    """Block episodes per host: events grouped by host, split where they are a window apart,
    kept when one (dst, port) was tried often enough or a log/ICMP prohibited says so."""
    episodes = []
    window = int(cfg.window_s * 1e9)
    order = np.lexsort((events["ts"], events["host_lo"], events["host_hi"]))
    ev = events[order]
    if not len(ev):
        return []
    host_change = np.flatnonzero((np.diff(ev["host_hi"]) != 0) | (np.diff(ev["host_lo"]) != 0)) + 1
    for host_events in np.split(ev, host_change):
        cuts = np.flatnonzero(np.diff(host_events["ts"]) > window) + 1
        for episode in np.split(host_events, cuts):
            targets = episode[["dst_hi", "dst_lo", "dport", "proto"]]
            uniq, counts = np.unique(targets, return_counts=True)
            strong = np.isin(episode["kind"], (b.DENY_LOG, b.ICMP_PROHIBITED))
            ok_targets = uniq[counts >= cfg.min_attempts]
            qualifies = strong | np.isin(targets, ok_targets)
            if qualifies.any():
                episodes.append(episode[qualifies])
    return episodes


def detect(ev) -> list[Alert]:
    cfg, ctx, f = ev.config.fallback, ev.context, ev.flows
    quotes = ev.features.get(NAME)
    events = b.block_events(f, ev.denies.rows, quotes.rows() if quotes is not None else None)
    if not len(events):
        return []
    reference, _source = ev.pairing_reference
    confidence = min(1.0, reference.hosts / ev.config.pairing.confident_hosts)
    rare_cut = max(1.0, ev.config.pairing.rare_fraction * reference.hosts)
    keys = pairing_keys(f)
    prevalence = reference.prevalence(keys)
    worked = _worked(f)
    skew, window = int(cfg.clock_skew_s * 1e9), int(cfg.window_s * 1e9)
    found_by = {}
    for a in ev.found:
        found_by.setdefault((a.rule, a.src), []).append(a)
    alerts = []
    for episode in _host_blocks(events, cfg):
        host = (int(episode["host_hi"][0]), int(episode["host_lo"][0]))
        blocked_ports = np.unique(episode["dport"][episode["dport"] > 0])
        if len(blocked_ports) > cfg.scan_ports or (("scan", host) in found_by):
            continue
        first_block, last_block = int(episode["ts"].min()), int(episode["ts"].max())
        # clock skew is a firewall-log matter: blocks seen in the traffic share the packets' clock
        skew_here = skew if (episode["kind"] == b.DENY_LOG).any() else 0
        mine = (f["orig_hi"] == host[0]) & (f["orig_lo"] == host[1])
        before = mine & (f["ts"] < first_block - skew_here)
        used_before = set(keys[before].tolist())
        if ctx.baseline is not None:
            known = ctx.baseline.pairings.host_knows(f["orig_hi"][mine], f["orig_lo"][mine], keys[mine])
            used_before |= set(keys[mine][known].tolist())
        blocked_dsts = {(int(h), int(lo)) for h, lo in zip(episode["dst_hi"], episode["dst_lo"]) if h or lo}
        blocked_domains = {ev.names.domain_of(host, d) for d in blocked_dsts} - {None}
        blocked_channels = {(int(h), int(lo), int(p), int(d)) for h, lo, p, d in
                            zip(episode["dst_hi"], episode["dst_lo"], episode["proto"], episode["dport"])}
        later = np.flatnonzero(mine & worked & (f["ts"] >= first_block - skew_here) & (f["ts"] <= last_block + window))
        in_use = {(int(h), int(lo), int(p), 0 if p in (1, 58) else int(port)) for h, lo, p, port in
                  zip(f["resp_hi"][before], f["resp_lo"][before], f["proto"][before], f["resp_p"][before])}
        channels = {}
        for i in later:
            ch = (int(f["resp_hi"][i]), int(f["resp_lo"][i]), int(f["proto"][i]),
                  0 if f["proto"][i] in (1, 58) else int(f["resp_p"][i]))
            if ch in blocked_channels or ch in in_use:   # a retry, or a channel that was already open
                continue
            channels.setdefault(ch, []).append(i)
        scored = []
        for (dhi, dlo, proto, port), rows in channels.items():
            i = rows[0]
            parts = {}
            same_dst = (dhi, dlo) in blocked_dsts
            if same_dst:
                parts["same_destination"] = 0.30
            elif blocked_domains and ev.names.domain_of(host, (dhi, dlo)) in blocked_domains:
                parts["same_registered_domain"] = 0.25
                same_dst = True
            if proto in (1, 58) and not (episode["proto"] == proto).all():
                parts["transport_switch_icmp"] = 0.25
                if any(a.dst == (dhi, dlo) for a in found_by.get(("icmp_tunnel", host), [])):
                    parts["icmp_tunnel_finding"] = 0.25
            if int(keys[i]) not in used_before and proto not in (1, 58):
                parts["new_pairing_for_host"] = 0.15
            if prevalence[i] <= rare_cut and proto not in (1, 58):
                parts["rare_pairing"] = round(0.20 * confidence, 3)
            if any(a.dst == (dhi, dlo) and a.dport == port for a in found_by.get(("port_pairing", host), [])):
                parts["port_pairing_finding"] = 0.15
            if any(a.dst == (dhi, dlo) and a.dport == port for a in found_by.get(("beacon", host), [])):
                parts["beacon_finding"] = 0.10
            if not (same_dst or "icmp_tunnel_finding" in parts or "rare_pairing" in parts):
                continue
            scored.append(((dhi, dlo, proto, port), rows, parts))
        for a in found_by.get(("dns_tunnel", host), []):
            if first_block - skew_here <= a.start_ns <= last_block + window:
                scored.append(((a.dst or (0, 0)) + (17, 53), [], {"dns_tunnel_finding": 0.50, "_alert": a}))
        if not scored:
            continue
        results = []
        for ch, rows, parts in scored:
            start = int(f["ts"][rows[0]]) if rows else parts["_alert"].start_ns
            if 0 <= start - last_block <= cfg.max_gap_bonus_s * 1e9 or start < last_block:
                parts["soon_after_block"] = 0.10
            if (episode["kind"] == b.DENY_LOG).any():
                parts["block_in_firewall_log"] = 0.05
            score = min(1.0, 0.1 + sum(v for k, v in parts.items() if not k.startswith("_")))
            results.append((score, start, ch, rows, parts))
        results.sort(key=lambda r: (-r[0], r[1], r[2]))
        score, start, (dhi, dlo, proto, port), rows, parts = results[0]
        alerts.append(_alert(ev, host, episode, score, start, (dhi, dlo, proto, port), rows, parts, results,
                             first_block, last_block))
    return alerts


def _channel_text(ch, f, rows) -> dict:
    dhi, dlo, proto, port = ch
    out = {"destination": addr_str(dhi, dlo), "transport": PROTO_TEXT.get(proto, str(proto)), "port": port or None}
    if rows:
        out.update(flows=len(rows), first=iso(int(f["ts"][rows[0]])), app=APPS[int(f["app"][rows[0]])],
                   orig_bytes=int(f["orig_bytes"][rows].sum()), resp_bytes=int(f["resp_bytes"][rows].sum()))
    return out


def _alert(ev, host, episode, score, start, ch, rows, parts, results, first_block, last_block) -> Alert:
    f, cfg = ev.flows, ev.config.fallback
    dhi, dlo, proto, port = ch
    kinds = {b.KINDS[k]: int(c) for k, c in zip(*np.unique(episode["kind"], return_counts=True))}
    deny_refs = episode["ref"][episode["kind"] == b.DENY_LOG]
    blocked = sorted({(addr_str(int(h), int(lo)) if (h or lo) else None, int(p), PROTO_TEXT.get(int(t), str(t)))
                      for h, lo, p, t in zip(episode["dst_hi"], episode["dst_lo"], episode["dport"],
                                             episode["proto"])}, key=str)
    dns_alert = parts.get("_alert")
    if dns_alert is not None:
        channel = {"destination": addr_str(*dns_alert.dst) if dns_alert.dst else None, "transport": "dns tunnel",
                   "domain": dns_alert.evidence.get("domain"), "first": iso(dns_alert.start_ns)}
        techniques, transport, dport = ("T1071.004", "T1572"), dns_alert.transport, 53
    else:
        channel = _channel_text(ch, f, rows)
        channel["domain"] = ev.names.domain_of(host, (dhi, dlo))
        techniques = ("T1095",) if proto in (1, 58) else ("T1571",)
        transport, dport = PROTO_TEXT.get(proto, str(proto)), port or None
    evidence = {
        "blocked": {"first": iso(first_block), "last": iso(last_block), "events": kinds,
                    "targets": [{"destination": d, "port": p or None, "transport": t} for d, p, t in blocked[:10]],
                    "deny_lines": _deny_lines(ev.denies, deny_refs) if len(deny_refs) else []},
        "fallback": channel,
        "gap_s": round((start - last_block) / 1e9, 3),
        "score_parts": {k: v for k, v in parts.items() if not k.startswith("_")},
        "other_channels": [_channel_text(r[2], f, r[3]) for r in results[1:6] if r[3]],
        "thresholds": {"window_s": cfg.window_s, "clock_skew_s": cfg.clock_skew_s, "min_attempts": cfg.min_attempts,
                       "scan_ports": cfg.scan_ports},
        "rarity_reference": ev.pairing_reference[1],
    }
    grade = "logs" if kinds.get("deny_log") and len(kinds) == 1 and ev.grade == "flows" else ev.grade
    end = int(f["last_ts"][rows].max()) if rows else dns_alert.end_ns
    identifier = f"{NAME}:{addr_str(*host)}-{channel['destination']}-{channel['transport']}/{dport}"
    return Alert(rule=NAME, start_ns=first_block, end_ns=max(end, last_block), src=host,
                 dst=(dhi, dlo) if dhi or dlo else None, dport=dport, transport=transport, score=score,
                 techniques=techniques, identifier=identifier, evidence=evidence, grade=grade)
