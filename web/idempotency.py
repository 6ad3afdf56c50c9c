"""``Idempotency-Key`` on the API's creating requests (``POST /jobs``, template jobs, uploads).

A client that may retry (a timeout, a dropped connection) sends a key of its own choosing.
The first request with that key creates its object and its answer is kept, in the same
transaction, for :data:`TTL`. A retry by the same user with the same key and the same
request (method, path, body) within that time gets the original answer again (same
status, same id, header ``Idempotent-Replayed: true``) and creates nothing, audits
nothing. The same key with a different request is refused (422
``idempotency_key_reused``). Keys are per user: two users' keys never meet. Refused
requests (4xx) are not kept: they created nothing, and a retry is checked afresh.

On PostgreSQL two concurrent first requests with one key both create; the unique
(user, key) index lets one commit, and the other is rolled back and answered with the
winner's answer (SQLite serialises the two requests already: ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, jsonify, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from web.errors import ApiError
from yushan.models import IdempotencyKey, User

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL = timedelta(hours=24)
# Visible ASCII, at most 255 characters (a UUID is the usual choice).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class Attempt:
    """One request's key and what identifies the request itself."""

    user_id: int
    key: str
    fingerprint: str


def _now() -> datetime:
    return datetime.now(UTC)


def request_key() -> str | None:
    """The request's ``Idempotency-Key`` (None when absent); 400 when malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not _KEY.fullmatch(key):
        raise ApiError(400, "bad_request",
                       f"'{HEADER}' must be 1 to 255 visible ASCII characters (e.g. a UUID).")
    return key


def fingerprint(body: Any) -> str:
    """sha256 over the method, the path and the body (parsed JSON in canonical form, so
    that key order and spacing do not matter; or any JSON-able description of it)."""
    canonical = json.dumps({"method": request.method, "path": request.path, "body": body},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def begin(session: Session, user: User, body: Any) -> tuple[Attempt | None, Response | None]:
    """Start a creating request: ``(attempt, None)`` to go on and create (``attempt`` is
    None when the request has no key), or ``(None, answer)`` to answer a retry with the
    original answer. Raises 422 ``idempotency_key_reused`` for the same key with another
    request."""
    key = request_key()
    if key is None:
        return None, None
    attempt = Attempt(user.id, key, fingerprint(body))
    answer = replay(session, attempt)
    return (None, answer) if answer is not None else (attempt, None)


def _find(session: Session, attempt: Attempt) -> IdempotencyKey | None:
    return session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == attempt.user_id,
                                                       IdempotencyKey.key == attempt.key))


def replay(session: Session, attempt: Attempt) -> Response | None:
    """The kept answer for ``attempt`` (None: none within :data:`TTL`)."""
    row = _find(session, attempt)
    if row is None:
        return None
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    if created < _now() - TTL:
        # Expired: the key is free again (its row goes, so that the new answer can be kept).
        session.delete(row)
        session.flush()
        return None
    if row.fingerprint != attempt.fingerprint:
        raise ApiError(422, "idempotency_key_reused",
                       f"This {HEADER} was used for a different request in the last 24 hours; "
                       "send a new key with a new request.")
    response = jsonify(row.response)
    response.status_code = row.status
    if row.location:
        response.headers["Location"] = row.location
    response.headers[REPLAYED_HEADER] = "true"
    return response


def remember(session: Session, attempt: Attempt | None, response: Response) -> None:
    """Keep ``response`` as the answer for ``attempt`` (nothing when there is no key), in
    the caller's transaction; expired keys of the same user are removed on the way."""
    if attempt is None:
        return
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.user_id == attempt.user_id,
                                                 IdempotencyKey.created_at < _now() - TTL))
    session.add(IdempotencyKey(user_id=attempt.user_id, key=attempt.key,
                               fingerprint=attempt.fingerprint, status=response.status_code,
                               response=response.get_json(), location=response.headers.get("Location"),
                               created_at=_now()))


def commit(session: Session, attempt: Attempt | None, response: Response) -> Response:
    """Keep the answer and commit the transaction that created the object; when a
    concurrent request with the same key won, roll this one back and answer as it did."""
    remember(session, attempt, response)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if attempt is None:
            raise
        answer = replay(session, attempt)
        if answer is None:
            raise
        session.commit()
        return answer
    return response
