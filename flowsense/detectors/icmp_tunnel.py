"""Tunnel-like ICMP (AN1258; T1095 Non-Application Layer Protocol).

Packet grade: one finding per ICMP conversation (orig = echo-request sender, resp, echo id; see
``flowsense.features.icmp``).  What separates a tunnel from a ping is the *content*: every stock
ping fills its payload with a fixed pattern (Linux/BSD/macOS incrementing bytes after a timestamp,
Windows "abcdefghijklmnopqrstuvw...", zeros) and the far end echoes it byte for byte (RFC 792).
Fixed-size, regularly timed, low-entropy pings are what monitoring looks like, so size, timing and
volume never raise a finding on their own: they only add weight to content evidence.

Score (each subscore is "how sure this evidence alone makes us", combined by noisy-OR,
``1 - prod(1 - s)``):
  tool      0.90 for one packet carrying a tunnel tool's header (ptunnel/ptunnel-ng magic, the
            ptunnel layout with a custom magic, hans, icmptunnel) or an inner IPv4/IPv6 header,
            rising to 0.97 at 5 packets: chance matches are ~2^-32 (magics) or ~2^-20 (an IPv4
            header with a valid checksum and a length that fits);
  extra     0.6 .. 0.9 for data in timestamp/information/address-mask messages beyond what the
            message defines (no stack sends that);
  content   share of judged payloads that match no OS pattern x (0.45 base + 0.20 for high byte
            entropy aggregated over the conversation - normalised by the most a sample of that size
            can show, credit 0.5 -> 0.9, and only as far as 128 B -> 2 KiB (log) were seen: the
            entropy of one small packet means nothing - + 0.10 for the number of such packets,
            1 -> 100, log + 0.10 when the bytes are >= 90 % printable text - a covert message);
  mismatch  share of request/reply pairs (same id and sequence) whose payloads differ x (0.35 for
            one pair, rising to 0.80 at ~32 pairs, log), halved when every judged payload is an OS
            fill (a device answering with its own fill is odd, not a tunnel: alone it stays < 0.5);
  behaviour only when one of the above is non-zero and the conversation has ``min_packets``:
            0.5 x (0.35 volume (1 KB -> 1 MB, log) + 0.25 payload-size entropy (0 -> 2.5 bits)
            + 0.20 request-interval entropy (0 -> 3 bits) + 0.20 byte asymmetry between directions).
So one packet of random non-OS payload scores 0.45 (a finding below the default alert floor of
0.5: nmap --data-length and fping --random send that), a pair carrying printable text ~0.57, a
handful of random echoed payloads ~0.7, random non-echoed payloads >= 0.9, a tool header >= 0.9,
and a ping with an OS pattern 0 however long, large or regular it is.

Flow grade (NetFlow, no payload): host pairs' echo traffic, requests and replies paired across
unidirectional records.  A ping's replies have the size of its requests, so the score rests on
the difference of mean packet size between directions, weighted by mean size and volume:
``asym x (0.45 + 0.25 large + 0.30 volume)``; size and volume alone stay below 0.45.  Conservative
on purpose: tunnels that mirror sizes (random fill both ways) are not seen at this grade.

Allowlisted pingers (``[allowlist].pingers``) and hosts never raise a finding.
"""

from __future__ import annotations

import numpy as np

from flowsense.alerts import Alert
from flowsense.features._kernels import entropy_bits_rows
from flowsense.features.icmp import (
    FAM_ECHO,
    FAMILIES,
    IVL_OFF,
    NBINS,
    PATTERNS,
    T_HANS,
    T_ICMPTUNNEL,
    T_INNER_IPV4,
    T_INNER_IPV6,
    T_PTUNNEL,
    T_PTUNNEL_LAYOUT,
    T_PTUNNEL_NG,
    TOOLS,
    IcmpConversations,
)
from flowsense.nets import addr_str

NAME = "icmp_tunnel"

# --- packet grade weights (see the module docstring) ---
TOOL_BASE, TOOL_TOP, TOOL_FULL_PKTS = 0.90, 0.97, 5
EXTRA_BASE, EXTRA_TOP, EXTRA_FULL_PKTS = 0.6, 0.9, 10
CONTENT_BASE, CONTENT_ENTROPY, CONTENT_AMOUNT, CONTENT_TEXT = 0.45, 0.20, 0.10, 0.10
ENTROPY_LOW, ENTROPY_HIGH = 0.5, 0.9          # normalised byte entropy: no credit below, full above
ENTROPY_SAMPLE_LOW_B, ENTROPY_SAMPLE_HIGH_B = 128, 2048   # ... and only as far as enough bytes were seen
AMOUNT_FULL_PKTS = 100
TEXT_SHARE = 0.9                              # printable share that makes a payload "text"
MISMATCH_BASE, MISMATCH_TOP, MISMATCH_FULL_PAIRS = 0.35, 0.80, 32
MISMATCH_PATTERN_DAMP = 0.5                   # share of the mismatch subscore lost when all payloads are OS fills
BEHAVIOUR_WEIGHT = 0.5
VOLUME_LOW_B, VOLUME_HIGH_B = 1e3, 1e6
SIZE_ENTROPY_FULL, INTERVAL_ENTROPY_FULL = 2.5, 3.0
# --- flow grade ---
FLOW_ASYM_LOW, FLOW_ASYM_HIGH = 0.1, 0.5
FLOW_LARGE_LOW, FLOW_LARGE_HIGH = 64, 512    # mean payload bytes per packet
FLOW_VOLUME_LOW_B, FLOW_VOLUME_HIGH_B = 1e4, 1e6

PRINTABLE = np.zeros(256, bool)
PRINTABLE[0x20:0x7F] = True
PRINTABLE[[0x09, 0x0A, 0x0D]] = True
TOOL_NAMES = {T_PTUNNEL: "ptunnel", T_PTUNNEL_NG: "ptunnel-ng", T_PTUNNEL_LAYOUT: "ptunnel (custom magic)",
              T_HANS: "hans", T_ICMPTUNNEL: "icmptunnel", T_INNER_IPV4: "IP over ICMP",
              T_INNER_IPV6: "IPv6 over ICMP"}


class Features:
    """Packet-grade extractor: the ICMP conversation table, one Numba call per batch."""

    def __init__(self, context):
        cfg = context.config.icmp_tunnel
        self.table = IcmpConversations(cfg.capacity, cfg.histogram_rows, cfg.retired_max)

    def update(self, batch) -> None:
        self.table.update(batch.packets, batch.blob)

    def stats(self) -> dict:
        return self.table.stats()


def _ramp(x, lo, hi):
    return np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _log_ramp(x, lo, hi):
    x = np.maximum(np.asarray(x, np.float64), 1e-12)
    return np.clip(np.log10(x / lo) / np.log10(hi / lo), 0.0, 1.0)


def _popcount(words: np.ndarray) -> np.ndarray:
    w = words.astype(np.uint64)
    out = np.zeros(len(w), np.int64)
    for k in range(64):
        out += ((w >> np.uint64(k)) & np.uint64(1)).astype(np.int64)
    return out


def _distinct_sizes(conv: np.ndarray) -> np.ndarray:
    """Linear-counting estimate of distinct payload sizes from the 128-bit size map (exact while
    sizes do not collide; within a few % up to ~100 sizes)."""
    ones = _popcount(conv["size_bits0"]) + _popcount(conv["size_bits1"])
    zeros = np.maximum(128 - ones, 1)
    est = -128.0 * np.log(zeros / 128.0)
    return np.maximum(np.rint(est), ones).astype(np.int64)


def _allowed(ctx, hi_a, lo_a, hi_b, lo_b) -> np.ndarray:
    out = np.zeros(len(hi_a), bool)
    for aset in (ctx.pingers, ctx.allow_hosts):
        if aset:
            out |= aset.contains(hi_a, lo_a) | aset.contains(hi_b, lo_b)
    return out


def packet_scores(conv, hists, byte_hist, min_packets: int) -> dict:
    """Every feature and subscore of every conversation, as arrays (NumPy over all rows)."""
    f = {}
    pkts = conv["req_pkts"].astype(np.int64) + conv["rep_pkts"].astype(np.int64)
    req_b, rep_b = conv["req_bytes"].astype(np.float64), conv["rep_bytes"].astype(np.float64)
    total_b = req_b + rep_b
    nonpat = conv["other_pkts"].astype(np.int64) + conv["tool_pkts"].astype(np.int64)
    judged = nonpat + conv["pattern_pkts"].astype(np.int64)
    f["pkts"], f["total_b"], f["nonpat"], f["judged"] = pkts, total_b, nonpat, judged
    f["share_nonpat"] = np.where(judged > 0, nonpat / np.maximum(judged, 1), 0.0)
    f["size_entropy"] = entropy_bits_rows(np.ascontiguousarray(hists[:, :NBINS]))
    f["interval_entropy"] = entropy_bits_rows(np.ascontiguousarray(hists[:, IVL_OFF:IVL_OFF + NBINS]))
    f["intervals"] = hists[:, IVL_OFF:IVL_OFF + NBINS].sum(axis=1).astype(np.int64)
    f["distinct_sizes"] = _distinct_sizes(conv)
    nbytes = byte_hist.sum(axis=1).astype(np.int64)
    f["hist_bytes"] = nbytes
    h = entropy_bits_rows(byte_hist)
    cap = np.log2(np.clip(nbytes, 2, 256).astype(np.float64))
    f["byte_entropy"] = h
    f["byte_entropy_norm"] = np.where(nbytes >= 2, h / cap, 0.0)
    f["printable"] = np.where(nbytes > 0, byte_hist[:, PRINTABLE].sum(axis=1) / np.maximum(nbytes, 1), 0.0)
    pairs = conv["matched"].astype(np.int64) + conv["mismatched"].astype(np.int64)
    f["pairs"] = pairs
    f["mismatch_ratio"] = np.where(pairs > 0, conv["mismatched"] / np.maximum(pairs, 1), 0.0)
    f["byte_asym"] = np.where(total_b > 0, np.abs(req_b - rep_b) / np.maximum(total_b, 1), 0.0)

    tool_n, extra_n = conv["tool_pkts"].astype(np.int64), conv["extra_pkts"].astype(np.int64)
    s_tool = np.where(tool_n > 0, TOOL_BASE + (TOOL_TOP - TOOL_BASE) * _ramp(tool_n, 1, TOOL_FULL_PKTS), 0.0)
    s_extra = np.where(extra_n > 0, EXTRA_BASE + (EXTRA_TOP - EXTRA_BASE) * _ramp(extra_n, 1, EXTRA_FULL_PKTS), 0.0)
    f["entropy_confidence"] = _log_ramp(np.maximum(nbytes, 1), ENTROPY_SAMPLE_LOW_B, ENTROPY_SAMPLE_HIGH_B)
    ent_term = np.where(nbytes >= 2, _ramp(f["byte_entropy_norm"], ENTROPY_LOW, ENTROPY_HIGH), 0.0) * \
        f["entropy_confidence"]
    amount_term = _log_ramp(np.maximum(nonpat, 1), 1, AMOUNT_FULL_PKTS)
    text_term = (f["printable"] >= TEXT_SHARE) & (nbytes > 0)
    s_content = f["share_nonpat"] * (CONTENT_BASE + CONTENT_ENTROPY * ent_term + CONTENT_AMOUNT * amount_term
                                     + CONTENT_TEXT * text_term)
    s_content = np.where(nonpat > 0, s_content, 0.0)
    # replies that differ from requests while both sides carry OS fill patterns (a device answering
    # with its own fill, truncation) count half: that alone must not raise a finding
    damp = np.where(judged > 0, 1.0 - MISMATCH_PATTERN_DAMP * (1.0 - f["share_nonpat"]), 1.0)
    s_mismatch = np.where(pairs > 0, damp * f["mismatch_ratio"] * (
        MISMATCH_BASE + (MISMATCH_TOP - MISMATCH_BASE) * _log_ramp(np.maximum(pairs, 1), 1, MISMATCH_FULL_PAIRS)), 0.0)
    volume = _log_ramp(np.maximum(total_b, 1), VOLUME_LOW_B, VOLUME_HIGH_B)
    variety = np.clip(f["size_entropy"] / SIZE_ENTROPY_FULL, 0, 1)
    timing = np.where(f["intervals"] >= 2, np.clip(f["interval_entropy"] / INTERVAL_ENTROPY_FULL, 0, 1), 0.0)
    s_beh = BEHAVIOUR_WEIGHT * (0.35 * volume + 0.25 * variety + 0.20 * timing + 0.20 * f["byte_asym"])
    gate = (s_tool > 0) | (s_extra > 0) | (s_content > 0) | (s_mismatch > 0)
    s_beh = np.where(gate & (pkts >= min_packets), s_beh, 0.0)
    score = 1.0 - (1 - s_tool) * (1 - s_extra) * (1 - s_content) * (1 - s_mismatch) * (1 - s_beh)
    f.update(s_tool=s_tool, s_extra=s_extra, s_content=s_content, s_mismatch=s_mismatch, s_behaviour=s_beh,
             volume=volume, variety=variety, timing=timing, score=np.clip(score, 0.0, 1.0))
    return f


def _bits(mask: int, names: dict) -> list[str]:
    return [name for bit, name in names.items() if mask & bit]


def _ascii(raw: bytes) -> str:
    return "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in raw)


def _r(x, nd=3):
    return round(float(x), nd)


def _packet_alert(c, f, i, sample, min_packets) -> Alert:
    src, dst = (int(c["orig_hi"]), int(c["orig_lo"])), (int(c["resp_hi"]), int(c["resp_lo"]))
    ident, fam = int(c["ident"]), int(c["fam"])
    duration = (int(c["last_ts"]) - int(c["first_ts"])) / 1e9
    pkts, total_b = int(f["pkts"][i]), float(f["total_b"][i])
    ev = {
        "conversation": {"family": FAMILIES[fam], "echo_id": ident, "ip_version": int(c["ip_ver"]),
                         "initiator": "echo-request sender" if fam == FAM_ECHO else "request sender"},
        "packets": {"requests": int(c["req_pkts"]), "replies": int(c["rep_pkts"])},
        "payload_bytes": {"requests": int(c["req_bytes"]), "replies": int(c["rep_bytes"])},
        "duration_s": _r(duration),
    }
    if duration > 0:
        ev["rate"] = {"packets_per_s": _r(pkts / duration), "payload_bytes_per_s": _r(total_b / duration, 1)}
    ev["payload_sizes"] = {"min": int(c["min_size"]), "max": int(c["max_size"]),
                           "distinct": int(f["distinct_sizes"][i]), "entropy_bits": _r(f["size_entropy"][i])}
    if f["intervals"][i] >= 2:
        ev["request_interval_entropy_bits"] = _r(f["interval_entropy"][i])
    content = {"judged_packets": int(f["judged"][i]), "os_pattern_packets": int(c["pattern_pkts"]),
               "non_pattern_packets": int(f["nonpat"][i]), "tool_packets": int(c["tool_pkts"]),
               "short_packets": int(c["short_pkts"]), "empty_packets": int(c["empty_pkts"]),
               "non_pattern_share": _r(f["share_nonpat"][i])}
    if int(c["pattern_kinds"]):
        content["os_patterns_seen"] = _bits(int(c["pattern_kinds"]), PATTERNS)
    if int(c["tool_kinds"]):
        content["tool_signatures"] = _bits(int(c["tool_kinds"]), TOOLS)
    if f["hist_bytes"][i] >= 2:
        content["byte_entropy_bits"] = _r(f["byte_entropy"][i])
        content["byte_entropy_normalised"] = _r(f["byte_entropy_norm"][i])
        content["byte_entropy_sample_confidence"] = _r(f["entropy_confidence"][i])
        content["byte_entropy_over_bytes"] = int(f["hist_bytes"][i])
        content["printable_share"] = _r(f["printable"][i])
    ev["content"] = content
    if fam == FAM_ECHO:
        ev["echo_match"] = {"pairs": int(f["pairs"][i]), "mismatched": int(c["mismatched"]),
                            "mismatch_ratio": _r(f["mismatch_ratio"][i]), "orphan_replies": int(c["orphans"])}
    if int(c["extra_pkts"]):
        ev["non_echo_data"] = {"packets": int(c["extra_pkts"]), "bytes": int(c["extra_bytes"])}
    n = int(c["sample_len"])
    if n:
        raw = bytes(sample[:n])
        ev["first_non_pattern_payload"] = {"hex": raw.hex(), "ascii": _ascii(raw), "payload_len": int(c["sample_size"]),
                                           "direction": "request" if int(c["sample_dir"]) == 0 else "reply",
                                           "frame": int(c["sample_frame"]), "file_id": int(c["sample_file"])}
    ev["subscores"] = {k: _r(f["s_" + k][i]) for k in ("tool", "extra", "content", "mismatch", "behaviour")}
    ev["behaviour_terms"] = {"volume": _r(f["volume"][i]), "size_variety": _r(f["variety"][i]),
                             "timing_variety": _r(f["timing"][i]), "byte_asymmetry": _r(f["byte_asym"][i])}
    ev["thresholds"] = {"min_packets_for_behaviour": min_packets, "byte_entropy_norm_credit": [ENTROPY_LOW, ENTROPY_HIGH],
                        "byte_entropy_sample_bytes": [ENTROPY_SAMPLE_LOW_B, ENTROPY_SAMPLE_HIGH_B],
                        "text_printable_share": TEXT_SHARE, "volume_bytes": [VOLUME_LOW_B, VOLUME_HIGH_B],
                        "size_entropy_full_bits": SIZE_ENTROPY_FULL,
                        "interval_entropy_full_bits": INTERVAL_ENTROPY_FULL,
                        "mismatch_damping_when_all_os_fill": MISMATCH_PATTERN_DAMP, "combine": "noisy-OR of subscores"}
    ev["reference"] = "from this capture alone (no baseline): OS ping fill patterns and tool headers are fixed facts"
    tools = _bits(int(c["tool_kinds"]), TOOL_NAMES)
    name = f"ICMP tunnel ({', '.join(tools)})" if tools else None
    tag = str(ident) if fam == FAM_ECHO else f"{FAMILIES[fam]}{ident}"
    return Alert(rule=NAME, start_ns=int(c["first_ts"]), end_ns=int(c["last_ts"]), src=src, dst=dst,
                 score=float(f["score"][i]), identifier=f"{NAME}:{addr_str(*src)}-{addr_str(*dst)}-{tag}",
                 evidence=ev, grade="packets", transport="icmp" if int(c["proto"]) == 1 else "ipv6-icmp",
                 name=name)


def _detect_packets(ev, table: IcmpConversations) -> list[Alert]:
    cfg = ev.config.icmp_tunnel
    conv, hists, sample, byte_hist = table.snapshot()
    if not len(conv):
        return []
    f = packet_scores(conv, hists, byte_hist, cfg.min_packets)
    keep = (f["score"] > 0) & ~_allowed(ev.context, conv["orig_hi"], conv["orig_lo"], conv["resp_hi"], conv["resp_lo"])
    out = [_packet_alert(conv[i], f, i, sample[i], cfg.min_packets) for i in np.flatnonzero(keep)]
    out.sort(key=lambda a: (a.start_ns, a.identifier))
    return out


# --- flow grade ------------------------------------------------------------------------------

def flow_pairs(flows: np.ndarray) -> dict:
    """ICMP echo traffic of FLOW rows summed per (requester, responder, proto).  Works for
    bidirectional rows (packet meter, biflow IPFIX: orig is the request sender) and unidirectional
    NetFlow rows (a reply-type record counts for the reverse pair's reply direction)."""
    proto, t = flows["proto"], flows["icmp_type"].astype(np.int64)
    req = ((proto == 1) & (t == 8)) | ((proto == 58) & (t == 128))
    rep = ((proto == 1) & (t == 0)) | ((proto == 58) & (t == 129))
    m = req | rep
    f, rep = flows[m], rep[m]
    if not len(f):
        return {}
    keys = np.zeros(len(f), [("a_hi", "u8"), ("a_lo", "u8"), ("b_hi", "u8"), ("b_lo", "u8"), ("proto", "u1")])
    keys["a_hi"] = np.where(rep, f["resp_hi"], f["orig_hi"])
    keys["a_lo"] = np.where(rep, f["resp_lo"], f["orig_lo"])
    keys["b_hi"] = np.where(rep, f["orig_hi"], f["resp_hi"])
    keys["b_lo"] = np.where(rep, f["orig_lo"], f["resp_lo"])
    keys["proto"] = f["proto"]
    uniq, inv = np.unique(keys, return_inverse=True)
    n = len(uniq)

    def total(col_req, col_rep):
        v = np.where(rep, f[col_rep], f[col_req]).astype(np.float64)
        return np.bincount(inv, v, n)

    out = {"keys": uniq,
           "req_pkts": total("orig_pkts", "resp_pkts"), "rep_pkts": total("resp_pkts", "orig_pkts"),
           "req_bytes": total("orig_bytes", "resp_bytes"), "rep_bytes": total("resp_bytes", "orig_bytes"),
           "records": np.bincount(inv, None, n).astype(np.int64)}
    start = np.full(n, np.iinfo(np.int64).max)
    end = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(start, inv, f["ts"])
    np.maximum.at(end, inv, f["last_ts"])
    out["start"], out["end"] = start, end
    return out


def flow_scores(p: dict, min_packets: int, min_bytes: int) -> dict:
    req_p, rep_p, req_b, rep_b = p["req_pkts"], p["rep_pkts"], p["req_bytes"], p["rep_bytes"]
    overhead = np.where(p["keys"]["proto"] == 1, 28.0, 48.0)
    mean_req = np.where(req_p > 0, req_b / np.maximum(req_p, 1), 0.0)
    mean_rep = np.where(rep_p > 0, rep_b / np.maximum(rep_p, 1), 0.0)
    both = (req_p > 0) & (rep_p > 0)
    asym = np.where(both, np.abs(mean_req - mean_rep) / np.maximum(np.maximum(mean_req, mean_rep), 1), 0.0)
    asym_term = _ramp(asym, FLOW_ASYM_LOW, FLOW_ASYM_HIGH)
    large = _ramp(np.maximum(mean_req, mean_rep) - overhead, FLOW_LARGE_LOW, FLOW_LARGE_HIGH)
    total_b = req_b + rep_b
    volume = _log_ramp(np.maximum(total_b, 1), FLOW_VOLUME_LOW_B, FLOW_VOLUME_HIGH_B)
    score = np.maximum(asym_term * (0.45 + 0.25 * large + 0.30 * volume), 0.45 * large * volume)
    eligible = (req_p >= min_packets) & (total_b >= min_bytes)
    return {"mean_req": mean_req, "mean_rep": mean_rep, "asym": asym, "asym_term": asym_term, "large": large,
            "volume": volume, "score": np.where(eligible, score, 0.0), "overhead": overhead}


def _detect_flows(ev) -> list[Alert]:
    cfg = ev.config.icmp_tunnel
    p = flow_pairs(ev.flows)
    if not p:
        return []
    s = flow_scores(p, cfg.flows_min_packets, cfg.flows_min_bytes)
    k = p["keys"]
    keep = (s["score"] > 0) & ~_allowed(ev.context, k["a_hi"], k["a_lo"], k["b_hi"], k["b_lo"])
    out = []
    for i in np.flatnonzero(keep):
        src, dst = (int(k["a_hi"][i]), int(k["a_lo"][i])), (int(k["b_hi"][i]), int(k["b_lo"][i]))
        evidence = {
            "records": int(p["records"][i]),
            "packets": {"requests": int(p["req_pkts"][i]), "replies": int(p["rep_pkts"][i])},
            "ip_bytes": {"requests": int(p["req_bytes"][i]), "replies": int(p["rep_bytes"][i])},
            "mean_packet_bytes": {"requests": _r(s["mean_req"][i], 1), "replies": _r(s["mean_rep"][i], 1)},
            "size_asymmetry": _r(s["asym"][i]),
            "subscores": {"asymmetry": _r(s["asym_term"][i]), "large_packets": _r(s["large"][i]),
                          "volume": _r(s["volume"][i])},
            "thresholds": {"asymmetry": [FLOW_ASYM_LOW, FLOW_ASYM_HIGH],
                           "mean_payload_bytes": [FLOW_LARGE_LOW, FLOW_LARGE_HIGH],
                           "volume_bytes": [FLOW_VOLUME_LOW_B, FLOW_VOLUME_HIGH_B],
                           "min_requests": cfg.flows_min_packets, "min_bytes": cfg.flows_min_bytes,
                           "score": "max(asym x (0.45 + 0.25 large + 0.30 volume), 0.45 large x volume)"},
            "reference": "flow records only (no payload): an echo's replies are the size of its requests; "
                         "echo ids are not exported, so the pair stands for all its conversations",
        }
        out.append(Alert(rule=NAME, start_ns=int(p["start"][i]), end_ns=int(p["end"][i]), src=src, dst=dst,
                         score=float(s["score"][i]), evidence=evidence, grade="flows",
                         identifier=f"{NAME}:{addr_str(*src)}-{addr_str(*dst)}-flows",
                         transport="icmp" if int(k["proto"][i]) == 1 else "ipv6-icmp"))
    out.sort(key=lambda a: (a.start_ns, a.identifier))
    return out


def detect(ev) -> list[Alert]:
    feats = ev.features.get(NAME) if ev.features else None
    if ev.grade == "packets" and feats is not None:
        return _detect_packets(ev, feats.table)
    return _detect_flows(ev)
