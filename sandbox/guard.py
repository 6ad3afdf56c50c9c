"""Second line of defence in the executor: only a single read-only query may run.

The policy engine denies commands and forbidden features (P7) on the analysed plan. The
executor checks the *parsed* plan again before anything is analysed, because Spark runs
some commands eagerly while a statement is being turned into a DataFrame.
"""

from __future__ import annotations

import json
from typing import Any

from pyspark.sql import SparkSession

from policies.jvm import jvm_constant

# Parsed-plan nodes that run programs, write, or change the session.
FORBIDDEN_NODES = frozenset(
    {
        "ScriptTransformation",  # SELECT TRANSFORM(...) USING 'program'
        "InsertIntoStatement",
        "InsertIntoDir",
        "CacheTable",
        "CacheTableAsSelect",
        "UncacheTable",
        "CreateView",
        "CreateTempView",
        "CreateTable",
        "CreateTableAsSelect",
        "ReplaceTable",
        "ReplaceTableAsSelect",
        "CreateFunction",
        "CreateSQLFunctionCommand",
        "CreateVariable",
        "SetVariable",
        "DropVariable",
        "MergeIntoTable",
        "UpdateTable",
        "DeleteFromTable",
        "CompoundBody",
    }
)
FORBIDDEN_PACKAGES = ("org.apache.spark.sql.execution.command.",)


class ForbiddenQuery(Exception):
    """The statement is not one plain query; the message names the feature, never data."""


def screen(spark: SparkSession, sql: str) -> dict[str, Any] | None:
    """The policy decision (a P7 deny) for a statement this guard refuses, else None.

    A statement that does not parse is let through: the policy check refuses it too, and
    explains the syntax error.
    """
    from pyspark.errors import ParseException

    from policies.model import Violation

    try:
        assert_single_query(spark, sql)
    except ForbiddenQuery as refused:
        violation = Violation("P7", "(query)", (), str(refused), "Submit exactly one SELECT query.")
        return {"decision": "deny", "violations": [violation.to_dict()], "columns_read": []}
    except ParseException:
        pass
    return None


def _classes(node: Any) -> set[str]:
    """Every tree-node class name mentioned anywhere in a plan's JSON form."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cls = item.get("class")
            if isinstance(cls, str):
                found.add(cls)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def assert_single_query(spark: SparkSession, sql: str) -> None:
    """Raise :class:`ForbiddenQuery` unless ``sql`` is exactly one read-only query."""
    plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)  # several statements fail here
    command = jvm_constant(spark, "Command", lambda jvm: jvm.java.lang.Class.forName(
        "org.apache.spark.sql.catalyst.plans.logical.Command"))
    if command.isInstance(plan):
        raise ForbiddenQuery("commands are not allowed; submit a single SELECT query")
    try:
        names = _classes(json.loads(plan.toJSON()))
    except Exception:  # noqa: BLE001 - unknown shape: fall back to the node names
        names = {line.strip().lstrip("+-: ").split(" ")[0] for line in plan.treeString().splitlines()}
    for full in names:
        simple = full.rsplit(".", 1)[-1]
        if simple in FORBIDDEN_NODES or full.startswith(FORBIDDEN_PACKAGES):
            raise ForbiddenQuery(f"the feature {simple} is not allowed in a job")
