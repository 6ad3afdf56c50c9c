"""Executors that heal, with a real worker and executor on the demo world: a JVM killed
between jobs is found by the ping before the next job; a JVM killed or hung during a job
is an executor fault, and the job is retried once on a fresh executor."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest
from jobs_support import audit_actions, job_state, user

from jobs import service
from jobs.worker import Worker
from sandbox.limits import process_tree
from yushan.db import session_scope

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SQL = ("SELECT c.city, count(DISTINCT o.user_id) AS buyers FROM platform.orders o "
       "JOIN platform.consumers c ON o.user_id = c.user_id WHERE o.amount >= {floor} GROUP BY c.city")
FINAL = {"awaiting_approval", "blocked", "failed", "cancelled"}


@pytest.fixture(scope="module")
def worker(demo_config):
    config = dataclasses.replace(demo_config, executor_hang_seconds=6)
    running = Worker(config, concurrency=1)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=60)


def submit(config, sql: str) -> int:
    with session_scope(config) as session:
        return service.submit(session, config, user(session, "insight_isv"), "hanfu_house",
                              "aggregate", sql).id


def wait(config, job_id: int, states=FINAL, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_state(config, job_id)
        if job.state in states:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} still {job_state(config, job_id).state}")


def jvm_of(worker: Worker, timeout: float = 300) -> int:
    """The pid of the JVM of the worker's one executor (once it is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for executor in worker.pool.executors() if worker.pool else []:
            if executor.pid is None or not executor.members:
                continue
            for pid in process_tree(executor.pid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"java" in f.read().split(b"\0")[0]:
                            return pid
                except OSError:
                    continue
        time.sleep(0.2)
    pytest.fail("no executor JVM")


def test_a_jvm_killed_between_jobs_is_replaced_before_the_next_job(demo_config, worker):
    first = wait(demo_config, submit(demo_config, SQL.format(floor=0)))
    assert first.state == "awaiting_approval", first.error
    faults = worker.pool.faults
    os.kill(jvm_of(worker), signal.SIGKILL)
    job = wait(demo_config, submit(demo_config, SQL.format(floor=1)))
    assert job.state == "awaiting_approval" and job.attempts == 1  # never given to the dead one
    assert worker.pool.faults == faults + 1


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_jvm_lost_during_a_job_is_replaced_and_the_job_retried_once(demo_config, worker, how):
    jvm = jvm_of(worker)
    job_id = submit(demo_config, SQL.format(floor=2))
    wait(demo_config, job_id, states={"running"} | FINAL)
    os.kill(jvm, how)
    job = wait(demo_config, job_id)
    if job.attempts == 1:  # the job won the race with the signal: nothing to retry
        pytest.skip("the job finished before the JVM was lost")
    assert job.state == "awaiting_approval" and job.attempts == 2
    actions = audit_actions(demo_config, job_id)
    assert actions.count("job.retry") == 1 and actions.count("job.execute") == 1
    if how == signal.SIGSTOP:
        try:
            os.kill(jvm, signal.SIGKILL)  # the pool killed it already; make sure
        except ProcessLookupError:
            pass
