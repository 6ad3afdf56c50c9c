"""Spark's analyzed plan as a Python tree, built once from ``LogicalPlan.toJSON()``.

Spark serialises a tree as a pre-order list of nodes, each with ``num-children``; fields
that hold expressions (or a subquery's plan) are nested lists in the same format. We turn
that into :class:`Node` objects so that the policy passes walk plain Python data and never
call back into the JVM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PLAN_PACKAGE = ".plans.logical."


@dataclass(eq=False)
class Node:
    """One plan node or expression: its Spark class, raw fields and children."""

    cls: str  # short class name, e.g. "Project", "AttributeReference", "Complete$"
    full_cls: str
    fields: dict[str, Any]
    children: list[Node] = field(default_factory=list)
    # Expression fields of a plan node (``projectList``, ``condition`` ...), parsed.
    exprs: dict[str, list[Node]] = field(default_factory=dict)
    # A subquery expression's plan (ScalarSubquery, Exists, ListQuery ...), parsed.
    subplan: Node | None = None

    @property
    def is_plan(self) -> bool:
        return PLAN_PACKAGE in self.full_cls

    def child(self, name: str) -> Node | None:
        """The child that field ``name`` points at (fields hold child indexes)."""
        index = self.fields.get(name)
        if isinstance(index, int) and 0 <= index < len(self.children):
            return self.children[index]
        return None

    @property
    def expr_id(self) -> int | None:
        ident = self.fields.get("exprId")
        return ident.get("id") if isinstance(ident, dict) else None

    @property
    def name(self) -> str:
        return str(self.fields.get("name", ""))

    def all_exprs(self) -> Iterator[Node]:
        for exprs in self.exprs.values():
            yield from exprs

    def walk(self) -> Iterator[Node]:
        """This expression and all its sub-expressions (not into subquery plans)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


def _is_tree(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "class" in value[0]


def _is_tree_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, list) for v in value)
        and any(_is_tree(v) for v in value)
    )


def _build(flat: list[dict], pos: int) -> tuple[Node, int]:
    raw = flat[pos]
    full_cls = str(raw.get("class") or raw.get("object") or "?")
    node = Node(cls=full_cls.rsplit(".", 1)[-1], full_cls=full_cls, fields={})
    for key, value in raw.items():
        if key in ("class", "num-children"):
            continue
        if key == "plan" and _is_tree(value):
            node.subplan = build_tree(value)
        elif _is_tree(value):
            node.exprs[key] = [build_tree(value)]
        elif _is_tree_list(value):
            node.exprs[key] = [build_tree(v) for v in value if _is_tree(v)]
        else:
            node.fields[key] = value
    pos += 1
    for _ in range(int(raw.get("num-children", 0))):
        child, pos = _build(flat, pos)
        node.children.append(child)
    return node, pos


def build_tree(flat: list[dict]) -> Node:
    """Build the tree of one serialised plan or expression."""
    node, _ = _build(flat, 0)
    return node


def parse_plan_json(text: str) -> Node:
    return build_tree(json.loads(text))
