"""Getting a job's analyzed plan out of Spark without running anything.

The SQL is parsed with the session's own parser; anything that is not one plain query is
refused before analysis (``spark.sql`` would run commands eagerly). The plan is then
analysed (commands never executed: ``CommandExecutionMode.SKIP``) and serialised to JSON
once; all policy reasoning happens in Python on that JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from policies.jvm import jvm_constant
from policies.model import Violation
from policies.tree import Node, parse_plan_json

# Parsed (unresolved) plan nodes a plain query is made of. Commands, DDL/DML, scripts,
# TRANSFORM, table-valued functions (read_files, ...) and anything else are refused.
PARSED_QUERY_NODES = frozenset({
    "Project", "Filter", "Aggregate", "UnresolvedHaving", "Sort", "GlobalLimit", "LocalLimit",
    "Offset", "Tail", "Join", "SubqueryAlias", "UnresolvedWith", "UnresolvedRelation", "Union",
    "Intersect", "Except", "Distinct", "Generate", "WithWindowDefinition", "OneRowRelation",
    "UnresolvedInlineTable", "LocalRelation", "LateralJoin", "UnresolvedSubqueryColumnAliases",
    "UnresolvedHint", "RepartitionByExpression", "Window", "Pivot", "Unpivot",
    "UnresolvedGenerate", "Deduplicate",
    "CTE",  # the definitions line of UnresolvedWith in the tree string
})

FEATURE_NAMES = {
    "ScriptTransformation": "TRANSFORM ... USING",
    "UnresolvedTableValuedFunction": "a table-valued function (read_files, range, ...)",
    "UnresolvedTVFAliases": "a table-valued function (read_files, range, ...)",
    "CompoundBody": "SQL scripting",
    "SingleStatement": "SQL scripting",
    "Sample": "TABLESAMPLE",
}


class QueryError(Exception):
    """A syntax or name error: reported as such (P9), never as a policy rule."""

    def __init__(self, error_class: str, message: str, position: dict | None):
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.position = position

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.error_class, "message": self.message, "position": self.position}


_POSITION = re.compile(r"line (\d+), pos (\d+)")


def _query_error(exc: Exception, fallback: str) -> QueryError:
    """Spark's error class, its first message line, and where in the SQL it points."""
    error_class = fallback
    getter = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        error_class = str(getter() or fallback) if callable(getter) else fallback
    except Exception:  # noqa: BLE001 - the class is a nicety; the message is what matters
        error_class = fallback
    message = _spark_message(exc)
    position = None
    try:
        contexts = exc.getQueryContext() if hasattr(exc, "getQueryContext") else []
        for context in contexts or []:
            start, stop = int(context.startIndex()), int(context.stopIndex())
            if start >= 0:
                position = {"start": start, "stop": stop}
                break
    except Exception:  # noqa: BLE001
        position = None
    if position is None:
        match = _POSITION.search(str(exc))
        if match:
            position = {"line": int(match.group(1)), "column": int(match.group(2))}
    return QueryError(error_class, message, position)


class PlanRefused(Exception):
    """The SQL is not a single plain query, or Spark could not analyse it."""

    def __init__(self, violation: Violation):
        super().__init__(violation.message)
        self.violation = violation


@dataclass
class AnalyzedQuery:
    """The analyzed plan, in the JVM (for execution) and as a Python tree (for the policy)."""

    jplan: Any
    tree: Node


def _refuse(message: str, suggestion: str, column: str = "(query)") -> PlanRefused:
    return PlanRefused(Violation("P7", column, (), message, suggestion))


def _spark_message(exc: Exception) -> str:
    """Spark's own message, without the plan dump it appends."""
    getter = getattr(exc, "getMessage", None)
    text = getter() if callable(getter) else str(exc)
    text = str(text).split("\n", 1)[0].strip()
    return text.removesuffix(";").strip()


_NODE_LINE = re.compile(r"^[\s:|+\-]*'?([A-Za-z_$][A-Za-z0-9_$]*)")


def _parsed_node_names(jplan: Any) -> list[str]:
    """Class names of every node of the parsed plan, in one JVM call.

    Each node is one line of Spark's tree string, starting with its name. Text from the
    query (a multi-line string literal) can only add lines, never hide a node, so at
    worst it causes a refusal.
    """
    names = []
    for line in str(jplan.treeString()).splitlines():
        match = _NODE_LINE.match(line)
        if match:
            names.append(match.group(1))
    top = jplan.getClass().getSimpleName()
    return [top, *names]


def _check_parsed(jplan: Any) -> None:
    for name in _parsed_node_names(jplan):
        if name in PARSED_QUERY_NODES:
            continue
        feature = FEATURE_NAMES.get(name)
        if feature:
            raise _refuse(
                f"{feature} is not allowed in a job.",
                "Submit a single SELECT query over the datasets listed in the catalog.",
            )
        raise _refuse(
            f"Only a single query (SELECT ...) may be submitted; this statement is a "
            f"{name} (commands, DDL and DML are not allowed).",
            "Submit one SELECT query; settings, tables and functions are managed by the "
            "platform.",
        )


def analyze(spark: SparkSession, sql: str) -> AnalyzedQuery:
    """Parse, refuse non-queries, analyse; raise :class:`PlanRefused` with a P7 violation."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    jsession = spark._jsparkSession
    state = jsession.sessionState()
    try:
        parsed = state.sqlParser().parsePlan(sql)
    except (PySparkException, Py4JError) as exc:
        error = _query_error(exc, "PARSE_SYNTAX_ERROR")
        if "';'" in error.message:
            # A statement follows the first one: that is not a syntax slip but a second
            # statement, which P7 refuses.
            raise _refuse(
                "Only a single query (SELECT ...) may be submitted; this text holds more "
                "than one statement.",
                "Submit exactly one SELECT statement (no trailing statements).",
            ) from None
        raise error from None
    _check_parsed(parsed)
    skip = jvm_constant(spark, "CommandExecutionMode.SKIP",
                        lambda jvm: jvm.org.apache.spark.sql.execution.CommandExecutionMode.SKIP())
    try:
        analyzed = state.executePlan(parsed, skip).analyzed()
        text = analyzed.toJSON()  # one reply, however large (sandbox.spark._QuickAckSocket)
    except (PySparkException, Py4JError) as exc:
        # Unknown and unreadable tables read exactly alike: Spark's own message.
        raise _query_error(exc, "ANALYSIS_ERROR") from None
    return AnalyzedQuery(jplan=analyzed, tree=parse_plan_json(text))
