"""What the query's own filters already guarantee about an aggregate's input column.

P3 counts, per aggregate value, the people whose input is non-null (and, for sums and
averages, non-zero). When every row reaching the final aggregation has already passed a
filter such as ``amount >= 10``, that count equals the row count, and computing it again
would make Spark expand the aggregation's input (a distinct count with a FILTER clause
cannot share the query's own distinct pass). This pass proves such facts from the
analyzed plan, conservatively: anything it does not recognise proves nothing.

Soundness rests on two properties of numeric casts: ``cast(0) = 0`` and
``cast(NULL) IS NULL``. So a filter on ``cast(x)`` that excludes zero (or NULL) excludes it
for ``x`` too, whatever the cast. Literals are used only when their cast is exact.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from policies.carry import output_ids
from policies.tree import Node

NOT_NULL = "not_null"
NON_ZERO = "non_zero"

_NUMERIC = re.compile(r"^(byte|short|integer|long|float|double|decimal\((\d+),(\d+)\))$")
_INTEGRAL = frozenset({"byte", "short", "integer", "long"})
# comparison -> the same comparison with its operands swapped
_MIRROR = {
    "GreaterThan": "LessThan", "GreaterThanOrEqual": "LessThanOrEqual",
    "LessThan": "GreaterThan", "LessThanOrEqual": "GreaterThanOrEqual",
    "EqualTo": "EqualTo", "EqualNullSafe": "EqualNullSafe",
}
# Nodes whose output rows are a subset of their child's, with the child's column values.
_ROW_SUBSET = frozenset({
    "SubqueryAlias", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail", "Window",
    "Distinct", "Deduplicate", "RepartitionByExpression", "Repartition",
})


def facts_about(plan: Node, expr_id: int) -> set[str]:
    """Facts (:data:`NOT_NULL`, :data:`NON_ZERO`) true of column ``expr_id`` in every row
    of ``plan``'s output."""
    return _facts(plan, expr_id, depth=0)


def argument_column(arg: Node) -> int | None:
    """The column an aggregate argument reads, if zero and NULL carry over exactly.

    A plain column, or a cast of one that maps non-zero to non-zero (integers to wider
    numbers, decimals to double or to a wider decimal).
    """
    if arg.cls == "AttributeReference":
        return arg.expr_id
    if arg.cls == "Cast" and arg.children and arg.children[0].cls == "AttributeReference":
        source = str(arg.children[0].fields.get("dataType", ""))
        target = str(arg.fields.get("dataType", ""))
        if source in _INTEGRAL and target in ("long", "double", "float"):
            return arg.children[0].expr_id
        if source.startswith("decimal(") and (target == "double" or _wider_decimal(source, target)):
            return arg.children[0].expr_id
    return None


def _wider_decimal(source: str, target: str) -> bool:
    s, t = _NUMERIC.match(source), _NUMERIC.match(target)
    if not (s and t and s.group(2) and t.group(2)):
        return False
    sp, ss, tp, ts = int(s.group(2)), int(s.group(3)), int(t.group(2)), int(t.group(3))
    return ts >= ss and tp - ts >= sp - ss


def _facts(node: Node, expr_id: int, depth: int) -> set[str]:
    if depth > 200:
        return set()
    cls = node.cls
    if cls == "Filter":
        found = set()
        for condition in node.exprs.get("condition", []):
            found |= _from_condition(condition, expr_id)
        return found | _facts(node.children[0], expr_id, depth + 1)
    if cls == "Project":
        for item in node.exprs.get("projectList", []):
            if item.expr_id != expr_id:
                continue
            if item.cls == "AttributeReference":
                return _facts(node.children[0], expr_id, depth + 1)
            if item.cls == "Alias" and item.children and item.children[0].cls == "AttributeReference":
                return _facts(node.children[0], item.children[0].expr_id, depth + 1)
        return set()
    if cls in _ROW_SUBSET and node.children:
        return _facts(node.children[0], expr_id, depth + 1)
    if cls == "Join" and len(node.children) == 2:
        return _join_facts(node, expr_id, depth)
    return set()


def _join_facts(node: Node, expr_id: int, depth: int) -> set[str]:
    join_type = str((node.fields.get("joinType") or {}).get("object", "")).rsplit(".", 1)[-1]
    join_type = join_type.rstrip("$")
    left, right = node.children
    side = 0 if expr_id in output_ids(left) else 1 if expr_id in output_ids(right) else None
    if side is None:
        return set()
    # Rows of the side the column comes from, unpadded, and (for these joins) only those
    # that met the join condition.
    conditioned = {("Inner", 0), ("Inner", 1), ("Cross", 0), ("Cross", 1), ("LeftSemi", 0)}
    kept = conditioned | {("LeftOuter", 0), ("RightOuter", 1), ("LeftAnti", 0)}
    if (join_type, side) not in kept:
        return set()
    found = _facts(node.children[side], expr_id, depth + 1)
    if (join_type, side) in conditioned:
        for condition in node.exprs.get("condition", []):
            found |= _from_condition(condition, expr_id)
    return found


def _conjuncts(condition: Node):
    stack = [condition]
    while stack:
        item = stack.pop()
        if item.cls == "And":
            stack.extend(item.children)
        else:
            yield item


def _from_condition(condition: Node, expr_id: int) -> set[str]:
    found: set[str] = set()
    for part in _conjuncts(condition):
        if part.cls == "IsNotNull" and _column_of(part.children[0]) == expr_id:
            found.add(NOT_NULL)
            continue
        if part.cls == "Not" and part.children and part.children[0].cls == "EqualTo":
            a, b = part.children[0].children
            if _column_of(a) == expr_id and _literal(b) == 0 or (
                    _column_of(b) == expr_id and _literal(a) == 0):
                found.add(NON_ZERO)  # x <> 0 holds only for non-null x as well
                found.add(NOT_NULL)
            continue
        if part.cls not in _MIRROR or len(part.children) != 2:
            continue
        a, b = part.children
        op = part.cls
        if _column_of(b) == expr_id:
            a, b, op = b, a, _MIRROR[op]
        if _column_of(a) != expr_id:
            continue
        value = _literal(b)
        if value is None:
            continue
        found.add(NOT_NULL)  # comparing with a non-null literal is true only for non-null x
        if (
            (op == "GreaterThan" and value >= 0)
            or (op == "GreaterThanOrEqual" and value > 0)
            or (op == "LessThan" and value <= 0)
            or (op == "LessThanOrEqual" and value < 0)
            or (op in ("EqualTo", "EqualNullSafe") and value != 0)
        ):
            found.add(NON_ZERO)
    return found


def _column_of(expr: Node) -> int | None:
    """The column under any chain of numeric casts (zero and NULL survive every one)."""
    while expr.cls == "Cast" and expr.children and _NUMERIC.match(str(expr.fields.get("dataType", ""))):
        expr = expr.children[0]
    if expr.cls == "AttributeReference" and _NUMERIC.match(str(expr.fields.get("dataType", ""))):
        return expr.expr_id
    return None


def _literal(expr: Node) -> Decimal | None:
    """A non-null numeric literal's exact value, through casts that keep it exact."""
    casts = []
    while expr.cls == "Cast" and expr.children:
        casts.append(str(expr.fields.get("dataType", "")))
        expr = expr.children[0]
    if expr.cls != "Literal" or not _NUMERIC.match(str(expr.fields.get("dataType", ""))):
        return None
    raw = expr.fields.get("value")
    if raw is None:
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    for target in casts:
        if not _exact_in(value, target):
            return None
    return value


def _exact_in(value: Decimal, target: str) -> bool:
    match = _NUMERIC.match(target)
    if not match:
        return False
    if target in _INTEGRAL:
        return value == value.to_integral_value()
    if target in ("float", "double"):
        return float(value) == value
    precision, scale = int(match.group(2)), int(match.group(3))
    step = Decimal(1).scaleb(-scale)
    if value.quantize(step) != value:
        return False  # the cast would round it
    return abs(value) < Decimal(10) ** (precision - scale)
