"""Lineage over the analyzed plan: which source columns every attribute depends on, and how.

One pass, bottom-up, over the Python tree of the analyzed plan. Every plan node returns
its output attributes (expression id, name, lineage); expressions are evaluated against
the children's outputs. Along the way the pass records what the rules need: relations
read (and whether inside a subquery expression), comparisons of identifying columns with
literals (P6), forbidden or unknown features (P7), and the aggregates of the final
aggregation (P1/P2/P3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from policies import functions as fn
from policies.model import (
    EMPTY,
    OWN,
    QUASI,
    SENSITIVE,
    Lineage,
    Mode,
    Source,
    Violation,
    sorted_sources,
    sources_in,
    with_mode,
)
from policies.tree import Node
from yushan.catalog import DatasetInfo

Output = tuple[int, str, Lineage]  # (expression id, name, lineage)


@dataclass
class RelationUse:
    dataset: DatasetInfo
    node: Node
    in_subquery: bool


@dataclass
class FinalAggregation:
    """The aggregation whose rows are released (P3 is enforced right above it)."""

    node: Node
    path: tuple[int, ...]  # child indexes from the root
    above: list[Node]  # post-processing nodes between the root and it
    aggregates: list[tuple[int, tuple[int, ...], Node]] = field(default_factory=list)
    # (index in aggregateExpressions, child path inside it, the AggregateExpression)


@dataclass
class Ctx:
    where: str  # output column or clause, for explanations
    final: bool = False  # evaluating the final aggregation's expressions
    at_or_above_final: bool = False
    agg_index: int = -1
    path: tuple[int, ...] = ()


def find_final(root: Node) -> tuple[FinalAggregation | None, Node | None]:
    """Walk down the root's post-processing to the final aggregation.

    Returns (final, blocker): the final Aggregate/Distinct, or the first node that is
    neither post-processing nor an aggregation (a Join, Union, relation ...).
    """
    node, path, above = root, (), []
    while True:
        if node.cls == "WithCTE":
            index = len(node.children) - 1
        elif node.cls in ("Aggregate", "Distinct"):
            return FinalAggregation(node, path, above), None
        elif node.cls in fn.POST_PROCESSING and len(node.children) == 1:
            index = 0
        else:
            return None, node
        above.append(node)
        path += (index,)
        node = node.children[index]


def _relation_name(node: Node) -> str | None:
    table = node.fields.get("catalogTable")
    if not isinstance(table, dict):
        return None
    ident = table.get("identifier") or {}
    database, name = ident.get("database"), ident.get("table")
    if not database or not name:
        return None
    return f"{database}.{name}".lower()


class Lineages:
    """The lineage pass. Construct, then :meth:`run`; results are attributes."""

    def __init__(
        self,
        datasets: Mapping[str, DatasetInfo],
        merchant: str,
        final: FinalAggregation | None,
        is_platform_token: Callable[[Node], bool],
    ):
        self.datasets = {k.lower(): v for k, v in datasets.items()}
        self.merchant = merchant
        self.final = final
        self.is_platform_token = is_platform_token
        self.violations: list[Violation] = []
        self.relations: list[RelationUse] = []
        # What the job reads, for the audit trail: each dataset it scans, and each column
        # of it that some expression, or the result, refers to (what Spark's column pruning
        # would read; a column a subquery selects but nothing uses above still counts).
        self.columns_read: set[tuple[str, str]] = set()
        self.datasets_read: set[str] = set()
        self._referenced: set[int] = set()
        self._scanned: list[tuple[str, list[tuple[int | None, str]]]] = []
        self.expand_over_consumer = False
        self._depth = 0
        self._cte: dict[int, list[Output]] = {}
        self._seen: set[tuple[str, str, str]] = set()
        self._common: list[Lineage] = []

    # -- bookkeeping ----------------------------------------------------------------------

    def deny(self, rule: str, where: str, sources, message: str, suggestion: str,
             **params) -> None:
        """Record a violation; ``message`` and ``suggestion`` are templates formatted with
        ``params`` (names, never data values), kept for translation (P9)."""
        text = message.format(**params) if params else message
        hint = suggestion.format(**params) if params else suggestion
        key = (rule, where, text)
        if key in self._seen:
            return
        self._seen.add(key)
        self.violations.append(
            Violation(rule, where, sorted_sources(set(sources)), text, hint,
                      message_template=message, suggestion_template=suggestion,
                      params=dict(params))
        )

    def _consumer_relations_since(self, start: int) -> list[RelationUse]:
        return [r for r in self.relations[start:] if r.dataset.is_consumer_data]

    # -- plan nodes -----------------------------------------------------------------------

    def run(self, root: Node) -> list[Output]:
        outputs = self.visit(root, {}, ())
        self._refer(outputs)
        self.datasets_read = {name for name, _ in self._scanned}
        self.columns_read = {
            (name, column) for name, attributes in self._scanned
            for ident, column in attributes if ident in self._referenced
        }
        return outputs

    def _refer(self, outputs: list[Output]) -> None:
        """Columns consumed whole (a result, a set operation's inputs, DISTINCT's keys)."""
        self._referenced.update(ident for ident, _, _ in outputs)

    def visit(self, node: Node, outer: dict[int, Lineage], path: tuple[int, ...]) -> list[Output]:
        cls = node.cls
        is_final = self.final is not None and node is self.final.node
        above_final = (
            self.final is not None and self._depth == 0 and any(node is n for n in self.final.above)
        )
        if cls == "WithCTE":
            for i, child in enumerate(node.children[:-1]):
                self.visit(child, outer, path + (i,))
            last = len(node.children) - 1
            return self.visit(node.children[last], outer, path + (last,))
        if cls == "CTERelationDef":
            outputs = self.visit(node.children[0], outer, path + (0,))
            self._cte[int(node.fields.get("id", -1))] = outputs
            return outputs
        child_outputs = [
            self.visit(child, outer, path + (i,)) for i, child in enumerate(node.children)
        ]
        env: dict[int, Lineage] = dict(outer)
        for outputs in child_outputs:
            env.update({ident: lin for ident, _, lin in outputs})
        ctx = Ctx(where="(query)", at_or_above_final=above_final or is_final, path=path)

        if cls not in fn.PLAN_NODES:
            feature = fn.FORBIDDEN.get(cls)
            self.deny(
                "P7", "(query)", (),
                "{feature} is not allowed in a job."
                if feature else "The plan operation {operation} is not supported by the policy engine.",
                "Rewrite the query with SELECT, JOIN, WHERE, GROUP BY, HAVING, ORDER BY, "
                "window functions and subqueries.",
                **({"feature": feature} if feature else {"operation": cls}),
            )
            return [o for outputs in child_outputs for o in outputs]

        if cls == "LogicalRelation":
            return self._relation(node)
        if cls in ("LocalRelation", "Range"):
            return [(a.expr_id, a.name, EMPTY) for a in node.exprs.get("output", [])]
        if cls == "OneRowRelation":
            return []
        if cls == "CTERelationRef":
            defined = self._cte.get(int(node.fields.get("cteId", -1)), [])
            attrs = node.exprs.get("output", [])
            self._refer(defined)
            return [
                (a.expr_id, a.name, defined[i][2] if i < len(defined) else EMPTY)
                for i, a in enumerate(attrs)
            ]
        if cls in fn.PASS_THROUGH:
            for key, exprs in node.exprs.items():
                clause = {"condition": "WHERE/HAVING", "order": "ORDER BY"}.get(key, key)
                for e in exprs:
                    self.eval(e, env, Ctx(clause, at_or_above_final=ctx.at_or_above_final))
            return child_outputs[0] if child_outputs else []
        if cls == "Project":
            return [
                (e.expr_id, e.name, self.eval(e, env, Ctx(e.name, at_or_above_final=ctx.at_or_above_final)))
                for e in node.exprs.get("projectList", [])
            ]
        if cls == "Join":
            for e in node.exprs.get("condition", []):
                self.eval(e, env, Ctx("JOIN ON"))
            join_type = str((node.fields.get("joinType") or {}).get("object", ""))
            if "LeftSemi" in join_type or "LeftAnti" in join_type:
                return child_outputs[0]
            return child_outputs[0] + child_outputs[1]
        if cls in ("Union", "Intersect", "Except"):
            for outputs in child_outputs:
                self._refer(outputs)
            first = child_outputs[0]
            merged = []
            for i, (ident, name, lin) in enumerate(first):
                for other in child_outputs[1:]:
                    if i < len(other):
                        lin = lin | other[i][2]
                merged.append((ident, name, lin))
            return merged
        if cls in ("Distinct", "Deduplicate"):
            outputs = child_outputs[0]
            self._refer(outputs)
            if is_final:
                outputs = [(i, n, with_mode(lin, Mode.KEY)) for i, n, lin in outputs]
            return outputs
        if cls == "Aggregate":
            return self._aggregate(node, env, is_final, ctx)
        if cls == "Window":
            for key in ("partitionSpec", "orderSpec"):
                for e in node.exprs.get(key, []):
                    self.eval(e, env, Ctx("PARTITION BY/ORDER BY", at_or_above_final=ctx.at_or_above_final))
            extra = [
                (e.expr_id, e.name, self.eval(e, env, Ctx(e.name, at_or_above_final=ctx.at_or_above_final)))
                for e in node.exprs.get("windowExpressions", [])
            ]
            return child_outputs[0] + extra
        if cls == "Generate":
            generated = EMPTY
            for e in node.exprs.get("generator", []):
                generated = generated | self.eval(e, env, Ctx("LATERAL VIEW"))
            dropped = set(_int_list(node.fields.get("unrequiredChildIndex")))
            kept = [o for i, o in enumerate(child_outputs[0]) if i not in dropped]
            return kept + [(a.expr_id, a.name, generated) for a in node.exprs.get("generatorOutput", [])]
        if cls == "Expand":
            everything = EMPTY
            for outputs in child_outputs:
                self._refer(outputs)
                for _, _, lin in outputs:
                    everything = everything | lin
            if any(s.consumer for s, _ in everything):
                self.expand_over_consumer = True
            return [(a.expr_id, a.name, everything) for a in node.exprs.get("output", [])]
        # Listed in PLAN_NODES but without a rule of its own: deny rather than guess.
        self.deny("P7", "(query)", (), "The plan operation {operation} is not supported by the policy engine.",
                  "Rewrite the query without it.", operation=cls)
        return [o for outputs in child_outputs for o in outputs]

    def _relation(self, node: Node) -> list[Output]:
        name = _relation_name(node)
        ds = self.datasets.get(name) if name else None
        if ds is None:
            # Closed world: only tables of the installed catalog are known.
            self.deny("P7", "(query)", (), "The query reads a relation that is not in the catalog.",
                      "Read only the datasets listed in the catalog.")
            return [(a.expr_id, a.name, EMPTY) for a in node.exprs.get("output", [])]
        self.relations.append(RelationUse(ds, node, self._depth > 0))
        self._scanned.append((ds.full_name, [(a.expr_id, a.name) for a in node.exprs.get("output", [])]))
        outputs = []
        for attr in node.exprs.get("output", []):
            col = ds.column(attr.name)
            if ds.owner == self.merchant:
                cls = OWN
            elif col is not None:
                cls = col.column_class
            else:
                cls = "private"  # a column the registry does not describe: most restrictive
            source = Source(ds.full_name, attr.name, cls, ds.is_platform and ds.is_consumer_data)
            outputs.append((attr.expr_id, attr.name, frozenset({(source, Mode.RAW)})))
        return outputs

    def _aggregate(self, node: Node, env: dict[int, Lineage], is_final: bool, ctx: Ctx) -> list[Output]:
        for e in node.exprs.get("groupingExpressions", []):
            self.eval(e, env, Ctx("GROUP BY", at_or_above_final=is_final))
        outputs = []
        for i, e in enumerate(node.exprs.get("aggregateExpressions", [])):
            sub = Ctx(e.name, final=is_final, at_or_above_final=is_final, agg_index=i)
            lin = self.eval(e, env, sub)
            if is_final:
                # Outside aggregate functions only group keys can appear (Spark checks it).
                lin = with_mode(lin, Mode.KEY)
            outputs.append((e.expr_id, e.name, lin))
        return outputs

    # -- expressions ----------------------------------------------------------------------

    def eval(self, e: Node, env: dict[int, Lineage], ctx: Ctx, path: tuple[int, ...] = ()) -> Lineage:
        cls = e.cls
        if cls == "AttributeReference":
            return self._attribute(e, env, ctx)
        if cls == "Literal":
            return EMPTY
        if cls == "OuterReference":
            # A leaf: the outer attribute is a field, not a child.
            inner = e.exprs.get("e", [])
            return self.eval(inner[0], env, ctx) if inner else self._union(e, env, ctx, path)
        if cls == "With":
            # Common sub-expressions (BETWEEN ...): references carry their definitions'
            # lineage (Spark does not serialise the ids that pair them, so all of them).
            defs = EMPTY
            for i, child in enumerate(e.children[1:], start=1):
                defs = defs | self.eval(child, env, ctx, path + (i,))
            self._common.append(defs)
            try:
                return defs | (self.eval(e.children[0], env, ctx, path + (0,)) if e.children else EMPTY)
            finally:
                self._common.pop()
        if cls == "CommonExpressionRef":
            return self._common[-1] if self._common else EMPTY
        if cls == "AggregateExpression":
            return self._aggregate_expression(e, env, ctx, path)
        if cls in ("ScalarSubquery", "Exists", "ListQuery", "LateralSubquery"):
            return self._subquery(e, env, ctx, path)
        if cls == "SQLScalarFunction" and self.is_platform_token(e):
            return with_mode(self._union(e, env, ctx, path), Mode.TOKEN)
        if cls in fn.HIGHER_ORDER:
            return self._higher_order(e, env, ctx, path)
        if cls == "WindowSpecDefinition":
            return self._window_spec(e, env, ctx, path)
        if cls in fn.FORBIDDEN:
            self.deny("P7", ctx.where, (), "{feature} is not allowed in a job.",
                      "Remove it; only built-in functions and the platform's segment_token() "
                      "may be called.", feature=fn.FORBIDDEN[cls])
            return self._union(e, env, ctx, path)
        known = (
            cls in fn.SCALAR or cls in fn.STRUCTURAL or cls in fn.COMPARISONS
            or cls in fn.GENERATORS or cls in fn.WINDOW_FUNCTIONS
            or cls in fn.ALLOWED_AGGREGATES or cls in fn.OTHER_KNOWN_AGGREGATES
        )
        if not known:
            self.deny("P7", ctx.where, (), "The function {function} is not supported by the policy engine.",
                      "Use a supported built-in function instead.", function=cls)
        if cls in fn.COMPARISONS:
            lins = [self.eval(c, env, ctx, path + (i,)) for i, c in enumerate(e.children)]
            out = EMPTY
            for lin in lins:
                out = out | lin
            return out
        return self._union(e, env, ctx, path)

    def _union(self, e: Node, env, ctx: Ctx, path: tuple[int, ...]) -> Lineage:
        out = EMPTY
        for i, child in enumerate(e.children):
            out = out | self.eval(child, env, ctx, path + (i,))
        return out

    def _attribute(self, e: Node, env: dict[int, Lineage], ctx: Ctx) -> Lineage:
        meta = e.fields.get("metadata")
        if e.name == "_metadata" or (isinstance(meta, dict) and "__metadata_col" in meta):
            self.deny("P7", ctx.where, (), "The _metadata column is not allowed in a job.",
                      "Remove it; file metadata is not part of any dataset.")
            return EMPTY
        ident = e.expr_id
        if ident in env:
            self._referenced.add(ident)
            return env[ident]
        self.deny("P7", ctx.where, (), "The policy engine could not trace the column {column}.",
                  "Simplify the query so that every column comes from a dataset in the catalog.",
                  column=e.name)
        return EMPTY

    def _aggregate_expression(self, e: Node, env, ctx: Ctx, path) -> Lineage:
        function = e.children[0]
        name = function.cls
        inputs = EMPTY
        for i, child in enumerate(function.children):
            inputs = inputs | self.eval(child, env, ctx, path + (0, i))
        for i, child in enumerate(e.children[1:], start=1):
            inputs = inputs | self.eval(child, env, ctx, path + (i,))
        consumer = any(s.consumer for s, _ in inputs)
        if ctx.final:
            self.final.aggregates.append((ctx.agg_index, path, e))
        if name in fn.COUNT_AGGREGATES:
            return with_mode(inputs, Mode.COUNT, (Mode.RAW, Mode.KEY))
        if name in fn.VALUE_AGGREGATES:
            if not ctx.final:
                return inputs
            return with_mode(inputs, Mode.AGG)
        if name not in fn.OTHER_KNOWN_AGGREGATES:
            self.deny("P2", ctx.where, {s for s, _ in inputs},
                      "The aggregate {function} is not on the allow-list.",
                      "Use count, count(DISTINCT), sum, avg, stddev, variance or "
                      "approx_count_distinct.", function=name)
        elif consumer and (ctx.final or ctx.at_or_above_final):
            self.deny(
                "P2", ctx.where, {s for s, _ in inputs if s.consumer},
                "{function} returns an individual's value; it is not allowed on "
                "consumer data.",
                "Use an allowed aggregate: count, count(DISTINCT), sum, avg, stddev, variance "
                "or approx_count_distinct (for example avg(amount) instead of max(amount)).",
                function=_agg_label(name),
            )
        return inputs

    def _subquery(self, e: Node, env, ctx: Ctx, path) -> Lineage:
        start = len(self.relations)
        self._depth += 1
        try:
            outputs = self.visit(e.subplan, env, ()) if e.subplan is not None else []
        finally:
            self._depth -= 1
        self._refer(outputs)  # IN (subquery) compares whole rows
        out = self._union(e, env, ctx, path)
        for _, _, lin in outputs:
            out = out | lin
        consumer = self._consumer_relations_since(start)
        if consumer and ctx.at_or_above_final:
            self.deny(
                "P3", ctx.where,
                {Source(r.dataset.full_name, r.dataset.entity_column or "", "identifier", True)
                 for r in consumer},
                "A subquery over consumer data decides or shapes released rows, but its "
                "value is not held to the k-threshold.",
                "Join the consumer dataset into the main aggregation instead of using a "
                "subquery in SELECT, HAVING or ORDER BY.",
            )
        return out

    def _window_spec(self, e: Node, env, ctx: Ctx, path) -> Lineage:
        """PARTITION BY only groups rows (like counting them); ORDER BY and the frame
        reveal order, so they flow in as values."""
        partition = set(_int_list(e.fields.get("partitionSpec")))
        out = EMPTY
        for i, child in enumerate(e.children):
            lin = self.eval(child, env, ctx, path + (i,))
            out = out | (with_mode(lin, Mode.COUNT) if i in partition else lin)
        return out

    def _higher_order(self, e: Node, env, ctx: Ctx, path) -> Lineage:
        args = EMPTY
        for i, child in enumerate(e.children):
            if child.cls != "LambdaFunction":
                args = args | self.eval(child, env, ctx, path + (i,))
        scoped = dict(env)
        for child in e.children:
            if child.cls == "LambdaFunction":
                for n in child.walk():
                    if n.cls == "NamedLambdaVariable" and n.expr_id is not None:
                        scoped[n.expr_id] = args
        out = args
        for i, child in enumerate(e.children):
            if child.cls == "LambdaFunction":
                out = out | self._lambda(child, scoped, ctx, path + (i,))
        return out

    def _lambda(self, e: Node, env, ctx, path) -> Lineage:
        out = EMPTY
        for i, child in enumerate(e.children):
            if child.cls == "NamedLambdaVariable":
                out = out | env.get(child.expr_id, EMPTY)
            else:
                out = out | self.eval(child, env, ctx, path + (i,))
        return out


def _int_list(value) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int)]
    if isinstance(value, str):
        return [int(v) for v in value.strip("[]").split(",") if v.strip().isdigit()]
    return []


def _agg_label(name: str) -> str:
    return {
        "Average": "avg", "Sum": "sum", "Min": "min", "Max": "max", "First": "first",
        "Last": "last", "CollectList": "collect_list", "CollectSet": "collect_set",
        "StddevSamp": "stddev", "VarianceSamp": "variance", "MaxBy": "max_by",
        "MinBy": "min_by", "Percentile": "percentile", "Median": "median", "Mode": "mode",
        "AnyValue": "any_value", "ListAgg": "string_agg/listagg",
    }.get(name, name)


def quasi_raw(lin: Lineage) -> set[Source]:
    return {s for s, m in lin if s.consumer and s.column_class == QUASI and m == Mode.RAW}


def sensitive(lin: Lineage, *modes: Mode) -> set[Source]:
    return {s for s in sources_in(lin, *modes) if s.column_class in SENSITIVE}
