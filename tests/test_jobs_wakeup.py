"""Wake-ups: an idle worker hears of a queued job when its transaction commits, and only
then; a retry wakes workers too; a dead worker's registration is forgotten."""

from __future__ import annotations

import pytest
from jobs_support import queue_jobs, small_world, user

from jobs import lifecycle
from jobs.queue import claim, give_back
from jobs.service import actor_for
from jobs.wakeup import WakeListener, notify, registry_dir
from yushan.db import session_scope
from yushan.models import Job, JobState


@pytest.fixture
def world(any_db_config):
    small_world(any_db_config)
    return any_db_config


@pytest.fixture
def listener(world):
    woken = WakeListener(world)
    yield woken
    woken.close()


def test_a_committed_submission_wakes_an_idle_worker(world, listener):
    assert not listener.wait(0.05)  # nothing queued: it sleeps the whole time
    queue_jobs(world, 1)
    assert listener.wait(2.0)


def test_nothing_is_sent_before_the_commit_or_after_a_rollback(world, listener):
    with pytest.raises(RuntimeError), session_scope(world) as session:
        submitter = user(session, "insight_isv")
        lifecycle.create(
            session, merchant_id=user(session, "hanfu_owner").tenant_id, submitter_id=submitter.id,
            kind="aggregate", sql="SELECT 1 AS x", name="",
            decision={"decision": "allow", "violations": []}, actor=actor_for(submitter),
        )
        assert not listener.wait(0.1)  # flushed, not committed: no worker could claim it
        raise RuntimeError("the request failed")
    assert not listener.wait(0.1)


def test_blocking_a_queued_job_wakes_nobody(world, listener):
    (job_id,) = queue_jobs(world, 1)
    assert listener.wait(2.0)  # the queuing itself
    deny = {"decision": "deny", "violations": [], "columns_read": []}
    with session_scope(world) as session:
        submitter = user(session, "insight_isv")
        job = lifecycle.transition(session, session.get(Job, job_id), JobState.BLOCKED,
                                   actor=actor_for(submitter), values={"decision": deny})
        assert job.state == JobState.BLOCKED.value
    assert not listener.wait(0.1)


def test_a_retried_job_wakes_workers(world, listener):
    queue_jobs(world, 1)
    assert listener.wait(2.0)
    claimed = claim(world, "host:1:a")
    with session_scope(world) as session:
        give_back(session, session.get(Job, claimed.id), reason="test", error_class="WorkerLost",
                  message="lost", owner="host:1:a")
    assert listener.wait(2.0)


def test_every_worker_on_the_host_is_woken_and_dead_ones_are_forgotten(world, listener):
    other = WakeListener(world)
    other.close()  # a worker that stopped...
    other.marker.touch()  # ...without removing its registration (killed)
    assert notify(world) == 1
    assert listener.wait(1.0)
    assert sorted(p.name for p in registry_dir(world).iterdir()) == [listener.name]


def test_no_registry_means_no_wake_ups(make_config):
    assert notify(make_config()) == 0
