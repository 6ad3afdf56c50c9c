"""Job states and the one function that moves a job between them.

Every change of state goes through :func:`transition`: a conditional update (the job must
still be in the state the caller saw, and, for a worker, still be leased to it) plus the
audit entry, in the caller's transaction. A lost race changes nothing and raises
:class:`~jobs.errors.StateConflict`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from audit import Actor, record
from jobs.errors import InvalidState, StateConflict
from jobs.wakeup import wake_after_commit
from sandbox.redact import submitter_error
from yushan.logs import current_request_id
from yushan.models import MAX_JOB_ID, Dataset, Job, JobState, random_job_id

S = JobState

# Allowed moves. Anything else is a bug or a race, and is refused.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED, S.BLOCKED}),
    S.RUNNING: frozenset({S.AWAITING_APPROVAL, S.BLOCKED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED, S.EXPIRED}),
    S.APPROVED: frozenset({S.EXPIRED}),
    S.BLOCKED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}
# States a job may still leave by cancellation.
CANCELLABLE = frozenset({S.QUEUED, S.RUNNING, S.AWAITING_APPROVAL})

# The audit action of each move (retries are a move back to queued).
ACTIONS: dict[JobState, str] = {
    S.QUEUED: "job.retry",
    S.RUNNING: "job.start",
    S.AWAITING_APPROVAL: "job.execute",
    S.BLOCKED: "job.decision",
    S.FAILED: "job.fail",
    S.CANCELLED: "job.cancel",
    S.APPROVED: "job.approve",
    S.REJECTED: "job.reject",
    S.EXPIRED: "job.expire",
}


def now() -> datetime:
    return datetime.now(UTC)


def new_job_id(session: Session) -> int:
    """A random job id not yet taken (a collision is a 1 in 10**15 event: drawn again)."""
    while True:
        candidate = random_job_id()
        if session.get(Job, candidate) is None:
            return candidate


def valid_job_id(value: object) -> int | None:
    """``value`` as a job id, or None when it cannot name a job (malformed, out of range).

    Callers answer None exactly like a missing job; it also keeps a huge number away from
    the database driver (beyond 64 bits it raises instead of finding nothing)."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 1 <= number <= MAX_JOB_ID else None


def read_consumer_data(session: Session, decision: dict[str, Any] | None) -> bool:
    """Whether a job read consumer data, as far as its policy decision tells. Unknown (no
    decision yet, or one that does not list what it read) counts as yes."""
    if not isinstance(decision, dict):
        return True
    if decision.get("release") is not None:  # dp or threshold: consumer data
        return True
    named = decision.get("datasets_read")
    if not isinstance(named, list):
        return True
    read = {str(name).lower() for name in named}
    if not read:
        return False
    consumer = session.scalars(select(Dataset.full_name).where(Dataset.is_consumer_data.is_(True)))
    return any(name.lower() in read for name in consumer)


def job_objects(job: Job) -> dict[str, Any]:
    return {"job": job.id, "merchant": job.merchant.slug if job.merchant else job.merchant_id}


def transition(
    session: Session,
    job: Job,
    to: JobState,
    *,
    actor: Actor,
    details: dict[str, Any] | None = None,
    lease_owner: str | None = None,
    values: dict[str, Any] | None = None,
    action: str | None = None,
    where: tuple[Any, ...] = (),
) -> Job:
    """Move ``job`` to ``to`` if it is still in the state loaded, and audit the move.

    ``lease_owner`` (workers) also requires the job to be leased to that worker, so that a
    worker whose lease has expired cannot overwrite what happened since. ``values`` sets
    further columns in the same update.
    """
    current = JobState(job.state)
    if to not in TRANSITIONS[current]:
        raise InvalidState(f"job {job.id} is {current.value}; it cannot become {to.value}")
    changes: dict[str, Any] = {"state": to.value, "updated_at": now(), **(values or {})}
    details = dict(details or {})
    if to == S.FAILED:
        # Every failure passes here: what the submitter sees of it (P8); the specific
        # error stays in the audit entry.
        decision = changes.get("decision") or job.decision
        specific = changes.get("error")
        consumer = read_consumer_data(session, decision)
        changes["error"] = submitter_error(specific, read_consumer_data=consumer)
        if consumer:
            changes["progress"] = 1.0  # how far it got before failing is not shown either
        details.setdefault("error", specific)
    if to in (S.AWAITING_APPROVAL, S.BLOCKED, S.FAILED, S.CANCELLED) and "finished_at" not in changes:
        changes["finished_at"] = now()
    if to != S.RUNNING:
        changes.setdefault("lease_owner", None)
        changes.setdefault("lease_expires_at", None)
    stmt = update(Job).where(Job.id == job.id, Job.state == current.value)
    if lease_owner is not None:
        stmt = stmt.where(Job.lease_owner == lease_owner)
    if where:
        stmt = stmt.where(*where)
    result = session.execute(stmt.values(**changes).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise StateConflict(f"job {job.id} changed while this request was handled")
    session.refresh(job)
    if to == S.QUEUED:
        wake_after_commit(session)  # a retry: idle workers take it at once
    record(
        session,
        action or ACTIONS[to],
        actor=actor,
        objects=job_objects(job),
        details={"from": current.value, "to": to.value, **details},
    )
    return job


def create(
    session: Session,
    *,
    merchant_id: int,
    submitter_id: int,
    kind: str,
    sql: str,
    name: str,
    decision: dict[str, Any] | None,
    actor: Actor,
    template: str | None = None,
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A new job, born ``queued``; audited (``job.submit``, and ``job.decision`` when the
    decision is known already: ``None`` means it is still to come). A deny blocks it later,
    through :func:`transition`. ``idempotency_key``: the API request's key, noted in the
    ``job.submit`` entry."""
    job = Job(
        id=new_job_id(session),
        merchant_id=merchant_id,
        submitted_by=submitter_id,
        kind=kind,
        sql=sql,
        name=name,
        template=template,
        params=params,
        state=S.QUEUED.value,
        progress=0.0,
        decision=decision,
        violations=(decision or {}).get("violations") or [],
        attempts=0,
        created_at=now(),
        request_id=current_request_id(),
    )
    session.add(job)
    session.flush()
    session.refresh(job)
    wake_after_commit(session)
    objects = job_objects(job)
    record(session, "job.submit", actor=actor, objects=objects,
           details={"kind": kind, "name": name, "sql": sql, "state": S.QUEUED.value,
                    **({"template": template} if template else {}),
                    **({"request_id": job.request_id} if job.request_id else {}),
                    **({"idempotency_key": idempotency_key} if idempotency_key else {})})
    if decision is not None:
        record(session, "job.decision", actor=actor, objects=objects,
               details={"decision": decision.get("decision"), "violations": decision.get("violations") or [],
                        "columns_read": decision.get("columns_read"),
                        "datasets_read": decision.get("datasets_read")})
    return job
