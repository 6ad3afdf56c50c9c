"""The one JSON serialisation of the API and of the command line's ``--json``.

api.md: "With ``--json`` the output is the same JSON as the API". Both write documents
through :func:`dumps` (the web app's JSON provider uses :func:`json_default` too), so that a
value not already plain JSON is written alike everywhere: decimals as numbers (``12.5``,
not ``"12.50"``), times as ISO 8601 in UTC with their offset (``2026-01-02T03:04:05+00:00``,
not ``2026-01-02 03:04:05`` nor an HTTP date), dates as ``YYYY-MM-DD``.
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any


def iso_time(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC with its offset; None stays None. SQLite hands
    back times without a zone: they are UTC (yushan.models stores UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def json_default(value: Any) -> Any:
    """A JSON value for what ``json`` cannot write itself."""
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(document: Any, *, indent: int | None = None) -> str:
    """``document`` as the API writes it (text kept as text: no ``\\uXXXX`` escapes)."""
    return json.dumps(document, ensure_ascii=False, default=json_default, indent=indent)
