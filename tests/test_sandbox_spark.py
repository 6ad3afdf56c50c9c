"""The session factory: its settings for a local or cluster master (the driver's address,
the operator's Spark settings, warnings about an unprotected cluster), and its way of
talking to its JVM: few round trips, no reply stalls."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from types import SimpleNamespace

import pytest

from policies.jvm import jvm_class, jvm_constant
from sandbox.spark import (
    _announce_driver_address,
    _QuickAckSocket,
    cluster_security_warnings,
    session_conf,
)
from yushan.config import ConfigError
from yushan.spark_settings import HARDENED_CONF

CLUSTER = "spark://10.0.0.5:7077"
SECURE = {"spark.authenticate": "true", "spark.authenticate.secret": "s",
          "spark.network.crypto.enabled": "true"}


@pytest.fixture
def config_with(make_config):
    """``config_with(**fields)``: a Config on a fresh home with those fields replaced."""
    return lambda **fields: dataclasses.replace(make_config(), **fields)


def _driver(conf: dict[str, str]) -> tuple[str, str]:
    return conf["spark.driver.host"], conf["spark.driver.bindAddress"]


# --- settings: no Spark needed -------------------------------------------------------------


@pytest.mark.parametrize("master", ["local[2]", "local[*]", "local-cluster[2,1,1024]"])
def test_a_local_driver_stays_on_loopback_whatever_is_configured(config_with, master):
    config = config_with(spark_master=master, spark_driver_host="10.0.0.7",
                         spark_driver_bind_address="0.0.0.0")
    conf = session_conf(config, "t", extra={"spark.driver.host": "10.0.0.7"})
    assert _driver(conf) == ("127.0.0.1", "127.0.0.1")
    assert {k: conf[k] for k in HARDENED_CONF} == HARDENED_CONF


def test_a_cluster_driver_binds_and_advertises_the_configured_address(config_with):
    config = config_with(spark_master=CLUSTER, spark_driver_host="10.0.0.7")
    assert _driver(session_conf(config, "t")) == ("10.0.0.7", "10.0.0.7")  # bind = host
    config = config_with(spark_master="yarn", spark_driver_host="worker-1.internal",
                         spark_driver_bind_address="10.0.0.7")
    conf = session_conf(config, "t", extra={"spark.driver.bindAddress": "0.0.0.0",
                                            "spark.sql.runSQLOnFiles": "true"})
    assert _driver(conf) == ("worker-1.internal", "10.0.0.7")  # no caller moves the driver
    assert conf["spark.master"] == "yarn"
    for key, value in HARDENED_CONF.items():
        if not key.startswith("spark.driver."):
            assert conf[key] == value
    # Unconfigured, a cluster driver is on loopback too (a cluster on this machine).
    assert _driver(session_conf(config_with(spark_master=CLUSTER), "t")) == ("127.0.0.1", "127.0.0.1")


def test_operator_settings_reach_every_session_beneath_callers_and_hardening(config_with):
    config = config_with(spark_master="yarn", spark_conf={
        "spark.yarn.queue": "cleanroom", "spark.sql.adaptive.enabled": "false",
        "spark.driver.extraJavaOptions": "-Doperator=1", **SECURE,
    })
    conf = session_conf(config, "t")
    assert conf["spark.yarn.queue"] == "cleanroom"
    assert conf["spark.sql.adaptive.enabled"] == "false"  # over Yushan's default
    assert all(conf[key] == value for key, value in SECURE.items())
    assert session_conf(config, "t", {"spark.driver.extraJavaOptions": "-Dcaller=1"})[
        "spark.driver.extraJavaOptions"] == "-Dcaller=1"  # a caller's own setting goes last


@pytest.mark.parametrize("key", ["spark.sql.runSQLOnFiles", "spark.driver.host", "spark.master"])
def test_a_hardened_key_among_operator_settings_is_refused_at_session_start_too(config_with, key):
    # Config.from_env refuses such a file by line; a Config made otherwise is checked here.
    config = config_with(spark_conf={key: "x"})
    with pytest.raises(ConfigError, match=f"{key} may not be set there"):
        session_conf(config, "t")


def test_an_operator_file_reaches_the_session_through_the_environment(make_config, tmp_path, monkeypatch):
    path = tmp_path / "spark.conf"
    path.write_text("spark.yarn.queue cleanroom\nspark.sql.runSQLOnFiles=true\n")
    monkeypatch.setenv("YUSHAN_SPARK_CONF", str(path))
    with pytest.raises(ConfigError, match=r"line 2: spark.sql.runSQLOnFiles may not be set"):
        make_config()
    path.write_text("spark.yarn.queue cleanroom\n")
    assert session_conf(make_config(), "t")["spark.yarn.queue"] == "cleanroom"


@pytest.mark.parametrize(
    ("master", "host", "bind", "operator", "expected"),
    [
        (CLUSTER, "10.0.0.7", "", {}, ["unauthenticated", "unencrypted"]),
        ("yarn", "worker-1.internal", "", {"spark.authenticate": "true"}, ["unencrypted"]),
        ("k8s://https://k8s:443", "10.0.0.7", "", SECURE, []),
        (CLUSTER, "10.0.0.7", "", {"spark.authenticate": "true", "spark.ssl.rpc.enabled": "true"}, []),
        (CLUSTER, "127.0.0.1", "", {}, []),  # the cluster is on this machine (test_jobs_cluster)
        (CLUSTER, "127.0.0.1", "0.0.0.0", {}, ["unauthenticated", "unencrypted"]),  # listens widely
        ("local[2]", "10.0.0.7", "", {}, []),  # a local driver is on loopback anyway
    ],
)
def test_an_unprotected_cluster_driver_is_warned_about(config_with, master, host, bind, operator, expected):
    config = config_with(spark_master=master, spark_driver_host=host,
                         spark_driver_bind_address=bind, spark_conf=operator)
    warnings = cluster_security_warnings(session_conf(config, "t"))
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected, strict=True):
        assert fragment in warning
    if "unauthenticated" in expected:
        assert "set spark.authenticate=true" in warnings[0] and "YUSHAN_SPARK_CONF" in warnings[0]


def _started(conf: dict[str, str]):
    """Stands in for a started session: only its effective settings are read."""
    return SimpleNamespace(sparkContext=SimpleNamespace(
        getConf=lambda: SimpleNamespace(getAll=lambda: list(conf.items()))))


def test_session_start_logs_the_warning_from_the_effective_settings(config_with, caplog):
    config = config_with(spark_master=CLUSTER, spark_driver_host="10.0.0.7")
    caplog.set_level(logging.INFO, logger="sandbox.spark")
    _announce_driver_address(config, _started(session_conf(config, "t")))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(m.startswith("WARNING: the driver on 10.0.0.7") for m in warned)
    caplog.clear()
    # Turned on in Spark's own spark-defaults.conf: the effective settings have it, no warning.
    _announce_driver_address(config, _started({**session_conf(config, "t"), **SECURE}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- talking to the JVM ----------------------------------------------------------------------


def _connection_socket(spark):
    client = spark.sparkContext._gateway._gateway_client
    spark._jvm.java.lang.System.nanoTime()  # this thread's connection exists from here on
    return client.thread_connection.connection().socket


@pytest.mark.spark
@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
def test_every_connection_to_the_jvm_acknowledges_replies_at_once(spark):
    assert isinstance(_connection_socket(spark), _QuickAckSocket)
    found: list = []
    # A thread of its own opens a second connection (py4j pins one per thread).
    worker = threading.Thread(target=lambda: found.append(_connection_socket(spark)))
    worker.start()
    worker.join()
    assert isinstance(found[0], _QuickAckSocket)


@pytest.mark.spark
def test_a_large_plan_comes_back_whole_in_one_reply(spark):
    # Far beyond py4j's 8 KiB reply buffer: the case that used to stall or need chunks.
    columns = ", ".join(f"id * {i} AS column_with_a_long_name_{i}" for i in range(300))
    plan = spark.sql(f"SELECT {columns} FROM range(3)")._jdf.queryExecution().analyzed()
    text = plan.toJSON()
    assert len(text) > 50_000
    nodes = json.loads(text)
    assert nodes[0]["class"].endswith("Project") and len(nodes[0]["projectList"]) == 300


@pytest.mark.spark
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
