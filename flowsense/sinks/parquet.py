"""Streaming Parquet output (zstd, one row group per batch), queryable with DuckDB."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ParquetSink:
    def __init__(self, path: Path, empty: pa.Table):
        self.path = path
        self.schema = empty.schema
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table):
        if table.num_rows:
            self.writer.write_table(table)
            self.rows += table.num_rows

    def close(self):
        self.writer.close()
