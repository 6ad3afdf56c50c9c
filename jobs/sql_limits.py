"""Size, nesting and node-count limits on a query's text, checked before Spark parses it.

Spark's parser and analyser recurse over the query: 5,000 nested parentheses end in a
``StackOverflowError`` inside the JVM, and an expression of tens of thousands of terms
costs seconds of parsing in the shared web process. A lexer that knows SQL's strings,
quoted identifiers and comments counts the tokens (a bound on the parse tree's nodes) and
the deepest parenthesis nesting, in linear time, so such text is refused with a clear
message before it reaches the JVM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SQL_BYTES = 100 * 1024
MAX_SQL_DEPTH = 64  # nested parentheses (subqueries, calls, expressions)
MAX_SQL_TOKENS = 5_000  # words, literals, operators and punctuation

_TOKEN = re.compile(
    r"""
      '(?:[^'\\]|\\.|'')*'?          # string literal (an unclosed one runs to the end)
    | "(?:[^"\\]|\\.|"")*"?          # string literal or quoted identifier
    | `(?:[^`]|``)*`?                # back-quoted identifier
    | --[^\n]*                       # line comment
    | /\*.*?(?:\*/|\Z)               # block comment
    | [A-Za-z0-9_.$]+                # word, number, qualified name
    | \S                             # any other character: an operator or punctuation
    """,
    re.X | re.S,
)


@dataclass(frozen=True)
class SqlShapeProblem:
    """Why a query's text is refused: ``status`` 413 (too large) or 422 (too complex)."""

    status: int
    code: str
    message: str


def sql_shape_problem(sql: str) -> SqlShapeProblem | None:
    """The first limit ``sql`` exceeds, or None when Spark may parse it."""
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > MAX_SQL_BYTES:
        return SqlShapeProblem(413, "too_large", f"The SQL is larger than {MAX_SQL_BYTES // 1024} KB.")
    depth = deepest = tokens = 0
    for found in _TOKEN.finditer(sql):
        text = found.group()
        if text.startswith("--") or text.startswith("/*"):
            continue
        tokens += 1
        if tokens > MAX_SQL_TOKENS:
            return SqlShapeProblem(
                422, "sql_too_complex",
                f"The SQL has more than {MAX_SQL_TOKENS} tokens (words, values and "
                "operators); split the query or simplify it.",
            )
        if text == "(":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_SQL_DEPTH:
                    return SqlShapeProblem(
                        422, "sql_too_deep",
                        f"The SQL nests parentheses deeper than {MAX_SQL_DEPTH} levels.",
                    )
        elif text == ")":
            depth = max(0, depth - 1)
    return None
