"""What the web API and the command line do with jobs. Callers own the transaction.

Who may see or act on a job is :mod:`yushan.access`'s answer (for anyone who may not see
it, a job does not exist); its output, from the sandbox to its release, is
:mod:`jobs.quarantine`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, object_session

from audit import Actor, record
from jobs import lifecycle, quarantine
from jobs.errors import (
    InvalidKind,
    InvalidName,
    InvalidSQL,
    InvalidState,
    QueryTooComplex,
    QueryTooLarge,
    StateConflict,
    require,
)
from jobs.ratelimit import check_rate
from jobs.sql_limits import sql_shape_problem
from jobs.wakeup import open_watch
from sandbox.crypto import KeyStore
from yushan import access
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.models import Job, JobKind, JobState, User

log = logging.getLogger(__name__)

KINDS = tuple(k.value for k in JobKind)
MAX_NAME_CHARS = 200


def actor_for(user: User, origin: str | None = None) -> Actor:
    return Actor.for_user(user, origin or "")


def validate_request(kind: str, sql: str, name: str = "") -> tuple[str, str, str]:
    """A job request's kind, SQL and name checked (the one place: the API, the pages, the
    CLI and templates all pass here); returns the SQL without a trailing ``;`` and the
    name stripped. Messages are fixed text: they never quote the request."""
    problem = sql_shape_problem(sql)  # size, nesting and tokens, before Spark's parser recurses
    if problem is not None:
        raise (QueryTooLarge if problem.status == 413 else QueryTooComplex)(problem.message)
    if kind not in KINDS:
        raise InvalidKind("'kind' must be one of: " + ", ".join(KINDS) + ".")
    if not sql.strip():
        raise InvalidSQL("The SQL is empty.")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(f"'name' is longer than {MAX_NAME_CHARS} characters.")
    return kind, sql.strip().rstrip(";").strip(), name.strip()


def _validate(kind: str, sql: str) -> str:
    return validate_request(kind, sql)[1]


def evaluate(config: Config, sql: str, kind: str, merchant: str, datasets: dict[str, DatasetInfo]) -> dict[str, Any]:
    """The policy decision for a query, on this process's own SparkSession."""
    # Late on purpose: a web process loads pyspark only when it first checks a query.
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
    permission = access.act_for(session, user, merchant_slug)
    require(permission)  # unknown merchant and not-your-merchant look the same
    return permission.target


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
    Over the merchant's submission limit it raises :class:`jobs.ratelimit.RateLimited`.

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
    actor, merchant_slug = actor_for(user, origin), merchant.slug
    check_rate(session, config, merchant, actor)  # RateLimited: 429 with Retry-After (P8)
    datasets = readable_datasets(session, config, merchant.slug)
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
                quarantine.shred(job)
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


def find_job(session: Session, job_id: object) -> Job | None:
    """The job with this id whoever it belongs to, or None (also when ``job_id`` cannot name
    a job: malformed or out of range). Callers check visibility."""
    number = lifecycle.valid_job_id(job_id)
    return session.get(Job, number) if number is not None else None


def get_visible_job(session: Session, user: User, job_id: int) -> Job | None:
    """The job, or None when it is missing or not visible to ``user``."""
    job = find_job(session, job_id)
    return job if access.see_job(user, job) else None


def cancel(session: Session, user: User, job: Job, *, origin: str | None = None) -> Job:
    """Cancel a queued, running or unreleased job (submitter or merchant)."""
    require(access.cancel_job(user, job))
    if JobState(job.state) not in lifecycle.CANCELLABLE:
        raise InvalidState(f"the job is {job.state}; only queued, running or unapproved jobs can be cancelled")
    had_output = job.state == JobState.AWAITING_APPROVAL.value
    lifecycle.transition(session, job, JobState.CANCELLED, actor=actor_for(user, origin),
                         details={"by": user.username})
    if had_output:
        quarantine.shred(job)
    return job


def release_mode(job: Job) -> str | None:
    """How the job's released values are protected: ``dp``, ``threshold``, or None (no
    consumer data read, or not decided yet)."""
    mode = getattr(job, "release", None)  # the job's own column, where the schema has one
    if mode is None:
        mode = (job.decision or {}).get("release")
    return mode if isinstance(mode, str) else None


def visible_summary(job: Job, viewer: User | None) -> dict[str, Any] | None:
    """``released_rows``/``suppressed_rows`` for ``viewer``, or None (policy P8).

    The counts are part of the release: nobody sees them before the merchant approves (the
    merchant decides on the preview), and afterwards only those who may see the rows. In
    ``dp`` mode the suppressed count is never reported (it would count consumers exactly).
    """
    if viewer is None or job.state != JobState.APPROVED.value:
        return None
    session = object_session(job)
    if session is None or not access.read_results(session, viewer, job):
        return None
    suppressed = None if release_mode(job) == "dp" else job.suppressed_rows
    return {"released_rows": job.released_rows, "suppressed_rows": suppressed}


def job_json(job: Job, viewer: User | None = None) -> dict[str, Any]:
    """The API's job document for ``viewer``. Never rows; errors are redacted already (P8);
    the summary only as :func:`visible_summary` allows."""
    summary = visible_summary(job, viewer)
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
        # No attempt count: a retry follows a crashed run, and what crashed a run may be the
        # data (P8); the audit trail has the attempts.
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
