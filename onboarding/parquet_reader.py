"""Uploaded Parquet: checked with pyarrow and rewritten with 1-based row numbers (streamed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onboarding.report import FileRejected

BATCH_ROWS = 65_536
LINE_COLUMN = "_line"


@dataclass(frozen=True)
class ParquetUpload:
    path: Path  # the numbered copy: the file's columns plus ``_line``
    columns: list[str]
    rows: int


def number_parquet(src: Path, dest: Path) -> ParquetUpload:
    """Copy ``src`` batch by batch into ``dest`` with a ``_line`` row-number column."""
    try:
        source = pq.ParquetFile(src)
        schema = source.schema_arrow
    except (pa.ArrowException, OSError):
        raise FileRejected("format", "The file is not a readable Parquet file.") from None
    for arrow_field in schema:
        if pa.types.is_nested(arrow_field.type) or pa.types.is_dictionary(arrow_field.type) and \
                pa.types.is_nested(arrow_field.type.value_type):
            raise FileRejected("type", "The column holds nested values; only flat columns are "
                               "accepted.", column=arrow_field.name)
        if arrow_field.name.startswith("_"):
            raise FileRejected("header", "Column names may not start with an underscore.",
                               column=arrow_field.name)
    rows = 0
    out_schema = schema.append(pa.field(LINE_COLUMN, pa.int64(), nullable=False))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink, pq.ParquetWriter(sink, out_schema) as writer:
            for batch in source.iter_batches(batch_size=BATCH_ROWS):
                numbers = pa.array(range(rows + 1, rows + 1 + batch.num_rows), pa.int64())
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [*batch.columns, numbers], schema=out_schema))
                rows += batch.num_rows
    except (pa.ArrowException, OSError):
        raise FileRejected("format", "The Parquet file is damaged.") from None
    if rows == 0:
        raise FileRejected("not_empty", "The file has no rows.")
    return ParquetUpload(dest, [f.name for f in schema], rows)
