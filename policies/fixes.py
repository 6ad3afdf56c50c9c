"""Mechanical fixes for some denials: the query rewritten as the suggestion says.

Only rewrites that keep the question the same are proposed:

- ``filter``: in threshold mode an aggregate's argument must be a bare column (P3); an
  aggregate over a one-branch ``CASE WHEN cond THEN x END`` (or ``if(cond, x, NULL)``) is
  the same aggregate of ``x`` with ``FILTER (WHERE cond)``.
- ``count_distinct``: a private or identifying column may only be counted distinct (P1);
  ``count(c.phone)`` becomes ``count(DISTINCT c.phone)``.
- ``segment_columns``: a segment job returns ``segment, member`` (P5); two output columns
  under other names are renamed.
- ``segment_kind``: an aggregate job that returns ``segment, member`` rows (P5) or uses
  ``segment_token()`` (P1) is a segment job.

This module only rewrites text (a small SQL tokenizer: no Spark). Every candidate must
then pass the policy itself before anyone is offered it (``jobs.service.fixes``): a
rewrite this tokenizer got wrong is never proposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# The explanation templates (policies/flow.py, policies/engine.py) that a fix answers.
P3_ARGUMENT = "In threshold mode an aggregate's argument over consumer data must be"
P1_USED_IN = "An identifying or private column is used in {clause}"
SEGMENT_COLUMNS = "A segment job must return exactly two columns: segment, member."
ROW_LEVEL = "The job reads consumer data but returns row-level output"
TOKEN_IN_AGGREGATE = "segment_token() may only be used in segment jobs."  # noqa: S105 - a message, not a password

AGGREGATES = {"sum", "avg", "mean", "count", "try_sum", "try_avg"}
# Aggregates where ELSE 0 changes nothing but the empty group's 0 (then NULL).
ZERO_NEUTRAL = {"sum", "try_sum"}
KEYWORDS = {
    "select", "from", "where", "group", "by", "having", "order", "limit", "join", "on",
    "as", "and", "or", "not", "case", "when", "then", "else", "end", "distinct", "union",
    "intersect", "except", "with", "in", "is", "null", "between", "like", "over", "filter",
    "inner", "left", "right", "full", "outer", "cross", "all", "asc", "desc",
}

_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<comment>--[^\n]*|/\*[\s\S]*?\*/)|(?P<string>'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<ident>`(?:[^`]|``)*`)|(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?[a-zA-Z]*|\.\d+)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[\s\S])"
)


@dataclass(frozen=True)
class Token:
    kind: str  # ws, comment, string, ident, number, word, punct
    text: str
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower()

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.lower in words


@dataclass(frozen=True)
class Candidate:
    """A rewritten job (``kind`` and ``sql``) and which fix made it."""

    code: str
    kind: str
    sql: str


def tokens(sql: str) -> list[Token]:
    return [Token(m.lastgroup or "punct", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sql)]


def _code(toks: list[Token]) -> list[int]:
    """Indexes of the tokens that are not white space or comments."""
    return [i for i, t in enumerate(toks) if t.kind not in ("ws", "comment")]


def _closing(toks: list[Token], code: list[int], at: int) -> int | None:
    """Position in ``code`` of the ``)`` matching the ``(`` at ``code[at]``."""
    depth = 0
    for pos in range(at, len(code)):
        text = toks[code[pos]].text
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                return pos
    return None


def _top_level(toks: list[Token], code: list[int], lo: int, hi: int) -> Iterator[int]:
    """Positions in ``code[lo:hi]`` at parenthesis depth 0 (relative to ``lo``)."""
    depth = 0
    for pos in range(lo, hi):
        text = toks[code[pos]].text
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0:
            yield pos


def _text(sql: str, toks: list[Token], code: list[int], lo: int, hi: int) -> str:
    """The source text of ``code[lo:hi]`` (inclusive of inner comments), stripped."""
    if lo >= hi:
        return ""
    return sql[toks[code[lo]].start:toks[code[hi - 1]].end].strip()


def _is_null(toks: list[Token], code: list[int], lo: int, hi: int) -> bool:
    return hi - lo == 1 and toks[code[lo]].is_word("null")


def _is_zero(toks: list[Token], code: list[int], lo: int, hi: int) -> bool:
    return hi - lo == 1 and toks[code[lo]].kind == "number" and re.fullmatch(
        r"0+(\.0*)?", toks[code[lo]].text) is not None


def _is_literal(toks: list[Token], code: list[int], lo: int, hi: int) -> bool:
    return hi - lo == 1 and toks[code[lo]].kind in ("number", "string")


def _case_parts(toks: list[Token], code: list[int], lo: int, hi: int):
    """``CASE WHEN c THEN x [ELSE e] END`` spanning exactly ``code[lo:hi]``, one branch:
    the (lo, hi) ranges of c, x and e (None without ELSE); else None."""
    if hi - lo < 5 or not toks[code[lo]].is_word("case") or not toks[code[hi - 1]].is_word("end"):
        return None
    if not toks[code[lo + 1]].is_word("when"):
        return None  # CASE x WHEN ...: a simple CASE compares values, not one condition
    marks: dict[str, list[int]] = {"when": [], "then": [], "else": []}
    level = 0  # nested CASE ... END at this parenthesis depth
    for pos in _top_level(toks, code, lo + 1, hi - 1):
        tok = toks[code[pos]]
        if tok.is_word("case"):
            level += 1
        elif tok.is_word("end"):
            level -= 1
        elif level == 0 and tok.is_word("when", "then", "else"):
            marks[tok.lower].append(pos)
    if marks["when"] != [lo + 1] or len(marks["then"]) != 1 or len(marks["else"]) > 1:
        return None
    then = marks["then"][0]
    cond = (lo + 2, then)
    if marks["else"]:
        value, other = (then + 1, marks["else"][0]), (marks["else"][0] + 1, hi - 1)
    else:
        value, other = (then + 1, hi - 1), None
    if cond[0] >= cond[1] or value[0] >= value[1] or (other and other[0] >= other[1]):
        return None
    return cond, value, other


def _if_parts(toks: list[Token], code: list[int], lo: int, hi: int):
    """``if(c, x, e)`` spanning exactly ``code[lo:hi]``: the ranges of c, x and e."""
    if hi - lo < 7 or not toks[code[lo]].is_word("if") or toks[code[lo + 1]].text != "(":
        return None
    close = _closing(toks, code, lo + 1)
    if close != hi - 1:
        return None
    commas = [p for p in _top_level(toks, code, lo + 2, hi - 1) if toks[code[p]].text == ","]
    if len(commas) != 2:
        return None
    return (lo + 2, commas[0]), (commas[0] + 1, commas[1]), (commas[1] + 1, hi - 1)


def case_to_filter(sql: str) -> str | None:
    """Every ``agg([DISTINCT] CASE WHEN c THEN x [ELSE NULL] END)`` (or ``if(c, x, NULL)``)
    as ``agg([DISTINCT] x) FILTER (WHERE c)``; None when there is none to rewrite."""
    toks = tokens(sql)
    code = _code(toks)
    edits: list[tuple[int, int, str]] = []
    pos = 0
    while pos < len(code) - 1:
        tok = toks[code[pos]]
        if not (tok.kind == "word" and tok.lower in AGGREGATES and toks[code[pos + 1]].text == "("):
            pos += 1
            continue
        close = _closing(toks, code, pos + 1)
        if close is None:
            break
        after = toks[code[close + 1]] if close + 1 < len(code) else None
        if after is not None and after.is_word("filter", "over"):
            pos = close + 1
            continue
        lo, hi = pos + 2, close
        distinct = lo < hi and toks[code[lo]].is_word("distinct")
        if distinct:
            lo += 1
        parts = _case_parts(toks, code, lo, hi) or _if_parts(toks, code, lo, hi)
        if parts is None:
            pos += 1
            continue
        cond, value, other = parts
        agg = tok.lower
        if other is not None and not _is_null(toks, code, *other):
            if not (_is_zero(toks, code, *other) and agg in ZERO_NEUTRAL and not distinct):
                pos += 1
                continue
        if agg == "count" and _is_literal(toks, code, *value) and not _is_null(toks, code, *value):
            if distinct:
                pos += 1
                continue
            argument = "*"
        else:
            argument = ("DISTINCT " if distinct else "") + _text(sql, toks, code, *value)
        condition = _text(sql, toks, code, *cond)
        edits.append((tok.start, toks[code[close]].end,
                      f"{tok.text}({argument}) FILTER (WHERE {condition})"))
        pos = close + 1
    return _apply(sql, edits)


def count_distinct(sql: str, columns: set[str]) -> str | None:
    """``count(col)`` of a bare column named in ``columns`` as ``count(DISTINCT col)``."""
    toks = tokens(sql)
    code = _code(toks)
    wanted = {c.lower() for c in columns}
    edits = []
    for pos in range(len(code) - 1):
        tok = toks[code[pos]]
        if not (tok.is_word("count") and toks[code[pos + 1]].text == "("):
            continue
        close = _closing(toks, code, pos + 1)
        if close is None:
            break
        inner = [toks[code[p]] for p in range(pos + 2, close)]
        if not inner or not _bare_column(inner) or _name(inner[-1]) not in wanted:
            continue
        edits.append((inner[0].start, inner[0].start, "DISTINCT "))
    return _apply(sql, edits)


def _bare_column(parts: list[Token]) -> bool:
    """``name`` or ``qualifier.name`` (each a word or a back-quoted name)."""
    if len(parts) % 2 == 0:
        return False
    for i, tok in enumerate(parts):
        if i % 2 == 0 and not (tok.kind == "ident" or (tok.kind == "word" and tok.lower not in KEYWORDS)):
            return False
        if i % 2 == 1 and tok.text != ".":
            return False
    return True


def _name(tok: Token) -> str:
    return (tok.text[1:-1].replace("``", "`") if tok.kind == "ident" else tok.text).lower()


def rename_outputs(sql: str, names: list[str]) -> str | None:
    """The final SELECT's output columns named ``names`` (as many as there are items),
    or None when the final SELECT cannot be found plainly (set operations, ``*``)."""
    toks = tokens(sql)
    code = _code(toks)
    top = list(_top_level(toks, code, 0, len(code)))
    if any(toks[code[p]].is_word("union", "intersect", "except", "minus") for p in top):
        return None
    selects = [p for p in top if toks[code[p]].is_word("select")]
    if not selects:
        return None
    start = selects[-1] + 1
    while start < len(code) and toks[code[start]].is_word("distinct", "all"):
        start += 1
    ends = [p for p in top if p >= start and toks[code[p]].is_word(
        "from", "where", "group", "having", "order", "limit", "window", "cluster", "sort")]
    end = ends[0] if ends else len(code)
    commas = [p for p in top if start <= p < end and toks[code[p]].text == ","]
    bounds = [start, *[c + 1 for c in commas]], [*commas, end]
    items = list(zip(*bounds, strict=True))
    if len(items) != len(names):
        return None
    edits = []
    for (lo, hi), name in zip(items, names, strict=True):
        if hi - lo < 1 or (toks[code[hi - 1]].text == "*"
                           and (hi - lo == 1 or toks[code[hi - 2]].text == ".")):
            return None  # * or t.*: how many columns is not known here
        last = toks[code[hi - 1]]
        before = toks[code[hi - 2]] if hi - lo >= 2 else None
        # ``expr AS name`` or ``expr name``: the name follows the end of an expression (a
        # closing parenthesis or END, a literal, a name that is not a keyword).
        named = last.kind in ("word", "ident") and before is not None and (
            before.is_word("as", "end", "null") or before.text == ")"
            or before.kind in ("string", "number", "ident")
            or (before.kind == "word" and before.lower not in KEYWORDS))
        if named and last.lower not in KEYWORDS:
            edits.append((last.start, last.end, name))
        else:
            edits.append((last.end, last.end, f" AS {name}"))
    return _apply(sql, edits)


def reorder_outputs(sql: str) -> str | None:
    """The final SELECT's two output items swapped (the member written first)."""
    toks = tokens(sql)
    code = _code(toks)
    top = list(_top_level(toks, code, 0, len(code)))
    selects = [p for p in top if toks[code[p]].is_word("select")]
    if not selects or any(toks[code[p]].is_word("union", "intersect", "except", "minus") for p in top):
        return None
    start = selects[-1] + 1
    while start < len(code) and toks[code[start]].is_word("distinct", "all"):
        start += 1
    ends = [p for p in top if p >= start and toks[code[p]].is_word(
        "from", "where", "group", "having", "order", "limit", "window", "cluster", "sort")]
    end = ends[0] if ends else len(code)
    commas = [p for p in top if start <= p < end and toks[code[p]].text == ","]
    if len(commas) != 1:
        return None
    first = _text(sql, toks, code, start, commas[0])
    second = _text(sql, toks, code, commas[0] + 1, end)
    if not first or not second:
        return None
    lo, hi = toks[code[start]].start, toks[code[end - 1]].end
    return sql[:lo] + second + ", " + first + sql[hi:]


def _apply(sql: str, edits: list[tuple[int, int, str]]) -> str | None:
    if not edits:
        return None
    out, at = [], 0
    for start, end, text in sorted(edits):
        out.append(sql[at:start])
        out.append(text)
        at = end
    out.append(sql[at:])
    rewritten = "".join(out)
    return rewritten if rewritten != sql else None


def _template(violation: dict, prefix: str) -> bool:
    text = violation.get("message_template") or violation.get("message") or ""
    return text.startswith(prefix)


def candidates(sql: str, kind: str, violations: list[dict]) -> list[Candidate]:
    """Rewrites of the job that may answer ``violations`` (each still to be checked)."""
    found: list[Candidate] = []
    if any(v.get("rule") == "P3" and _template(v, P3_ARGUMENT) for v in violations):
        rewritten = case_to_filter(sql)
        if rewritten:
            found.append(Candidate("filter", kind, rewritten))
    counted = {s.get("column", "") for v in violations if v.get("rule") == "P1"
               and _template(v, P1_USED_IN) for s in v.get("sources") or []}
    if counted:
        rewritten = count_distinct(sql, counted)
        if rewritten:
            found.append(Candidate("count_distinct", kind, rewritten))
    renamed = [sql]
    if kind == "segment" and any(v.get("rule") == "P5" and _template(v, SEGMENT_COLUMNS)
                                 for v in violations):
        renamed = _segment_shapes(sql)
        found.extend(Candidate("segment_columns", kind, s) for s in renamed)
    if kind == "aggregate" and any(
            (v.get("rule") == "P5" and _template(v, ROW_LEVEL))
            or (v.get("rule") == "P1" and _template(v, TOKEN_IN_AGGREGATE)) for v in violations):
        found.append(Candidate("segment_kind", "segment", sql))
        found.extend(Candidate("segment_kind", "segment", s) for s in _segment_shapes(sql))
    return found


def _segment_shapes(sql: str) -> list[str]:
    """The job's two outputs named segment and member, in the written order or swapped."""
    shapes = []
    for text in (sql, reorder_outputs(sql)):
        renamed = rename_outputs(text, ["segment", "member"]) if text else None
        if renamed and renamed not in shapes:
            shapes.append(renamed)
    return shapes
