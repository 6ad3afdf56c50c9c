"""The Spark settings Yushan keeps for itself: below the configuration, which refuses them.

``yushan.config`` refuses an operator file (``YUSHAN_SPARK_CONF``) that names one of these
keys; ``sandbox.spark`` applies them to every session. Both read this one list.
"""

from __future__ import annotations

# Settings no caller may override: each closes a way out of the sandbox.
HARDENED_CONF: dict[str, str] = {
    # `SELECT * FROM parquet.`/etc``` would read any file the process can read.
    "spark.sql.runSQLOnFiles": "false",
    # The catalog holds only the tables the current job may read (installed per job).
    "spark.sql.catalogImplementation": "in-memory",
    # No web UI or event log: both show query text, plans and sample values.
    "spark.eventLog.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # P8: expressions evaluate with try_ semantics (division by zero, invalid casts, bad
    # indexes give NULL), so whether a job fails cannot depend on one consumer's values.
    # Functions that still fail on some values are denied on consumer data (policies.flow).
    "spark.sql.ansi.enabled": "false",
    # JVM stack traces in Python exceptions may quote data values.
    "spark.sql.pyspark.jvmStacktrace.enabled": "false",
    # Loopback only: the driver neither listens on nor advertises a public address. The one
    # exception is a cluster master, whose executors must reach the driver: there both are
    # YUSHAN_SPARK_DRIVER_HOST / _BIND_ADDRESS (see hardened_conf), never a caller's choice.
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    # Hive support off: no SerDe, no TRANSFORM scripts, no Hive UDFs.
    "spark.sql.legacy.createHiveTableByDefault": "false",
    # `${spark.some.setting}` in a query would be replaced by the setting's value.
    "spark.sql.variable.substitute": "false",
    # SQL scripting (BEGIN ... END) runs several statements, commands included.
    "spark.sql.scripting.enabled": "false",
    # No jars, packages or files pulled in at start-up on a caller's say-so.
    "spark.jars": "",
    "spark.jars.packages": "",
    "spark.files": "",
    "spark.submit.pyFiles": "",
    # Driver logs stay on this machine (and are quiet: see harden_session).
    "spark.driver.log.persistToDfs.enabled": "false",
    # Shuffle, spill and cached blocks on local disk are encrypted with a key that lives
    # only in the JVM's memory: a job's intermediate data never sits in the clear under
    # YUSHAN_HOME, even while a warm executor keeps old shuffle files around.
    "spark.io.encryption.enabled": "true",
    "spark.io.encryption.keySizeBits": "256",
}

# Settings that come from Yushan's own configuration: the operator's YUSHAN_SPARK_CONF may
# not set them either (key -> what to do instead).
OWN_SETTINGS: dict[str, str] = {
    "spark.master": "set YUSHAN_SPARK_MASTER instead",
    "spark.app.name": "Yushan names each session itself",
    "spark.driver.host": "set YUSHAN_SPARK_DRIVER_HOST instead (used for a cluster master only)",
    "spark.driver.bindAddress": "set YUSHAN_SPARK_DRIVER_BIND_ADDRESS instead (used for a "
                                "cluster master only)",
    "spark.ui.enabled": "set YUSHAN_SPARK_UI instead",
    "spark.sql.shuffle.partitions": "set YUSHAN_SHUFFLE_PARTITIONS instead",
    "spark.driver.memory": "set YUSHAN_SPARK_DRIVER_MEMORY instead",
    "spark.sql.warehouse.dir": "Yushan keeps it under YUSHAN_HOME",
    "spark.local.dir": "each executor's scratch directory is its own, under YUSHAN_HOME, "
                       "removed when the executor stops",
}


def operator_refusal(key: str) -> str | None:
    """Why the operator's YUSHAN_SPARK_CONF may not set ``key``; None if it may."""
    if key in OWN_SETTINGS:
        return OWN_SETTINGS[key]
    if key in HARDENED_CONF:
        return ("it is a hardened sandbox setting that nothing overrides "
                "(docs/operations.md, \"Hardened Spark settings\")")
    return None
