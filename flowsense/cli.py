"""Command line: arguments -> Config -> pipeline.  Exit 0 ok (also with damaged input, reported),
2 usage or configuration error, 3 unreadable input or unwritable output; errors are one line that
names the fix."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from flowsense import __version__
from flowsense.errors import FlowsenseError

EXPORTERS_SHOWN = 10


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowsense", description="Find covert or abnormal egress in packet captures.")
    p.add_argument("--version", action="version", version=f"flowsense {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("analyze", help="replay captures into flows, DNS, alerts and stats",
                       description="Replay pcap/pcapng captures (plain or gzip) deterministically.")
    a.add_argument("pcaps", nargs="+", metavar="PCAP", help="capture files, merged in time order")
    a.add_argument("--deny-log", action="append", default=[], metavar="FILE",
                   help="firewall deny log to join, plain or gzip (repeatable)")
    a.add_argument("--deny-format", metavar="VENDOR", default="auto",
                   help="vendor of the deny logs: auto (per line, default) or one of: " + ", ".join(_vendor_names()))
    a.add_argument("--netflow", action="store_true",
                   help="the captures hold NetFlow v5/v9/IPFIX export traffic: decode the exported flow records")
    a.add_argument("-c", "--config", metavar="CONFIG.toml", help="configuration file")
    a.add_argument("-b", "--baseline", metavar="FILE", help="score against this learned baseline "
                   "(`flowsense baseline build`); without one, rarity is judged within the capture itself")
    a.add_argument("--out", metavar="DIR", type=Path,
                   help="output folder (default: a new folder named after the first capture)")
    a.add_argument("--no-report", action="store_true", help="skip report.html (it takes about a second)")
    a.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a.add_argument("--json", action="store_true", help="print stats.json to stdout instead of the summary")

    n = sub.add_parser("collect", help="collect NetFlow v5/v9/IPFIX over UDP until SIGINT/SIGTERM",
                       description="Listen for NetFlow v5, v9 and IPFIX exports (all on the same port).")
    n.add_argument("--listen", action="append", required=True, metavar="HOST:PORT",
                   help="address to listen on, e.g. 0.0.0.0:2055 or [::]:4739 (repeatable)")
    _live_deny_inputs(n)
    n.add_argument("-c", "--config", metavar="CONFIG.toml", help="configuration file")
    n.add_argument("--out", metavar="DIR", type=Path, default=Path("flowsense-collect"),
                   help="output folder (default: ./flowsense-collect; files are added, never overwritten)")

    s = sub.add_parser("sense", help="capture live from interfaces (SPAN port) until SIGINT/SIGTERM",
                       description="Capture with AF_PACKET (TPACKET_V3 ring) into flows, DNS, alerts and stats; "
                                   "SIGHUP reloads the config.")
    s.add_argument("--iface", action="append", default=[], metavar="IFACE",
                   help="interface to capture from (repeatable; adds to [sense].interfaces)")
    s.add_argument("--bpf", metavar="FILTER", help='kernel capture filter in tcpdump syntax, e.g. "not port 22"')
    _live_deny_inputs(s)
    s.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus /metrics address ('' for none; default "
                   "[sense].metrics_listen, 127.0.0.1:9108)")
    s.add_argument("-c", "--config", metavar="CONFIG.toml", help="configuration file (re-read on SIGHUP)")
    s.add_argument("--out", metavar="DIR", type=Path, default=Path("flowsense-sense"),
                   help="output folder (default: ./flowsense-sense; files are added, never overwritten)")

    u = sub.add_parser("run", help="start every source a config file names (interfaces, NetFlow, syslog)",
                       description="Run the sources of [sense] (interfaces, netflow_listen, syslog_listen, deny_logs) "
                                   "until SIGINT/SIGTERM: the container's entry point.")
    u.add_argument("-c", "--config", required=True, metavar="CONFIG.toml", help="configuration naming the sources")
    u.add_argument("--out", metavar="DIR", type=Path, default=Path("flowsense-run"),
                   help="output folder (NetFlow records go to DIR/netflow; default ./flowsense-run)")

    b = sub.add_parser("baseline", help="learn a local baseline from captures of normal traffic",
                       description="Learn which port/protocol pairings each host uses (saved as .npz, no pickle).")
    b.add_argument("action", choices=["build"])
    b.add_argument("pcaps", nargs="+", metavar="PCAP", help="captures of normal traffic")
    b.add_argument("-o", "--output", required=True, metavar="FILE", help="baseline file to write")
    b.add_argument("-b", "--baseline", metavar="FILE", help="existing baseline to extend (learned into a copy)")
    b.add_argument("-c", "--config", metavar="CONFIG.toml", help="configuration file")

    e = sub.add_parser("eval", help="precision and recall of an output folder's alerts against labels",
                       description="Compare DIR/alerts.jsonl with a labels file (one JSON object per line).")
    e.add_argument("dir", metavar="DIR", type=Path, help="output folder of `flowsense analyze`")
    e.add_argument("--labels", required=True, metavar="LABELS.jsonl", help="labels: src, start, end, rule, analytics")
    e.add_argument("--slack-s", type=float, default=5.0, help="widen label windows by this much (default 5 s)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    r = sub.add_parser("report", help="write DIR/report.html for an output folder",
                       description="Build a self-contained HTML report (summary, alerts, plots) from an output "
                                   "folder of analyze, sense or collect.")
    r.add_argument("dir", metavar="DIR", type=Path, help="output folder")
    r.add_argument("--pcap", action="append", default=[], metavar="CAPTURE",
                   help="the analysed capture, if it moved (for per-packet plots; repeatable)")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")

    q = sub.add_parser("query", help="SQL (DuckDB) over an output folder's flows, dns, denies and alerts",
                       description="Run one SQL statement over the folder's tables: flows, dns, denies, alerts "
                                   "(alerts.evidence is JSON: json_extract(evidence, '$.period_s')).")
    q.add_argument("dir", metavar="DIR", type=Path, help="output folder")
    q.add_argument("sql", metavar="SQL", help='e.g. "SELECT rule, src, score FROM alerts ORDER BY score DESC"')
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows as JSON objects, one per line")
    fmt.add_argument("--csv", action="store_true", help="print rows as CSV with a header")

    x = sub.add_parser("explain", help="one alert's reason, evidence and key packets (dissected by tshark)",
                       description="Show why an alert fired; with the capture at hand, dissect its key packets.")
    x.add_argument("dir", metavar="DIR", type=Path, help="output folder")
    x.add_argument("alert_id", metavar="ALERT_ID", help="the alert's identifier (or a unique part of it)")
    x.add_argument("--pcap", action="append", default=[], metavar="CAPTURE",
                   help="the analysed capture, if it moved (repeatable)")
    x.add_argument("--json", action="store_true", help="print the alert, reason and packets as JSON")

    c = sub.add_parser("config", help="show configuration")
    c.add_argument("action", choices=["show"])
    c.add_argument("--defaults", action="store_true", help="show the built-in defaults")
    c.add_argument("-c", "--config", metavar="CONFIG.toml", help="configuration file to validate and show")
    return p


def _live_deny_inputs(p: argparse.ArgumentParser) -> None:
    """The deny-log inputs of the long-running commands (collect, sense)."""
    p.add_argument("--syslog", action="append", default=[], metavar="HOST:PORT",
                   help="also receive firewall deny logs by syslog (UDP and TCP) on this address (repeatable)")
    p.add_argument("--deny-log", action="append", default=[], metavar="FILE",
                   help="also follow this firewall log file (new lines, across rotation; repeatable)")
    p.add_argument("--deny-format", metavar="VENDOR", default="auto", help="vendor of the deny logs (default auto)")


def _vendor_names() -> list[str]:
    from flowsense.denylog import VENDORS
    return [v.NAME for v in VENDORS]


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _summary(stats: dict, out_dir: Path) -> str:
    weird = ", ".join(f"{k} {v:,}" for k, v in stats["weird"].items() if v) or "none"
    damage = ", ".join(f"{k} {v:,}" for k, v in stats["capture"].items() if v and k != "records"
                       and k != "pcapng_other_blocks") or "none"
    lines = [
        f"flowsense {stats['flowsense_version']}: {len(stats['inputs'])} capture(s) in {stats['wall_s']:.2f} s "
        f"({stats['packets_per_s']:,.0f} packets/s)",
        f"  packets  {stats['packets']:,} ({stats['ip_packets']:,} IP, {stats['non_ip_frames']:,} other), "
        f"{stats['bytes']:,} bytes",
        f"  span     {_when(stats['first_ts'])} -> {_when(stats['last_ts'])} UTC ({stats['duration_s']:,.1f} s)",
        f"  flows    {stats['flows']:,}   dns messages {stats['dns_messages']:,}   alerts {stats['alerts']}",
        f"  weird    {weird}",
        f"  damage   {damage}",
    ]
    if stats["denylog"]:
        vendors = stats["denylog"]["vendors"]
        per = ", ".join(f"{v} {c['parsed']:,}/{c['skipped']:,}/{c['failed']:,}" for v, c in vendors.items())
        lines.append(f"  denies   {stats['denylog']['deny_rows']:,} rows from {stats['denylog']['lines']:,} lines "
                     f"(parsed/skipped/failed: {per or 'none'})")
    lines += [f"  warning  {w}" for w in stats["warnings"]]
    lines += _alert_lines(out_dir / "alerts.jsonl")
    lines.append(f"  output   {out_dir}/ ({', '.join(Path(p).name for p in stats['outputs'].values())})")
    return "\n".join(lines)


def _alert_lines(path: Path, shown: int = 10) -> list[str]:
    """The highest-scoring alerts, one line each."""
    if not path.exists():
        return []
    alerts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    alerts.sort(key=lambda a: -a["flowsense"]["score"])
    lines = []
    for a in alerts[:shown]:
        dst = a.get("destination") or {}
        target = f" -> {dst['ip']}" + (f":{dst['port']}" if dst.get("port") else "") if dst else ""
        lines.append(f"  alert    {a['flowsense']['score']:.2f} {a['flowsense']['severity']:8} "
                     f"{'/'.join(a['flowsense']['analytic']) or '-':13} {a['rule']['name']}: "
                     f"{a['source']['ip']}{target}")
    if len(alerts) > shown:
        lines.append(f"  alert    ... and {len(alerts) - shown} more in alerts.jsonl")
    return lines


def _analyze(args) -> int:
    from flowsense import config as cfg
    from flowsense.pipeline import analyze, default_out_dir

    config = cfg.load(args.config)
    out_dir = args.out or default_out_dir(Path(args.pcaps[0]))
    if args.netflow:
        from flowsense.pipeline import analyze_netflow
        stats = analyze_netflow(args.pcaps, config, out_dir, args.deny_log, args.deny_format)
    else:
        from flowsense.baseline import Baseline
        baseline = Baseline.load(args.baseline) if args.baseline else None
        stats = analyze(args.pcaps, config, out_dir, args.deny_log, quiet=args.quiet or args.json,
                        deny_format=args.deny_format, baseline=baseline)
    if not args.no_report:
        from flowsense.pipeline import write_stats
        from flowsense.report import write_report
        stats["outputs"]["report.html"] = str(write_report(out_dir, args.pcaps))
        write_stats(out_dir, stats)
    if args.json:
        print(json.dumps(stats, indent=2))
    elif not args.quiet:
        print(_netflow_summary(stats, out_dir) if args.netflow else _summary(stats, out_dir))
    return 0


def _report(args) -> int:
    from flowsense.report import write_report

    path = write_report(args.dir, args.pcap)
    if not args.quiet:
        print(f"flowsense report: {path}")
    return 0


def _query(args) -> int:
    import csv

    from flowsense.results import query

    columns, rows = query(args.dir, args.sql)
    if args.json:
        for row in rows:
            print(json.dumps(dict(zip(columns, row)), default=_text))
    elif args.csv:
        out = csv.writer(sys.stdout)
        out.writerow(columns)
        out.writerows([[_text(v) for v in row] for row in rows])
    elif columns:
        print(_grid(columns, [[_text(v) for v in row] for row in rows]))
    return 0


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _grid(columns: list[str], rows: list[list[str]]) -> str:
    """Rows as aligned text columns (numbers to the right), with the row count below."""
    widths = [max([len(c)] + [len(r[k]) for r in rows]) for k, c in enumerate(columns)]
    numeric = [all(_is_number(r[k]) for r in rows if r[k]) for k in range(len(columns))]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows]
                     + [f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _explain(args) -> int:
    from flowsense.explain import explain

    print(explain(args.dir, args.alert_id, args.pcap, args.json))
    return 0


def _netflow_summary(stats: dict, out_dir: Path) -> str:
    lines = [f"flowsense {stats['flowsense_version']}: {len(stats['inputs'])} capture(s) of flow exports in "
             f"{stats['wall_s']:.2f} s",
             f"  export   {stats['export_datagrams']:,} datagrams from {len(stats['exporters'])} exporter(s), "
             f"{stats['other_udp_datagrams']:,} other UDP datagrams skipped",
             f"  flows    {stats['flows']:,} records"]
    shown = list(stats["exporters"].items())[:EXPORTERS_SHOWN]
    for exporter, c in shown:
        problems = ", ".join(f"{k} {v:,}" for k, v in c.items()
                             if k.startswith("error") or k.startswith("lost") or k.startswith("dropped")) or "none"
        lines.append(f"  {exporter}: {c.get('records', 0):,} records, {c['templates_known']} templates, "
                     f"waiting {c['waiting_now']}, problems: {problems}")
    if len(stats["exporters"]) > len(shown):
        lines.append(f"  ... and {len(stats['exporters']) - len(shown)} more exporters (stats.json)")
    lines += [f"  warning  {w}" for w in stats["warnings"]]
    lines.append(f"  output   {out_dir}/ ({', '.join(Path(p).name for p in stats['outputs'].values())})")
    return "\n".join(lines)


def _collect(args) -> int:
    from flowsense import config as cfg
    from flowsense.collect import collect

    config = cfg.load(args.config)
    stats = collect(args.listen, config, args.out, args.syslog, args.deny_log, args.deny_format)
    drops = sum((v["queue_drops"] or 0) + (v["kernel_drops"] or 0) for v in stats["listeners"].values())
    denied = f", {stats['denylog']['deny_rows']:,} deny rows" if stats["denylog"] else ""
    print(f"flowsense collect: {stats['flows']:,} flow records from {len(stats['exporters'])} exporter(s){denied}, "
          f"{drops:,} datagrams dropped; {args.out}/stats.json")
    return 0


def _sense(args) -> int:
    from flowsense import config as cfg
    from flowsense.sense import sense

    config = cfg.load(args.config)
    stats = sense(args.iface, config, args.out, args.bpf, args.syslog, args.deny_log, args.deny_format,
                  args.metrics, args.config)
    drops = sum(i["kernel_drops"] for i in stats["interfaces"].values())
    print(f"flowsense sense: {stats['packets']:,} packets, {stats['flows']:,} flows, "
          f"{stats['detection']['alerts']:,} alerts, {drops:,} dropped by the kernel; {args.out}/stats.json")
    return 0


def _run(args) -> int:
    from flowsense import config as cfg
    from flowsense.sense import run_sources

    done = run_sources(cfg.load(args.config), args.config, args.out)
    if "sense" in done:
        st = done["sense"]
        print(f"flowsense run: {st['packets']:,} packets, {st['flows']:,} flows, {st['detection']['alerts']:,} "
              f"alerts; {args.out}/stats.json")
    else:
        print(f"flowsense run: {done['netflow']['flows']:,} flow records; {args.out}/stats.json")
    return 0


def _baseline(args) -> int:
    from flowsense import config as cfg
    from flowsense.baseline import Baseline
    from flowsense.pipeline import learn_baseline

    config = cfg.load(args.config)
    old = Baseline.load(args.baseline) if args.baseline else Baseline.empty()
    learned = learn_baseline(args.pcaps, config, old)
    learned.save(args.output)
    d = learned.describe()
    print(f"flowsense baseline: {d['hosts']:,} hosts, {d['pairings']:,} port/protocol pairings from {d['flows']:,} "
          f"flows of {d['captures']} capture(s) -> {args.output}")
    return 0


def _eval(args) -> int:
    from flowsense.evaluate import evaluate, load_alerts, load_labels, render

    result = evaluate(load_labels(args.labels), load_alerts(args.dir), args.slack_s)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _config(args) -> int:
    from flowsense import config as cfg

    print(cfg.to_toml(cfg.load(None if args.defaults else args.config)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"analyze": _analyze, "collect": _collect, "config": _config, "baseline": _baseline,
                "eval": _eval, "sense": _sense, "run": _run, "report": _report, "query": _query, "explain": _explain}[args.command](args)
    except FlowsenseError as err:
        print(f"flowsense: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"flowsense: error: {err.filename or 'writing output'}: {err.strerror}; free space or choose "
              "another --out", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("flowsense: interrupted", file=sys.stderr)
        return 130
