"""A learned local baseline: which port/protocol pairings each host uses, saved without pickle.

File format: one ``.npz`` (``np.savez_compressed``, loaded with ``allow_pickle=False``) holding the
arrays plus ``meta``, a JSON document (schema version, captures learned from, time span, counts).
Score-then-learn: ``analyze -b`` scores against the file as it is; ``baseline build -b OLD``
learns new captures into a copy, so an attack in the capture being judged cannot whiten itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowsense.errors import InputError, UsageError, reading
from flowsense.features.pairing import HOST_PAIR, Pairings

SCHEMA_VERSION = 1


@dataclass
class Baseline:
    pairings: Pairings
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Baseline:
        return cls(Pairings.of_rows(np.empty(0, HOST_PAIR)), {"schema_version": SCHEMA_VERSION, "captures": [],
                                                                "first_ts": None, "last_ts": None, "flows": 0})

    def learn(self, flows: np.ndarray, captures: list[str]) -> Baseline:
        meta = dict(self.meta)
        meta["captures"] = list(meta.get("captures", [])) + captures
        meta["flows"] = int(meta.get("flows", 0)) + len(flows)
        if len(flows):
            lo, hi = int(flows["ts"].min()), int(flows["last_ts"].max())
            meta["first_ts"] = lo if meta.get("first_ts") is None else min(meta["first_ts"], lo)
            meta["last_ts"] = hi if meta.get("last_ts") is None else max(meta["last_ts"], hi)
        return Baseline(self.pairings.merged(Pairings.of_flows(flows)), meta)

    def describe(self) -> dict:
        return {"file": self.meta.get("file"), "captures": len(self.meta.get("captures", [])),
                "flows": self.meta.get("flows", 0), "hosts": self.pairings.hosts,
                "pairings": self.pairings.pairings}

    def save(self, path: str | Path) -> None:
        meta = {**self.meta, "schema_version": SCHEMA_VERSION, "hosts": self.pairings.hosts}
        meta.pop("file", None)
        try:
            with open(path, "wb") as out:
                np.savez_compressed(out, host_pairs=self.pairings.host_pairs,
                                    meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        except OSError as err:
            raise InputError(f"cannot write baseline file {path} ({err.strerror}); choose a writable path with -o") \
                from None

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            with reading(f"baseline file {path}"):
                data = np.load(path, allow_pickle=False)
                meta = json.loads(data["meta"].tobytes())
                rows = data["host_pairs"]
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as err:
            if isinstance(err, InputError):
                raise
            raise UsageError(f"{path} is not a flowsense baseline file; build one with "
                             "`flowsense baseline build PCAP... -o FILE`") from None
        if meta.get("schema_version") != SCHEMA_VERSION or rows.dtype != HOST_PAIR:
            raise UsageError(f"baseline {path} has schema {meta.get('schema_version')}, this flowsense reads "
                             f"{SCHEMA_VERSION}; rebuild it with `flowsense baseline build`")
        meta["file"] = str(path)
        return cls(Pairings(rows, int(meta.get("hosts", 0))), meta)
