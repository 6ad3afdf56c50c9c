"""The one SparkSession factory. Every Spark user in Yushan gets its session here.

Hardened from the start: no SQL on files, no UI or event logs unless asked, an in-memory
catalog that only holds what the current job installs, try_ semantics for runtime errors
(ANSI off, P8), and a driver on loopback only (a cluster master's driver on the
operator's address instead).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.functions import FORBIDDEN_FUNCTION_NAMES, FORBIDDEN_TABLE_FUNCTION_NAMES
from policies.jvm import forget_jvm, jvm_constant
from yushan.config import Config, ConfigError, require_java
from yushan.spark_settings import HARDENED_CONF, operator_refusal

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Built-in functions removed from every Yushan session: the policy's list (P7, P8).
REMOVED_FUNCTIONS: tuple[str, ...] = tuple(FORBIDDEN_FUNCTION_NAMES)
REMOVED_TABLE_FUNCTIONS: tuple[str, ...] = FORBIDDEN_TABLE_FUNCTION_NAMES


def is_local_master(master: str) -> bool:
    """``local``, ``local[N]``, ``local-cluster[...]``: everything on this machine."""
    return master.startswith("local")


def hardened_conf(config: Config) -> dict[str, str]:
    """HARDENED_CONF as it applies to this installation's master.

    A local master's driver stays on 127.0.0.1 whatever is configured (its executors run in
    a network namespace with nothing but loopback anyway). A cluster's executors must reach
    the driver, so there it binds to and advertises the operator's address.
    """
    conf = dict(HARDENED_CONF)
    if not is_local_master(config.spark_master):
        conf["spark.driver.host"] = config.spark_driver_host
        conf["spark.driver.bindAddress"] = config.spark_driver_bind_address or config.spark_driver_host
    return conf


def operator_conf(config: Config) -> dict[str, str]:
    """The operator's extra settings (YUSHAN_SPARK_CONF), refused whole if one is Yushan's."""
    for key in config.spark_conf:
        refused = operator_refusal(key)
        if refused:
            source = (f"YUSHAN_SPARK_CONF={config.spark_conf_file}" if config.spark_conf_file
                      else "the operator's Spark settings")
            raise ConfigError(f"{source}: {key} may not be set there: {refused}; remove it")
    return dict(config.spark_conf)


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def cluster_security_warnings(conf: Mapping[str, str]) -> list[str]:
    """What is unprotected on the wire for a session with the effective settings ``conf``.

    Only a cluster master with a driver reachable from other hosts is concerned. Without
    ``spark.authenticate`` any host that reaches the driver's ports can talk to it as an
    executor would (and be sent tasks and blocks holding merchant data); without RPC
    encryption, tasks, shuffle blocks and the key of Spark's local-disk encryption cross the
    network in the clear. A warning, not a refusal: Spark's own spark-defaults.conf may be
    where the operator turned these on, which is why the effective settings are checked.
    """
    master = conf.get("spark.master", "")
    addresses = {conf.get("spark.driver.host", ""), conf.get("spark.driver.bindAddress", "")}
    if not master or is_local_master(master) or all(_is_loopback(a) for a in addresses if a):
        return []

    def on(key: str) -> bool:
        return conf.get(key, "false").strip().lower() == "true"

    warnings = []
    where = f"the driver on {conf.get('spark.driver.host')} (master {master.split('://')[0]})"
    if not on("spark.authenticate"):
        warnings.append(
            f"{where} accepts unauthenticated connections: any host that reaches it can pose "
            "as a Spark executor and be sent job data; set spark.authenticate=true (and, "
            "on a standalone cluster, spark.authenticate.secret) in YUSHAN_SPARK_CONF"
        )
    if not (on("spark.network.crypto.enabled") or on("spark.ssl.rpc.enabled")):
        warnings.append(
            f"{where} talks to its executors unencrypted: tasks, shuffle blocks and the "
            "local-disk encryption key cross the network in the clear; set "
            "spark.network.crypto.enabled=true (with spark.authenticate) in YUSHAN_SPARK_CONF"
        )
    return warnings


_lock = threading.Lock()
_session: SparkSession | None = None


def session_conf(config: Config, app_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The full configuration a Yushan SparkSession is built with.

    Later layers win: Yushan's defaults, then the operator's YUSHAN_SPARK_CONF (refused if
    it names a hardened key or one of OWN_SETTINGS), then the caller's ``extra``, then the
    hardened settings with the driver's address (``hardened_conf``), which nothing overrides.
    """
    conf = {
        "spark.app.name": app_name,
        "spark.master": config.spark_master,
        "spark.ui.enabled": "true" if config.spark_ui else "false",
        "spark.sql.shuffle.partitions": str(config.spark_shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.driver.memory": config.spark_driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(config.workspaces_dir / "spark-warehouse"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",
    }
    from sandbox.class_archive import java_options

    archived = java_options(config)  # Spark's classes ready-parsed: seconds off every cold start
    if archived:
        conf["spark.driver.extraJavaOptions"] = archived
    conf.update(operator_conf(config))
    conf.update(extra or {})
    conf.update(hardened_conf(config))
    return conf


def _memory_bytes(value: str) -> int | None:
    """Spark's memory notation (``2g``, ``1536m``, ``512k``) in bytes; None if unreadable."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = value.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text) * 2**20  # a bare number is MiB, as Spark reads it
    except ValueError:
        return None


def engine_conf(config: Config) -> dict[str, str]:
    """An executor's JVM settings: it exits on OutOfMemoryError (a half-dead JVM would hang
    at 0% CPU and hold the job), and a collected result may take at most half its heap."""
    options = [session_conf(config, "x").get("spark.driver.extraJavaOptions", ""),
               "-XX:+ExitOnOutOfMemoryError"]
    conf = {"spark.driver.extraJavaOptions": " ".join(o for o in options if o)}
    heap = _memory_bytes(config.spark_driver_memory)
    if heap:
        conf["spark.driver.maxResultSize"] = f"{max(1, heap // 2 // 2**20)}m"
    return conf


def get_spark(config: Config, app_name: str = "yushan", extra: dict[str, str] | None = None) -> SparkSession:
    """Return this process's SparkSession, creating it on first use."""
    global _session
    with _lock:
        if _session is not None and _session.sparkContext._jsc is not None:
            return _session
        require_java()
        _acknowledge_replies_at_once()
        os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or _python())
        from pyspark.sql import SparkSession

        builder = SparkSession.builder
        for key, value in session_conf(config, app_name, extra).items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        harden_session(_session)
        log.info("SparkSession started (master %s)", config.spark_master)
        _announce_driver_address(config, _session)
        return _session


def isolated_session(spark: SparkSession, warehouse_dir: Path) -> SparkSession:
    """A new session on ``spark``'s SparkContext (same JVM) with a catalog of its own.

    ``spark.newSession()`` would isolate settings, temporary views and functions but share
    the catalog of databases and tables (Spark's SharedState); this session has its own
    SharedState, built by the constructor PySpark itself uses for a first session, so that
    installing one job's catalog in it (sandbox.catalog) leaves every other session's alone.
    Its settings are ``spark``'s (the hardened ones among them), but for its warehouse,
    ``warehouse_dir`` (dropping a database deletes its directory there); its removed
    functions are removed again (the registry is per session). The active session of a thread does not change: ``policies.sparkplan`` makes
    the session it parses with active on the thread it parses on.
    """
    from pyspark.sql import SparkSession

    options = spark._jvm.java.util.HashMap()
    for key, value in spark.conf.getAll.items():
        options.put(key, value)
    options.put("spark.sql.warehouse.dir", str(warehouse_dir))
    session_class = jvm_constant(spark, "classic.SparkSession",
                                 lambda jvm: jvm.org.apache.spark.sql.classic.SparkSession)
    jsession = session_class(spark.sparkContext._jsc.sc(), options)
    session = SparkSession(spark.sparkContext, jsession)
    harden_session(session)
    return session


def _announce_driver_address(config: Config, spark: SparkSession) -> None:
    """Say where the driver listens; warn when a cluster reaches it unprotected."""
    if is_local_master(config.spark_master):
        if not _is_loopback(config.spark_driver_host):
            log.info("YUSHAN_SPARK_DRIVER_HOST=%s is not used: a local master's driver stays "
                     "on 127.0.0.1", config.spark_driver_host)
        return
    # The effective settings: Spark's own spark-defaults.conf may have added some.
    effective = dict(spark.sparkContext.getConf().getAll())
    log.info("Spark driver on %s (bound to %s)", effective.get("spark.driver.host"),
             effective.get("spark.driver.bindAddress"))
    for warning in cluster_security_warnings(effective):
        log.warning("WARNING: %s", warning)


def harden_session(spark: SparkSession) -> None:
    """Remove the built-in functions that reach outside a query from this session.

    A removed function fails to resolve like one that never existed. Spark has no setting
    for these, so they are dropped from the session's function registries.
    """
    jvm = spark._jvm
    state = spark._jsparkSession.sessionState()
    ident = jvm.org.apache.spark.sql.catalyst.FunctionIdentifier
    builtin = (jvm.scala.Some("builtin"), jvm.scala.Some("system"))
    for name in REMOVED_FUNCTIONS:
        state.functionRegistry().dropFunction(ident(name, *builtin))
    for name in REMOVED_TABLE_FUNCTIONS:
        state.tableFunctionRegistry().dropFunction(ident(name, *builtin))


def stop_spark() -> None:
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
        forget_jvm()  # the next session has a new JVM


def _python() -> str:
    import sys

    return sys.executable


# --- talking to the JVM ----------------------------------------------------------------------
#
# Every py4j call is a round trip over a loopback TCP connection, so the policy layer makes
# as few as it can: classes and immutable objects are looked up once (each step of
# ``jvm.org.apache...`` is a round trip of its own), and a plan's JSON comes back in one
# reply.


class _QuickAckSocket:
    """A py4j connection's socket that acknowledges the JVM's replies at once.

    py4j's JVM side writes a reply through an 8 KiB buffer. A larger reply leaves in two
    writes, and Nagle's algorithm holds the second until the first is acknowledged, which
    Linux delays by up to 40 ms (measured: 8,000 characters 0.3 ms, 9,000 characters 44
    ms). Re-arming TCP_QUICKACK after each command is sent removes the delay (100,000
    characters: 1.7 ms). Everything else is the plain socket's.
    """

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket):
        self._socket = sock

    def sendall(self, data: bytes, *args: Any) -> None:
        self._socket.sendall(data, *args)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def _acknowledge_replies_at_once() -> None:
    """Make every py4j connection this process opens to its JVM a :class:`_QuickAckSocket`."""
    from py4j.clientserver import ClientServerConnection

    if not hasattr(socket, "TCP_QUICKACK") or getattr(ClientServerConnection, "_yushan_quick_ack", False):
        return
    connect = ClientServerConnection.connect_to_java_server

    def connect_acknowledging(self) -> None:
        connect(self)
        if self.ssl_context is None and not isinstance(self.socket, _QuickAckSocket):
            self.socket = _QuickAckSocket(self.socket)

    ClientServerConnection.connect_to_java_server = connect_acknowledging
    ClientServerConnection._yushan_quick_ack = True
