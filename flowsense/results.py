"""An output folder (of `analyze`, `sense` or `collect`) opened for reading: its stats, its alerts and a
DuckDB connection with one view per record type, so the report, `query` and `explain` read the same
tables the same way.

Views: ``flows`` (every flows*.parquet, rotated files included), ``dns``, ``denies`` and ``alerts``
(one row per alert with its headline fields as columns and ``evidence`` as JSON text).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from flowsense.errors import InputError, UsageError

TABLES = ("flows", "dns", "denies", "alerts")
_FILES = {"flows": "flows*.parquet", "dns": "dns*.parquet", "denies": "deny*.parquet"}


def load_alerts(path: Path) -> list[dict]:
    """alerts.jsonl as dicts (a missing file is no alerts); a damaged line is an input error naming it."""
    if not path.exists():
        return []
    alerts = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    alerts.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{n}: not an alert ({err.msg}); was the file edited or cut short?")
    return alerts


def alert_row(a: dict) -> dict:
    """The headline fields of an alert, flat: what a table row or a SQL column needs."""
    fs, src, dst = a["flowsense"], a.get("source") or {}, a.get("destination") or {}
    return {"id": fs["identifier"], "rule": a["rule"]["id"], "name": a["rule"]["name"],
            "analytic": "/".join(fs["analytic"]), "techniques": "/".join(a["threat"]["technique"]["id"]),
            "score": fs["score"], "severity": fs["severity"], "grade": fs["evidence_grade"],
            "src": src.get("ip"), "sport": src.get("port"), "dst": dst.get("ip"), "dport": dst.get("port"),
            "transport": (a.get("network") or {}).get("transport"), "start": a["event"]["start"],
            "end": a["event"]["end"], "repeats": fs.get("repeats", 0)}


@dataclass
class Results:
    """One output folder.  ``stats`` is {} when the folder has no stats.json (a collector still running)."""
    dir: Path
    stats: dict
    alerts: list[dict]

    @classmethod
    def open(cls, out_dir: str | Path) -> "Results":
        d = Path(out_dir)
        if not d.is_dir():
            raise InputError(f"{d}: no such output folder; give the --out folder of `flowsense analyze`, "
                             "`sense` or `collect`")
        if not any(d.glob("flows*.parquet")) and not (d / "alerts.jsonl").exists():
            raise InputError(f"{d}: holds no flows*.parquet or alerts.jsonl; is it a flowsense output folder?")
        stats_path = d / "stats.json"
        try:
            stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{stats_path}: damaged ({err}); rerun the analysis to rewrite it")
        return cls(d, stats, load_alerts(d / "alerts.jsonl"))

    def files(self, table: str) -> list[Path]:
        """The table's complete files: one a running sensor or collector still writes has no footer yet."""
        return sorted(p for p in self.dir.glob(_FILES[table]) if _complete(p))

    def connect(self):
        """An in-memory DuckDB with the folder's views.  Each view has every column its table can have
        (a table with no file is an empty view), so queries bind whatever wrote the folder."""
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for table in ("flows", "dns", "denies"):
            # every column the table can have, whichever writer made the files (NetFlow records lack `app`)
            files = ", ".join(_sql_text(str(p)) for p in self.files(table))
            source = (f"(SELECT * FROM read_parquet([{files}], union_by_name = true) "
                      f"UNION ALL BY NAME SELECT * FROM {_empty_source(table)})" if files else _empty_source(table))
            # microsecond timestamps: DuckDB's date functions (hour(), date_trunc() ...) take no _NS type
            stamps = ", ".join(f'CAST("{c}" AS TIMESTAMPTZ) AS "{c}"' for c in _timestamps(table))
            con.execute(f"CREATE VIEW {table} AS SELECT * REPLACE ({stamps}) FROM {source}")
        path = self.dir / "alerts.jsonl"
        columns = ", ".join(f"{_sql_text(k)}: {_sql_text(v)}" for k, v in ALERT_JSON.items())
        source = (f"read_json({_sql_text(str(path))}, format = 'newline_delimited', columns = {{{columns}}})"
                  if path.exists() and path.stat().st_size else
                  "(SELECT " + ", ".join(f"NULL::{v} AS \"{k}\"" for k, v in ALERT_JSON.items()) + " WHERE false)")
        con.execute(f"CREATE VIEW alerts AS SELECT {ALERT_COLUMNS} FROM {source}")
        return con

    def find_alerts(self, wanted: str) -> list[dict]:
        """Alerts whose identifier is ``wanted``, else the one identifier containing it."""
        exact = [a for a in self.alerts if a["flowsense"]["identifier"] == wanted]
        if exact:
            return exact
        ids = sorted({a["flowsense"]["identifier"] for a in self.alerts if wanted in a["flowsense"]["identifier"]})
        if len(ids) == 1:
            return [a for a in self.alerts if a["flowsense"]["identifier"] == ids[0]]
        if not ids:
            raise UsageError(f"no alert in {self.dir}/alerts.jsonl has an identifier like {wanted!r}; "
                             f"list them with: flowsense query {self.dir} \"SELECT id FROM alerts\"")
        shown = ", ".join(ids[:5]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
        raise UsageError(f"{wanted!r} matches {len(ids)} alerts: {shown}; give more of the identifier")


# alerts.jsonl as DuckDB reads it (evidence stays JSON), and the alerts view's columns (as alert_row)
ALERT_JSON = {
    "event": 'STRUCT(start VARCHAR, "end" VARCHAR)', "rule": "STRUCT(id VARCHAR, name VARCHAR)",
    "source": "STRUCT(ip VARCHAR, port INTEGER)", "destination": "STRUCT(ip VARCHAR, port INTEGER)",
    "network": "STRUCT(transport VARCHAR)", "threat": "STRUCT(technique STRUCT(id VARCHAR[]))",
    "flowsense": "STRUCT(analytic VARCHAR[], score DOUBLE, severity VARCHAR, evidence_grade VARCHAR, evidence JSON, "
                 "identifier VARCHAR, repeats INTEGER)"}
ALERT_COLUMNS = """flowsense.identifier AS id, rule.id AS rule, rule.name AS name,
    array_to_string(flowsense.analytic, '/') AS analytic, array_to_string(threat.technique.id, '/') AS techniques,
    flowsense.score AS score, flowsense.severity AS severity, flowsense.evidence_grade AS grade,
    source.ip AS src, source.port AS sport, destination.ip AS dst, destination.port AS dport,
    network.transport AS transport, CAST(event.start AS TIMESTAMPTZ) AS "start",
    CAST(event."end" AS TIMESTAMPTZ) AS "end", flowsense.repeats AS repeats, flowsense.evidence AS evidence"""
ARROW_TO_SQL = {"string": "VARCHAR", "double": "DOUBLE", "uint8": "UTINYINT", "uint16": "USMALLINT",
                "uint32": "UINTEGER", "uint64": "UBIGINT", "timestamp[ns, tz=UTC]": "TIMESTAMPTZ"}


def _empty_source(table: str) -> str:
    """A SQL source with no rows and the columns (names and types) the table's files would have."""
    schema = _empty_table(table).schema
    return "(SELECT " + ", ".join(f"NULL::{ARROW_TO_SQL[str(f.type)]} AS \"{f.name}\"" for f in schema) + " WHERE false)"


def _timestamps(table: str) -> list[str]:
    return [f.name for f in _empty_table(table).schema if str(f.type).startswith("timestamp")]


@functools.cache
def _empty_table(table: str):
    import numpy as np

    from flowsense.schema import DENY, DNS, FLOW
    from flowsense.sinks.tables import deny_table, dns_table, flow_table

    if table == "flows":
        return flow_table(FLOW.empty(0), [])
    if table == "dns":
        return dns_table(DNS.empty(0), np.zeros(0, np.uint8), [])
    return deny_table(DENY.empty(0), {"vendor": [], "device": [], "rule": []}, [])


def _complete(path: Path) -> bool:
    """A Parquet file ends with its footer and the magic PAR1."""
    try:
        with path.open("rb") as f:
            f.seek(-4, 2)
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def query(out_dir: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one SQL statement over an output folder; a SQL mistake is a usage error with DuckDB's words."""
    import duckdb

    con = Results.open(out_dir).connect()
    try:
        cur = con.execute(sql)
    except duckdb.Error as err:
        first = str(err).splitlines()[0]
        raise UsageError(f"query failed: {first} (tables: {', '.join(TABLES)}; "
                         "see their columns with: DESCRIBE flows)")
    if cur is None or cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()
