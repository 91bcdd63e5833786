"""DIR/report.html: one self-contained page (inline CSS, JS and SVG plots; nothing fetched when it is
opened) that shows what an output folder holds and why each alert fired.

Sections: summary, alerts (a filterable list), one panel per alert (reason, plots, evidence), top
talkers, rarest port/protocol pairings.  Built from the folder's files alone (plus the capture, when
at hand, for per-packet plots), so `flowsense report DIR` works on any analyze, sense or collect
folder, and the same folder gives the same bytes.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from flowsense import __version__
from flowsense.results import Results, alert_row

MAX_LISTED = 5000   # alert rows in the list; the rest stay in alerts.jsonl (and `flowsense query`)
MAX_PANELS = 200    # alerts with a panel of evidence
MAX_PLOTTED = 40    # of those, alerts whose panel draws plots (each costs a few tens of ms)
SEVERITIES = ("low", "medium", "high", "critical")


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>'


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Evidence as (dotted key, text) rows; lists of scalars stay on one row."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [row for k, v in enumerate(value) for row in _flatten(v, f"{prefix}[{k}]")]
    return [(prefix, json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value))]


def _figures(res: Results, con) -> list[tuple[str, str]]:
    s = res.stats
    span = con.execute("SELECT min(ts), max(last_ts), count(*), count(DISTINCT orig_h) FROM flows").fetchone()
    hosts = con.execute("SELECT count(*) FROM (SELECT orig_h FROM flows UNION SELECT resp_h FROM flows)").fetchone()[0]
    if s.get("first_ts"):
        start, end = (datetime.fromtimestamp(s[k] / 1e9, timezone.utc) for k in ("first_ts", "last_ts"))
    else:
        start, end = span[0], span[1]
    rows = [("inputs", _inputs(s)),
            ("span (UTC)", f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S}" if start else "-"),
            ("packets", f"{s['packets']:,}" if "packets" in s else "- (flow records)"),
            ("flows", f"{span[2]:,}"), ("hosts", f"{hosts:,} ({span[3]:,} originating)"),
            ("DNS messages", f"{s['dns_messages']:,}" if "dns_messages" in s else "-"),
            ("alerts", f"{len(res.alerts):,}")]
    weird = {k: v for k, v in s.get("weird", {}).items() if v}
    damage = {k: v for k, v in s.get("capture", {}).items() if v and k not in ("records", "pcapng_other_blocks")}
    rows.append(("decode weirds", ", ".join(f"{k} {v:,}" for k, v in weird.items()) or "none"))
    rows.append(("capture damage", ", ".join(f"{k} {v:,}" for k, v in damage.items()) or "none"))
    if s.get("denylog"):
        rows.append(("deny rows", f"{s['denylog']['deny_rows']:,} from {s['denylog']['lines']:,} log lines"))
    rows += [("warning", w) for w in s.get("warnings", [])]
    return rows


def _inputs(stats: dict) -> str:
    """What the folder was made from: captures (analyze), interfaces (sense) or listeners (collect)."""
    if stats.get("inputs"):
        return ", ".join(Path(i["path"]).name for i in stats["inputs"])
    if stats.get("interfaces"):
        return "live capture on " + ", ".join(stats["interfaces"])
    if stats.get("listeners"):
        return "flow exports to " + ", ".join(stats["listeners"])
    return "-"


def _by_analytic(alerts: list[dict]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for a in alerts:
        row = alert_row(a)
        counts.setdefault(row["analytic"] or "(none)", dict.fromkeys(SEVERITIES, 0))[row["severity"]] += 1
    rows = [[k, *v.values(), sum(v.values())] for k, v in sorted(counts.items())]
    return _table(["analytic", *SEVERITIES, "total"], rows, "counts") if rows else "<p>No alerts.</p>"


def _alert_list(rows: list[dict]) -> str:
    analytics = sorted({r["analytic"] or "(none)" for r in rows})
    options = "".join(f'<option value="{_e(a)}">{_e(a)}</option>' for a in analytics)
    body = []
    for k, r in enumerate(rows[:MAX_LISTED], 1):
        dst = f"{r['dst']}:{r['dport']}" if r["dport"] is not None else r["dst"]
        link = f'<a href="#a{k}">{_e(r["name"])}</a>' if k <= MAX_PANELS else _e(r["name"])
        body.append(f'<tr data-analytic="{_e(r["analytic"] or "(none)")}" data-hosts="{_e(r["src"])} {_e(r["dst"])}">'
                    f'<td>{k}</td><td>{r["score"]:.2f}</td><td class="sev {r["severity"]}">{r["severity"]}</td>'
                    f'<td>{_e(r["analytic"])}</td><td>{link}</td><td>{_e(r["src"])}</td><td>{_e(dst)}</td>'
                    f'<td>{_e(r["start"][:19].replace("T", " "))}</td></tr>')
    more = (f'<p class="note">{len(rows) - MAX_LISTED:,} lower-scoring alerts are not listed: see alerts.jsonl or '
            f'<code>flowsense query</code>.</p>' if len(rows) > MAX_LISTED else "")
    return (f'<div class="filters"><label>analytic <select id="f-analytic"><option value="">all</option>{options}'
            f'</select></label> <label>host <input id="f-host" placeholder="address"></label> '
            f'<span id="f-count"></span></div>'
            f'<table id="alert-table"><thead><tr><th>#</th><th>score</th><th>severity</th><th>analytic</th>'
            f'<th>rule</th><th>source</th><th>destination</th><th>start (UTC)</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{more}')


def _panels(res: Results, con, ordered: list[dict], pcaps: list[str]) -> tuple[str, list[str]]:
    from flowsense.packet_evidence import capture_paths, conversation_packets
    from flowsense.report.panels import PACKET_RULES, Panel, build
    from flowsense.report.why import headline

    notes = []
    shown = ordered[:MAX_PANELS]
    recorded = [i["path"] for i in res.stats.get("inputs", [])]
    paths = capture_paths(recorded, pcaps)
    pairs = sorted({(a["source"]["ip"], a["destination"]["ip"]) for a in shown[:MAX_PLOTTED]
                    if a["rule"]["id"] in PACKET_RULES and a["destination"].get("ip")})
    packets = {}
    if pairs and recorded and len(paths) == len(recorded):
        packets = conversation_packets([paths[p] for p in recorded], pairs)
    elif pairs:
        notes.append("The capture is not at hand, so per-packet plots are left out: "
                     f"`flowsense report {res.dir} --pcap CAPTURE` draws them.")
    parts = []
    for k, a in enumerate(shown, 1):
        r = alert_row(a)
        plotted = k <= MAX_PLOTTED
        panel = build(a, con, packets.get((r["src"], r["dst"]))) if plotted else Panel()
        ev = "".join(f"<tr><th>{_e(key)}</th><td>{_e(val)}</td></tr>" for key, val in _flatten(a["flowsense"]["evidence"]))
        figs = "".join(f'<figure>{svg}</figure>' for svg in panel.plots)
        extra = "".join(f'<p class="note">{_e(n)}</p>' for n in panel.notes)
        parts.append(
            f'<section class="alert" id="a{k}"><h3>#{k} {_e(r["name"])} <span class="sev {r["severity"]}">'
            f'{r["severity"]} {r["score"]:.2f}</span></h3>'
            f'<p class="why">{_e(headline(a))}</p>'
            f'<p class="meta">{_e(r["analytic"] or "no analytic")} · {_e(r["techniques"])} · evidence from '
            f'{_e(r["grade"])} · {_e(r["start"])} to {_e(r["end"])} · <code>flowsense explain {_e(res.dir)} '
            f'{_e(r["id"])}</code></p>{extra}<div class="plots">{figs}</div>'
            f'<details><summary>evidence</summary><table class="evidence">{ev}</table></details></section>')
    if len(ordered) > MAX_PANELS:
        notes.append(f"Panels are drawn for the {MAX_PANELS} highest-scoring alerts; "
                     f"`flowsense explain` shows any other.")
    return "".join(parts), notes


def _talkers(con) -> str:
    from flowsense.report import plots

    rows = con.execute("SELECT orig_h, sum(orig_bytes) AS up, sum(resp_bytes) AS down, count(*) AS n FROM flows "
                       "GROUP BY orig_h ORDER BY up + down DESC, orig_h LIMIT 10").fetchall()
    if not rows:
        return "<p>No flows.</p>"
    total = [r[1] + r[2] for r in rows]
    unit, scale = next((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("bytes", 1)) if max(total) >= s or s == 1)
    svg = plots.bars([r[0] for r in rows], [t / scale for t in total], f"{unit} sent + received",
                     "Top talkers (by originator)")
    return f'<figure>{svg}</figure>' + _table(["host", "bytes sent", "bytes received", "flows"],
                                              [[r[0], f"{r[1]:,}", f"{r[2]:,}", f"{r[3]:,}"] for r in rows])


def _pairings(con) -> str:
    rows = con.execute("SELECT proto, resp_p, app, count(DISTINCT orig_h) AS hosts, count(*) AS flows, "
                       "min(orig_h) AS example FROM flows WHERE proto IN ('tcp', 'udp') "
                       "AND (resp_pkts > 0 OR end_reason = 'exported') "   # answered, or a one-way NetFlow record
                       "GROUP BY proto, resp_p, app ORDER BY hosts, flows DESC, proto, resp_p, app LIMIT 15").fetchall()
    if not rows:
        return "<p>No answered TCP/UDP flows.</p>"
    return _table(["transport", "port", "protocol spoken", "hosts", "flows", "e.g. host"],
                  [[p, port, app, h, f"{n:,}", ex] for p, port, app, h, n, ex in rows])


def write_report(out_dir: str | Path, pcaps: list[str] = ()) -> Path:
    """Build DIR/report.html from the folder; returns its path."""
    res = Results.open(out_dir)
    con = res.connect()
    ordered = sorted(res.alerts, key=lambda a: (-a["flowsense"]["score"], a["flowsense"]["identifier"]))
    rows = [alert_row(a) for a in ordered]
    panels, notes = _panels(res, con, ordered, list(pcaps))
    assets = resources.files("flowsense.report")
    title = _inputs(res.stats) if res.stats else res.dir.name
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flowsense report: {_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{assets.joinpath("page.css").read_text()}</style></head>
<body><header><h1>flowsense report</h1><p>{_e(title)} · flowsense {_e(res.stats.get("flowsense_version", __version__))}
· folder {_e(res.dir)}</p></header>
<nav><a href="#summary">Summary</a> <a href="#alerts">Alerts</a> <a href="#panels">Why each alert fired</a>
<a href="#talkers">Top talkers</a> <a href="#pairings">Rarest pairings</a></nav>
<main>
<section id="summary"><h2>Summary</h2>{_table(["", ""], _figures(res, con), "figures")}
<h3>Alerts by analytic and severity</h3>{_by_analytic(ordered)}</section>
<section id="alerts"><h2>Alerts</h2>{_alert_list(rows)}</section>
<section id="panels"><h2>Why each alert fired</h2>{"".join(f'<p class="note">{_e(n)}</p>' for n in notes)}
{panels or "<p>No alerts.</p>"}</section>
<section id="talkers"><h2>Top talkers</h2>{_talkers(con)}</section>
<section id="pairings"><h2>Rarest port/protocol pairings</h2>
<p class="note">Answered TCP/UDP services by how many hosts used them, fewest first.</p>{_pairings(con)}</section>
</main><script>{assets.joinpath("page.js").read_text()}</script></body></html>
"""
    path = res.dir / "report.html"
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        from flowsense.errors import InputError
        raise InputError(f"{path}: cannot write the report ({err.strerror}); give a writable --out folder")
    return path
