"""`flowsense explain DIR ALERT_ID`: one alert's reason and evidence, and with the capture at hand, the
few packets that show it, dissected by tshark (through pyshark).

Which packets are "key" is per rule: the tunnel's first queries and answers, the first payload
unlike an OS ping, the blocked attempts and the fallback's first packet, a beacon's first
check-ins, a scan's first probes.  Each is found through the frame numbers the analysis kept
(flows.first_frame, dns.frame_no, the ICMP evidence's frame), so only those frames are read.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from flowsense.report.why import headline
from flowsense.results import Results, alert_row

LAYER_LINES = 14  # lines of tshark's dissection printed per layer
BIT_FIELD = re.compile(r"^[01.]{4}( [01.]{4})* = ")  # "0100 .... = Version: 4": the field's own line says it


def key_frames(res: Results, con, a: dict, limit: int = 6) -> list[tuple[str, int, str]]:
    """(capture as recorded, frame number, role) of the packets that show the alert, at most ``limit``."""
    ev, r = a["flowsense"]["evidence"], alert_row(a)
    window = [r["src"], r["start"], r["end"]]

    def flows(where: str, params: list, role: str, n: int) -> list[tuple[str, int, str]]:
        rows = con.execute(f"SELECT file, first_frame FROM flows WHERE orig_h = ? AND {where} "
                           f"ORDER BY ts, first_frame LIMIT {n}", params).fetchall()
        return [(f, int(no), role) for f, no in rows if f]

    rule = r["rule"]
    if rule == "dns_tunnel":
        zone = "%" + (ev.get("zone") or ev.get("domain") or "")
        rows = con.execute("SELECT file, frame_no, qr FROM dns WHERE (src_h = ? AND qr = 0 OR dst_h = ? AND qr = 1) "
                           "AND lower(qname) LIKE ? ORDER BY ts, frame_no LIMIT ?",
                           [r["src"], r["src"], zone.lower(), limit]).fetchall()
        return [(f, int(no), "tunnel response" if qr else "tunnel query") for f, no, qr in rows]
    if rule == "deny_fallback":
        out = []
        for t in ev["blocked"].get("targets", [])[:2]:
            port = " AND resp_p = ?" if t.get("port") else ""
            out += flows(f"resp_h = ? AND proto = ? AND ts BETWEEN ? AND ?{port}",
                         [r["src"], t["destination"], t["transport"], ev["blocked"]["first"], ev["blocked"]["last"]]
                         + ([t["port"]] if t.get("port") else []), "blocked attempt", 2)
        fb = ev["fallback"]
        port = " AND resp_p = ?" if fb.get("port") else ""
        out += flows(f"resp_h = ? AND proto = ? AND ts >= ?{port}", [r["src"], fb["destination"], fb["transport"],
                     fb["first"]] + ([fb["port"]] if fb.get("port") else []), "fallback channel opens", 2)
        return out[:limit]
    out = []
    if rule == "icmp_tunnel" and ev.get("first_non_pattern_payload"):
        first = ev["first_non_pattern_payload"]
        inputs = res.stats.get("inputs", [])
        if first.get("frame") and first.get("file_id", 0) < len(inputs):
            out.append((inputs[first["file_id"]]["path"], int(first["frame"]), "first payload unlike an OS ping"))
    where, params = "ts BETWEEN ? AND ?", window
    if r["dst"]:
        where += " AND resp_h = ?"
        params = params + [r["dst"]]
    if r["dport"] is not None and rule != "scan":
        where += " AND resp_p = ?"
        params = params + [r["dport"]]
    role = {"scan": "probe", "beacon": "check-in"}.get(rule, "first packet of a flow")
    out += flows(where, params, role, limit)
    return list({(f, no): (f, no, role) for f, no, role in reversed(out)}.values())[::-1][:limit]


def _dissection(packet) -> list[str]:
    """tshark's layer-by-layer text, without bit-field breakdowns, trimmed per layer."""
    lines = []
    for layer in packet.layers:
        text = [t.strip().lstrip(":").strip() for t in str(layer).splitlines()]
        lines.append(f"    {text[0] if text else layer.layer_name}")
        body = list(dict.fromkeys(t for t in text[1:] if t and not BIT_FIELD.match(t)))
        lines += [f"      {t}" for t in body[:LAYER_LINES]]
        if len(body) > LAYER_LINES:
            lines.append(f"      ... {len(body) - LAYER_LINES} more lines")
    return lines


def explain(out_dir: str | Path, wanted: str, pcaps: list[str] = (), as_json: bool = False) -> str:
    from flowsense.packet_evidence import capture_paths, dissect, read_frames

    res = Results.open(out_dir)
    alerts = res.find_alerts(wanted)
    con = res.connect()
    a = max(alerts, key=lambda x: x["flowsense"]["score"])
    r = alert_row(a)
    frames = key_frames(res, con, a)
    recorded = sorted({f for f, _, _ in frames} | {i["path"] for i in res.stats.get("inputs", [])})
    paths = capture_paths(recorded, list(pcaps))
    read = []
    for capture in sorted({f for f, _, _ in frames if f in paths}):
        wanted_frames = {no: role for f, no, role in frames if f == capture}
        read += read_frames(paths[capture], wanted_frames, capture)
    tshark = shutil.which("tshark") is not None
    dissected = dissect(read) if read and tshark else []
    missing = sorted({f for f, _, _ in frames} - set(paths))
    if as_json:
        return json.dumps({"alert": a, "why": headline(a), "occurrences": len(alerts),
                           "key_packets": [{"capture": f.capture, "frame": f.frame_no, "role": f.role,
                                            "layers": [layer.layer_name for layer in p.layers],
                                            "summary": _dissection(p)} for f, p in dissected],
                           "captures_missing": missing, "tshark_installed": tshark}, indent=2)
    dst = f"{r['dst']}:{r['dport']}" if r["dport"] is not None else (r["dst"] or "-")
    lines = [f"{r['id']}  {r['name']}",
             f"  score {r['score']:.2f} {r['severity']} · {r['analytic'] or 'no analytic'} · {r['techniques']} · "
             f"evidence from {r['grade']}" + (f" · seen {len(alerts)} times" if len(alerts) > 1 else ""),
             f"  {r['src']} -> {dst} {r['transport'] or ''}   {r['start']} .. {r['end']}",
             f"  why: {headline(a)}", "", "evidence:"]
    lines += _indent(a["flowsense"]["evidence"], 1)
    lines.append("")
    if dissected:
        lines.append(f"key packets ({len(dissected)}, dissected by tshark):")
        for f, p in dissected:
            lines.append(f"  frame {f.frame_no} of {Path(f.capture).name}, {_iso(f.ts)}: {f.role}")
            lines += _dissection(p)
    elif read and not tshark:
        lines.append(f"key packets: frames {', '.join(str(f.frame_no) for f in read)}; install tshark "
                     "(apt-get install tshark) to see them dissected")
    elif frames:
        lines.append(f"key packets: frames {', '.join(str(no) for _, no, _ in frames)} of "
                     f"{', '.join(missing)}: capture not found; give it with --pcap to dissect them")
    else:
        lines.append("key packets: none recorded for this alert (flow records carry no packets)")
    return "\n".join(lines)


def _iso(ns: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _indent(value, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(v, dict) and v:
                out += [f"{pad}{k}:"] + _indent(v, depth + 1)
            else:
                out.append(f"{pad}{k}: {json.dumps(v)}")
        return out
    return [f"{pad}{json.dumps(value)}"]
