"""Evidence that a host was blocked: firewall deny rows, and what the traffic itself shows —
a reset from the far side to a SYN (REJ), SYNs nobody answers, ICMP administratively-prohibited
(unreachable codes 9/10/13; ICMPv6 destination-unreachable code 1).  One vectorised pass over the
run's FLOW and DENY rows gives BLOCK events, joined per host by ``deny_fallback``."""

from __future__ import annotations

import numba as nb
import numpy as np

from flowsense.flows.table import ST_RST_RESP, ST_SYN, ST_SYNACK

KINDS = ("deny_log", "rst_from_far_side", "unanswered_syn", "icmp_prohibited")
DENY_LOG, RST, UNANSWERED, ICMP_PROHIBITED = range(len(KINDS))
BLOCK = np.dtype([("ts", "i8"), ("host_hi", "u8"), ("host_lo", "u8"), ("dst_hi", "u8"), ("dst_lo", "u8"),
                  ("dport", "u2"), ("proto", "u1"), ("kind", "u1"), ("ref", "i8")])


def _events(n: int, kind: int) -> np.ndarray:
    out = np.zeros(n, BLOCK)
    out["kind"] = kind
    return out


def from_flows(f: np.ndarray) -> np.ndarray:
    """BLOCK events the traffic shows; ``ref`` is the flow's row index (-1 when unknown)."""
    tcp = f["proto"] == 6
    st = f["state"]
    syn_only = tcp & ((st & ST_SYN) != 0) & ((st & ST_SYNACK) == 0)
    rejected = syn_only & ((st & ST_RST_RESP) != 0)
    unanswered = syn_only & (f["resp_pkts"] == 0)
    icmp4 = (f["proto"] == 1) & (f["icmp_type"] == 3) & np.isin(f["icmp_code"], (9, 10, 13))
    icmp6 = (f["proto"] == 58) & (f["icmp_type"] == 1) & (f["icmp_code"] == 1)
    parts = []
    for mask, kind in ((rejected, RST), (unanswered, UNANSWERED)):
        idx = np.flatnonzero(mask)
        e = _events(len(idx), kind)
        e["ts"], e["host_hi"], e["host_lo"] = f["ts"][idx], f["orig_hi"][idx], f["orig_lo"][idx]
        e["dst_hi"], e["dst_lo"], e["dport"], e["proto"] = f["resp_hi"][idx], f["resp_lo"][idx], f["resp_p"][idx], 6
        e["ref"] = idx
        parts.append(e)
    idx = np.flatnonzero(icmp4 | icmp6)
    e = _events(len(idx), ICMP_PROHIBITED)   # sent by a router to the host: the host is the responder
    e["ts"], e["host_hi"], e["host_lo"], e["proto"] = f["ts"][idx], f["resp_hi"][idx], f["resp_lo"][idx], 0
    e["ref"] = idx
    parts.append(e)
    return np.concatenate(parts)


def from_denies(rows: np.ndarray) -> np.ndarray:
    """BLOCK events of firewall deny rows; ``ref`` is the DENY row index."""
    e = _events(len(rows), DENY_LOG)
    e["ts"], e["host_hi"], e["host_lo"] = rows["ts"], rows["src_hi"], rows["src_lo"]
    e["dst_hi"], e["dst_lo"], e["proto"] = rows["dst_hi"], rows["dst_lo"], rows["proto"]
    e["dport"] = np.where(np.isin(rows["proto"], (6, 17, 132)), rows["dport"], 0)
    e["ref"] = np.arange(len(rows))
    return e


MAX_QUOTED = 100_000  # ICMP-prohibited events kept per run (more are counted, not kept)


class ProhibitedQuotes:
    """ICMP administratively-prohibited messages with the header they quote: the blocked host,
    destination, transport and port, which the flow rows alone cannot tell.  These messages are
    rare, so the batch is filtered with NumPy and only the matches are read one by one."""

    def __init__(self, context=None):
        self.events: list[tuple] = []
        self.dropped = 0

    def update(self, batch) -> None:
        pk = batch.packets
        for r in pk[_prohibited(pk)]:
            quoted = _quoted(bytes(batch.blob[r["pl_off"]:r["pl_off"] + r["pl_len"]]))
            if quoted is None:
                continue
            if len(self.events) >= MAX_QUOTED:
                self.dropped += 1
                continue
            self.events.append((int(r["ts"]), *quoted))

    def rows(self) -> np.ndarray:
        e = _events(len(self.events), ICMP_PROHIBITED)
        for i, (ts, host, dst, proto, dport) in enumerate(self.events):
            e[i]["ts"], e[i]["proto"], e[i]["dport"] = ts, proto, dport
            e[i]["host_hi"], e[i]["host_lo"] = host
            e[i]["dst_hi"], e[i]["dst_lo"] = dst
        e["ref"] = -1
        return e


@nb.njit(cache=True, nogil=True)
def _prohibited(pk):
    """Row indices of ICMP administratively-prohibited messages that quote a header."""
    out = np.empty(pk.shape[0], np.int64)
    n = 0
    for i in range(pk.shape[0]):
        r = pk[i]
        if r.pl_len >= 28 and ((r.proto == 1 and r.icmp_type == 3 and (r.icmp_code == 9 or r.icmp_code == 10 or
                                                                       r.icmp_code == 13))
                               or (r.proto == 58 and r.icmp_type == 1 and r.icmp_code == 1)):
            out[n] = i
            n += 1
    return out[:n]


def _quoted(payload: bytes):
    """(src, dst, proto, dport) of the IP header an ICMP error quotes, or None."""
    import ipaddress

    from flowsense.nets import to_halves
    if payload and payload[0] >> 4 == 4 and len(payload) >= 20:
        ihl = (payload[0] & 15) * 4
        proto = payload[9]
        src, dst = ipaddress.IPv4Address(payload[12:16]), ipaddress.IPv4Address(payload[16:20])
        rest = payload[ihl:]
    elif payload and payload[0] >> 4 == 6 and len(payload) >= 40:
        proto = payload[6]
        src, dst = ipaddress.IPv6Address(payload[8:24]), ipaddress.IPv6Address(payload[24:40])
        rest = payload[40:]
    else:
        return None
    dport = int.from_bytes(rest[2:4], "big") if proto in (6, 17, 132) and len(rest) >= 4 else 0
    return to_halves(str(src)), to_halves(str(dst)), proto, dport


def block_events(flows: np.ndarray, deny_rows: np.ndarray, quoted: np.ndarray | None = None) -> np.ndarray:
    """All BLOCK events in time order.  With the quoted headers of ICMP prohibited messages
    (packet grade) those replace the flow-derived ICMP events, which cannot name the target."""
    from_traffic = from_flows(flows)
    if quoted is not None:
        from_traffic = np.concatenate([from_traffic[from_traffic["kind"] != ICMP_PROHIBITED], quoted])
    events = np.concatenate([from_traffic, from_denies(deny_rows)])
    return events[np.argsort(events["ts"], kind="stable")]
