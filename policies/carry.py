"""Find (or make room for) each consumer dataset's entity column at the final aggregation.

P3 counts distinct entities per released row, so the final aggregation's input must still
hold the entity column of every consumer dataset it draws on. Where a Project dropped it,
the enforced plan adds it back (that never changes which rows exist). Where a DISTINCT,
an aggregation not grouped by it, a UNION or a semi join dropped it, it cannot come back:
the job is denied with an explanation of how to keep it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies import functions as fn
from policies.lineage import _relation_name
from policies.tree import Node
from yushan.catalog import DatasetInfo


@dataclass
class CarryPlan:
    """Entity attribute ids at the final aggregation's input, and the Projects to widen."""

    entities: dict[str, int] = field(default_factory=dict)  # dataset -> expression id
    # path of a Project/Aggregate (from the plan root) -> expression ids to add to it
    additions: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (dataset, why)
    # entity ids known equal through inner equi-joins: counted once
    equal: list[tuple[int, int]] = field(default_factory=list)


def output_ids(node: Node) -> list[int]:
    cls = node.cls
    if cls == "Project":
        return [e.expr_id for e in node.exprs.get("projectList", [])]
    if cls == "Aggregate":
        return [e.expr_id for e in node.exprs.get("aggregateExpressions", [])]
    if cls in ("LogicalRelation", "CTERelationRef", "LocalRelation", "Expand", "Range"):
        return [e.expr_id for e in node.exprs.get("output", [])]
    if cls == "Join":
        join_type = str((node.fields.get("joinType") or {}).get("object", ""))
        left = output_ids(node.children[0])
        if "LeftSemi" in join_type or "LeftAnti" in join_type:
            return left
        return left + output_ids(node.children[1])
    if cls == "Window":
        return output_ids(node.children[0]) + [
            e.expr_id for e in node.exprs.get("windowExpressions", [])
        ]
    if cls == "Generate":
        return output_ids(node.children[0]) + [
            e.expr_id for e in node.exprs.get("generatorOutput", [])
        ]
    if cls == "WithCTE":
        return output_ids(node.children[-1])
    if node.children:
        return output_ids(node.children[0])
    return []


def _aliases(node: Node) -> dict[int, int]:
    """Project/Aggregate outputs that are a plain renaming: source id -> output id."""
    key = "projectList" if node.cls == "Project" else "aggregateExpressions"
    renamed = {}
    for e in node.exprs.get(key, []):
        if e.cls == "Alias" and e.children and e.children[0].cls == "AttributeReference":
            renamed.setdefault(e.children[0].expr_id, e.expr_id)
        elif e.cls == "AttributeReference":
            renamed.setdefault(e.expr_id, e.expr_id)
    return renamed


class _Carrier:
    def __init__(self, datasets: dict[str, DatasetInfo], plan: CarryPlan):
        self.datasets = datasets
        self.plan = plan

    def carry(self, node: Node, path: tuple[int, ...]) -> dict[str, tuple[int, bool]]:
        """Entity ids available in ``node``'s output: dataset -> (id, added by us)."""
        cls = node.cls
        if cls == "LogicalRelation":
            ds = self.datasets.get(_relation_name(node) or "")
            if ds is None or not ds.is_consumer_data or not ds.entity_column:
                return {}
            for attr in node.exprs.get("output", []):
                if attr.name.lower() == ds.entity_column.lower():
                    return {ds.full_name: (attr.expr_id, False)}
            self.plan.problems.append((ds.full_name, "its entity column is not in the table"))
            return {}
        found = [self.carry(child, path + (i,)) for i, child in enumerate(node.children)]
        if cls == "Join":
            join_type = str((node.fields.get("joinType") or {}).get("object", ""))
            if ("LeftSemi" in join_type or "LeftAnti" in join_type) and len(found) > 1:
                for ds in found[1]:
                    self._problem(ds, "it is read on the right side of a semi/anti join")
                found = found[:1]
            if "Inner" in join_type:
                self._record_equalities(node, found)
            merged: dict[str, tuple[int, bool]] = {}
            for f in found:
                merged.update(f)
            return merged
        if cls in fn.PASS_THROUGH or cls == "Window":
            return found[0] if found else {}
        if cls == "Project":
            outputs = set(output_ids(node))
            renamed = _aliases(node)
            result = {}
            for ds, (ident, added) in found[0].items():
                if ident in renamed:
                    result[ds] = (renamed[ident], added)
                elif ident in outputs:
                    result[ds] = (ident, added)
                else:
                    self.plan.additions.setdefault(path, []).append(ident)
                    result[ds] = (ident, True)
            return result
        if cls == "Aggregate":
            groups = {e.expr_id for e in node.exprs.get("groupingExpressions", [])
                      if e.cls == "AttributeReference"}
            renamed = _aliases(node)
            result = {}
            for ds, (ident, added) in found[0].items():
                if ident not in groups and not added:
                    # grouped by an entity an inner equi-join made equal to this one
                    # (o.user_id = c.user_id ... GROUP BY o.user_id): the same consumer
                    twin = next((b if a == ident else a for a, b in self.plan.equal
                                 if ident in (a, b) and (b if a == ident else a) in groups), None)
                    if twin is not None:
                        if twin in renamed:
                            result[ds] = (renamed[twin], False)
                        else:
                            self.plan.additions.setdefault(path, []).append(twin)
                            result[ds] = (twin, True)
                        continue
                if ident not in groups or added:
                    self._problem(ds, "an inner GROUP BY does not keep it")
                elif ident in renamed:
                    result[ds] = (renamed[ident], False)
                else:
                    self.plan.additions.setdefault(path, []).append(ident)
                    result[ds] = (ident, True)
            return result
        if cls in ("Distinct", "Deduplicate"):
            result = {}
            for ds, (ident, added) in found[0].items():
                if added:
                    self._problem(ds, "an inner SELECT DISTINCT does not keep it")
                else:
                    result[ds] = (ident, False)
            return result
        if cls == "Generate":
            dropped = node.fields.get("unrequiredChildIndex")
            if dropped not in (None, [], "[]"):
                for ds in found[0]:
                    self._problem(ds, "a generator drops it")
                return {}
            return found[0]
        if cls == "SubqueryAlias" or cls == "View":
            return found[0] if found else {}
        if cls == "CTERelationRef":
            return {}  # handled by the caller through the definition (see below)
        for f in found:
            for ds in f:
                self._problem(ds, f"a {cls} does not keep it")
        return {}

    def _problem(self, ds: str, why: str) -> None:
        self.plan.problems.append((ds, why))

    def _record_equalities(self, join: Node, found: list[dict[str, tuple[int, bool]]]) -> None:
        ids = {ident for f in found for ident, _ in f.values()}
        for cond in join.exprs.get("condition", []):
            for n in cond.walk():
                if n.cls == "EqualTo" and len(n.children) == 2:
                    a, b = n.children
                    if a.cls == b.cls == "AttributeReference" and a.expr_id in ids and b.expr_id in ids:
                        self.plan.equal.append((a.expr_id, b.expr_id))
            # Only conjunctions of equalities keep rows equal; OR would not.
            if any(n.cls in ("Or", "Not") for n in cond.walk()):
                self.plan.equal.clear()


def plan_carry(final_child: Node, child_path: tuple[int, ...], datasets: dict[str, DatasetInfo],
               cte_defs: dict[int, Node]) -> CarryPlan:
    """Work out how each consumer dataset's entity reaches the final aggregation's input."""
    plan = CarryPlan()
    if _has_cte_ref(final_child):
        # CTE references are resolved by the definition's own output; the enforced plan
        # cannot widen a shared definition, so the entity must already be selected there.
        inline = _inline_ctes(final_child, cte_defs)
        found = _Carrier(datasets, plan).carry(inline, child_path)
        if plan.additions:
            plan.problems.extend(
                (ds, "a WITH (CTE) definition does not select it") for ds in found
            )
            plan.additions.clear()
            return plan
    else:
        found = _Carrier(datasets, plan).carry(final_child, child_path)
    plan.entities = {ds: ident for ds, (ident, _) in found.items()}
    return plan


def _has_cte_ref(node: Node) -> bool:
    return node.cls == "CTERelationRef" or any(_has_cte_ref(c) for c in node.children)


def _inline_ctes(node: Node, defs: dict[int, Node]) -> Node:
    """A copy of ``node`` with each CTE reference replaced by its definition, its output
    renamed to the reference's ids (positions match)."""
    if node.cls == "CTERelationRef":
        definition = defs.get(int(node.fields.get("cteId", -1)))
        if definition is None:
            return node
        body = _inline_ctes(definition.children[0], defs)
        ref_ids = [a.expr_id for a in node.exprs.get("output", [])]
        def_ids = output_ids(body)
        rename = Node("Project", "x.plans.logical.Project", {}, [body])
        rename.exprs["projectList"] = [
            _alias(def_id, ref_id) for def_id, ref_id in zip(def_ids, ref_ids, strict=False)
        ]
        return rename
    copy = Node(node.cls, node.full_cls, node.fields, [], node.exprs, node.subplan)
    copy.children = [_inline_ctes(c, defs) for c in node.children]
    return copy


def _alias(source_id: int, new_id: int) -> Node:
    attr = Node("AttributeReference", "x.AttributeReference", {"exprId": {"id": source_id}})
    return Node("Alias", "x.Alias", {"exprId": {"id": new_id}}, [attr])
