"""The per-merchant limit on job submissions (policy P8; ``YUSHAN_JOB_RATE_LIMIT``).

The contract limits jobs that read consumer data, so that an analyst cannot turn a
yes/no side channel (run time, say) into a fast oracle. Whether a job reads consumer data
is only known once the policy has checked it, after it is queued, so *every* submission
for a merchant counts: stricter than the contract, never looser.

The window slides: at most ``limit`` submissions whose ``created_at`` lies in the last 60
minutes, counted from the jobs table itself (so it holds across web processes, workers and
the command line, and survives restarts). Under concurrent submissions on PostgreSQL a
few may pass at once at the edge; SQLite serialises them.

Refusals are not audited one by one (a client hammering the API would flood the trail):
the first refusal of a merchant in each clock hour is audited (``job.rate_limit``), and
carries how many refusals this process counted since the one audited before it
(:mod:`jobs.refusals`).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import Actor
from jobs.errors import JobError
from jobs.refusals import RefusalLog
from yushan.config import Config
from yushan.models import Job, Tenant

WINDOW = timedelta(hours=1)


class RateLimited(JobError):
    """Too many submissions for this merchant in the last hour."""

    code = "too_many_requests"
    status = 429

    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"more than {limit} job submissions for this merchant in an hour; "
                         f"try again in {retry_after} s")
        self.retry_after = retry_after
        self.limit = limit


_refusals = RefusalLog("job.rate_limit")


def refusals(config: Config, merchant: str) -> int:
    """How many submissions for ``merchant`` this process refused for the limit."""
    return _refusals.total(config.database_url, merchant)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite returns naive times


def check_rate(session: Session, config: Config, merchant: Tenant, actor: Actor) -> None:
    """Raise :class:`RateLimited` (with the seconds until a place frees) when ``merchant``
    has had ``config.job_rate_limit`` submissions in the last hour.

    Commits the session when it audits a refusal (the caller's rollback would undo it).
    """
    limit = config.job_rate_limit
    if limit <= 0:
        return
    now = datetime.now(UTC)
    recent = select(Job.created_at).where(Job.merchant_id == merchant.id, Job.created_at > now - WINDOW)
    count = session.scalar(select(func.count()).select_from(recent.subquery())) or 0
    if count < limit:
        return
    # The submission whose hour ends first among those over the limit frees the next place.
    freeing = session.scalar(recent.order_by(Job.created_at).offset(count - limit).limit(1))
    wait = (_as_utc(freeing) + WINDOW - now).total_seconds() if freeing is not None else 1.0
    retry_after = max(1, math.ceil(wait))
    _count_refusal(session, config, merchant.slug, actor, limit, retry_after)
    raise RateLimited(retry_after, limit)


def _count_refusal(session: Session, config: Config, merchant: str, actor: Actor, limit: int,
                   retry_after: int) -> None:
    _refusals.refused(session, config.database_url, merchant, actor, period=int(time.time() // 3600),
                      details={"limit": limit, "window_seconds": int(WINDOW.total_seconds()),
                               "retry_after": retry_after})
