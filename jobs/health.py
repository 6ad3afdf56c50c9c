"""Is work moving? Worker heartbeats and the readiness verdict behind ``/readyz``.

Each worker writes a heartbeat row (a ``Setting`` keyed ``worker:<identity>``) every few
seconds with its executor pool's health; the web app reads them. Heartbeats are liveness,
not a change of anything a user or auditor acts on: they are not audited (like job
heartbeats). A stopped worker removes its row; rows of crashed workers age out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from sandbox import check_warmup
from yushan.config import Config
from yushan.db import session_scope
from yushan.models import Job, JobState, Setting

PREFIX = "worker:"
FORGET_AFTER = timedelta(hours=1)  # a crashed worker's row is removed after this


def _key(identity: str) -> str:
    # Setting keys hold 64 characters; a host name may be long.
    return PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:32]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def record_beat(config: Config, identity: str, pool: dict[str, int]) -> None:
    """Say that worker ``identity`` is alive, with its executor pool's health."""
    stamp = _now()
    value = {"worker": identity, "at": stamp.isoformat(), "pool": pool}
    with session_scope(config) as session:
        row = session.get(Setting, _key(identity))
        if row is None:
            session.add(Setting(key=_key(identity), value=value))
        else:
            row.value = value
        session.execute(delete(Setting).where(
            Setting.key.like(PREFIX + "%"), Setting.updated_at < stamp - FORGET_AFTER))


def forget_beat(config: Config, identity: str) -> None:
    """A worker stopping on purpose: it no longer counts."""
    with session_scope(config) as session:
        session.execute(delete(Setting).where(Setting.key == _key(identity)))


@dataclass
class Readiness:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)


def readiness(session: Session, config: Config) -> Readiness:
    """Database answers, a worker beat recently with a healthy pool, and the oldest queued
    job waits less than ``YUSHAN_READY_QUEUE_SECONDS``. Reasons carry no data values."""
    verdict = Readiness(ok=True)
    session.execute(text("SELECT 1"))
    verdict.checks["database"] = "ok"
    now = _now()
    beats = [row.value for row in session.scalars(select(Setting).where(Setting.key.like(PREFIX + "%")))
             if isinstance(row.value, dict) and row.value.get("at")]
    fresh = [b for b in beats
             if now - _aware(datetime.fromisoformat(b["at"])) <= timedelta(seconds=config.ready_heartbeat_seconds)]
    verdict.checks["workers"] = len(fresh)
    if not fresh:
        verdict.reasons.append(
            f"no worker heartbeat in the last {config.ready_heartbeat_seconds} s")
    live = sum(int((b.get("pool") or {}).get("live", 0)) for b in fresh)
    verdict.checks["executors"] = live
    if fresh and live == 0:
        verdict.reasons.append("no live executor in any worker's pool")
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED.value))
    age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
    verdict.checks["oldest_queued_seconds"] = round(age, 1)
    if age > config.ready_queue_seconds:
        verdict.reasons.append(
            f"the oldest queued job has waited {age:.0f} s (limit {config.ready_queue_seconds} s)")
    # This process's check warm-up (yushan serve): reported, never a reason to refuse work.
    verdict.checks["check_warmup"] = check_warmup.STATE.as_text()
    verdict.ok = not verdict.reasons
    return verdict
