"""Errors of the job service; each carries the API error code and HTTP status it maps to."""

from __future__ import annotations

from yushan.access import Permission


class JobError(Exception):
    code = "job_error"
    status = 400


class InvalidRequest(JobError):
    """Bad input: unknown kind, empty query."""

    code = "invalid_request"
    status = 400


class InvalidKind(InvalidRequest):
    code = "invalid_kind"
    status = 422


class InvalidSQL(InvalidRequest):
    code = "invalid_sql"
    status = 422


class InvalidName(InvalidRequest):
    code = "invalid_name"
    status = 422


class QueryTooLarge(JobError):
    code = "too_large"
    status = 413


class QueryTooComplex(JobError):
    """The query has too many tokens (jobs.sql_limits)."""

    code = "sql_too_complex"
    status = 422


class QueryTooDeep(QueryTooComplex):
    """The query nests parentheses too deep (jobs.sql_limits)."""

    code = "sql_too_deep"


class NotFound(JobError):
    """Missing, or not the caller's: the two are never told apart."""

    code = "not_found"
    status = 404


class NotAllowed(JobError):
    """The caller may see the job but not do this with it."""

    code = "forbidden"
    status = 403


class InvalidState(JobError):
    """The job is not in a state that allows this."""

    code = "invalid_state"
    status = 409


class NotApproved(InvalidState):
    """The job's output has not been approved by its merchant (yet)."""

    code = "not_approved"
    status = 409


class StateConflict(InvalidState):
    """Someone else changed the job first (a race lost; nothing was written)."""

    code = "state_conflict"
    status = 409


def require(permission: Permission) -> None:
    """Raise what a refusal of :mod:`yushan.access` means here: ``NotFound`` when the object
    must look missing (another tenant's), else ``NotAllowed`` with the reason."""
    if permission.allowed:
        return
    if permission.hidden:
        raise NotFound(permission.reason)
    raise NotAllowed(permission.reason)
