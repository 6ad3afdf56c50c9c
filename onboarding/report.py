"""Validation reports: which check, on which column, how many rows, the first row numbers.

A report never holds a data value, so that it may be shown, stored and audited as is.
Row numbers are line numbers of the uploaded CSV (the header is line 1), or 1-based row
numbers of an uploaded Parquet file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FIRST_ROWS = 5


@dataclass(frozen=True)
class CheckResult:
    check: str  # stable id, e.g. "member_key_unique", "type", "well_formed"
    column: str | None  # None for whole-file checks
    passed: bool
    message: str
    expectation: str | None = None  # the Great Expectations expectation, when one ran
    failed_rows: int | None = None
    first_rows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_rows"] = list(self.first_rows)
        return data


@dataclass
class ValidationReport:
    rows: int | None
    checks: list[CheckResult] = field(default_factory=list)
    file_format: str | None = None
    encoding: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.passed,
            "rows": self.rows,
            "format": self.file_format,
            "encoding": self.encoding,
            "checks": [c.to_dict() for c in self.checks],
        }

    def audit_summary(self) -> dict[str, Any]:
        """Counts only, for the audit trail."""
        return {
            "passed": self.passed,
            "rows": self.rows,
            "checks_run": len(self.checks),
            "failed": [
                {"check": c.check, "column": c.column, "failed_rows": c.failed_rows}
                for c in self.failed
            ],
        }


class FileRejected(Exception):
    """The file itself is unusable (encoding, empty, too-long line...): a one-check report."""

    def __init__(self, check: str, message: str, *, column: str | None = None,
                 first_rows: tuple[int, ...] = (), failed_rows: int | None = None):
        super().__init__(message)
        self.result = CheckResult(check=check, column=column, passed=False, message=message,
                                  failed_rows=failed_rows, first_rows=first_rows)
