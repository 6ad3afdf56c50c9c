"""The session factory's way of talking to its JVM: few round trips, no reply stalls."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from sandbox.spark import _QuickAckSocket, jvm_class, jvm_constant

pytestmark = pytest.mark.spark


def _connection_socket(spark):
    client = spark.sparkContext._gateway._gateway_client
    spark._jvm.java.lang.System.nanoTime()  # this thread's connection exists from here on
    return client.thread_connection.connection().socket


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
def test_every_connection_to_the_jvm_acknowledges_replies_at_once(spark):
    assert isinstance(_connection_socket(spark), _QuickAckSocket)
    found: list = []
    # A thread of its own opens a second connection (py4j pins one per thread).
    worker = threading.Thread(target=lambda: found.append(_connection_socket(spark)))
    worker.start()
    worker.join()
    assert isinstance(found[0], _QuickAckSocket)


def test_a_large_plan_comes_back_whole_in_one_reply(spark):
    # Far beyond py4j's 8 KiB reply buffer: the case that used to stall or need chunks.
    columns = ", ".join(f"id * {i} AS column_with_a_long_name_{i}" for i in range(300))
    plan = spark.sql(f"SELECT {columns} FROM range(3)")._jdf.queryExecution().analyzed()
    text = plan.toJSON()
    assert len(text) > 50_000
    nodes = json.loads(text)
    assert nodes[0]["class"].endswith("Project") and len(nodes[0]["projectList"]) == 300


def test_jvm_classes_and_constants_are_looked_up_once_per_jvm(spark):
    made = []

    def make(jvm):
        made.append(jvm)
        return jvm.java.lang.Integer.valueOf(7)

    first = jvm_constant(spark, "test:seven", make)
    again = jvm_constant(spark, "test:seven", make)
    assert first == again == 7 and len(made) == 1
    cls = jvm_class(spark, "java.lang.Math")
    assert cls is jvm_class(spark, "java.lang.Math")
    assert cls.max(2, 5) == 5
