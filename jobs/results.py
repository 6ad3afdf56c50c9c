"""The one renderer of released rows: JSON, CSV (plain or for Excel) and Parquet.

The API, the pages and ``yushan download`` all write result files through
:func:`render_result`, so that every download is the same file, whoever asks and how.

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
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from jobs.errors import InvalidRequest

RESULT_FORMATS: dict[str, tuple[str, str]] = {
    # format -> (file extension, media type)
    "json": ("json", "application/json"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "parquet": ("parquet", "application/vnd.apache.parquet"),
}
# First characters that make a spreadsheet treat a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
UTF8_BOM = "\ufeff"


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


def render_csv(table: pa.Table, *, excel: bool = False) -> bytes:
    """The table as CSV: a header row, then one row per result row (see the module doc)."""
    ending = "\r\n" if excel else "\n"
    out = io.StringIO()
    out.write(UTF8_BOM if excel else "")
    # Rows are written with CRLF and then given their line end: with "\n" alone, Python's
    # csv (before 3.12) leaves a cell holding a bare "\r" unquoted, which splits the row.
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\r\n")
    rows = [table.column_names] + [list(row.values()) for row in table.to_pylist()]
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
        out.write(line.getvalue()[:-2] + ending)
        line.seek(0)
        line.truncate()
    return out.getvalue().encode("utf-8")


def render_result(table: pa.Table, fmt: str, *, excel: bool = False) -> bytes:
    """The table as a JSON document, CSV or Parquet file (``excel`` applies to CSV)."""
    if fmt == "json":
        columns, rows = table_rows(table)
        return json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False).encode("utf-8")
    if fmt == "csv":
        return render_csv(table, excel=excel)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    raise InvalidRequest("format must be one of: " + ", ".join(RESULT_FORMATS))


def result_filename(job_id: int, fmt: str, now: datetime | None = None) -> str:
    """``job-<id>-<UTC timestamp>.<ext>``: downloads never overwrite each other."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"job-{job_id}-{stamp}.{RESULT_FORMATS[fmt][0]}"
