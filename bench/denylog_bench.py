"""Deny-log parsing speed: writes a 258 MB, 1,000,000-line log mixing the supported vendors'
deny and allow lines (synthetic, addresses in 198.18.0.0/15), or one vendor's lines only, then times
DenyLogReader on it (read_file + rows(), each run a fresh reader; the first run also loads the
Numba kernels from their cache) and reports the process's peak RSS.

    .venv/bin/python bench/denylog_bench.py [--lines 1000000] [--vendor iptables] [--runs 3] [--keep]
"""

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowsense.denylog.framing import TimeContext  # noqa: E402
from flowsense.denylog.reader import DenyLogReader  # noqa: E402

TEMPLATES = [
    "Mar {d:2d} 09:{m:02d}:{s:02d} gw kernel: [12345.678] fw-drop IN=eth0 OUT=eth1 MAC=02:00:00:00:00:01:02:00:00:00:00:02:08:00 "
    "SRC={a} DST={b} LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID={n} DF PROTO=TCP SPT={p} DPT={q} WINDOW=64240 RES=0x00 SYN URGP=0",
    "<166>Mar {d:2d} 09:{m:02d}:{s:02d} asa1 %ASA-4-106023: Deny tcp src outside:{a}/{p} dst inside:{b}/{q} by "
    "access-group \"outside_in\" [0x0, 0x0]",
    "<166>Mar {d:2d} 09:{m:02d}:{s:02d} asa1 %ASA-6-302013: Built outbound TCP connection {n} for outside:{b}/{q} "
    "({b}/{q}) to inside:{a}/{p} ({a}/{p})",
    "Mar {d:2d} 09:{m:02d}:{s:02d} pfSense filterlog[555]: 5,,,1000000103,em0,match,block,in,4,0x0,,64,{n},0,DF,6,tcp,60,"
    "{a},{b},{p},{q},0,S,123456789,,64240,,mss",
    "<189>date=2026-03-{d:02d} time=09:{m:02d}:{s:02d} devname=\"fgt1\" devid=\"FG100\" logid=\"0000000013\" "
    "type=\"traffic\" subtype=\"forward\" level=\"notice\" vd=\"root\" srcip={a} srcport={p} srcintf=\"port1\" "
    "dstip={b} dstport={q} dstintf=\"wan1\" sessionid={n} proto=6 action=\"deny\" policyid=7 policyname=\"block out\"",
    "<14>1 2026-03-{d:02d}T09:{m:02d}:{s:02d}Z srx1 RT_FLOW - RT_FLOW_SESSION_DENY [junos@2636.1.1.1.2.39 "
    "source-address=\"{a}\" source-port=\"{p}\" destination-address=\"{b}\" destination-port=\"{q}\" "
    "service-name=\"None\" protocol-id=\"6\" icmp-type=\"0\" policy-name=\"deny-all\" source-zone-name=\"trust\" "
    "destination-zone-name=\"untrust\" application=\"UNKNOWN\" nested-application=\"UNKNOWN\" username=\"N/A\" "
    "roles=\"N/A\" packet-incoming-interface=\"ge-0/0/0.0\" encrypted=\"No\" reason=\"Denied by policy\"]",
]


VENDOR_TEMPLATES = {"iptables": [0], "cisco_asa": [1, 2], "pfsense": [3], "fortigate": [4], "juniper_srx": [5]}


def write_log(path: Path, lines: int, seed: int = 1, vendor: str | None = None):
    rng = random.Random(seed)
    templates = [TEMPLATES[k] for k in VENDOR_TEMPLATES[vendor]] if vendor else TEMPLATES
    with path.open("w") as fh:
        for n in range(lines):
            t = templates[n % len(templates)]
            fh.write(t.format(d=2 + n % 20, m=n // 60 % 60, s=n % 60, n=n,
                              a=f"198.18.{rng.randrange(256)}.{rng.randrange(256)}",
                              b=f"198.19.{rng.randrange(256)}.{rng.randrange(256)}",
                              p=rng.randrange(1024, 65536), q=rng.choice((22, 53, 80, 443, 8443, 3389))) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--vendor", choices=sorted(VENDOR_TEMPLATES), help="one vendor's lines only (default: all)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the log in bench/.cache")
    a = ap.parse_args()
    folder = Path(__file__).resolve().parent / ".cache" if a.keep else Path(tempfile.mkdtemp())
    folder.mkdir(exist_ok=True)
    path = folder / f"deny-{a.vendor or 'mixed'}-{a.lines}.log"
    if not path.exists():
        write_log(path, a.lines, vendor=a.vendor)
    for _ in range(a.runs):
        reader = DenyLogReader(TimeContext(2026))
        t0 = time.perf_counter()
        reader.read_file(path)
        rows = reader.rows()
        seconds = time.perf_counter() - t0
        stats = reader.stats()
        print(f"{path.stat().st_size / 1e6:.0f} MB, {stats['lines']:,} lines in {seconds:.2f} s: "
              f"{stats['lines'] / seconds:,.0f} lines/s, {len(rows):,} DENY rows")
    for vendor, c in stats["vendors"].items():
        print(f"  {vendor:12} parsed {c['parsed']:>9,}  skipped {c['skipped']:>9,}  failed {c['failed']:>9,}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if not a.keep:
        path.unlink()


if __name__ == "__main__":
    main()
