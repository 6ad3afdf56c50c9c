"""The per-merchant queue quota (``YUSHAN_QUEUE_QUOTA``): how many jobs a merchant may
have queued or running at once.

Fair claiming (:mod:`jobs.queue`) keeps one merchant's backlog from delaying another's next
job; the quota keeps the backlog itself bounded, so that a runaway client cannot fill the
database with thousands of jobs nobody will wait for. A submission that would take the
merchant past the quota is refused with 429 ``queue_full`` and a ``Retry-After``: the time
until one of its jobs is expected to finish and free a place (the merchant's typical run
time, less what its oldest running job has used already).

Counted from the jobs table, so it holds across web processes, workers and the command
line. Under concurrent submissions on PostgreSQL a few may pass at once at the edge;
SQLite serialises them. The first refusal of a burst is audited (``job.queue_full``,
:mod:`jobs.refusals`); a burst ends when a submission of the merchant is accepted again,
or after a clock hour.
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import Actor
from jobs.errors import JobError
from jobs.refusals import RefusalLog
from yushan.config import Config
from yushan.models import Job, JobState, Tenant

ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
# The merchant's typical run time from its last finished jobs; a default before it has any.
RECENT_RUNS = 20
DEFAULT_RUN_SECONDS = 60.0


class QueueFull(JobError):
    """The merchant has as many jobs queued or running as its quota allows."""

    code = "queue_full"
    status = 429

    def __init__(self, retry_after: int, quota: int):
        super().__init__(f"this merchant has {quota} jobs queued or running, its quota; "
                         f"try again in {retry_after} s")
        self.retry_after = retry_after
        self.quota = quota


_refusals = RefusalLog("job.queue_full")


def refusals(config: Config, merchant: str) -> int:
    """How many submissions for ``merchant`` this process refused for its quota."""
    return _refusals.total(config.database_url, merchant)


def active_jobs(session: Session, merchant: Tenant) -> int:
    """The merchant's jobs that are queued or running."""
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.merchant_id == merchant.id, Job.state.in_(ACTIVE))
    ) or 0


def check_quota(session: Session, config: Config, merchant: Tenant, actor: Actor) -> None:
    """Raise :class:`QueueFull` when ``merchant`` already has ``config.queue_quota`` jobs
    queued or running.

    Commits the session when it audits a refusal (the caller's rollback would undo it).
    """
    quota = config.queue_quota
    if quota <= 0:
        return
    active = active_jobs(session, merchant)
    if active < quota:
        _refusals.end_burst(config.database_url, merchant.slug)
        return
    retry_after = _seconds_to_a_place(session, merchant)
    _refusals.refused(session, config.database_url, merchant.slug, actor,
                      period=int(time.time() // 3600),
                      details={"quota": quota, "active": active, "retry_after": retry_after})
    raise QueueFull(retry_after, quota)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite returns naive times


def _seconds_to_a_place(session: Session, merchant: Tenant) -> int:
    """When one of the merchant's jobs is expected to finish: its typical run time, less
    what its longest-running job has used (at least 1 s)."""
    recent = session.execute(
        select(Job.started_at, Job.finished_at)
        .where(Job.merchant_id == merchant.id, Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(RECENT_RUNS)
    ).all()
    runs = [(_as_utc(end) - _as_utc(start)).total_seconds() for start, end in recent
            if start is not None and end is not None]
    typical = statistics.median(runs) if runs else DEFAULT_RUN_SECONDS
    oldest_start = session.scalar(
        select(func.min(Job.started_at)).where(Job.merchant_id == merchant.id,
                                               Job.state == JobState.RUNNING.value)
    )
    used = (datetime.now(UTC) - _as_utc(oldest_start)).total_seconds() if oldest_start else 0.0
    return max(1, math.ceil(typical - used))
