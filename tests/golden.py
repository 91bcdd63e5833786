"""Golden flows for the bundled captures: a stable CSV rendering of flows.parquet.

Regenerate after an intended change with `python tests/golden.py` and review the diff."""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
BUNDLED = sorted((ROOT / "pcaps").glob("*.pcap"))


def render(pcap: Path) -> str:
    """flows.parquet of `flowsense analyze pcap` as CSV text (the file column made relative)."""
    import pyarrow.parquet as pq

    from flowsense.config import Config
    from flowsense.pipeline import analyze

    with tempfile.TemporaryDirectory() as out:
        analyze([str(pcap)], Config(), Path(out), quiet=True)
        rows = pq.read_table(Path(out) / "flows.parquet").to_pylist()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if rows:
        writer.writerow(rows[0].keys())
    for row in rows:
        row["file"] = Path(row["file"]).name
        writer.writerow(v.isoformat() if hasattr(v, "isoformat") else v for v in row.values())
    return text.getvalue()


def golden_path(pcap: Path) -> Path:
    return GOLDEN / f"{pcap.stem}.flows.csv"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for pcap in BUNDLED:
        golden_path(pcap).write_text(render(pcap))
        print(f"wrote {golden_path(pcap).relative_to(ROOT)}")
