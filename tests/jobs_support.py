"""Helpers for the job and sandbox tests: a small world of tenants and users, jobs."""

from __future__ import annotations

from sqlalchemy import select

import audit
from jobs import lifecycle
from jobs.service import actor_for
from yushan.accounts import ensure_platform, ensure_tenant, ensure_user, grant
from yushan.config import Config
from yushan.db import session_scope
from yushan.models import Job, Role, TenantKind, User

ALLOW = {"decision": "allow", "violations": [], "columns_read": [], "datasets_read": [], "release": None}


def small_world(config: Config) -> None:
    """Tenants and users like the demo world's (no data), for queue tests."""
    audit.register_config(config)
    with session_scope(config) as session:
        platform = ensure_platform(session)
        hanfu = ensure_tenant(session, "hanfu_house", "Hanfu House", TenantKind.MERCHANT)
        tea = ensure_tenant(session, "tea_garden", "Tea Garden", TenantKind.MERCHANT)
        isv = ensure_tenant(session, "insight_isv", "Insight ISV", TenantKind.PROVIDER)
        # The password hash is slow on purpose; one short password is enough here.
        ensure_user(session, "auditor", "pw", Role.AUDITOR, platform)
        ensure_user(session, "hanfu_owner", "pw", Role.MERCHANT, hanfu)
        ensure_user(session, "tea_owner", "pw", Role.MERCHANT, tea)
        ensure_user(session, "insight_isv", "pw", Role.PROVIDER, isv)
        grant(session, hanfu, isv, view_results=True, by=None)


def user(session, username: str) -> User:
    return session.scalar(select(User).where(User.username == username))


def queue_jobs(config: Config, count: int, username: str = "insight_isv", sql: str = "SELECT 1 AS x") -> list[int]:
    """Queue ``count`` jobs for hanfu_house without a policy check (queue tests only)."""
    ids = []
    with session_scope(config) as session:
        submitter = user(session, username)
        merchant_id = user(session, "hanfu_owner").tenant_id
        for i in range(count):
            job = lifecycle.create(
                session, merchant_id=merchant_id, submitter_id=submitter.id, kind="aggregate",
                sql=f"{sql} -- {i}", name=f"job {i}", decision=ALLOW,
                actor=actor_for(submitter, "pytest"),
            )
            ids.append(job.id)
    return ids


def job_state(config: Config, job_id: int) -> Job:
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def audit_actions(config: Config, job_id: int) -> list[str]:
    """The job's audit actions, oldest first."""
    with session_scope(config) as session:
        return [e["action"] for e in reversed(audit.query(session, job=job_id, limit=1000))]


class WorkerThread:
    """The jobs package's worker, processing jobs in a thread of the test process."""

    def __init__(self, config: Config):
        import threading

        from jobs.worker import Worker

        self.worker = Worker(config, concurrency=1)
        self.thread = threading.Thread(target=self.worker.run, daemon=True, name="test-worker")

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.worker.stop()
        self.thread.join(timeout=60)
