"""P8: what a submitter learns about a failed job. Never a data value.

A job that read consumer data fails, whatever the cause, with one generic error,
:data:`GENERIC_FAILURE`: which error happened could depend on the data (a division by zero
only when one consumer's row is there), so the class itself would leak. The job's record
gets the generic error where the failure is recorded (``jobs.lifecycle.transition``).

A job that read no consumer data shows ``{"class", "message"}``: Spark's error condition (a
fixed identifier such as ``DIVIDE_BY_ZERO``) or the exception type, and a generic sentence.

In both cases the full text, which may quote values from the data, and the specific class
go to the audit entry of the failure only.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

# What the submitter of a job that read consumer data sees of any failure (P8).
GENERIC_FAILURE: dict[str, str] = {"class": "JobFailed", "message": "The job could not be completed."}

# Generic sentences per family of Spark error conditions; the first contained key wins.
_GENERIC: tuple[tuple[str, str], ...] = (
    ("DIVIDE_BY_ZERO", "a division by zero happened while the job ran; use try_divide"),
    ("INTERVAL_DIVIDED_BY_ZERO", "a division by zero happened while the job ran"),
    ("CAST_INVALID_INPUT", "a value could not be cast to the requested type; use try_cast"),
    ("CAST_OVERFLOW", "a value did not fit the type it was cast to; use try_cast"),
    ("ARITHMETIC_OVERFLOW", "an arithmetic result did not fit its type"),
    ("NUMERIC_VALUE_OUT_OF_RANGE", "a numeric result did not fit its type"),
    ("DATETIME", "a date or time value could not be processed"),
    ("INVALID_", "the query used a value or argument Spark rejects at run time"),
    ("UNRESOLVED_", "the query names a table, column or function that does not exist"),
    ("TABLE_OR_VIEW_NOT_FOUND", "the query names a table that does not exist"),
    ("PARSE_SYNTAX_ERROR", "the query is not valid Spark SQL"),
)
_DEFAULT = "the job failed while running; the details are in the audit trail"


@dataclass(frozen=True)
class RedactedError:
    """What the submitter sees, and what only the audit trail keeps."""

    error_class: str
    message: str
    full_text: str

    def public(self) -> dict[str, str]:
        return {"class": self.error_class, "message": self.message}


def error_class_of(exc: BaseException) -> str:
    """Spark's error condition when there is one, else the exception's type name."""
    for getter in ("getCondition", "getErrorClass"):
        method = getattr(exc, getter, None)
        if callable(method):
            try:
                value = method()
            except Exception:  # noqa: BLE001 - some wrappers fail without a JVM error
                value = None
            if value:
                # Conditions may carry a sub-class ("INVALID_X.Y"); the head is enough.
                return str(value)
    return type(exc).__name__


def generic_message(error_class: str) -> str:
    for key, text in _GENERIC:
        if key in error_class:
            return text
    return _DEFAULT


def redact(exc: BaseException) -> RedactedError:
    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # The policy engine's enforcement errors carry a class and a message made for users.
    own_class = getattr(exc, "error_class", None)
    if isinstance(own_class, str) and type(exc).__module__.startswith("policies."):
        return RedactedError(own_class, str(exc), full)
    cls = error_class_of(exc)
    return RedactedError(cls, generic_message(cls), full)


def limit_error(error_class: str, message: str) -> RedactedError:
    """An error the platform raises itself (limits, lost workers): safe to show as is."""
    return RedactedError(error_class, message, message)


def submitter_error(error: dict[str, Any] | None, *, read_consumer_data: bool) -> dict[str, Any]:
    """The error a job's submitter sees: the generic one when the job read consumer data."""
    if read_consumer_data or not isinstance(error, dict):
        return dict(GENERIC_FAILURE)
    return error
