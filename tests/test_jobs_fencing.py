"""Exactly-once effects: a job attempt is fenced. A worker whose lease was lost (stopped
past it, say) cannot record an outcome once the job moved on, even when the job went back
to the same worker in a later attempt; its output never touches the winner's. Worker
heartbeats feed /readyz. Runs on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from jobs_support import audit_actions, job_state, queue_jobs, small_world
from sqlalchemy import update

from jobs.queue import LeaseStatus, claim, heartbeat, reap_expired
from jobs.worker import Worker
from sandbox.output import output_dir
from sandbox.pool import RunReport
from yushan.db import session_scope
from yushan.models import Job


@pytest.fixture
def world(any_db_config):
    small_world(any_db_config)
    return any_db_config


def _expire(config, job_id: int) -> None:
    with session_scope(config) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=datetime.now(UTC) - timedelta(hours=1)))


def _failed(worker_identity: str, config) -> Worker:
    worker = Worker(config)
    worker.identity = worker_identity
    return worker


FAILED = RunReport(message={"type": "result", "outcome": "failed",
                            "error": {"class": "X", "message": "m"}})


@pytest.mark.parametrize("second_owner", ["worker-b", "worker-a"])
def test_a_worker_past_its_lease_cannot_record_once_the_job_moved_on(world, second_owner):
    config = world
    [job_id] = queue_jobs(config, 1)
    first = claim(config, "worker-a")
    assert first.attempt == 1
    _expire(config, job_id)  # worker-a stopped (SIGSTOP) past its lease
    reap_expired(config)
    # Another worker (or another slot of the same one) takes the job over.
    second = claim(config, second_owner)
    assert second.id == job_id and second.attempt == 2
    # worker-a resumes: its heartbeat says the lease is lost, and its outcome is discarded.
    assert heartbeat(config, job_id, "worker-a", attempt=first.attempt) is LeaseStatus.LOST
    stale_output = output_dir(config, job_id, first.attempt)
    winner_output = output_dir(config, job_id, second.attempt)
    for path in (stale_output, winner_output):
        path.mkdir(parents=True)
        (path / "result.parquet.enc").write_bytes(b"x")
    _failed("worker-a", config)._record(first, FAILED)
    assert job_state(config, job_id).state == "running"
    assert not stale_output.exists() and winner_output.exists()  # only its own is removed
    # The attempt that holds the job records its outcome, once.
    _failed(second_owner, config)._record(second, FAILED)
    job = job_state(config, job_id)
    assert job.state == "failed" and job.attempts == 2
    actions = audit_actions(config, job_id)
    assert actions.count("job.fail") == 1 and actions.count("job.start") == 2


def test_worker_heartbeats_make_the_platform_ready(world):
    from jobs.health import forget_beat, readiness, record_beat

    config = world
    with session_scope(config) as session:
        verdict = readiness(session, config)
    assert not verdict.ok and "no worker heartbeat" in verdict.reasons[0]
    record_beat(config, "host:1:abc", {"size": 1, "live": 1, "idle": 1, "faults": 0, "started": 1})
    with session_scope(config) as session:
        verdict = readiness(session, config)
    assert verdict.ok and verdict.checks["workers"] == 1 and verdict.checks["executors"] == 1
    # A job queued for longer than the bound: not ready, and it says why.
    [job_id] = queue_jobs(config, 1)
    with session_scope(config) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            created_at=datetime.now(UTC) - timedelta(seconds=config.ready_queue_seconds + 60)))
    with session_scope(config) as session:
        verdict = readiness(session, config)
    assert not verdict.ok and "oldest queued job" in verdict.reasons[0]
    forget_beat(config, "host:1:abc")
    with session_scope(config) as session:
        assert readiness(session, config).checks["workers"] == 0


def _queue_for(config, merchant_user: str, count: int) -> list[int]:
    from jobs_support import ALLOW, user

    from jobs import lifecycle
    from jobs.service import actor_for

    with session_scope(config) as session:
        owner = user(session, merchant_user)
        return [lifecycle.create(session, merchant_id=owner.tenant_id, submitter_id=owner.id,
                                 kind="aggregate", sql=f"SELECT {i} AS x", name="", decision=ALLOW,
                                 actor=actor_for(owner, "pytest")).id for i in range(count)]


def _finish(config, job_id: int, worker_id: str) -> None:
    from jobs.lifecycle import transition
    from jobs.queue import worker_actor
    from yushan.models import JobState

    with session_scope(config) as session:
        transition(session, session.get(Job, job_id), JobState.FAILED, actor=worker_actor(),
                   lease_owner=worker_id, values={"error": {"class": "X", "message": "m"}})


def test_one_merchants_backlog_delays_anothers_next_job_by_at_most_one_job(world):
    config = world
    backlog = _queue_for(config, "hanfu_owner", 40)
    [other] = _queue_for(config, "tea_owner", 1)
    # One worker, one job at a time: the other merchant's job is the second one run.
    order = []
    for _ in range(3):
        job = claim(config, "w1")
        order.append(job.id)
        _finish(config, job.id, "w1")
    assert order[0] == backlog[0] and order[1] == other and order[2] == backlog[1]
    # Two slots: while one of hanfu's jobs runs, tea's newly queued job goes first.
    running = claim(config, "w1")
    assert running.id == backlog[2]
    [fresh] = _queue_for(config, "tea_owner", 1)
    assert claim(config, "w2").id == fresh
