"""JVM handles the policy needs, made once per JVM and kept (py4j lookups are slow).

The policy walks and rewrites Spark's plans through py4j; these helpers live with it, below
``sandbox.spark`` (which re-exports them for its own users).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_jvm_cache: dict[str, tuple[Any, Any]] = {}
_jvm_cache_lock = threading.Lock()


def jvm_constant(spark: SparkSession, key: str, make) -> Any:
    """A JVM class or immutable JVM object, made once per JVM by ``make(jvm)``."""
    jvm = spark._jvm
    found = _jvm_cache.get(key)
    if found is not None and found[0] is jvm:
        return found[1]
    value = make(jvm)
    with _jvm_cache_lock:
        _jvm_cache[key] = (jvm, value)
    return value


def jvm_class(spark: SparkSession, name: str) -> Any:
    """The JVM class ``name`` (fully qualified; ``Outer$`` for a Scala object's class)."""

    def find(jvm):
        found = jvm
        for part in name.split("."):
            found = getattr(found, part)
        return found

    return jvm_constant(spark, "class:" + name, find)


def forget_jvm() -> None:
    """Drop every kept handle (the SparkSession, and with it the JVM, has stopped)."""
    with _jvm_cache_lock:
        _jvm_cache.clear()


def jvm_regex_groups(spark: SparkSession):
    """How many groups Java's regex engine (Spark's) finds in a pattern; None if it does
    not compile. One JVM call per pattern, only for queries that use regular expressions."""
    pattern_class = jvm_constant(spark, "java.util.regex.Pattern",
                                 lambda jvm: jvm.java.util.regex.Pattern)

    def groups(pattern: str) -> int | None:
        try:
            return int(pattern_class.compile(pattern).matcher("").groupCount())
        except Exception:  # noqa: BLE001 - PatternSyntaxException: it does not compile
            return None

    return groups
