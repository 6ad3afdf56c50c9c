"""Words the pages show for the system's codes (states, kinds, roles, classes, release
modes, error classes), and policy explanations in the reader's language.

The codes stay in the page as data attributes (tests and scripts read them); people read
these labels. Every label is a literal ``lazy_gettext`` call so that extraction finds it.
"""

from __future__ import annotations

import logging
from typing import Any

from flask_babel import gettext, lazy_gettext

log = logging.getLogger(__name__)

LABELS: dict[str, dict[str, Any]] = {
    "state": {
        "queued": lazy_gettext("queued"),
        "running": lazy_gettext("running"),
        "blocked": lazy_gettext("blocked"),
        "failed": lazy_gettext("failed"),
        "cancelled": lazy_gettext("cancelled"),
        "awaiting_approval": lazy_gettext("awaiting approval"),
        "approved": lazy_gettext("approved"),
        "rejected": lazy_gettext("rejected"),
        "expired": lazy_gettext("expired"),
    },
    "kind": {
        "aggregate": lazy_gettext("aggregate"),
        "segment": lazy_gettext("segment"),
    },
    "role": {
        "admin": lazy_gettext("administrator"),
        "auditor": lazy_gettext("auditor"),
        "merchant": lazy_gettext("merchant"),
        "provider": lazy_gettext("service provider"),
    },
    "tenant_kind": {
        "platform": lazy_gettext("platform"),
        "merchant": lazy_gettext("merchant"),
        "provider": lazy_gettext("service provider"),
    },
    "class": {
        "identifier": lazy_gettext("identifier"),
        "private": lazy_gettext("private"),
        "quasi": lazy_gettext("quasi"),
        "public": lazy_gettext("public"),
        "own": lazy_gettext("own data"),
    },
    "check": {
        "allow": lazy_gettext("checked: allowed"),
        "deny": lazy_gettext("checked: denied"),
        "error": lazy_gettext("checked: SQL error"),
    },
    "fix": {
        "filter": lazy_gettext("Move each condition into FILTER (WHERE …) and aggregate the "
                               "column itself"),
        "count_distinct": lazy_gettext("Count the column's distinct values: count(DISTINCT …)"),
        "segment_columns": lazy_gettext("Name the two output columns segment and member"),
        "segment_kind": lazy_gettext("Submit it as a segment job"),
    },
    "release": {
        "dp": lazy_gettext("differential privacy"),
        "threshold": lazy_gettext("minimum group size"),
    },
    "type": {
        "string": lazy_gettext("text"),
        "int": lazy_gettext("integer"),
        "bigint": lazy_gettext("large integer"),
        "double": lazy_gettext("decimal number"),
        "date": lazy_gettext("date"),
        "timestamp": lazy_gettext("date and time"),
        "boolean": lazy_gettext("yes/no"),
    },
    "encoding": {
        "utf-8": lazy_gettext("UTF-8"),
        "gb18030": lazy_gettext("GBK / GB18030"),
    },
    "error": {
        "ParseException": lazy_gettext("SQL syntax error"),
        "AnalysisException": lazy_gettext("Unknown table or column"),
        "SyntaxError": lazy_gettext("SQL syntax error"),
        "NameError": lazy_gettext("Unknown table or column"),
        "Timeout": lazy_gettext("The job took too long"),
        "MemoryLimit": lazy_gettext("The job used too much memory"),
        "Cancelled": lazy_gettext("The job was cancelled"),
        "InternalError": lazy_gettext("Internal error"),
    },
}


# Axis and legend titles of the template charts (jobs/templates), for the reader.
CHART_TITLES: dict[str, Any] = {
    "segment": lazy_gettext("segment"),
    "members": lazy_gettext("members"),
    "store": lazy_gettext("store"),
    "points expiring": lazy_gettext("points expiring"),
    "within": lazy_gettext("within"),
    "tier": lazy_gettext("tier"),
    "spend": lazy_gettext("spend"),
    "channel": lazy_gettext("channel"),
    "also bought at": lazy_gettext("also bought at"),
    "members of": lazy_gettext("members of"),
    "share": lazy_gettext("share"),
    "count": lazy_gettext("count"),
}


def translate_chart(spec: Any) -> Any:
    """A Vega-Lite spec with its known axis and legend titles in the reader's language
    (the data and field names stay as they are)."""
    if isinstance(spec, dict):
        out = {}
        for key, value in spec.items():
            if key == "title" and isinstance(value, str) and value in CHART_TITLES:
                out[key] = str(CHART_TITLES[value])
            elif key in ("data", "datasets"):
                out[key] = value  # rows: never rewritten
            else:
                out[key] = translate_chart(value)
        return out
    if isinstance(spec, list):
        return [translate_chart(v) for v in spec]
    return spec


# Words the policy engine puts into its explanations as parameters (where in the query,
# what combines consumers, why a count fails), for the reader. Names (columns, datasets,
# functions) are not here: they stay as they are.
PHRASES: dict[str, Any] = {
    # where an identifying or private column is used (policies/flow.py, P1)
    "a SELECT expression": lazy_gettext("a SELECT expression"),
    "a WHERE or HAVING condition": lazy_gettext("a WHERE or HAVING condition"),
    "a repartitioning expression": lazy_gettext("a repartitioning expression"),
    "a generator": lazy_gettext("a generator"),
    "a set operation (UNION/INTERSECT/EXCEPT)": lazy_gettext("a set operation (UNION/INTERSECT/EXCEPT)"),
    "ROLLUP, CUBE or GROUPING SETS": lazy_gettext("ROLLUP, CUBE or GROUPING SETS"),
    "a join key that is not an identifier joined to another dataset's column":
        lazy_gettext("a join key that is not an identifier joined to another dataset's column"),
    "a join condition": lazy_gettext("a join condition"),
    "a GROUP BY key of released rows": lazy_gettext("a GROUP BY key of released rows"),
    "a GROUP BY key": lazy_gettext("a GROUP BY key"),
    "a GROUP BY expression": lazy_gettext("a GROUP BY expression"),
    "an aggregate's argument or FILTER": lazy_gettext("an aggregate's argument or FILTER"),
    "a window's PARTITION BY": lazy_gettext("a window's PARTITION BY"),
    "a window's ORDER BY": lazy_gettext("a window's ORDER BY"),
    "a window function": lazy_gettext("a window function"),
    # what combines consumers below the release step (P4)
    "A SELECT DISTINCT": lazy_gettext("A SELECT DISTINCT"),
    "An aggregation": lazy_gettext("An aggregation"),
    # dp mode's unsupported aggregate (P2)
    "count(DISTINCT) of a column other than the consumer":
        lazy_gettext("count(DISTINCT) of a column other than the consumer"),
    # forbidden features (P7)
    "a user-defined function": lazy_gettext("a user-defined function"),
    "a table-valued function (read_files, range, ...)":
        lazy_gettext("a table-valued function (read_files, range, ...)"),
    "SQL scripting": lazy_gettext("SQL scripting"),
    # why consumers cannot be counted (policies/carry.py, P3)
    "its entity column is not in the table": lazy_gettext("its entity column is not in the table"),
    "it is read on the right side of a semi/anti join":
        lazy_gettext("it is read on the right side of a semi/anti join"),
    "an inner GROUP BY does not keep it": lazy_gettext("an inner GROUP BY does not keep it"),
    "an inner SELECT DISTINCT does not keep it": lazy_gettext("an inner SELECT DISTINCT does not keep it"),
    "a generator drops it": lazy_gettext("a generator drops it"),
    # why a function that can still fail is refused over consumer data (policies/failures.py, P8)
    'its pattern is not a literal regular expression that compiles': lazy_gettext('its pattern is not a literal regular expression that compiles'),
    'its pattern and group index are not literals the pattern has': lazy_gettext('its pattern and group index are not literals the pattern has'),
    'its pattern is not a literal with valid escapes': lazy_gettext('its pattern is not a literal with valid escapes'),
    "its format is not a literal of Spark's datetime pattern letters": lazy_gettext("its format is not a literal of Spark's datetime pattern letters"),
    'its arguments are not literals': lazy_gettext('its arguments are not literals'),
    'its index is 0': lazy_gettext('its index is 0'),
    'its start is 0 or its length negative': lazy_gettext('its start is 0 or its length negative'),
    'its charset is not a literal Spark knows': lazy_gettext('its charset is not a literal Spark knows'),
    'its time zone is not a known literal': lazy_gettext('its time zone is not a known literal'),
    'its time zones are not known literals': lazy_gettext('its time zones are not known literals'),
    'its amount is not a literal of reasonable size': lazy_gettext('its amount is not a literal of reasonable size'),
    'its replacement characters are not single literals': lazy_gettext('its replacement characters are not single literals'),
    'its pattern, format or index is not a literal': lazy_gettext('its pattern, format or index is not a literal'),
    'its keys are not distinct literals': lazy_gettext('its keys are not distinct literals'),
    'it can fail on the values it is given': lazy_gettext('it can fail on the values it is given'),
    'it can fail for the literal arguments it is given': lazy_gettext('it can fail for the literal arguments it is given'),
    'its interval is not a literal of reasonable size': lazy_gettext('its interval is not a literal of reasonable size'),
    'it casts a value that is not a small whole-number literal to an interval':
        lazy_gettext('it casts a value that is not a small whole-number literal to an interval'),
    'it casts an interval to a type it may not fit': lazy_gettext('it casts an interval to a type it may not fit'),
    'it computes with intervals, which overflow on some values':
        lazy_gettext('it computes with intervals, which overflow on some values'),
    'it builds a value inside a lambda, where its size multiplies':
        lazy_gettext('it builds a value inside a lambda, where its size multiplies'),
}


def _phrases(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the engine's known phrases in the reader's language."""
    return {k: str(PHRASES[v]) if isinstance(v, str) and v in PHRASES else v
            for k, v in (params or {}).items()}


def label(group: str, code: Any) -> str:
    """The reader's word for ``code`` in ``group``; the code itself when there is none.

    Errors go by Spark's error classes too: PARSE_SYNTAX_ERROR is a syntax error,
    UNRESOLVED_COLUMN.*, TABLE_OR_VIEW_NOT_FOUND and the like are unknown names.
    """
    if code is None:
        return ""
    if group == "error" and str(code) not in LABELS["error"]:
        text = str(code)
        if "PARSE" in text or "SYNTAX" in text:
            code = "ParseException"
        elif any(w in text for w in ("UNRESOLVED", "NOT_FOUND", "CANNOT_RESOLVE")):
            code = "AnalysisException"
    found = LABELS.get(group, {}).get(str(code))
    return str(found) if found is not None else str(code)


def _formatted(template: str, params: dict[str, Any], fallback: str) -> str:
    """``template`` translated and filled with ``params``; ``fallback`` when that fails."""
    if not template:
        return fallback
    try:
        return gettext(template).format(**(params or {}))
    except (KeyError, IndexError, ValueError) as exc:
        # A catalog entry naming a parameter the engine did not send: show the English.
        log.warning("violation template cannot be formatted (%s)", type(exc).__name__)
        return fallback


def violation_text(violation: dict[str, Any]) -> dict[str, str]:
    """A violation's message and suggestion in the reader's language.

    Violations carry the English templates they were formatted from and their parameters;
    the catalog translates the template, and the English message is the fallback.
    """
    params = _phrases(violation.get("params") or {})
    return {
        "message": _formatted(violation.get("message_template") or "", params,
                              violation.get("message") or ""),
        "suggestion": _formatted(violation.get("suggestion_template") or "", params,
                                 violation.get("suggestion") or ""),
    }


def translated_violations(violations: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Each violation with ``message`` and ``suggestion`` in the reader's language."""
    return [{**v, **violation_text(v)} for v in (violations or [])]
