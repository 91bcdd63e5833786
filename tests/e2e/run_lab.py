#!/usr/bin/env python3
"""Run the end-to-end detection lab once: python tests/e2e/run_lab.py OUTDIR [--only STORY ...]

Leaves OUTDIR/capture.pcap (tcpdump on the router's LAN bridge), OUTDIR/deny.log (ulogd2 LOGEMU text of
the firewall's denies), OUTDIR/labels.jsonl (one line per scenario: story, src, dst, UTC window,
analytics, rule), OUTDIR/lab.log (what ran, exit codes, tcpdump counters), OUTDIR/summary.json
(per-scenario packet counts) and OUTDIR/logs/ (each tool's output).  Needs root, iproute2, nftables,
ulogd2, tcpdump and the scenario tools (scripts/setup.sh --test).  Ctrl-C / SIGTERM tear it all down.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--only", nargs="+", choices=[s.story for s in lab.SCENARIOS], help="run only these scenarios")
    p.add_argument("--quiet", action="store_true", help="log to OUTDIR/lab.log only")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run_lab.py needs root (network namespaces, nftables, NFLOG)", file=sys.stderr)
        return 2
    a.outdir.mkdir(parents=True, exist_ok=True)
    for name in ("capture.pcap", "deny.log", "labels.jsonl", "lab.log", "summary.json"):
        (a.outdir / name).unlink(missing_ok=True)
    for old in (a.outdir / "logs").glob("*.log") if (a.outdir / "logs").exists() else []:
        old.unlink()
    log = logging.getLogger("lab")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)-7s %(threadName)-18s %(message)s",
                            "%Y-%m-%dT%H:%M:%S")
    fmt.converter = __import__("time").gmtime
    fh = logging.FileHandler(a.outdir / "lab.log")
    fh.setFormatter(fmt)
    log.addHandler(fh)
    if not a.quiet:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # explicit: a SIGINT inherited as ignored (background job of a script) must still tear the lab down
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        summary = lab.run(a.outdir, a.only, log)
    except KeyboardInterrupt as err:
        log.error("interrupted (%s): lab torn down", err or "Ctrl-C")
        return 130
    except Exception:
        log.exception("lab failed")
        return 1
    bad = [k for k, ok in summary["labels_ok"].items() if not ok]
    if bad:
        log.error("scenarios that did not complete cleanly: %s", bad)
    return 0 if not bad else 3


if __name__ == "__main__":
    sys.exit(main())
