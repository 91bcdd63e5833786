"""Per-rule alert plots: what the evidence looks like next to the ordinary.

Each rule has one function taking the alert, a DuckDB connection over the output folder and the
capture's packets between the alert's hosts (``None`` when the capture is not at hand); it returns
a ``Panel`` of plots and notes.  Data comes from the folder's own tables, so a panel shows what the detector saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from flowsense.nets import to_halves
from flowsense.report import plots

NS = 1_000_000_000
LINUX_PING_PAYLOAD, WINDOWS_PING_PAYLOAD, PING_INTERVAL_S = 56, 32, 1.0
ECHO_REQUEST = {4: 8, 6: 128}


@dataclass
class Panel:
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _ns(iso: str | None) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * NS) if iso else 0


def _flows(con, where: str, params: list) -> dict[str, np.ndarray]:
    """Flow columns (times as ns) of the flows matching ``where``, in start order."""
    rows = con.execute(f"SELECT epoch_ns(ts), epoch_ns(last_ts), orig_h, resp_h, resp_p, proto, orig_bytes, "
                       f"resp_bytes, conn_state FROM flows WHERE {where} ORDER BY ts", params).fetchall()
    names = ("ts", "last_ts", "orig_h", "resp_h", "resp_p", "proto", "orig_bytes", "resp_bytes", "state")
    cols = list(zip(*rows)) if rows else [()] * len(names)
    return {n: np.array(c, dtype=object if n in ("orig_h", "resp_h", "proto", "state") else np.int64)
            for n, c in zip(names, cols)}


def beacon(a: dict, con, packets) -> Panel:
    ev, src, dst = a["flowsense"]["evidence"], a["source"]["ip"], a["destination"]["ip"]
    where, params = "orig_h = ? AND ts BETWEEN ? AND ?", [src, a["event"]["start"], a["event"]["end"]]
    if dst:
        where += " AND resp_h = ?" + (" AND resp_p = ?" if a["destination"]["port"] else "")
        params += [dst] + ([a["destination"]["port"]] if a["destination"]["port"] else [])
    elif ev.get("sample_addresses"):
        where += f" AND resp_h IN ({', '.join('?' * len(ev['sample_addresses']))})"
        params += ev["sample_addresses"]
    f = _flows(con, where, params)
    panel = Panel()
    if len(f["ts"]) >= 2:
        gaps = np.diff(f["ts"]) / NS
        panel.plots.append(plots.histogram(gaps, "seconds between connection starts", "Intervals",
                                           refs=((ev["period_s"], f"period {ev['period_s']:.1f} s"),)))
        panel.plots.append(plots.timeline([("bytes sent per connection", f["ts"], f["orig_bytes"])], int(f["ts"][0]),
                                          "bytes", "Check-ins over time"))
    elif ev.get("series", "").startswith("check-ins"):
        panel.notes.append("Check-ins inside one long session: the flow table holds one row, so no interval plot.")
    return panel


def icmp_tunnel(a: dict, con, packets) -> Panel:
    ev = a["flowsense"]["evidence"]
    panel = Panel()
    if packets is None:
        panel.notes.append("Capture not at hand: give it with --pcap to draw the packet sizes and intervals.")
        return panel
    req = packets[_sent_by(packets, a["source"]["ip"]) & _is_request(packets, ev.get("conversation", {}))]
    if len(req) == 0:
        return panel
    panel.plots.append(plots.histogram(req["l4_len"], "payload bytes per request", "Payload sizes vs ordinary ping",
                                       refs=((LINUX_PING_PAYLOAD, "Linux/macOS ping (56 B)"),
                                             (WINDOWS_PING_PAYLOAD, "Windows ping (32 B)"))))
    if len(req) >= 2:
        panel.plots.append(plots.histogram(np.diff(req["ts"]) / NS, "seconds between requests",
                                           "Request intervals vs ordinary ping",
                                           refs=((PING_INTERVAL_S, "ping default 1 s"),)))
    return panel


def _sent_by(pk: np.ndarray, address: str) -> np.ndarray:
    hi, lo = to_halves(address)
    return (pk["src_hi"] == hi) & (pk["src_lo"] == lo)


def _is_request(pk: np.ndarray, conv: dict) -> np.ndarray:
    """Echo requests of the alert's conversation (its echo id when it names one)."""
    want = np.where(pk["ip_ver"] == 6, ECHO_REQUEST[6], ECHO_REQUEST[4])
    mask = (pk["icmp_type"] == want) & ((pk["proto"] == 1) | (pk["proto"] == 58))
    if conv.get("echo_id") is not None:
        mask &= pk["icmp_id"] == conv["echo_id"]
    return mask


def dns_tunnel(a: dict, con, packets) -> Panel:
    from publicsuffixlist import PublicSuffixList

    ev = a["flowsense"]["evidence"]
    panel = Panel()
    rows = con.execute("SELECT qname, count(*) FROM dns WHERE qr = 0 AND src_h = ? GROUP BY qname ORDER BY qname",
                       [a["source"]["ip"]]).fetchall()
    if not rows:
        return panel
    psl = PublicSuffixList()
    per_domain: dict[str, int] = {}
    for name, n in rows:
        domain = psl.privatesuffix(name.lower().rstrip(".")) or name
        per_domain[domain] = per_domain.get(domain, 0) + n
    top = sorted(per_domain.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    panel.plots.append(plots.bars([d for d, _ in top], [n for _, n in top], "queries", "Queries per domain",
                                  highlight={ev.get("domain")}))
    zone = (ev.get("zone") or ev.get("domain") or "").lower()
    names = [r[0] for r in rows][:: max(1, len(rows) // 3000)]
    mine = np.array([n.lower().rstrip(".").endswith(zone) for n in names]) if zone else np.zeros(len(names), bool)
    length = np.array([len(n) for n in names])
    entropy = np.array([_entropy(n.split(".")[0]) for n in names])
    panel.plots.append(plots.scatter([(ev.get("zone") or "alert domain", length[mine], entropy[mine]),
                                      ("other names", length[~mine], entropy[~mine])],
                                     "name length (characters)", "first-label entropy (bits/char)",
                                     "Query names of this client"))
    return panel


def _entropy(text: str) -> float:
    if not text:
        return 0.0
    _, counts = np.unique(np.frombuffer(text.encode(), np.uint8), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def deny_fallback(a: dict, con, packets) -> Panel:
    ev, src = a["flowsense"]["evidence"], a["source"]["ip"]
    blocked, fb = ev["blocked"], ev["fallback"]
    t_block, t_fb = _ns(blocked["first"]), _ns(fb["first"])
    lo, hi = min(t_block, t_fb) - 120 * NS, max(_ns(blocked["last"]), t_fb) + 900 * NS
    lanes = []
    denies = con.execute("SELECT epoch_ns(ts) FROM denies WHERE src_h = ? AND epoch_ns(ts) BETWEEN ? AND ? "
                         "ORDER BY ts", [src, lo, hi]).fetchall()
    if denies:
        lanes.append(("firewall denies", np.array([d[0] for d in denies]), np.array([d[0] for d in denies])))
    for label, channels in (("blocked target", blocked.get("targets", [])), ("fallback", [fb]),
                            ("other new channels", ev.get("other_channels", []))):
        starts, ends = [], []
        for ch in channels:
            f = _flows(con, "orig_h = ? AND resp_h = ? AND proto = ? AND epoch_ns(ts) BETWEEN ? AND ?"
                       + (" AND resp_p = ?" if ch.get("port") else ""),
                       [src, ch["destination"], ch["transport"], lo, hi] + ([ch["port"]] if ch.get("port") else []))
            starts += list(f["ts"])
            ends += list(f["last_ts"])
        if starts:
            lanes.append((label, np.array(starts), np.array(ends)))
    panel = Panel()
    if lanes:
        t0 = min(int(s.min()) for _, s, _ in lanes)
        panel.plots.append(plots.lanes(lanes, t0, "Block, then fallback"))
    return panel


def scan(a: dict, con, packets) -> Panel:
    src = a["source"]["ip"]
    f = _flows(con, "orig_h = ? AND ts BETWEEN ? AND ?", [src, a["event"]["start"], a["event"]["end"]])
    panel = Panel()
    if len(f["ts"]):
        targets = [f"{h}:{p}" for h, p in zip(f["resp_h"], f["resp_p"])]
        _, first = np.unique(targets, return_index=True)
        new = np.zeros(len(targets), np.int64)
        new[first] = 1
        panel.plots.append(plots.timeline([("distinct host:port targets", f["ts"], np.cumsum(new))], int(f["ts"][0]),
                                          "targets so far", "Scan fan-out over time", step=True))
    return panel


def egress(a: dict, con, packets) -> Panel:
    src, dst = a["source"]["ip"], a["destination"]["ip"]
    panel = Panel()
    if packets is not None and len(packets):
        series = [(f"bytes sent by {host}", p["ts"], np.cumsum(p["ip_len"].astype(np.int64)))
                  for host in (src, dst) if len(p := packets[_sent_by(packets, host)])]
        panel.plots.append(plots.timeline(series, int(packets["ts"][0]), "cumulative IP bytes", "Volume over time",
                                          step=True))
    else:
        f = _flows(con, "orig_h = ? AND resp_h = ?", [src, dst])
        if len(f["ts"]):
            panel.plots.append(plots.lanes([("flows", f["ts"], f["last_ts"])], int(f["ts"][0]),
                                           "Flows between the hosts"))
    return panel


PANELS = {"beacon": beacon, "icmp_tunnel": icmp_tunnel, "dns_tunnel": dns_tunnel, "deny_fallback": deny_fallback,
          "scan": scan, "egress_sustained": egress, "egress_proxy": egress}
PACKET_RULES = ("icmp_tunnel", "egress_sustained", "egress_proxy")


def build(a: dict, con, packets) -> Panel:
    """The alert's plots (none for a rule whose evidence says it all)."""
    make = PANELS.get(a["rule"]["id"])
    try:
        return make(a, con, packets) if make else Panel()
    except (KeyError, TypeError, ValueError) as err:  # an alert from another version: show it without plots
        return Panel(notes=[f"no plots: the evidence lacks what this panel draws ({err!r})"])
