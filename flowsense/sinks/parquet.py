"""Streaming Parquet output (zstd, one row group per batch), queryable with DuckDB."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ParquetSink:
    """Dictionary encoding only for the named low-cardinality columns: on unique values (community
    ids, timestamps) it triples the write time and grows the file."""

    def __init__(self, path: Path, empty: pa.Table, dictionary_columns: tuple[str, ...] = ()):
        self.path = path
        self.schema = empty.schema
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd", use_dictionary=list(dictionary_columns))
        self.rows = 0

    def write(self, table: pa.Table):
        if table.num_rows:
            self.writer.write_table(table)
            self.rows += table.num_rows

    def close(self):
        self.writer.close()
