"""What the web API and the command line do with jobs. Callers own the transaction.

Visibility: the submitter, the users of the job's merchant, and auditors (metadata only);
for anyone else a job does not exist. Results: the job's merchant, and a provider whose
active authorisation grants ``view_results``; only after the merchant approved.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from sqlalchemy.orm import Session, object_session

from audit import Actor, record
from jobs import budget, lifecycle
from jobs.errors import (
    InvalidRequest,
    InvalidState,
    NotAllowed,
    NotApproved,
    NotFound,
    QueryTooComplex,
    QueryTooLarge,
)
from jobs.ratelimit import check_rate
from jobs.sql_limits import sql_shape_problem
from sandbox.crypto import KeyStore
from sandbox.output import read_output, remove_output
from yushan.accounts import active_authorization, can_act_for
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.models import Job, JobKind, JobOutput, JobState, Role, User

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
    problem = sql_shape_problem(sql)  # before Spark's parser recurses over it
    if problem is not None:
        raise (QueryTooLarge if problem.status == 413 else QueryTooComplex)(problem.message)
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
    """Dry run: the policy decision, audited, nothing queued. Reads no data and costs no
    budget; for a dp job it says the job's cost, the budget left and the expected accuracy."""
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    decision = evaluate(config, sql, kind, merchant.slug, readable_datasets(session, config, merchant.slug))
    decision = _with_release(session, config, merchant, decision)
    record(
        session, "job.check", actor=actor_for(user, origin),
        objects={"merchant": merchant.slug},
        details={"kind": kind, "sql": sql, "decision": decision.get("decision"),
                 "violations": decision.get("violations") or [], "release": decision["release"],
                 **({"epsilon": decision["epsilon"]} if decision["release"] == "dp" else {})},
    )
    return decision


def _with_release(session: Session, config: Config, merchant, decision: dict[str, Any]) -> dict[str, Any]:
    """The check's document: ``release``, and for dp jobs ``epsilon`` (the cost),
    ``budget`` (what is left) and ``accuracy``; nothing of dp for other jobs."""
    doc = {k: v for k, v in decision.items() if k not in ("epsilon", "delta", "accuracy")}
    doc["release"] = decision.get("release")
    if doc["release"] == "dp":
        doc.update(epsilon=decision.get("epsilon"), delta=decision.get("delta"),
                   accuracy=decision.get("accuracy") or {},
                   budget=budget.budget_left(session, config, merchant))
    return doc


def submit(session: Session, config: Config, user: User, merchant_slug: str, kind: str, sql: str,
           name: str | None = None, *, origin: str | None = None,
           template: str | None = None, params: dict[str, Any] | None = None) -> Job:
    """Queue a job (audited ``job.submit``); the caller's commit wakes idle workers.
    Over the merchant's submission limit it raises :class:`jobs.ratelimit.RateLimited`.

    No policy check happens here: the executor checks every job on its own catalog before
    anything runs, and a denied job then becomes ``blocked`` with its violations. Clients
    that want the decision before submitting call :func:`check`.
    """
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    actor = actor_for(user, origin)
    check_rate(session, config, merchant, actor)  # RateLimited: 429 with Retry-After (P8)
    return lifecycle.create(
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


def _is_merchant_user(user: User, job: Job) -> bool:
    return user.role == Role.MERCHANT.value and user.tenant_id == job.merchant_id


def find_job(session: Session, job_id: object) -> Job | None:
    """The job with this id whoever it belongs to, or None (also when ``job_id`` cannot name
    a job: malformed or out of range). Callers check visibility."""
    number = lifecycle.valid_job_id(job_id)
    return session.get(Job, number) if number is not None else None


def get_visible_job(session: Session, user: User, job_id: int) -> Job | None:
    """The job, or None when it is missing or not visible to ``user``."""
    job = find_job(session, job_id)
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


def reject(session: Session, user: User, job: Job, *, origin: str | None = None) -> Job:
    _require_merchant(user, job, "reject")
    if job.state != JobState.AWAITING_APPROVAL.value:
        raise InvalidState(f"the job is {job.state}; only a job awaiting approval can be rejected")
    lifecycle.transition(session, job, JobState.REJECTED, actor=actor_for(user, origin))
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
        job = find_job(session, job_id)
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
    if session is None or not may_read_results(session, viewer, job):
        return None
    suppressed = None if release_mode(job) == "dp" else job.suppressed_rows
    return {"released_rows": job.released_rows, "suppressed_rows": suppressed}


def job_json(job: Job, viewer: User | None = None) -> dict[str, Any]:
    """The API's job document for ``viewer``. Never rows; errors are redacted already (P8);
    the summary only as :func:`visible_summary` allows."""
    summary = visible_summary(job, viewer)
    doc = {
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
        "release": job.release,
        "error": job.error,
        "summary": summary,
        # No attempt count: a retry follows a crashed run, and what crashed a run may be the
        # data (P8); the audit trail has the attempts.
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }
    if job.release == "dp":
        doc.update(epsilon=job.epsilon, accuracy=job.accuracy or {})
    return doc


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
