"""Progress comes from Spark's status tracker while a job runs, rising from 0 towards 1."""

from __future__ import annotations

import os
import threading

import pytest

from sandbox.executor import _Progress
from sandbox.protocol import Channel, ChannelClosed

pytestmark = pytest.mark.spark


def test_progress_is_reported_while_spark_works(spark):
    read_fd, write_fd = os.pipe()
    sender, receiver = Channel(-1, write_fd), Channel(read_fd, -1)
    group = "yushan-job-progress-test"
    reporter = _Progress(spark, group, sender, 1)
    seen: list[float] = []

    def collect() -> None:
        try:
            while (message := receiver.recv(timeout=30)) is not None:
                seen.append(message["progress"])
        except ChannelClosed:
            pass  # the reporter's side was closed: all progress has been read

    listener = threading.Thread(target=collect, daemon=True)
    listener.start()
    reporter.start()
    spark.sparkContext.setJobGroup(group, "progress test")
    try:
        # Many small tasks, each a little slow: the tracker sees them finish one by one.
        spark.sparkContext.parallelize(range(40), 40).map(lambda x: __import__("time").sleep(0.15) or x).count()
    finally:
        spark.sparkContext.setJobGroup("", "")
        reporter.stopped.set()
        reporter.join(timeout=5)
        os.close(write_fd)
    listener.join(timeout=5)
    os.close(read_fd)
    assert seen, "no progress was reported"
    assert seen == sorted(seen)  # never goes backwards
    assert all(0 <= p <= 0.95 for p in seen)  # 1.0 only once the output is stored
    assert max(seen) > 0.3
    assert len(seen) >= 2
