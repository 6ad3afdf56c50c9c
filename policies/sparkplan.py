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

from policies.functions import FORBIDDEN_FUNCTION_NAMES
from policies.jvm import jvm_constant
from policies.model import Violation
from policies.planjson import plan_json
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


def _refuse(message: str, suggestion: str, column: str = "(query)", **params) -> PlanRefused:
    """A P7 refusal; ``message`` and ``suggestion`` are templates filled with ``params``
    (names only), kept for translation (P9)."""
    return PlanRefused(Violation(
        "P7", column, (), message.format(**params), suggestion.format(**params),
        message_template=message, suggestion_template=suggestion, params=dict(params)))


def _spark_message(exc: Exception) -> str:
    """Spark's own message, without the plan dump it appends."""
    getter = getattr(exc, "getMessage", None)
    java = getattr(exc, "java_exception", None)  # a Py4JJavaError pyspark did not convert
    if not callable(getter) and java is not None:
        getter = getattr(java, "getMessage", None)
    text = getter() if callable(getter) else str(exc)
    text = str(text).split("\n", 1)[0].strip()
    return text.removesuffix(";").strip()


_NODE_LINE = re.compile(r"^[\s:|+\-]*'?([A-Za-z_$][A-Za-z0-9_$]*)")


def _parsed_node_names(text: str, jplan: Any) -> list[str]:
    """Class names of every node of the parsed plan, from its tree string ``text``.

    Each node is one line of Spark's tree string, starting with its name. Text from the
    query (a multi-line string literal) can only add lines, never hide a node, so at
    worst it causes a refusal.
    """
    names = []
    for line in text.splitlines():
        match = _NODE_LINE.match(line)
        if match:
            names.append(match.group(1))
    top = jplan.getClass().getSimpleName()
    return [top, *names]


_RELATION = re.compile(r"unresolvedrelation \[([^\]]*)\]")


def _may_name_forbidden(text: str) -> bool:
    """Whether the tree string could hold a removed function or a query on a file: only
    then is the parsed plan read whole (one more JVM reply). A false alarm costs time."""
    lower = text.lower()
    if any(name in lower for name in FORBIDDEN_FUNCTION_NAMES):
        return True
    for found in _RELATION.finditer(lower):
        parts = found.group(1)
        if any(ch in parts for ch in "/:`\\") or parts.split(",")[0].strip() in FILE_SOURCES:
            return True
    return False


def _check_parsed(jplan: Any, spark: SparkSession | None = None) -> None:
    text = str(jplan.treeString())
    for name in _parsed_node_names(text, jplan):
        if name in PARSED_QUERY_NODES:
            continue
        feature = FEATURE_NAMES.get(name)
        if feature:
            raise _refuse(
                "{feature} is not allowed in a job.",
                "Submit a single SELECT query over the datasets listed in the catalog.",
                feature=feature,
            )
        raise _refuse(
            "Only a single query (SELECT ...) may be submitted; this statement is a "
            "{statement} (commands, DDL and DML are not allowed).",
            "Submit one SELECT query; settings, tables and functions are managed by the "
            "platform.",
            statement=name,
        )
    if _may_name_forbidden(text):
        _check_parsed_names(jplan, spark)


# Short names of Spark's file data sources: `SELECT * FROM parquet.`/path`` reads a file.
FILE_SOURCES = frozenset({
    "parquet", "orc", "json", "csv", "text", "avro", "binaryfile", "xml", "jdbc", "delta",
    "hive", "libsvm", "image", "noop", "console", "kafka", "socket", "rate",
})


def _parts(value: Any) -> list[str]:
    """``"[a, b]"`` (how Spark's JSON writes a name's parts) as ``["a", "b"]``."""
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_parsed_names(jplan: Any, spark: SparkSession | None = None) -> None:
    """Refuse, by name, the functions the platform removed and queries on files (P7).

    The hardened session has no such functions and reads no files, so Spark would only
    report an unknown name; the submitter is told instead that the feature is forbidden.
    """
    import json

    try:
        document = json.loads(plan_json(spark, jplan) if spark is not None else jplan.toJSON())
    except Exception:  # noqa: BLE001 - a parsed plan Spark cannot write: nothing to name
        return
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        stack.extend(item.values())
        cls = str(item.get("class", "")).rsplit(".", 1)[-1]
        if cls == "UnresolvedFunction":
            name = (_parts(item.get("nameParts")) or [""])[-1].strip("`").lower()
            if name in FORBIDDEN_FUNCTION_NAMES:
                raise _refuse(
                    "The function {function} is not allowed in a job.",
                    "Remove {function}(...); jobs may call Spark's built-in data functions "
                    "only.",
                    column=name, function=FORBIDDEN_FUNCTION_NAMES[name],
                )
        elif cls == "UnresolvedRelation":
            parts = _parts(item.get("multipartIdentifier"))
            if len(parts) >= 2 and (parts[0].strip("`").lower() in FILE_SOURCES
                                    or any("/" in p or ":" in p for p in parts)):
                raise _refuse(
                    "Queries on files are not allowed in a job.",
                    "Read the datasets listed in the catalog (platform.<name> or "
                    "<merchant>.<name>) instead of a file path.",
                )


_TRAILING_SEPARATOR = re.compile(r";\s*(?:--[^\n]*(?:\n|$)\s*|/\*.*?\*/\s*)*$", re.S)


def _second_statement(spark_parser: Any, sql: str, position: dict | None) -> bool:
    """Whether a syntax error is in fact a second statement after a complete first one.

    Spark stops at the first token after ``statement ;``; the text before it is then a
    complete query ending with a semicolon (comments aside).
    """
    if not position or "line" not in position:
        return False
    lines = sql.split("\n")
    line, column = position["line"], position["column"]
    if not 1 <= line <= len(lines):
        return False
    offset = sum(len(text) + 1 for text in lines[: line - 1]) + column
    prefix = sql[:offset]
    if not _TRAILING_SEPARATOR.search(prefix):
        return False
    try:
        spark_parser.parsePlan(prefix)
    except Exception:  # noqa: BLE001 - the first part is not a statement either
        return False
    return True


def _is_scripting(exc: Exception) -> bool:
    """Spark refuses BEGIN ... END (scripting is off) with its own, unconverted exception."""
    text = str(getattr(exc, "java_exception", "") or "") + str(exc)
    return "SqlScriptingException" in text or "SQL_SCRIPTING" in text


def _make_active(spark: SparkSession) -> None:
    """Make ``spark`` the active session of the JVM thread that parses and analyses.

    Spark's parser reads its settings from the thread's active session (``SQLConf.get``):
    on a py4j thread with none it falls back to Spark's defaults, and ``1 / 0`` would be
    parsed with ANSI semantics (an error, not NULL: a P8 channel) whatever this session says.
    """
    session_class = jvm_constant(spark, "SparkSession",
                                 lambda jvm: jvm.org.apache.spark.sql.SparkSession)
    session_class.setActiveSession(spark._jsparkSession)


def parse_query(spark: SparkSession, sql: str) -> Any:
    """The parsed plan of ``sql`` if it is one plain query: the single gate every job's
    text passes before Spark sees it in any other way (nothing is run or analysed here).

    Raises :class:`PlanRefused` (P7) for commands, scripts, several statements, removed
    functions and queries on files, and :class:`QueryError` for a syntax error.
    """
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    _make_active(spark)
    parser = spark._jsparkSession.sessionState().sqlParser()
    try:
        parsed = parser.parsePlan(sql)
    except (PySparkException, Py4JError) as exc:
        if _is_scripting(exc):
            raise _refuse(
                "SQL scripting (BEGIN ... END) is not allowed in a job.",
                "Submit exactly one SELECT statement.",
            ) from None
        error = _query_error(exc, "PARSE_SYNTAX_ERROR")
        if _second_statement(parser, sql, error.position):
            raise _refuse(
                "Only a single query (SELECT ...) may be submitted; this text holds more "
                "than one statement.",
                "Submit exactly one SELECT statement (no trailing statements).",
            ) from None
        raise error from None
    _check_parsed(parsed, spark)
    return parsed


def analyze(spark: SparkSession, sql: str) -> AnalyzedQuery:
    """Parse through :func:`parse_query`, then analyse without running anything."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    parsed = parse_query(spark, sql)
    state = spark._jsparkSession.sessionState()
    skip = jvm_constant(spark, "CommandExecutionMode.SKIP",
                        lambda jvm: jvm.org.apache.spark.sql.execution.CommandExecutionMode.SKIP())
    try:
        analyzed = state.executePlan(parsed, skip).analyzed()
        text = plan_json(spark, analyzed)  # one reply, however large (sandbox.spark._QuickAckSocket)
    except (PySparkException, Py4JError) as exc:
        # Unknown and unreadable tables read exactly alike: Spark's own message.
        raise _query_error(exc, "ANALYSIS_ERROR") from None
    return AnalyzedQuery(jplan=analyzed, tree=parse_plan_json(text))
