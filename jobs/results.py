"""The one renderer of released rows: JSON, CSV (plain or for Excel) and Parquet.

The API, the pages and ``yushan download`` all send result files through
:func:`stream_result`, so that every download is the same file, whoever asks and how; it
renders a stored output a record batch at a time (:func:`render_rows`), never the whole
result as Python rows. :func:`render_result` renders a table in memory the same way.

CSV files neutralise formula injection (api.md "Additions"): a text cell that a spreadsheet
would run as a formula (a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) gets a
leading ``'``, which spreadsheets show as text. Numbers are written as numbers (a numeric
column's ``-5`` stays ``-5``): only text can carry a formula. ``excel=True`` writes UTF-8
with a byte-order mark and CRLF line ends, so that Excel opens Chinese text correctly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from jobs.errors import InvalidRequest
from sandbox.output import OpenedOutput

RESULT_FORMATS: dict[str, tuple[str, str]] = {
    # format -> (file extension, media type)
    "json": ("json", "application/json"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "parquet": ("parquet", "application/vnd.apache.parquet"),
}
# First characters that make a spreadsheet treat a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
UTF8_BOM = "\ufeff"
# Rows per record batch when a stored output is rendered: a few hundred KB of Python rows.
BATCH_ROWS = 2048


def plain_value(value: Any) -> Any:
    """A JSON-friendly form of a result value."""
    if isinstance(value, Decimal):
        # Aggregates (sums, averages) are what leaves; a float is what JSON readers expect.
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def table_rows(table: pa.Table, limit: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows (plain values) of a pyarrow Table."""
    if limit is not None:
        table = table.slice(0, limit)
    columns = list(table.column_names)
    rows = [{k: plain_value(v) for k, v in row.items()} for row in table.to_pylist()]
    return columns, rows


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: empty for null, text that could run as a formula quoted."""
    if value is None:
        return ""
    value = plain_value(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_lines(columns: list[str], batches: Iterable[pa.RecordBatch], excel: bool) -> Iterator[str]:
    """The CSV text: a header row, then one row per result row, a batch at a time."""
    ending = "\r\n" if excel else "\n"
    # Rows are written with CRLF and then given their line end: with "\n" alone, Python's
    # csv (before 3.12) leaves a cell holding a bare "\r" unquoted, which splits the row.
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\r\n")

    def text(rows: Iterable[list[Any]]) -> str:
        out = io.StringIO()
        for row in rows:
            writer.writerow([csv_cell(value) for value in row])
            out.write(line.getvalue()[:-2] + ending)
            line.seek(0)
            line.truncate()
        return out.getvalue()

    yield (UTF8_BOM if excel else "") + text([columns])
    for batch in batches:
        if batch.num_rows:
            yield text(list(row.values()) for row in batch.to_pylist())


def _json_parts(columns: list[str], batches: Iterable[pa.RecordBatch]) -> Iterator[str]:
    """``{"columns": [...], "rows": [...]}`` a batch at a time, exactly as ``json.dumps``
    writes the whole document (its default separators)."""
    yield '{"columns": ' + json.dumps(columns, ensure_ascii=False) + ', "rows": ['
    separator = ""
    for batch in batches:
        if batch.num_rows:
            yield separator + ", ".join(
                json.dumps({k: plain_value(v) for k, v in row.items()}, ensure_ascii=False)
                for row in batch.to_pylist())
            separator = ", "
    yield "]}"


def render_rows(columns: list[str], batches: Iterable[pa.RecordBatch], fmt: str, *,
                excel: bool = False) -> Iterator[bytes]:
    """Rows as JSON or CSV (``excel`` applies to CSV), one piece per record batch: the
    whole result never becomes Python rows at once."""
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be one of: json, csv")
    parts = _json_parts(columns, batches) if fmt == "json" else _csv_lines(columns, batches, excel)
    return (part.encode("utf-8") for part in parts)


def render_csv(table: pa.Table, *, excel: bool = False) -> bytes:
    """The table as CSV: a header row, then one row per result row (see the module doc)."""
    return b"".join(render_rows(list(table.column_names), table.to_batches(), "csv", excel=excel))


def render_result(table: pa.Table, fmt: str, *, excel: bool = False) -> bytes:
    """The table as a JSON document, CSV or Parquet file (``excel`` applies to CSV)."""
    if fmt in ("json", "csv"):
        return b"".join(render_rows(list(table.column_names), table.to_batches(), fmt, excel=excel))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    raise InvalidRequest("format must be one of: " + ", ".join(RESULT_FORMATS))


def stream_result(output: OpenedOutput, fmt: str, *, excel: bool = False) -> Iterator[bytes]:
    """A stored output as a download, piece by piece (what the API, the pages and
    ``yushan download`` send): Parquet is the stored file itself, decrypted chunk by chunk;
    JSON and CSV are rendered a record batch at a time. Memory stays bounded by one chunk
    and one batch, whatever the size of the result."""
    if fmt == "parquet":
        return output.plaintext()
    if fmt not in RESULT_FORMATS:
        raise InvalidRequest("format must be one of: " + ", ".join(RESULT_FORMATS))
    return render_rows(output.column_names(), output.batches(BATCH_ROWS), fmt, excel=excel)


def result_filename(job_id: int, fmt: str, now: datetime | None = None) -> str:
    """``job-<id>-<UTC timestamp>.<ext>``: downloads never overwrite each other."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"job-{job_id}-{stamp}.{RESULT_FORMATS[fmt][0]}"
