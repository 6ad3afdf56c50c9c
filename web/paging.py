"""Cursor pagination of the API's lists (``GET /jobs``, ``/audit``, ``/datasets``).

A page is asked for with ``?limit=`` and the ``cursor`` the previous page answered as
``next_cursor`` (``null`` on the last page). A cursor is opaque to callers: base64url of a
small JSON array naming the list it belongs to and the position of the last item shown
(keyset pagination: no offsets, so items added or removed meanwhile neither repeat nor
vanish). It names no other object and grants nothing: every page is still filtered by the
caller's visibility, so a forged cursor can only start elsewhere in the caller's own list.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from flask import request

from web.errors import ApiError

CURSOR_MAX_CHARS = 512
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+")

# Default and largest page size of each list (documented in openapi.json and docs/interfaces.md).
JOBS_LIMIT = (100, 1000)
AUDIT_LIMIT = (1000, 10_000)
DATASETS_LIMIT = (1000, 1000)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query argument: 400 when it is not a number, 422 out of range."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"'{name}' must be a whole number.") from None
    if not low <= value <= high:
        raise ApiError(422, "invalid", f"'{name}' must be between {low} and {high}.")
    return value


def limit_arg(bounds: tuple[int, int]) -> int:
    """``?limit=`` within ``bounds`` (default, largest)."""
    default, high = bounds
    return int_arg("limit", default, 1, high)


def encode_cursor(kind: str, *position: Any) -> str:
    """The opaque cursor after ``position`` in the list ``kind``."""
    raw = json.dumps([kind, *position], separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _bad_cursor() -> ApiError:
    return ApiError(400, "bad_cursor",
                    "'cursor' is not a cursor this list answered as next_cursor; "
                    "ask for the first page again without it.")


def decode_cursor(kind: str, *types: type) -> tuple[Any, ...] | None:
    """The position ``?cursor=`` names in the list ``kind`` (None: first page); 400
    ``bad_cursor`` when it is malformed, forged in shape, or another list's cursor."""
    raw = request.args.get("cursor")
    if raw is None or raw == "":
        return None
    if len(raw) > CURSOR_MAX_CHARS or not _CURSOR_CHARS.fullmatch(raw):
        raise _bad_cursor()
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise _bad_cursor() from None
    if (not isinstance(value, list) or len(value) != len(types) + 1 or value[0] != kind
            or not all(isinstance(v, t) and not (t is int and isinstance(v, bool))
                       for v, t in zip(value[1:], types, strict=True))):
        raise _bad_cursor()
    return tuple(value[1:])


def cursor_time(value: datetime) -> str:
    """A timestamp for a cursor: UTC, microseconds, no zone (the database's own order)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


def parse_cursor_time(raw: str) -> datetime:
    """The timestamp a cursor holds (UTC); 400 ``bad_cursor`` when it is not one."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad_cursor() from None
    if value.tzinfo is not None:
        raise _bad_cursor()
    return value.replace(tzinfo=UTC)
