"""A person's recent queries for one merchant: what they submitted (jobs) and what they
only checked (``job.check`` entries of the audit trail), newest first, one entry per
distinct query, so the editor can load any of them again."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.review import query as audit_query
from jobs.errors import require
from yushan import access
from yushan.models import Job, User

# How far back each source is read before merging (the page shows fewer).
JOBS_SCANNED = 100
CHECKS_SCANNED = 300


@dataclass(frozen=True)
class PastQuery:
    """One query the user wrote: its kind and SQL, when, and how it went."""

    kind: str
    sql: str
    at: datetime
    source: str  # "job" or "check"
    outcome: str  # a job's state, or a check's decision (allow, deny, error)
    job_id: int | None = None
    name: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sql": self.sql, "at": self.at.isoformat(),
                "source": self.source, "outcome": self.outcome, "job_id": self.job_id,
                "name": self.name}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _key(kind: str, sql: str) -> tuple[str, str]:
    # Whitespace differences do not make another query.
    return kind, " ".join(sql.split())


def recent_queries(session: Session, user: User, merchant_slug: str, limit: int = 12) -> list[PastQuery]:
    """``user``'s latest distinct queries for ``merchant_slug`` (a merchant they act for,
    else :class:`jobs.errors.NotFound`): their submitted SQL jobs and their checks."""
    permission = access.act_for(session, user, merchant_slug)
    require(permission)
    merchant = permission.target
    found: list[PastQuery] = []
    jobs = session.scalars(
        select(Job)
        .where(Job.submitted_by == user.id, Job.merchant_id == merchant.id, Job.template.is_(None))
        .order_by(Job.created_at.desc())
        .limit(JOBS_SCANNED)
    )
    for job in jobs:
        found.append(PastQuery(job.kind, job.sql, _aware(job.created_at), "job", job.state,
                               job.id, job.name or ""))
    for entry in audit_query(session, actor=user.username, action="job.check", limit=CHECKS_SCANNED):
        if (entry["objects"] or {}).get("merchant") != merchant.slug:
            continue
        details = entry["details"] or {}
        sql, kind = details.get("sql"), details.get("kind")
        if not isinstance(sql, str) or not isinstance(kind, str) or not sql.strip():
            continue
        at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
        found.append(PastQuery(kind, sql, _aware(at), "check", str(details.get("decision") or "")))
    # One entry per query: shown at its latest use, as the newest job that ran it if any
    # (a job says more than a check), else as its latest check.
    groups: dict[tuple[str, str], list[PastQuery]] = {}
    for item in found:
        groups.setdefault(_key(item.kind, item.sql), []).append(item)
    latest = []
    for items in groups.values():
        newest = max(items, key=lambda q: q.at)
        jobs_of = [q for q in items if q.source == "job"]
        shown = max(jobs_of, key=lambda q: q.at) if jobs_of else newest
        latest.append(replace(shown, at=newest.at))
    latest.sort(key=lambda q: q.at, reverse=True)
    return latest[:limit]
