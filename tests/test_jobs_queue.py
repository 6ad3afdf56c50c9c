"""The durable queue: claims are exclusive, leases expire, dead workers' jobs come back
once and then fail, cancellation works in every unfinished state, every move is audited.
Runs on SQLite, and on PostgreSQL when YUSHAN_TEST_DATABASE_URL is set."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta

import pytest
from jobs_support import audit_actions, job_state, queue_jobs, small_world, user
from sqlalchemy import update

from jobs import lifecycle, service
from jobs.errors import InvalidState, NotAllowed, StateConflict
from jobs.queue import (
    HOST,
    MAX_ATTEMPTS,
    LeaseStatus,
    claim,
    heartbeat,
    reap_expired,
    unclaim,
    worker_actor,
)
from yushan.db import dispose_engines, session_scope
from yushan.models import Job, JobOutput, JobState


@pytest.fixture
def world(any_db_config):
    small_world(any_db_config)
    return any_db_config


def _claim_all(config, worker_id: str, out) -> None:
    while (job := claim(config, worker_id)) is not None:
        out.append(job.id)


def _claim_in_process(config, worker_id: str, queue) -> None:
    dispose_engines()  # never share pooled connections across fork
    got: list[int] = []
    _claim_all(config, worker_id, got)
    queue.put(got)


def test_twenty_jobs_are_each_claimed_exactly_once_by_competing_processes(world):
    ids = queue_jobs(world, 20)
    dispose_engines()
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(world, f"{HOST}:0:w{i}", results)) for i in range(4)]
    for p in procs:
        p.start()
    claimed: list[int] = []
    for _ in procs:
        claimed += results.get(timeout=120)
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for job_id in ids:
        job = job_state(world, job_id)
        assert job.state == JobState.RUNNING.value and job.attempts == 1
        assert audit_actions(world, job_id).count("job.start") == 1


def test_threads_claiming_at_once_never_share_a_job(world):
    ids = queue_jobs(world, 20)
    claimed: list[int] = []
    threads = [threading.Thread(target=_claim_all, args=(world, f"{HOST}:0:t{i}", claimed)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_claims_follow_submission_order_and_set_a_lease(world):
    first, second = queue_jobs(world, 2)
    job = claim(world, "elsewhere:1:a")
    assert job.id == first and job.attempt == 1
    row = job_state(world, first)
    assert row.lease_owner == "elsewhere:1:a"
    assert row.lease_expires_at is not None and row.heartbeat_at is not None


def _expire(config, job_id: int) -> None:
    with session_scope(config) as session:
        session.execute(
            update(Job).where(Job.id == job_id)
            .values(lease_expires_at=lifecycle.now() - timedelta(seconds=1))
        )


def test_a_job_whose_worker_died_is_retried_once_then_fails_clearly(world):
    (job_id,) = queue_jobs(world, 1)
    assert claim(world, "other-host:1:a").id == job_id
    assert reap_expired(world) == {}  # lease still valid on a host we cannot check
    _expire(world, job_id)
    assert reap_expired(world) == {job_id: JobState.QUEUED}
    again = claim(world, "other-host:2:b")
    assert again.id == job_id and again.attempt == MAX_ATTEMPTS
    _expire(world, job_id)
    assert reap_expired(world) == {job_id: JobState.FAILED}
    job = job_state(world, job_id)
    assert job.state == JobState.FAILED.value
    assert job.error["class"] == "WorkerLost"
    assert "retried once" in job.error["message"]
    assert audit_actions(world, job_id) == [
        "job.submit", "job.decision", "job.start", "job.retry", "job.start", "job.fail"
    ]


def test_a_job_given_back_before_it_started_keeps_both_its_attempts(world):
    (job_id,) = queue_jobs(world, 1)
    job = claim(world, "elsewhere:1:a")
    unclaim(world, job, "elsewhere:2:b", "ExecutorLostBeforeStart")  # not the lease holder
    assert job_state(world, job_id).state == JobState.RUNNING.value
    unclaim(world, job, "elsewhere:1:a", "ExecutorLostBeforeStart")
    row = job_state(world, job_id)
    assert row.state == JobState.QUEUED.value and row.attempts == 0
    assert row.lease_owner is None and row.started_at is None
    # Both attempts are still there: lost once more during a run, it is retried, not failed.
    again = claim(world, "elsewhere:1:a")
    assert again.attempt == 1
    assert audit_actions(world, job_id) == [
        "job.submit", "job.decision", "job.start", "job.retry", "job.start"
    ]


def test_a_dead_worker_on_this_host_is_noticed_without_waiting_for_the_lease(world):
    (job_id,) = queue_jobs(world, 1)
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    claim(world, f"{HOST}:{dead.pid}:x")
    assert reap_expired(world) == {job_id: JobState.QUEUED}


def test_heartbeats_hold_the_lease_and_report_cancel_and_loss(world):
    a, b = queue_jobs(world, 2)
    claim(world, "h:1:w")
    claim(world, "h:1:w")
    assert heartbeat(world, a, "h:1:w", progress=0.4) is LeaseStatus.HELD
    assert job_state(world, a).progress == pytest.approx(0.4)
    assert heartbeat(world, a, "h:2:intruder") is LeaseStatus.LOST
    with session_scope(world) as session:
        service.cancel(session, user(session, "insight_isv"), session.get(Job, a))
    assert heartbeat(world, a, "h:1:w") is LeaseStatus.CANCELLED
    _expire(world, b)
    reap_expired(world)
    assert heartbeat(world, b, "h:1:w") is LeaseStatus.LOST


def test_a_worker_that_lost_its_lease_cannot_write_an_outcome(world):
    (job_id,) = queue_jobs(world, 1)
    claim(world, "h:1:old")
    _expire(world, job_id)
    reap_expired(world)
    claim(world, "h:2:new")
    with session_scope(world) as session:
        job = session.get(Job, job_id)
        with pytest.raises(StateConflict):
            lifecycle.transition(session, job, JobState.FAILED, actor=worker_actor(), lease_owner="h:1:old")
    assert job_state(world, job_id).state == JobState.RUNNING.value


def _to_awaiting(config, job_id: int) -> None:
    claim(config, "h:1:w")
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        session.add(JobOutput(job_id=job_id, storage_path=f"outputs/{job_id}/x", wrapped_key=b"k",
                              content_hash="0" * 64, columns=[]))
        lifecycle.transition(session, job, JobState.AWAITING_APPROVAL, actor=worker_actor(),
                             lease_owner="h:1:w", values={"released_rows": 0, "suppressed_rows": 0})


@pytest.mark.parametrize("where", ["queued", "running", "awaiting_approval"])
def test_cancel_works_in_every_unfinished_state(world, where):
    (job_id,) = queue_jobs(world, 1)
    if where == "running":
        claim(world, "h:1:w")
    elif where == "awaiting_approval":
        _to_awaiting(world, job_id)
    with session_scope(world) as session:
        service.cancel(session, user(session, "hanfu_owner"), session.get(Job, job_id))
    job = job_state(world, job_id)
    assert job.state == JobState.CANCELLED.value and job.lease_owner is None
    assert claim(world, "h:1:w2") is None  # a cancelled job never runs
    assert audit_actions(world, job_id)[-1] == "job.cancel"
    if where == "awaiting_approval":  # the output's key is destroyed with the cancel
        with session_scope(world) as session:
            assert session.get(Job, job_id).output.wrapped_key is None


def test_finished_jobs_cannot_be_cancelled_and_strangers_cannot_cancel(world):
    a, b = queue_jobs(world, 2)
    with session_scope(world) as session:
        with pytest.raises(NotAllowed):
            service.cancel(session, user(session, "auditor"), session.get(Job, a))
        service.cancel(session, user(session, "insight_isv"), session.get(Job, a))
    with session_scope(world) as session:
        with pytest.raises(InvalidState):
            service.cancel(session, user(session, "insight_isv"), session.get(Job, a))
        # another merchant does not even see the job
        assert service.get_visible_job(session, user(session, "tea_owner"), b) is None
        assert service.get_visible_job(session, user(session, "auditor"), b) is not None


def test_the_state_machine_refuses_moves_it_does_not_know(world):
    (job_id,) = queue_jobs(world, 1)
    with session_scope(world) as session:
        job = session.get(Job, job_id)
        with pytest.raises(InvalidState):
            lifecycle.transition(session, job, JobState.APPROVED, actor=worker_actor())
    assert job_state(world, job_id).state == JobState.QUEUED.value
