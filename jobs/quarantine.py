"""Quarantine: a job's output from the sandbox until it is released or destroyed.

The sandbox stores each output encrypted under its own data key (:mod:`sandbox.output`);
from then on this module owns it:

- the merchant previews it, then approves or rejects it (:func:`preview_result`,
  :func:`approve`, :func:`reject`); rows are released only after approval, to the merchant
  and to providers whose authorisation grants ``view_results`` (:func:`read_result`);
- the platform's optional review of segment outputs (Setting ``platform_review_segments``
  = ``"required"``) is a second approval, checked where every download passes;
- shredding (:func:`shred`): forgetting the output's data key makes its rows unrecoverable
  at once (rejected, cancelled, blocked, or expired by the platform's review); workers
  delete the ciphertext afterwards (:func:`sweep_shredded_outputs`).

Who may do what is answered by :mod:`yushan.access`; every step is audited in the caller's
transaction.
"""

from __future__ import annotations

import enum
from typing import Any

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from audit import Actor, record
from jobs import lifecycle
from jobs.errors import InvalidRequest, InvalidState, NotApproved, require
from jobs.segments import segment_summary
from sandbox.crypto import KeyStore
from sandbox.output import OpenedOutput, open_output, read_output, remove_output
from yushan import access
from yushan.config import Config
from yushan.models import Job, JobKind, JobOutput, JobState, Setting, User

REVIEW_SETTING = "platform_review_segments"
# States in which an output exists and the platform may still review it.
REVIEWABLE = (JobState.AWAITING_APPROVAL.value, JobState.APPROVED.value)


# --- the merchant's decision ---------------------------------------------------------------


def _actor(user: User, origin: str | None) -> Actor:
    return Actor.for_user(user, origin or "")


def preview_result(session: Session, config: Config, user: User, job: Job, limit: int = 10,
                   *, origin: str | None = None) -> pa.Table:
    """The first rows of an output awaiting approval, for its merchant to decide (audited)."""
    require(access.decide_job(user, job, "preview"))
    output = job.output
    if job.state != JobState.AWAITING_APPROVAL.value or output is None or output.wrapped_key is None:
        raise InvalidState("only an output awaiting approval can be previewed")
    table = _decrypt(config, job).slice(0, max(0, int(limit)))
    record(
        session, "job.preview", actor=_actor(user, origin), objects=lifecycle.job_objects(job),
        details={"rows": table.num_rows, "content_hash": output.content_hash},
    )
    return table


def approve(session: Session, user: User, job: Job, *, origin: str | None = None) -> Job:
    require(access.decide_job(user, job, "approve"))
    if job.state != JobState.AWAITING_APPROVAL.value:
        raise InvalidState(f"the job is {job.state}; only a job awaiting approval can be approved")
    lifecycle.transition(session, job, JobState.APPROVED, actor=_actor(user, origin))
    if job.output is not None:
        job.output.decided_by = user.id
        job.output.decided_at = lifecycle.now()
    return job


MAX_REJECT_REASON = 1000


def reject(session: Session, user: User, job: Job, *, origin: str | None = None,
           reason: str | None = None) -> Job:
    """Reject the output (shredded); ``reason``, the merchant's words, is kept for the
    submitter to read and recorded in the audit entry."""
    require(access.decide_job(user, job, "reject"))
    if job.state != JobState.AWAITING_APPROVAL.value:
        raise InvalidState(f"the job is {job.state}; only a job awaiting approval can be rejected")
    reason = (reason or "").strip()[:MAX_REJECT_REASON] or None
    lifecycle.transition(session, job, JobState.REJECTED, actor=_actor(user, origin),
                         details={"reason": reason} if reason else None,
                         values={"reject_reason": reason} if reason else None)
    shred(job, decided_by=user.id)
    return job


def read_result(session: Session, config: Config, user: User, job: Job, *, origin: str | None = None) -> pa.Table:
    """The approved output's rows; raises NotAllowed, or NotApproved before approval."""
    _require_release(session, user, job)
    table = _decrypt(config, job)
    _record_download(session, user, job, origin, table.num_rows)
    return table


def open_result(session: Session, config: Config, user: User, job: Job, *,
                origin: str | None = None) -> OpenedOutput:
    """The approved output opened for a streamed download (:func:`jobs.results.stream_result`),
    its content hash checked: the same refusals and audit entry as :func:`read_result`,
    without reading the rows into memory."""
    _require_release(session, user, job)
    output = job.output
    opened = open_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                         output.wrapped_key, output.content_hash)
    _record_download(session, user, job, origin, opened.metadata().num_rows)
    return opened


def _require_release(session: Session, user: User, job: Job) -> None:
    require(access.read_results(session, user, job))
    output = job.output
    if job.state != JobState.APPROVED.value or output is None or output.wrapped_key is None:
        raise NotApproved("the output has not been approved by the merchant")
    require_platform_review(session, job)  # segment outputs, when the admin requires it


def _record_download(session: Session, user: User, job: Job, origin: str | None, rows: int) -> None:
    record(
        session, "job.download", actor=_actor(user, origin), objects=lifecycle.job_objects(job),
        details={"rows": rows, "content_hash": job.output.content_hash},
    )


def _decrypt(config: Config, job: Job) -> pa.Table:
    output = job.output
    return read_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                       output.wrapped_key, output.content_hash)


# --- shredding -------------------------------------------------------------------------------


def shred(job: Job, decided_by: int | None = None, *, keep_decision: bool = False) -> None:
    """Forget the output's data key: the rows are unrecoverable from then on (crypto-
    shredding). Workers delete the ciphertext itself (:func:`sweep_shredded_outputs`).
    The output records who ended it and when, unless ``keep_decision`` (an approval stays)."""
    output: JobOutput | None = job.output
    if output is None:
        return
    output.wrapped_key = None
    if not keep_decision:
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
        number = lifecycle.valid_job_id(job_id)  # an out-of-range name is no job's
        job = session.get(Job, number) if number is not None else None
        keep = job is not None and (
            (job.output is not None and job.output.wrapped_key is not None)
            or job.state == JobState.RUNNING.value  # being written right now
        )
        if not keep:
            remove_output(config, job_id)
            removed.append(job_id)
    return removed


# --- the platform's review of segment outputs ------------------------------------------------


class ReviewMode(enum.StrEnum):
    """Whether segment outputs need the platform's approval too."""

    NOT_REQUIRED = "not_required"
    REQUIRED = "required"


class ReviewDecision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


# --- the switch ------------------------------------------------------------------------------


def review_mode(session: Session) -> ReviewMode:
    setting = session.get(Setting, REVIEW_SETTING)
    try:
        return ReviewMode(setting.value) if setting is not None else ReviewMode.NOT_REQUIRED
    except ValueError:
        return ReviewMode.REQUIRED  # an unreadable setting errs on the side of review


def set_review_mode(session: Session, admin: User, mode: ReviewMode | str, *,
                    origin: str | None = None) -> ReviewMode:
    """Turn platform review of segments on or off (admins only; audited)."""
    require(access.administer(admin))
    try:
        mode = ReviewMode(mode)
    except ValueError:
        raise InvalidRequest("mode must be one of: " + ", ".join(m.value for m in ReviewMode)) from None
    before = review_mode(session)
    setting = session.get(Setting, REVIEW_SETTING)
    if setting is None:
        session.add(Setting(key=REVIEW_SETTING, value=mode.value))
    else:
        setting.value = mode.value
    record(session, "admin.setting", actor=Actor.for_user(admin, origin or ""),
           objects={"setting": REVIEW_SETTING},
           details={"from": before.value, "to": mode.value})
    return mode


# --- the platform's reviews ---------------------------------------------------------------------------------


def needs_platform_review(session: Session, job: Job) -> bool:
    """True while a segment output still waits for the platform's approval."""
    if job.kind != JobKind.SEGMENT.value or review_mode(session) is not ReviewMode.REQUIRED:
        return False
    return job.output is None or job.output.platform_reviewed_at is None


def require_platform_review(session: Session, job: Job) -> None:
    """Refuse a download the platform has not reviewed yet (when review is required)."""
    if needs_platform_review(session, job):
        raise NotApproved("the segment output awaits the platform's review")


def pending_reviews(session: Session, limit: int = 200) -> list[Job]:
    """Segment jobs whose output awaits the platform's review, oldest first."""
    return list(session.scalars(
        select(Job).join(JobOutput, JobOutput.job_id == Job.id)
        .options(selectinload(Job.merchant), selectinload(Job.submitter), selectinload(Job.output))
        .where(Job.kind == JobKind.SEGMENT.value, Job.state.in_(REVIEWABLE),
               JobOutput.platform_reviewed_at.is_(None), JobOutput.wrapped_key.is_not(None))
        .order_by(Job.created_at, Job.id).limit(limit)
    ))


def platform_review(session: Session, config: Config, admin: User, job: Job,
                    decision: ReviewDecision | str, *, origin: str | None = None) -> Job:
    """The platform's decision on a segment output (admins only; audited).

    Approve: marks the output reviewed (download still needs the merchant's approval).
    Reject: the output is shredded; the job becomes ``rejected`` (or ``expired`` when the
    merchant had approved it already).
    """
    require(access.administer(admin))
    try:
        decision = ReviewDecision(decision)
    except ValueError:
        raise InvalidRequest("decision must be approve or reject") from None
    output = job.output
    if job.kind != JobKind.SEGMENT.value:
        raise InvalidState("only segment outputs are reviewed by the platform")
    if job.state not in REVIEWABLE or output is None or output.wrapped_key is None:
        raise InvalidState(f"the job is {job.state}; there is no output to review")
    if output.platform_reviewed_at is not None:
        raise InvalidState("the platform has reviewed this output already")
    actor = Actor.for_user(admin, origin or "")
    details = {"decision": decision.value, "segments": segment_summary(session, config, job)}
    output.platform_reviewed_by = admin.id
    output.platform_reviewed_at = lifecycle.now()
    if decision is ReviewDecision.APPROVE:
        record(session, "job.platform_review", actor=actor, objects=lifecycle.job_objects(job),
               details=details)
        return job
    target = JobState.REJECTED if job.state == JobState.AWAITING_APPROVAL.value else JobState.EXPIRED
    lifecycle.transition(session, job, target, actor=actor, action="job.platform_review",
                         details=details)
    shred(job, keep_decision=True)  # the merchant's approval, if any, stays on record
    return job


def review_status(session: Session, job: Job) -> dict[str, Any] | None:
    """What pages show about the platform review of a segment job; None when not applicable."""
    if job.kind != JobKind.SEGMENT.value:
        return None
    mode = review_mode(session)
    reviewed = job.output is not None and job.output.platform_reviewed_at is not None
    return {"mode": mode.value, "required": mode is ReviewMode.REQUIRED, "reviewed": reviewed,
            "reviewed_at": job.output.platform_reviewed_at.isoformat() if reviewed else None}
