"""The durable job queue in the metadata database: claims, leases, heartbeats, recovery.

- A claim moves the next ``queued`` job to ``running`` under a lease, fairly across
  merchants (:func:`_fair_candidate`). On PostgreSQL the
  candidate row is locked with ``FOR UPDATE SKIP LOCKED``; on SQLite every write
  transaction is ``BEGIN IMMEDIATE`` (one writer at a time). In both, the move itself is a
  conditional update on the state, so two workers can never both win one job.
- The worker renews its lease with heartbeats (which also carry progress). A heartbeat
  tells the worker whether it still holds the job, or whether it was cancelled.
- :func:`reap_expired` puts a job whose lease ran out (its worker died) back in the queue
  once; after that it fails with a clear error. It never stays ``running``.
"""

from __future__ import annotations

import enum
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit import Actor
from jobs.errors import StateConflict
from jobs.lifecycle import now, transition
from yushan.config import Config
from yushan.db import session_scope
from yushan.models import Job, JobState

MAX_ATTEMPTS = 2  # the first run and one retry
WORKER_ACTOR = "worker"
HOST = socket.gethostname()


class LeaseStatus(enum.StrEnum):
    HELD = "held"  # carry on
    CANCELLED = "cancelled"  # the user cancelled: stop, keep nothing
    LOST = "lost"  # the lease expired and the job moved on: stop, write nothing


def worker_identity() -> str:
    """``host:pid:random``: lets a worker on the same host tell a dead owner at once."""
    return f"{HOST}:{os.getpid()}:{secrets.token_hex(3)}"


def worker_actor() -> Actor:
    return Actor.system(WORKER_ACTOR)


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to run a job (plain data; no live ORM object)."""

    id: int
    merchant: str
    kind: str
    sql: str
    attempt: int
    request_id: str | None = None  # of the web request that submitted it


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _fair_candidate():
    """The next queued job, fairly across merchants: from the merchant with the fewest
    running jobs, then the one served least recently (its last job's start), then the
    oldest job. One merchant's thousand queued jobs delay another's next job by at most
    the one job that was already running."""
    running = (
        select(Job.merchant_id, func.count().label("running"))
        .where(Job.state == JobState.RUNNING.value)
        .group_by(Job.merchant_id)
        .subquery()
    )
    served = (
        select(Job.merchant_id, func.max(Job.started_at).label("last_start"))
        .where(Job.started_at.is_not(None))
        .group_by(Job.merchant_id)
        .subquery()
    )
    return (
        select(Job.id)
        .outerjoin(running, running.c.merchant_id == Job.merchant_id)
        .outerjoin(served, served.c.merchant_id == Job.merchant_id)
        .where(Job.state == JobState.QUEUED.value)
        .order_by(func.coalesce(running.c.running, 0), served.c.last_start.asc().nulls_first(),
                  Job.created_at, Job.id)
        .limit(1)
    )


def claim(config: Config, worker_id: str) -> Claimed | None:
    """Lease the next queued job (fairly across merchants) to ``worker_id``, or return
    None when there is none."""
    with session_scope(config) as session:
        for _ in range(3):  # a lost race is retried with the next candidate
            candidate = _fair_candidate()
            if not config.is_sqlite:
                candidate = candidate.with_for_update(skip_locked=True, of=Job)
            job_id = session.scalar(candidate)
            if job_id is None:
                return None
            job = session.get(Job, job_id)
            stamp = now()
            try:
                transition(
                    session,
                    job,
                    JobState.RUNNING,
                    actor=worker_actor(),
                    details={"worker": worker_id, "attempt": job.attempts + 1},
                    values={
                        "attempts": Job.attempts + 1,
                        "lease_owner": worker_id,
                        "lease_expires_at": stamp + timedelta(seconds=config.job_lease_seconds),
                        "heartbeat_at": stamp,
                        "started_at": stamp,
                        "progress": 0.0,
                    },
                )
            except StateConflict:
                session.expire_all()
                continue
            return Claimed(job.id, job.merchant.slug, job.kind, job.sql, job.attempts,
                           job.request_id)
    return None


def unclaim(config: Config, job: Claimed, worker_id: str, reason: str) -> None:
    """Give a job back to the queue before anything of it ran (its executor was found dead
    right after the claim): the attempt is not counted, so it is not a retry."""
    with session_scope(config) as session:
        row = session.get(Job, job.id)
        if row is None:
            return
        try:
            transition(
                session, row, JobState.QUEUED, actor=worker_actor(), lease_owner=worker_id,
                where=(Job.attempts == job.attempt,),
                details={"reason": reason, "attempt": job.attempt, "started": False},
                values={"attempts": Job.attempts - 1, "progress": 0.0, "heartbeat_at": None,
                        "started_at": None},
            )
        except StateConflict:
            pass  # cancelled or taken over meanwhile


def heartbeat(config: Config, job_id: int, worker_id: str, progress: float | None = None,
              attempt: int | None = None) -> LeaseStatus:
    """Renew the lease (and store progress); say whether the worker still holds the job
    (in ``attempt``, when given: a lost lease is never renewed by a later claim's owner)."""
    stamp = now()
    values: dict = {
        "lease_expires_at": stamp + timedelta(seconds=config.job_lease_seconds),
        "heartbeat_at": stamp,
    }
    if progress is not None:
        values["progress"] = progress
    with session_scope(config) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.lease_owner == worker_id,
                   *((Job.attempts == attempt,) if attempt is not None else ()))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            return LeaseStatus.HELD
        state = session.scalar(select(Job.state).where(Job.id == job_id))
    return LeaseStatus.CANCELLED if state == JobState.CANCELLED.value else LeaseStatus.LOST


def _owner_gone(owner: str | None) -> bool:
    """True when the owner ran on this host and its process no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def give_back(session: Session, job: Job, *, reason: str, error_class: str, message: str, owner: str | None) -> JobState:
    """Retry a job whose run was lost once; fail it after that. Returns the new state."""
    where = (Job.lease_owner == owner,) if owner else (Job.lease_owner.is_(None),)
    if job.attempts < MAX_ATTEMPTS:
        transition(
            session, job, JobState.QUEUED, actor=worker_actor(), where=where,
            details={"reason": reason, "attempt": job.attempts},
            values={"progress": 0.0, "heartbeat_at": None},
        )
        return JobState.QUEUED
    error = {"class": error_class, "message": f"{message}; it was retried once and failed again"}
    transition(
        session, job, JobState.FAILED, actor=worker_actor(), where=where,
        details={"reason": reason, "error": error, "attempts": job.attempts},
        values={"error": error},
    )
    return JobState.FAILED


def reap_expired(config: Config) -> dict[int, JobState]:
    """Recover running jobs whose lease expired or whose worker is known dead."""
    outcome: dict[int, JobState] = {}
    stamp = now()
    with session_scope(config) as session:
        running = session.scalars(select(Job).where(Job.state == JobState.RUNNING.value)).all()
        for job in running:
            expires = _as_utc(job.lease_expires_at)
            if not (expires is None or expires < stamp or _owner_gone(job.lease_owner)):
                continue
            try:
                outcome[job.id] = give_back(
                    session, job,
                    reason=f"lease of {job.lease_owner} expired",
                    error_class="WorkerLost",
                    message="the worker running this job stopped",
                    owner=job.lease_owner,
                )
            except StateConflict:
                continue
    return outcome
