"""Rare or mismatched port/protocol pairing (AN1258; T1571).

Verdicts, from the protocol actually spoken (``features.app``) against the port it used:
  foreign      an app on a port another app owns (SSH on 443, HTTP on 22, MySQL on 5432)
  not_app      payload that is no known protocol on a port that promises one (not DNS on 53)
  nonstandard  a known app on an unassigned port (HTTP on 8001, TLS on 4433)
  mdns_out     DNS on 5353 to a non-local, non-multicast address
  rare         an unknown protocol on an unassigned port that few hosts use (needs a reference
               with enough hosts: a baseline, or else the capture itself, said in the evidence)
The rarity of the pairing across hosts adds to the verdict's base score.
"""

from __future__ import annotations

import numpy as np

from flowsense.alerts import Alert
from flowsense.features.app import APPS, DNS, NTP, PROMISED, STANDARD, STANDARD_PORTS, UNKNOWN
from flowsense.features.pairing import pairing_keys
from flowsense.flows.table import ST_MIDSTREAM
from flowsense.nets import AddressSet, addr_str

NAME = "port_pairing"
FOREIGN, NOT_APP, NONSTANDARD, MDNS_OUT, RARE = 1, 2, 3, 4, 5
VERDICTS = {FOREIGN: "foreign", NOT_APP: "not_app", NONSTANDARD: "nonstandard", MDNS_OUT: "mdns_out", RARE: "rare"}
BASE_SCORE = {FOREIGN: 0.75, NOT_APP: 0.6, NONSTANDARD: 0.5, MDNS_OUT: 0.6, RARE: 0.35}
RARITY_BONUS = 0.2
RARE_MIN_FLOWS = 3
# Over UDP only these promises are strict enough to call "not that app": UDP/443 also carries
# DTLS/STUN/WebRTC, UDP/5060 proprietary VoIP, ...
STRICT_UDP = (DNS, NTP)
LOCAL_MULTICAST = AddressSet(("224.0.0.0/4", "ff00::/8"))
GROUP = np.dtype([("orig_hi", "u8"), ("orig_lo", "u8"), ("resp_hi", "u8"), ("resp_lo", "u8"), ("proto", "u1"),
                  ("resp_p", "u2"), ("app", "u1"), ("verdict", "u1")])


def verdicts(f: np.ndarray, internal: AddressSet) -> np.ndarray:
    """The verdict per flow (0: none), rarity aside."""
    tr = (f["proto"] == 17).astype(np.intp)
    app, port = f["app"].astype(np.intp), f["resp_p"].astype(np.intp)
    # either end's port may be the service's: a capture that starts with the answer orients the
    # flow from the server
    standard = STANDARD[tr, app, port] | STANDARD[tr, app, f["orig_p"].astype(np.intp)]
    promised = PROMISED[tr, port]
    known = app > UNKNOWN
    out = np.zeros(len(f), np.uint8)
    out[known & ~standard & (promised == 0)] = NONSTANDARD
    out[known & ~standard & (promised != 0) & (promised != app)] = FOREIGN
    strict = (f["proto"] == 6) | np.isin(promised, STRICT_UDP)
    out[(app == UNKNOWN) & (promised != 0) & strict & ((f["state"] & ST_MIDSTREAM) == 0)
        & (f["orig_head_len"] > 0)] = NOT_APP
    outside = ~internal.contains(f["resp_hi"], f["resp_lo"]) & ~LOCAL_MULTICAST.contains(f["resp_hi"], f["resp_lo"])
    out[(app == DNS) & (port == 5353) & outside] = MDNS_OUT
    out[~np.isin(f["proto"], (6, 17))] = 0
    return out


def _name(app: int, proto: int, port: int, verdict: int) -> str:
    where = f"{'TCP' if proto == 6 else 'UDP'}/{port}"
    tr = int(proto == 17)
    if verdict == NOT_APP:
        return f"Not {APPS[PROMISED[tr, port]].upper()} on {where} (unknown protocol)"
    if verdict == RARE:
        return f"Unknown protocol on rare port {where}"
    if verdict == MDNS_OUT:
        return f"DNS on {where} to an outside address"
    label = APPS[app].upper()
    return f"{label} on {where}" if verdict == FOREIGN else f"{label} on non-standard port {where}"


def _hex(head: int, n: int) -> str:
    return int(head).to_bytes(8, "big")[:int(n)].hex()


def detect(ev) -> list[Alert]:
    f = ev.flows
    if not len(f):
        return []
    cfg, ctx = ev.config.pairing, ev.context
    reference, source = ev.pairing_reference
    keys = pairing_keys(f)
    prevalence = reference.prevalence(keys)
    bits = reference.rarity_bits(prevalence, cfg.alpha)
    confidence = min(1.0, reference.hosts / cfg.confident_hosts)
    rare = (prevalence <= max(1.0, cfg.rare_fraction * reference.hosts))
    verdict = verdicts(f, ctx.internal)
    external = ~ctx.internal.contains(f["resp_hi"], f["resp_lo"])
    promised = PROMISED[(f["proto"] == 17).astype(np.intp), f["resp_p"].astype(np.intp)]
    # An unknown protocol alone is only worth a word over TCP, below the ephemeral range, with both
    # sides talking, and reused (RARE_MIN_FLOWS): media, games and P2P use random UDP/high ports.
    rare_only = (verdict == 0) & (f["app"] == UNKNOWN) & (promised == 0) & rare & external & (confidence >= 0.5) \
        & (f["proto"] == 6) & (f["resp_p"] < 49152) & (f["orig_head_len"] > 0) & (f["resp_head_len"] > 0)
    verdict[rare_only] = RARE
    if ctx.allow_ports:
        verdict[np.isin(f["resp_p"], list(ctx.allow_ports))] = 0
    hits = np.flatnonzero(verdict)
    if not len(hits):
        return []
    keyed = np.empty(len(hits), GROUP)
    for name in ("orig_hi", "orig_lo", "resp_hi", "resp_lo", "proto", "resp_p", "app"):
        keyed[name] = f[name][hits]
    keyed["verdict"] = verdict[hits]
    groups, first, inverse = np.unique(keyed, return_index=True, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.searchsorted(inverse.ravel()[order], np.arange(len(groups) + 1))
    first_seen_by_host = ~reference.host_knows(f["orig_hi"], f["orig_lo"], keys) if ctx.baseline is not None \
        else None
    # per-group totals in one pass each (members of a group are contiguous in ``order``)
    members_sorted, starts = hits[order], bounds[:-1]
    n_flows = np.diff(bounds)
    orig_bytes = np.add.reduceat(f["orig_bytes"][members_sorted], starts)
    resp_bytes = np.add.reduceat(f["resp_bytes"][members_sorted], starts)
    first_ts = np.minimum.reduceat(f["ts"][members_sorted], starts)
    last_ts = np.maximum.reduceat(f["last_ts"][members_sorted], starts)
    alerts = []
    for g, row in enumerate(groups):
        i = hits[first[g]]
        v = int(row["verdict"])
        if v == RARE and n_flows[g] < RARE_MIN_FLOWS:
            continue
        bonus = RARITY_BONUS * confidence if rare[i] else 0.0
        score = min(1.0, BASE_SCORE[v] + bonus + (0.3 * confidence if v == RARE else 0.0))
        app, proto, port = int(row["app"]), int(row["proto"]), int(row["resp_p"])
        evidence = {
            "verdict": VERDICTS[v],
            "app": APPS[app],
            "standard_ports_for_app": list(STANDARD_PORTS[APPS[app]][0]) if APPS[app] in STANDARD_PORTS else [],
            "port_promises": APPS[PROMISED[int(proto == 17), port]] if PROMISED[int(proto == 17), port] else None,
            "flows": int(n_flows[g]),
            "orig_bytes": int(orig_bytes[g]),
            "resp_bytes": int(resp_bytes[g]),
            "orig_first_bytes_hex": _hex(f["orig_head"][i], f["orig_head_len"][i]),
            "resp_first_bytes_hex": _hex(f["resp_head"][i], f["resp_head_len"][i]),
            "prevalence": {"hosts_using_pairing": int(prevalence[i]), "hosts_in_reference": reference.hosts,
                           "rarity_bits": round(float(bits[i]), 2),
                           "rare": bool(rare[i]), "confidence": round(confidence, 2), "reference": source},
            "score_parts": {"verdict_base": BASE_SCORE[v], "rarity_bonus": round(bonus, 3)},
            "thresholds": {"rare_fraction": cfg.rare_fraction, "confident_hosts": cfg.confident_hosts,
                           "alpha": cfg.alpha},
        }
        if first_seen_by_host is not None:
            evidence["first_use_by_host"] = bool(first_seen_by_host[i])
        src, dst = (int(row["orig_hi"]), int(row["orig_lo"])), (int(row["resp_hi"]), int(row["resp_lo"]))
        alerts.append(Alert(
            rule=NAME, start_ns=int(first_ts[g]), end_ns=int(last_ts[g]), src=src,
            dst=dst, sport=None, dport=port, transport="tcp" if proto == 6 else "udp", score=score,
            identifier=f"{NAME}:{addr_str(*src)}-{addr_str(*dst)}-{proto}/{port}-{APPS[app]}",
            name=_name(app, proto, port, v), evidence=evidence, grade=ev.grade))
    return alerts
