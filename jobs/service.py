"""What the web API and the command line do with jobs. Callers own the transaction.

Who may see or act on a job is :mod:`yushan.access`'s answer (for anyone who may not see
it, a job does not exist); its output, from the sandbox to its release, is
:mod:`jobs.quarantine`'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, object_session, selectinload

from audit import Actor, record
from jobs import budget, lifecycle, quarantine
from jobs.errors import (
    InvalidKind,
    InvalidName,
    InvalidSQL,
    InvalidState,
    QueryTooComplex,
    QueryTooDeep,
    QueryTooLarge,
    require,
)
from jobs.quota import check_quota
from jobs.ratelimit import check_rate
from jobs.sql_limits import sql_shape_problem
from sandbox.crypto import KeyStore
from yushan import access, jsondoc, metrics
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.db import end_transaction
from yushan.models import Job, JobKind, JobState, Tenant, User

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
        raise {"too_large": QueryTooLarge, "sql_too_deep": QueryTooDeep}.get(
            problem.code, QueryTooComplex)(problem.message)
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
    """The policy decision for a query, on one of this process's check sessions (checks
    for several merchants run side by side: :mod:`sandbox.check_sessions`)."""
    # Late on purpose: a web process loads pyspark only when it first checks a query.
    import policies
    from sandbox.check_sessions import check_sessions

    token_key = KeyStore(config.master_key_path).segment_token_key(merchant)
    with check_sessions(config).session(merchant, datasets, token_key) as spark:
        started = time.perf_counter()  # the check itself, as the executor's "check" lap
        decision = policies.check(spark, sql, kind=kind, merchant=merchant, datasets=datasets).to_dict()
        metrics.policy_check("dry_run", time.perf_counter() - started)
        return decision


def _acting_merchant(session: Session, user: User, merchant_slug: str):
    permission = access.act_for(session, user, merchant_slug)
    require(permission)  # unknown merchant and not-your-merchant look the same
    return permission.target


def check(session: Session, config: Config, user: User, merchant_slug: str, kind: str, sql: str,
          *, origin: str | None = None) -> dict[str, Any]:
    """Dry run: the policy decision, audited, nothing queued. Reads no data and costs no
    budget; for a dp job it says the job's cost, the budget left and the expected accuracy.

    Commits the caller's transaction before the analysis (``yushan.db.end_transaction``); the
    audit entry is written in the next one, which the caller commits."""
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    datasets = readable_datasets(session, config, merchant.slug)
    end_transaction(session)  # the analysis reads nothing from the database
    decision = evaluate(config, sql, kind, merchant.slug, datasets)
    decision = _with_release(session, config, merchant, decision)
    record(
        session, "job.check", actor=actor_for(user, origin),
        objects={"merchant": merchant.slug},
        details={"kind": kind, "sql": sql, "decision": decision.get("decision"),
                 "violations": decision.get("violations") or [], "release": decision["release"],
                 **({"epsilon": decision["epsilon"]} if decision["release"] == "dp" else {})},
    )
    return decision


def _violation_keys(decision: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(v.get("rule", ""), v.get("column", ""), v.get("message_template") or v.get("message", ""))
            for v in decision.get("violations") or []]


def suggest_fixes(config: Config, sql: str, kind: str, merchant: str,
                  datasets: dict[str, DatasetInfo], decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Mechanical fixes of a denied query (:mod:`policies.fixes`), each checked by the
    policy before it is offered: kept only when the rewritten job is allowed, or when it
    answers some of the denial's violations and adds none. Each fix: ``code``, the job's
    ``kind`` and ``sql`` rewritten, ``allowed``, and ``resolves`` (indexes of the original
    violations it answers). Nothing is audited: no job, no check of the user's own text."""
    from policies.fixes import candidates

    if decision.get("decision") != "deny":
        return []
    before = _violation_keys(decision)
    fixes: list[dict[str, Any]] = []
    for candidate in candidates(sql, kind, decision.get("violations") or []):
        if any(f["code"] == candidate.code for f in fixes):
            continue  # the first verified rewrite of each kind is enough
        try:
            rewritten = validate_request(candidate.kind, candidate.sql)[1]
            after = evaluate(config, rewritten, candidate.kind, merchant, datasets)
        except Exception:  # noqa: BLE001, S112 - a rewrite that cannot be checked is not offered
            continue
        allowed = after.get("decision") == "allow"
        remaining = set(_violation_keys(after))
        if not allowed and (after.get("decision") != "deny" or not remaining <= set(before)):
            continue
        resolves = [i for i, key in enumerate(before) if allowed or key not in remaining]
        if resolves:
            fixes.append({"code": candidate.code, "kind": candidate.kind, "sql": candidate.sql,
                          "allowed": allowed, "resolves": resolves})
    return fixes


def fixes(session: Session, config: Config, user: User, merchant_slug: str, kind: str, sql: str,
          decision: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`suggest_fixes` for a check ``user`` just made for ``merchant_slug``."""
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    return suggest_fixes(config, sql, kind, merchant.slug,
                         readable_datasets(session, config, merchant.slug), decision)


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
           template: str | None = None, params: dict[str, Any] | None = None,
           idempotency_key: str | None = None) -> Job:
    """Queue a job (audited ``job.submit``, noting the API request's ``idempotency_key``);
    the caller's commit wakes idle workers. Over the merchant's submission limit it raises
    :class:`jobs.ratelimit.RateLimited`; with the merchant's queue quota full,
    :class:`jobs.quota.QueueFull`.

    No policy check happens here: the executor checks every job on its own catalog before
    anything runs, and a denied job then becomes ``blocked`` with its violations. Clients
    that want the decision before submitting call :func:`check`.
    """
    sql = _validate(kind, sql)
    merchant = _acting_merchant(session, user, merchant_slug)
    actor = actor_for(user, origin)
    check_rate(session, config, merchant, actor)  # RateLimited: 429 with Retry-After (P8)
    check_quota(session, config, merchant, actor)  # QueueFull: 429 queue_full with Retry-After
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
        idempotency_key=idempotency_key,
    )


def visible_jobs(session: Session, user: User, *, states: tuple[str, ...] | None = None,
                 merchant_id: int | None = None, merchant: str | None = None,
                 after: tuple[datetime, int] | None = None, limit: int = 100) -> list[Job]:
    """Jobs ``user`` may see, newest first: a provider its own submissions, a merchant
    the jobs run for it, an auditor all of them; an admin none (admins read no jobs).

    ``merchant`` narrows to one merchant by name (unknown or not visible: no jobs);
    ``after`` is the (created_at, id) of the last job of the previous page (keyset)."""
    scope = access.job_scope(user)
    if scope is None:
        return []
    stmt = select(Job).options(selectinload(Job.merchant), selectinload(Job.submitter)).where(scope)
    if states:
        stmt = stmt.where(Job.state.in_(states))
    if merchant_id is not None:
        stmt = stmt.where(Job.merchant_id == merchant_id)
    if merchant is not None:
        stmt = stmt.where(Job.merchant_id.in_(select(Tenant.id).where(Tenant.slug == merchant)))
    if after is not None:
        created, last_id = after
        stmt = stmt.where(or_(Job.created_at < created,
                              and_(Job.created_at == created, Job.id < last_id)))
    # Ids are random: creation time orders jobs (the id only breaks ties).
    return list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def iter_visible_jobs(session: Session, user: User, *, page: int = 500, **filters: Any) -> Iterator[Job]:
    """Every job :func:`visible_jobs` shows, page by page (the command line's listing)."""
    after = None
    while True:
        jobs = visible_jobs(session, user, after=after, limit=page, **filters)
        yield from jobs
        if len(jobs) < page:
            return
        after = (jobs[-1].created_at, jobs[-1].id)


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
        "reject_reason": job.reject_reason,
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
    return jsondoc.iso_time(value)  # the one form of times in API and CLI documents
