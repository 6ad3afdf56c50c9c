"""The executor process's own behaviour (sandbox.executor): warm-up that yields to jobs."""

from __future__ import annotations

import time

import pytest

from sandbox.warmup import WarmUp

pytestmark = pytest.mark.spark


def test_a_job_arriving_during_warm_up_cancels_it_and_idle_time_finishes_it(spark, tmp_path):
    warm_up = WarmUp(spark, tmp_path)
    warm_up.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "warm-up").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the synthetic data is being written: Spark is busy
    started = time.monotonic()
    warm_up.stop()  # a job arrives
    assert not warm_up.thread.is_alive()
    assert time.monotonic() - started < 20, "the job waited for the whole warm-up"
    assert not warm_up.done
    # The session is not left cancelled or in the warm-up's job group.
    assert spark.sql("SELECT count(*) FROM range(10)").first()[0] == 10
    # Idle again: the warm-up resumes and completes, and cleans up after itself.
    warm_up.start()
    warm_up.thread.join(timeout=300)
    assert warm_up.done and warm_up.rounds_done == 3
    assert not (tmp_path / "warm-up").exists(), "the warm-up's synthetic data is left behind"
    warm_up.start()  # done: nothing runs again
    assert not warm_up.thread.is_alive()
    warm_up.stop()
