"""The analyzed plan as JSON, the document the policy reads (``policies.tree``).

Spark's ``TreeNode.toJSON`` asks Scala's runtime reflection for every node's constructor
parameter names, each time: most of a check's time on a query with a few joins. The
``YushanPlanJson`` class (``PlanJson.java``, next to this module) writes the same document
with those names looked up once per class. It is compiled once per JVM by Janino, the Java
compiler Spark ships for its own generated code, so nothing is added to Spark's classpath.

Where it cannot be compiled or fails on a plan, Spark's own ``toJSON`` is used: the
document is the same either way (``tests/test_policy_planjson.py`` compares them on every
query of the policy corpus), only slower.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.jvm import jvm_constant

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("PlanJson.java")
# The Spark minors whose TreeNode.jsonValue PlanJson.java follows (read from 4.3's classes);
# any other uses Spark's own writer until the comparison test has run on it.
FOLLOWED_SPARK = ("4.3.",)
_compile_lock = threading.Lock()
_UNAVAILABLE = object()


def _compile(jvm) -> Any:
    """A ``YushanPlanJson`` instance in this JVM, or ``_UNAVAILABLE`` (logged once)."""
    import pyspark

    if not pyspark.__version__.startswith(FOLLOWED_SPARK):
        log.info("Spark %s: plans are written by Spark's own toJSON", pyspark.__version__)
        return _UNAVAILABLE
    try:
        compiler = jvm.org.codehaus.janino.SimpleCompiler()
        compiler.setTargetVersion(8)
        compiler.setParentClassLoader(jvm.java.lang.Thread.currentThread().getContextClassLoader())
        compiler.cook(SOURCE.read_text(encoding="utf-8"))
        cls = compiler.getClassLoader().loadClass("YushanPlanJson")
        no_types = jvm.java.lang.reflect.Array.newInstance(jvm.java.lang.Class.forName("java.lang.Class"), 0)
        no_args = jvm.java.lang.reflect.Array.newInstance(jvm.java.lang.Class.forName("java.lang.Object"), 0)
        return cls.getDeclaredConstructor(no_types).newInstance(no_args)
    except Exception as exc:  # noqa: BLE001 - any failure: Spark's own toJSON does the job
        log.warning("the fast plan writer could not be compiled (%s); using Spark's toJSON",
                    type(exc).__name__)
        return _UNAVAILABLE


def _writer(spark: SparkSession) -> Any:
    with _compile_lock:  # one compilation per JVM, however many threads ask at once
        return jvm_constant(spark, "policies.planjson.YushanPlanJson", _compile)


def plan_json(spark: SparkSession, jplan: Any) -> str:
    """``jplan.toJSON()``, written by ``YushanPlanJson`` when it is there."""
    writer = _writer(spark)
    if writer is not _UNAVAILABLE:
        try:
            return writer.json(jplan)
        except Exception as exc:  # noqa: BLE001 - a node it cannot write: Spark's own writer
            log.warning("the fast plan writer failed (%s); using Spark's toJSON", type(exc).__name__)
    return jplan.toJSON()
