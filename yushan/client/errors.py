"""The client's errors: one hierarchy, each carrying the API's error document.

The API answers every refusal as ``{"error": {"code", "message"}}`` (uploads add a
``report``) with an HTTP status; :func:`error_for` turns that into the matching subclass of
:class:`ClientError`, so callers catch what they care about::

    try:
        client.job(job_id)
    except NotFound:          # missing, or another tenant's: the API does not tell
        ...
    except ClientError as exc:
        print(exc.status, exc.code, exc.message)
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A request the API refused (``status``, ``code``, ``message``, the whole
    ``document``), or one that never got an answer (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 document: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.document = document or {}
        self.headers = headers or {}

    @property
    def report(self) -> dict[str, Any] | None:
        """An upload's validation report (failed checks, their columns and row counts)."""
        return (self.document.get("error") or {}).get("report")


class BadRequest(ClientError):
    """400: the request is malformed (a field's type, a bad cursor, a bad key)."""


class Unauthorized(ClientError):
    """401: no token, a wrong or expired one, or a wrong password."""


class Forbidden(ClientError):
    """403: the caller's role may not do this."""


class NotFound(ClientError):
    """404: missing, or another tenant's (indistinguishable by design)."""


class Conflict(ClientError):
    """409: the object is not in a state that allows this (e.g. a result before approval)."""


class TooLarge(ClientError):
    """413: the body or the SQL is too large."""


class Invalid(ClientError):
    """422: the request is well formed but invalid (unknown kind, failed upload checks)."""


class IdempotencyKeyReused(Invalid):
    """422 ``idempotency_key_reused``: the key was used for a different request."""


class RateLimited(ClientError):
    """429: too many submissions or log-ins; ``retry_after`` seconds to wait."""

    @property
    def retry_after(self) -> int | None:
        value = self.headers.get("retry-after")
        return int(value) if value and value.isdigit() else None


class ServerError(ClientError):
    """5xx: the server failed (logged there, no details here)."""


class TransportError(ClientError):
    """No answer: the connection failed or timed out (``status`` None)."""


class JobTimeout(ClientError, TimeoutError):
    """:meth:`yushan.client.Client.wait` gave up; ``job`` is the last state seen."""

    def __init__(self, message: str, job: Any):
        super().__init__(message)
        self.job = job


class UploadTimeout(ClientError, TimeoutError):
    """:meth:`yushan.client.Client.upload` with ``wait=True`` gave up; ``upload`` is the
    last status seen (the server goes on validating: ask ``upload_status`` later)."""

    def __init__(self, message: str, upload: Any):
        super().__init__(message)
        self.upload = upload


# The HTTP status a synchronous upload answers for each refusal code (asynchronous
# uploads report the code only).
UPLOAD_STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413,
    "invalid": 422,
}


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: TooLarge, 422: Invalid, 429: RateLimited,
}
_BY_CODE: dict[str, type[ClientError]] = {"idempotency_key_reused": IdempotencyKeyReused}


def error_for(status: int, document: Any, headers: dict[str, str] | None = None) -> ClientError:
    """The :class:`ClientError` for an error answer (``document``: its parsed JSON, or None)."""
    error = document.get("error") if isinstance(document, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "error")
    message = str(error.get("message") or f"HTTP {status}")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ClientError)
    return cls(message, status=status, code=code,
               document=document if isinstance(document, dict) else None, headers=headers)
