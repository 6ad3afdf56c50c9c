"""Wake-ups: an idle worker hears of a queued job when its transaction commits, and only
then; a retry wakes workers too; a dead worker's registration is forgotten. A submitter
hears the executor's decision from the worker that claimed its job, and nothing else."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from jobs_support import queue_jobs, small_world, user

from jobs import lifecycle
from jobs.queue import claim, give_back
from jobs.service import actor_for, record_submission_decision
from jobs.wakeup import (
    CLAIMED,
    DECIDED,
    STALE_WATCH_SECONDS,
    JobWatch,
    WakeListener,
    _relay_key,
    _tag,
    notify,
    open_watch,
    registry_dir,
    sweep_watches,
    tell_submitter,
    watch_dir,
)
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
        job = record_submission_decision(session, session.get(Job, job_id), deny, actor_for(submitter))
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


# -- the submitter's watch: the executor's decision relayed by the worker ----------------------

ALLOWED = {"decision": "allow", "violations": [], "columns_read": ["platform.consumers.city"]}


@pytest.fixture
def home(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)  # the master key the relay's messages are authenticated with
    return config


def relay_later(config, job_id: int, *events, delay: float = 0.02) -> threading.Thread:
    """A worker's side in a thread: each event after ``delay`` seconds."""

    def run() -> None:
        for event, decision in events:
            time.sleep(delay)
            tell_submitter(config, job_id, event, decision)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_submitter_gets_the_executors_decision_from_the_worker_that_claimed_the_job(home):
    with JobWatch(home, 7) as watch:
        relay_later(home, 7, (CLAIMED, None), (DECIDED, ALLOWED))
        assert watch.executor_decision(claim_wait=2.0, decision_wait=2.0) == ALLOWED
    assert tell_submitter(home, 7, DECIDED, ALLOWED) == 0  # nobody waits any more


def test_without_a_claim_the_submitter_stops_waiting_at_once_to_check_itself(home):
    with JobWatch(home, 8) as watch:
        started = time.monotonic()
        assert watch.executor_decision(claim_wait=0.1, decision_wait=5.0) is None
        assert time.monotonic() - started < 1.0  # not the decision's wait


def test_a_claim_without_a_decision_in_time_means_checking_itself(home):
    with JobWatch(home, 9) as watch:
        relay_later(home, 9, (CLAIMED, None))
        assert watch.executor_decision(claim_wait=2.0, decision_wait=0.2) is None


def test_a_forged_or_misdirected_message_is_not_taken_for_a_decision(home):
    deny = {"decision": "deny", "violations": [{"rule": "P1"}]}

    def message(job_id: int) -> bytes:
        return json.dumps({"job": job_id, "event": DECIDED, "decision": deny}).encode()

    with JobWatch(home, 10) as watch, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        # Any local user can send to an abstract socket: without the platform's key...
        sender.sendto(b"\0" * 32 + message(10), "\0" + watch.name)
        sender.sendto(_tag(b"another installation's key" * 2, message(10)) + message(10), "\0" + watch.name)
        # ...and a genuine message about another job: none of them is a decision for job 10.
        sender.sendto(_tag(_relay_key(home), message(11)) + message(11), "\0" + watch.name)
        assert watch.executor_decision(claim_wait=0.3, decision_wait=0.3) is None
        sender.sendto(_tag(_relay_key(home), message(10)) + message(10), "\0" + watch.name)
        assert watch.executor_decision(claim_wait=0.3, decision_wait=0.3) == deny


def test_a_dead_submitters_registration_is_forgotten(home):
    watch = JobWatch(home, 12)
    watch.sock.close()  # killed without removing its registration
    assert tell_submitter(home, 12, CLAIMED) == 0
    assert not any(watch_dir(home).iterdir())


def test_registrations_left_by_dead_submitters_are_swept_only_when_stale(home):
    with JobWatch(home, 13) as live:
        old = watch_dir(home) / "14.deadbeef"
        old.touch()
        long_ago = time.time() - STALE_WATCH_SECONDS - 60
        os.utime(old, (long_ago, long_ago))
        assert sweep_watches(home) == 1
        assert [p.name for p in watch_dir(home).iterdir()] == [live.name]


def test_no_watch_is_opened_where_no_worker_listens_on_this_host(home):
    assert open_watch(home, 15) is None  # the submitter checks at once instead of waiting
    with WakeListener(home):
        watch = open_watch(home, 15)
        assert isinstance(watch, JobWatch)
        watch.close()
