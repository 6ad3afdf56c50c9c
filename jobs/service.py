"""What the web API and the command line do with jobs. Callers own the transaction.

Visibility: the submitter, the users of the job's merchant, and auditors (metadata only);
for anyone else a job does not exist. Results: the job's merchant, and a provider whose
active authorisation grants ``view_results``; only after the merchant approved.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
from sqlalchemy import update
from sqlalchemy.orm import Session

from audit import Actor, record
from jobs import lifecycle
from jobs.errors import (
    InvalidRequest,
    InvalidState,
    NotAllowed,
    NotApproved,
    NotFound,
    QueryTooLarge,
    StateConflict,
)
from jobs.wakeup import open_watch
from sandbox.crypto import KeyStore
from sandbox.output import read_output, remove_output
from yushan.accounts import active_authorization, can_act_for
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.models import Job, JobKind, JobOutput, JobState, Role, User

log = logging.getLogger(__name__)

KINDS = frozenset(k.value for k in JobKind)
MAX_SQL_CHARS = 100_000


def actor_for(user: User, origin: str | None = None) -> Actor:
    return Actor(username=user.username, role=user.role, tenant=user.tenant.slug, origin=origin or "")


def _validate(kind: str, sql: str) -> str:
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of: {', '.join(sorted(KINDS))}")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidRequest("the query is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryTooLarge(f"the query is longer than {MAX_SQL_CHARS} characters")
    return sql.strip().rstrip(";").strip()


def evaluate(config: Config, sql: str, kind: str, merchant: str, datasets: dict[str, DatasetInfo]) -> dict[str, Any]:
    """The policy decision for a query, on this process's own SparkSession."""
    import policies
    from policies.segment import register_segment_token
    from sandbox.catalog import CATALOG_LOCK, install_catalog
    from sandbox.guard import screen
    from sandbox.spark import get_spark

    spark = get_spark(config, "yushan-web")
    with CATALOG_LOCK:
        # Spark runs some commands while turning text into a DataFrame: refuse them first.
        refused = screen(spark, sql)
        if refused is not None:
            return refused
        install_catalog(spark, datasets)
        register_segment_token(spark, KeyStore(config.master_key_path).segment_token_key(merchant), merchant)
        return policies.check(spark, sql, kind=kind, merchant=merchant, datasets=datasets).to_dict()


def _acting_merchant(session: Session, user: User, merchant_slug: str):
    merchant = can_act_for(session, user, merchant_slug)
    if merchant is None:
        # Unknown merchant and not-your-merchant look the same.
        raise NotFound("no such merchant")
    return merchant


def check(session: Session, config: Config, user: User, merchant_slug: str, kind: str, sql: str,
          *, origin: str | None = None) -> dict[str, Any]:
    """Dry run: the policy decision, audited, nothing queued."""
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    decision = evaluate(config, sql, kind, merchant.slug, readable_datasets(session, config, merchant.slug))
    record(
        session, "job.check", actor=actor_for(user, origin),
        objects={"merchant": merchant.slug},
        details={"kind": kind, "sql": sql, "decision": decision.get("decision"),
                 "violations": decision.get("violations") or []},
    )
    return decision


def submit(session: Session, config: Config, user: User, merchant_slug: str, kind: str, sql: str,
           name: str | None = None, *, origin: str | None = None,
           template: str | None = None, params: dict[str, Any] | None = None) -> Job:
    """Queue a job and give the submitter the policy's decision on it: the job comes back
    ``blocked`` with its violations when the policy denies it, else queued (or further on).

    Commits the session twice. The job is committed as queued *before* any check, so that
    a worker can start on it at once: the executor checks every job on its own catalog
    before anything runs (that check is the authoritative one). When a worker on this host
    claims the job within moments, its executor's decision, relayed by the worker
    (:class:`jobs.wakeup.JobWatch`), is the submitter's answer; otherwise this process
    checks the query itself. A deny from either check blocks the job wherever it has got to
    (an output already made is shredded); the other then finds it blocked. Each step is
    audited in its own transaction: ``job.submit``, then ``job.decision``.
    """
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    datasets = readable_datasets(session, config, merchant.slug)
    actor, merchant_slug = actor_for(user, origin), merchant.slug
    job = lifecycle.create(
        session,
        merchant_id=merchant.id,
        submitter_id=user.id,
        kind=kind,
        sql=sql,
        name=(name or "").strip()[:200],
        decision=None,
        actor=actor,
        template=template,
        params=params,
    )
    job_id = job.id
    # Opened before the commit: the worker that claims the job tells this process at once.
    watch = open_watch(config, job_id)
    session.commit()  # queued for good: idle workers are woken now
    # Nothing below touches the session until the decision is known: on SQLite, the next
    # statement takes the database's write lock, which the workers need meanwhile.
    checked_in, decision = "executor", None
    if watch is not None:
        try:
            decision = watch.executor_decision()
        except Exception:  # noqa: BLE001 - only a shortcut: this process checks instead
            log.debug("job %s: no relayed decision", job_id, exc_info=True)
        finally:
            watch.close()
    if decision is None:  # no free worker took it at once: check it here
        checked_in = "web"
        try:
            decision = evaluate(config, sql, kind, merchant_slug, datasets)
        except Exception as exc:  # noqa: BLE001 - the executor's check still decides
            log.warning("job %s: the submission-time check failed (%s); the executor decides",
                        job_id, type(exc).__name__)
            return job
    return record_submission_decision(session, job, decision, actor, checked_in=checked_in)


def record_submission_decision(session: Session, job: Job, decision: dict[str, Any], actor: Actor,
                               *, checked_in: str = "web") -> Job:
    """The submission-time decision, audited; a deny blocks the job wherever it is by now.

    ``checked_in`` says whose check answered the submitter: this process's own (``web``),
    or the executor's, relayed by the worker that took the job (``executor``).
    """
    details = {"decision": decision.get("decision"), "violations": decision.get("violations") or [],
               "columns_read": decision.get("columns_read"),
               "datasets_read": decision.get("datasets_read"), "stage": "submission",
               "checked_in": checked_in}
    denied = decision.get("decision") != "allow"
    for _ in range(10):  # each lost race means a worker moved the job on: try again
        session.refresh(job)
        state = JobState(job.state)
        if denied and state in lifecycle.BLOCKABLE:
            try:
                lifecycle.transition(session, job, JobState.BLOCKED, actor=actor, details=details,
                                     values={"decision": decision, "violations": details["violations"]})
            except StateConflict:
                session.rollback()
                continue
            if state in (JobState.AWAITING_APPROVAL, JobState.APPROVED):
                _shred_output(session, job)
            return job
        # Allowed (or already ended): the executor's own decision, when it has one, stays.
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)))
            .values(decision=decision)
            .execution_options(synchronize_session=False)
        )
        record(session, "job.decision", actor=actor, objects=lifecycle.job_objects(job),
               details={**details, "state": job.state})
        session.refresh(job)
        return job
    raise StateConflict(f"job {job.id} kept changing while its decision was recorded")


def _is_merchant_user(user: User, job: Job) -> bool:
    return user.role == Role.MERCHANT.value and user.tenant_id == job.merchant_id


def get_visible_job(session: Session, user: User, job_id: int) -> Job | None:
    """The job, or None when it is missing or not visible to ``user``."""
    try:
        job = session.get(Job, int(job_id))
    except (TypeError, ValueError):
        return None
    if job is None:
        return None
    if job.submitted_by == user.id or _is_merchant_user(user, job) or user.role == Role.AUDITOR.value:
        return job
    return None


def cancel(session: Session, user: User, job: Job, *, origin: str | None = None) -> Job:
    """Cancel a queued, running or unreleased job (submitter or merchant)."""
    if not (job.submitted_by == user.id or _is_merchant_user(user, job)):
        raise NotAllowed("only the submitter or the merchant may cancel this job")
    if JobState(job.state) not in lifecycle.CANCELLABLE:
        raise InvalidState(f"the job is {job.state}; only queued, running or unapproved jobs can be cancelled")
    had_output = job.state == JobState.AWAITING_APPROVAL.value
    lifecycle.transition(session, job, JobState.CANCELLED, actor=actor_for(user, origin),
                         details={"by": user.username})
    if had_output:
        _shred_output(session, job)
    return job


def _require_merchant(user: User, job: Job, verb: str) -> None:
    if not _is_merchant_user(user, job):
        raise NotAllowed(f"only the job's merchant may {verb} its output")


def approve(session: Session, user: User, job: Job, *, origin: str | None = None) -> Job:
    _require_merchant(user, job, "approve")
    if job.state != JobState.AWAITING_APPROVAL.value:
        raise InvalidState(f"the job is {job.state}; only a job awaiting approval can be approved")
    lifecycle.transition(session, job, JobState.APPROVED, actor=actor_for(user, origin))
    if job.output is not None:
        job.output.decided_by = user.id
        job.output.decided_at = lifecycle.now()
    return job


MAX_REJECT_REASON = 1000


def reject(session: Session, user: User, job: Job, *, origin: str | None = None,
           reason: str | None = None) -> Job:
    """Reject the output (shredded); ``reason``, the merchant's words, is kept for the
    submitter to read and recorded in the audit entry."""
    _require_merchant(user, job, "reject")
    if job.state != JobState.AWAITING_APPROVAL.value:
        raise InvalidState(f"the job is {job.state}; only a job awaiting approval can be rejected")
    reason = (reason or "").strip()[:MAX_REJECT_REASON] or None
    lifecycle.transition(session, job, JobState.REJECTED, actor=actor_for(user, origin),
                         details={"reason": reason} if reason else None,
                         values={"reject_reason": reason} if reason else None)
    _shred_output(session, job, decided_by=user.id)
    return job


def _shred_output(session: Session, job: Job, decided_by: int | None = None) -> None:
    """Forget the output's data key: the rows are unrecoverable from then on (crypto-
    shredding). Workers delete the ciphertext itself (:func:`sweep_shredded_outputs`)."""
    output: JobOutput | None = job.output
    if output is not None:
        output.wrapped_key = None
        output.decided_by = decided_by
        output.decided_at = lifecycle.now()


def sweep_shredded_outputs(session: Session, config: Config) -> list[int]:
    """Delete output files whose key was destroyed, or which no job output refers to."""
    removed: list[int] = []
    if not config.outputs_dir.exists():
        return removed
    for entry in config.outputs_dir.iterdir():
        if not entry.name.isdigit():
            continue
        job_id = int(entry.name)
        job = session.get(Job, job_id)
        keep = job is not None and (
            (job.output is not None and job.output.wrapped_key is not None)
            or job.state == JobState.RUNNING.value  # being written right now
        )
        if not keep:
            remove_output(config, job_id)
            removed.append(job_id)
    return removed


def may_read_results(session: Session, user: User, job: Job) -> bool:
    if _is_merchant_user(user, job):
        return True
    if user.role == Role.PROVIDER.value:
        auth = active_authorization(session, job.merchant_id, user.tenant_id)
        return bool(auth and auth.view_results)
    return False


def read_result(session: Session, config: Config, user: User, job: Job, *, origin: str | None = None) -> pa.Table:
    """The approved output's rows; raises NotAllowed, or NotApproved before approval."""
    if not may_read_results(session, user, job):
        raise NotAllowed("you may see this job's state and summary, not its rows")
    output = job.output
    if job.state != JobState.APPROVED.value or output is None or output.wrapped_key is None:
        raise NotApproved("the output has not been approved by the merchant")
    from jobs.segments import require_platform_review

    require_platform_review(session, job)  # segment outputs, when the admin requires it
    table = read_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                        output.wrapped_key, output.content_hash)
    record(
        session, "job.download", actor=actor_for(user, origin), objects=lifecycle.job_objects(job),
        details={"rows": table.num_rows, "content_hash": output.content_hash},
    )
    return table


def preview_result(session: Session, config: Config, user: User, job: Job, limit: int = 10,
                   *, origin: str | None = None) -> pa.Table:
    """The first rows of an output awaiting approval, for its merchant to decide (audited)."""
    if not _is_merchant_user(user, job):
        raise NotAllowed("only the job's merchant may preview its output")
    output = job.output
    if job.state != JobState.AWAITING_APPROVAL.value or output is None or output.wrapped_key is None:
        raise InvalidState("only an output awaiting approval can be previewed")
    table = read_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                        output.wrapped_key, output.content_hash).slice(0, max(0, int(limit)))
    record(
        session, "job.preview", actor=actor_for(user, origin), objects=lifecycle.job_objects(job),
        details={"rows": table.num_rows, "content_hash": output.content_hash},
    )
    return table


def job_json(job: Job, viewer: User | None = None) -> dict[str, Any]:
    """The API's job document. Never rows; errors are redacted already (P8)."""
    summary = {"released_rows": job.released_rows, "suppressed_rows": job.suppressed_rows}
    return {
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "merchant": job.merchant.slug,
        "submitted_by": job.submitter.username if job.submitter else None,
        "state": job.state,
        "progress": round(float(job.progress or 0.0), 3),
        "sql": job.sql,
        "decision": (job.decision or {}).get("decision"),
        "violations": job.violations or [],
        "error": job.error,
        "summary": summary,
        "attempts": job.attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
