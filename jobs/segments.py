"""Segment delivery: per-segment summary, and the platform's optional review of segments.

A segment job's output is ``(segment, member)``. Its summary is each label with its number
of members, computed once from the (encrypted) output and kept in ``JobOutput.summary``.

When the admin turns on *platform review of segments* (Setting ``platform_review_segments``
= ``"required"``), a segment output needs a platform admin's approval as well as the
merchant's before anyone can download it. Both approvals are audited; the review is
checked where every download passes (:func:`require_platform_review` in
``jobs.service.read_result``).
"""

from __future__ import annotations

import enum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from audit import record
from jobs import lifecycle
from jobs.errors import InvalidRequest, InvalidState, NotAllowed, NotApproved
from jobs.service import actor_for
from sandbox.crypto import KeyStore
from sandbox.output import read_output
from yushan.config import Config
from yushan.models import Job, JobKind, JobOutput, JobState, Role, Setting, User

REVIEW_SETTING = "platform_review_segments"
SUMMARY_KEY = "segments"
# States in which an output exists and the platform may still review it.
REVIEWABLE = (JobState.AWAITING_APPROVAL.value, JobState.APPROVED.value)


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
    _require_admin(admin)
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
    record(session, "admin.setting", actor=actor_for(admin, origin),
           objects={"setting": REVIEW_SETTING},
           details={"from": before.value, "to": mode.value})
    return mode


# --- reviews ---------------------------------------------------------------------------------


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
    _require_admin(admin)
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
    actor = actor_for(admin, origin)
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
    output.wrapped_key = None  # crypto-shredded; workers delete the ciphertext
    return job


def review_status(session: Session, job: Job) -> dict[str, Any] | None:
    """What pages show about the platform review of a segment job; None when not applicable."""
    if job.kind != JobKind.SEGMENT.value:
        return None
    mode = review_mode(session)
    reviewed = job.output is not None and job.output.platform_reviewed_at is not None
    return {"mode": mode.value, "required": mode is ReviewMode.REQUIRED, "reviewed": reviewed,
            "reviewed_at": job.output.platform_reviewed_at.isoformat() if reviewed else None}


# --- the summary -----------------------------------------------------------------------------


def summarise(table: pa.Table) -> list[dict[str, Any]]:
    """``[{"segment", "members"}]`` by label, largest first, from a (segment, member) table."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by("segment").aggregate([("member", "count_distinct")])
    rows = [{"segment": s, "members": int(n)} for s, n in zip(
        grouped.column("segment").to_pylist(),
        pc.cast(grouped.column("member_count_distinct"), pa.int64()).to_pylist(), strict=True)]
    return sorted(rows, key=lambda r: (-r["members"], str(r["segment"])))


def segment_summary(session: Session, config: Config, job: Job) -> list[dict[str, Any]] | None:
    """The job's segments with their sizes; None when it is not a segment job with output.

    Computed from the output once (it is decrypted in memory only) and kept in
    ``JobOutput.summary`` so that later views need no decryption. Counts only, never members.
    """
    output = job.output
    if job.kind != JobKind.SEGMENT.value or output is None:
        return None
    cached = (output.summary or {}).get(SUMMARY_KEY)
    if cached is not None:
        return cached
    if output.wrapped_key is None:
        return None
    table = read_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                        output.wrapped_key, output.content_hash)
    segments = summarise(table)
    # A new dict: the JSON column notices replacement, not mutation.
    output.summary = {**(output.summary or {}), SUMMARY_KEY: segments}
    session.flush()
    return segments


def may_see_summary(session: Session, user: User, job: Job) -> bool:
    """Who sees segment sizes (they are part of the release, policy P8): platform admins
    (they review segments), the job's merchant (it decides on them, as on a preview), and,
    once the merchant approved, those who may see the rows."""
    from jobs.service import may_read_results

    if user.role == Role.ADMIN.value:
        return True
    if user.role == Role.MERCHANT.value and user.tenant_id == job.merchant_id:
        return True
    return job.state == JobState.APPROVED.value and may_read_results(session, user, job)


def _require_admin(user: User) -> None:
    if user.role != Role.ADMIN.value:
        raise NotAllowed("only a platform admin may do this")
