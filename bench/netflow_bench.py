"""NetFlow decode-only speed: records/s of NetflowDecoder on synthetic v5 and IPFIX datagrams
(1400-byte class: 30 v5 records, 34 IPFIX records of a 40-byte template).

    .venv/bin/python bench/netflow_bench.py [--datagrams 20000]
"""

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowsense.decode.netflow import NetflowDecoder  # noqa: E402

IPFIX_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 8), (1, 8), (152, 8)]  # 38 bytes


def v5_datagram(seq: int) -> bytes:
    records = b"".join(struct.pack(">IIIHHIIIIHHBBBBHHBBH", 0xC6120000 + k, 0xC6130000 + k, 0, 1, 2, 10, 1500,
                                   1000, 2000, 1024 + k, 443, 0, 0x18, 6, 0, 0, 0, 24, 24, 0) for k in range(30))
    return struct.pack(">HHIIIIBBH", 5, 30, 5000, 1_700_000_000, 0, seq, 0, 0, 0) + records


def ipfix_datagrams(n: int) -> list[bytes]:
    template = struct.pack(">HH", 256, len(IPFIX_FIELDS)) + b"".join(struct.pack(">HH", *f) for f in IPFIX_FIELDS)
    first = struct.pack(">HH", 2, 4 + len(template)) + template
    record = lambda k: struct.pack(">IIHHBBQQQ", 0xC6120000 + k, 0xC6130000 + k, 1024 + k, 443, 6, 0x18, 10,  # noqa
                                   1500, 1_700_000_000_000 + k)
    body = b"".join(record(k) for k in range(34))
    data = struct.pack(">HH", 256, 4 + len(body)) + body
    out = []
    for seq in range(n):
        sets = (first if seq == 0 else b"") + data
        out.append(struct.pack(">HHIII", 10, 16 + len(sets), 1_700_000_000, seq * 34, 1) + sets)
    return out


def measure(name: str, datagrams: list[bytes]):
    decoder = NetflowDecoder()
    decoder.decode(datagrams[0], "198.18.0.1")
    t0 = time.perf_counter()
    records = sum(len(decoder.decode(d, "198.18.0.1")) for d in datagrams[1:])
    seconds = time.perf_counter() - t0
    print(f"{name:6} {len(datagrams) - 1:>8,} datagrams {records:>10,} records {seconds:6.2f} s "
          f"{records / seconds:>12,.0f} records/s {(len(datagrams) - 1) / seconds:>10,.0f} datagrams/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=20000)
    n = ap.parse_args().datagrams
    measure("v5", [v5_datagram(k * 30) for k in range(n)])
    measure("ipfix", ipfix_datagrams(n))


if __name__ == "__main__":
    main()
