"""The one error type of onboarding: an HTTP status, a stable code, a value-free message.

Messages and reports name checks, columns, counts and row numbers, never a data value:
they reach the merchant, the audit trail and logs.
"""

from __future__ import annotations

from typing import Any


class OnboardingError(Exception):
    """An upload, withdrawal or registration refused; ``report`` details a rejection."""

    def __init__(self, status: int, code: str, message: str,
                 report: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.report = report

    def to_dict(self) -> dict[str, Any]:
        """The API's error document (``{"error": {...}}``), with the report if any."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.report is not None:
            error["report"] = self.report
        return {"error": error}


def bad_request(message: str) -> OnboardingError:
    return OnboardingError(400, "bad_request", message)


def forbidden(message: str = "Only a merchant's own users may do this.") -> OnboardingError:
    return OnboardingError(403, "forbidden", message)


def not_found() -> OnboardingError:
    # One message for "missing" and "someone else's": the two must look the same.
    return OnboardingError(404, "not_found", "No such dataset.")


def invalid(message: str) -> OnboardingError:
    """Well-formed, but not a value the platform accepts (422)."""
    return OnboardingError(422, "invalid", message)


def conflict(message: str) -> OnboardingError:
    return OnboardingError(409, "conflict", message)


def too_large(limit: int) -> OnboardingError:
    return OnboardingError(413, "too_large", f"The file is larger than the limit of {limit} bytes.")


def rejected(report: dict[str, Any]) -> OnboardingError:
    failed = [c for c in report.get("checks", []) if not c.get("passed", False)]
    summary = "; ".join(
        f"{c['check']} on {c['column'] or 'the file'}"
        + (f": {c['failed_rows']} row(s)" if c.get("failed_rows") is not None else "")
        for c in failed
    )
    return OnboardingError(
        422, "invalid", f"Upload rejected, nothing was kept ({len(failed)} check(s) failed: {summary}).",
        report,
    )
