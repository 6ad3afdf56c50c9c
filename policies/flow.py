"""The privacy unit's data flow over the analyzed plan (policy contract v2: P1, P3, P4, P6).

Every row derived from platform consumer data belongs to one unit (one consumer). This pass
walks the analyzed plan bottom-up and knows, for every attribute, whether it carries an
identifier or private value (always bare: no function may touch one), whether it depends on
consumer data, whether it holds the unit's entity, and which declared per-consumer bounds
cover it; for every relation, whether its rows are consumer rows. It then denies:

* **P1** an identifier or private column anywhere but its allowed positions: passed through
  bare, a bare key of an equi-join between two relations, a bare GROUP BY key of a per-unit
  aggregation (identifiers only), ``count(DISTINCT col)``, ``segment_token(entity)``;
* **P4** consumer data moving between units below the release step: aggregations and
  DISTINCT that do not keep the entity, windows not partitioned by it, joins of two
  consumer relations whose resolved keys do not equate their entities, set operations,
  subqueries that read consumer data;
* **P6** generators fed by consumer data below the release step;
* **P3** (threshold mode) an aggregate argument over consumer data that is not a bare
  column, a CAST of one, or a constant;
* in ``dp`` mode, aggregates the mechanism does not support, and sums without bounds.

Decisions are made on expression ids and Spark's resolved join keys, never on names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from policies.failures import (
    MAY_FAIL,
    RegexGroups,
    python_regex_groups,
    why_unsafe,
    why_unsafe_shape,
)
from policies.lineage import _int_list
from policies.model import PRIVATE, SENSITIVE, Source, Violation, sorted_sources
from policies.tree import Node
from yushan.catalog import DatasetInfo

UNIQUE_LINK_COLUMNS = frozenset({"phone_hash"})  # onboarding.schema.HEX64_COLUMNS, unique at upload
SUBQUERIES = ("ScalarSubquery", "Exists", "ListQuery", "LateralSubquery")
DP_SUMS = frozenset({"Sum", "Average", "TrySum", "TryAverage"})
@dataclass(frozen=True)
class Attr:
    """What the pass knows about one attribute (by expression id)."""

    sens: frozenset[Source] = frozenset()  # identifier/private values, carried bare
    consumer: bool = False  # depends on platform consumer data
    entity: bool = False  # holds the unit's entity value
    linked: bool = False  # a merchant value joined to one consumer by an identifier key
    token: bool = False  # segment_token(entity)
    bounds: tuple[float, float] | None = None  # hull of declared per-consumer bounds
    # a function of columns of one-row-per-consumer datasets (or of literals only): as a
    # group key it puts each consumer in exactly one group
    one_group: bool = False
    member_key: bool = False  # the member key of one of the merchant's datasets
    unique_link: bool = False  # a merchant column whose values are distinct (phone_hash)
    column: bool = False  # a dataset's column, unchanged (not a literal or an expression)
    # a dataset's column, or a plain per-consumer aggregate of plain values (sum(amount)
    # GROUP BY user_id): nothing computed that could weight one consumer (threshold P3)
    plain: bool = False
    # on the side an outer join pads with NULLs: a NULL here is no consumer's, so the
    # value still joins like the entity (NULL meets nothing) but may not group, partition
    # or count consumers (every unmatched row would share one NULL "consumer")
    padded: bool = False
    # a value of rows joined or generated onto consumer rows, several per consumer: a
    # condition comparing it with consumer data decides how many rows a consumer weighs
    multiplied: bool = False

    @property
    def unit(self) -> bool:
        """The entity, on rows that all have one (not the padded side of an outer join)."""
        return self.entity and not self.padded


@dataclass
class Rel:
    """A plan node's output: its attributes, and whether its rows are consumer rows."""

    attrs: list[tuple[int, str, Attr]]
    consumer: bool = False  # rows belong to units (consumer data below the release step)
    reads_consumer: bool = False  # any consumer dataset below, released or not

    def ids(self) -> set[int]:
        return {i for i, _, _ in self.attrs}


@dataclass
class DpAggregate:
    """One aggregate of the release step in dp mode, as the mechanism will compute it."""

    index: int  # position in the final aggregation's aggregateExpressions walk order
    function: str  # "count" | "count_units" | "sum" | "avg"
    bounds: tuple[float, float] | None  # sum/avg: the per-consumer clamp
    column: str  # the output column it feeds (for explanations and accuracy)
    same_as: int | None = None  # an earlier aggregate computing exactly the same value


@dataclass
class FlowResult:
    violations: list[Violation] = field(default_factory=list)
    outputs: list[tuple[int, str, Attr]] = field(default_factory=list)
    dp_aggregates: list[DpAggregate] = field(default_factory=list)
    grouped: bool = False  # the release step has GROUP BY keys
    one_group_keys: bool = True  # every release group key puts a consumer in one group


def _bare(e: Node) -> Node | None:
    """The attribute ``e`` is, when it is one (possibly under an Alias)."""
    if e.cls == "AttributeReference":
        return e
    if e.cls == "Alias" and len(e.children) == 1 and e.children[0].cls == "AttributeReference":
        return e.children[0]
    return None


def _string_cast(e: Node) -> Node | None:
    """The attribute of ``alias(cast(attr AS string))``, when ``e`` is one."""
    if e.cls != "Alias" or len(e.children) != 1:
        return None
    cast = e.children[0]
    if cast.cls != "Cast" or len(cast.children) != 1 or cast.children[0].cls != "AttributeReference":
        return None
    return cast.children[0] if cast.fields.get("dataType") == "string" else None


def signature(e: Node) -> tuple:
    """A structural key of an expression: equal for the same computation on the same
    columns (ignores result ids), so a repeated aggregate is measured once."""
    if e.cls == "AttributeReference":
        return ("attr", e.expr_id)
    fields = tuple(sorted((k, repr(v)) for k, v in e.fields.items()
                          if k not in ("resultId", "exprId", "qualifier", "name")))
    return (e.cls, fields, tuple(signature(c) for c in e.children))


def _literal_number(e: Node) -> float | None:
    while e.cls == "Cast" and len(e.children) == 1:
        e = e.children[0]
    if e.cls != "Literal":
        return None
    try:
        value = float(e.fields.get("value"))
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def declared_clamp(e: Node) -> tuple[Node, tuple[float, float]] | None:
    """``least(greatest(x, lo), hi)`` (or the same the other way round) with literal bounds:
    the clamped expression and the bounds the query declares for it."""
    while e.cls in ("Cast", "Alias") and len(e.children) == 1:
        e = e.children[0]
    if e.cls not in ("Least", "Greatest") or len(e.children) != 2:
        return None
    inner_cls = "Greatest" if e.cls == "Least" else "Least"
    inner, outer_bound = e.children
    if inner.cls != inner_cls:
        inner, outer_bound = outer_bound, inner
    if inner.cls != inner_cls or len(inner.children) != 2:
        return None
    x, inner_bound = inner.children
    if _literal_number(inner_bound) is None:
        x, inner_bound = inner_bound, x
    a, b = _literal_number(inner_bound), _literal_number(outer_bound)
    if a is None or b is None:
        return None
    lo, hi = (a, b) if e.cls == "Least" else (b, a)
    if lo > hi:
        return None
    return x, (lo, hi)


def _bare_or_cast(e: Node) -> Node | None:
    while e.cls in ("Cast", "Alias") and len(e.children) == 1:
        e = e.children[0]
    return e if e.cls == "AttributeReference" else None


def _conjuncts(e: Node) -> Iterator[Node]:
    if e.cls == "And":
        for c in e.children:
            yield from _conjuncts(c)
    else:
        yield e


def _hull(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


PLAIN_AGGREGATES = frozenset({"Sum", "Count", "Average", "Min", "Max", "First", "Last",
                              "AnyValue", "TrySum", "TryAverage"})


def _plain_aggregate(e: Node, env: dict[int, Attr]) -> bool:
    """``e`` is ``[CAST](agg(x))`` with ``x`` a plain column or a literal: a per-consumer
    value that weights no one beyond that consumer's own rows."""
    inner = e.children[0] if e.cls == "Alias" and e.children else e
    while inner.cls == "Cast" and inner.children:
        inner = inner.children[0]
    if inner.cls == "WindowExpression" and inner.children:
        inner = inner.children[0]
    if inner.cls != "AggregateExpression" or not inner.children:
        return False
    if len(inner.children) > 1:
        return False  # FILTER (WHERE ...): a condition, like a CASE, can single one out
    function = inner.children[0]
    if function.cls not in PLAIN_AGGREGATES:
        return False
    for arg in function.children:
        if arg.cls == "Literal":
            continue
        ref = _bare_or_cast(arg)
        fact = env.get(ref.expr_id) if ref is not None else None
        if ref is None or (fact is not None and fact.consumer and not fact.plain):
            return False
    return True


def _unpadded(attrs: list[tuple[int, str, Attr]], padded: bool) -> list[tuple[int, str, Attr]]:
    """The attributes of a side an outer join may pad with NULLs: ``padded`` (a NULL entity
    would gather every unmatched row, of many consumers, as one: see :attr:`Attr.unit`),
    no longer a member key or a unique link (NULLs repeat)."""
    if not padded:
        return attrs
    return [(i, n, replace(f, padded=True, member_key=False, unique_link=False))
            for i, n, f in attrs]


def _join_type(node: Node) -> str:
    return str((node.fields.get("joinType") or {}).get("object", node.fields.get("joinType", "")))


def _relation_name(node: Node) -> str | None:
    table = node.fields.get("catalogTable")
    if not isinstance(table, dict):
        return None
    ident = table.get("identifier") or {}
    if not ident.get("database") or not ident.get("table"):
        return None
    return f"{ident['database']}.{ident['table']}".lower()


def release_mode(root: Node, datasets: Mapping[str, DatasetInfo]) -> str | None:
    """"dp" if any consumer dataset the plan reads is in dp mode, "threshold" if all are in
    threshold mode, None when the plan reads no consumer data."""
    modes = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node.cls == "LogicalRelation":
            ds = datasets.get(_relation_name(node) or "")
            if ds is not None and ds.is_platform and ds.is_consumer_data:
                modes.add(ds.release_mode or "dp")
        stack.extend(node.children)
        if node.subplan is not None:
            stack.append(node.subplan)
        for exprs in node.exprs.values():
            for e in exprs:
                stack.extend(n.subplan for n in e.walk() if n.subplan is not None)
    if not modes:
        return None
    return "dp" if "dp" in modes else "threshold"


class Flow:
    """The pass. ``Flow(...).run(root)`` -> :class:`FlowResult`."""

    def __init__(self, datasets: Mapping[str, DatasetInfo], merchant: str, final,
                 release: str | None, is_platform_token: Callable[[Node], bool],
                 regex_groups: RegexGroups | None = None):
        self.datasets = {k.lower(): v for k, v in datasets.items()}
        self.merchant = merchant
        self.final = final  # policies.lineage.FinalAggregation or None
        self.release = release
        self.is_platform_token = is_platform_token
        self.result = FlowResult()
        self._seen: set[tuple[str, str, str]] = set()
        self._cte: dict[int, Rel] = {}
        self._subquery_depth = 0
        self._common: list[Attr] = []
        self._dp_signatures: dict[tuple, int] = {}
        self._token_position = False  # inside segment_token(...) AS x of a SELECT list
        self._consumer_ctx = False  # the node being judged reads consumer data
        self._lambda_depth = 0  # inside how many lambda bodies the expression being judged is
        self.regex_groups = regex_groups or python_regex_groups

    # -- bookkeeping ----------------------------------------------------------------------

    def deny(self, rule: str, where: str, sources, message: str, suggestion: str,
             **params) -> None:
        text, hint = message.format(**params), suggestion.format(**params)
        key = (rule, where, text)
        if key in self._seen:
            return
        self._seen.add(key)
        self.result.violations.append(Violation(
            rule, where, sorted_sources(set(sources)), text, hint,
            message_template=message, suggestion_template=suggestion, params=dict(params)))

    def _p1(self, where: str, sources, clause: str) -> None:
        private = any(s.column_class == PRIVATE for s in sources)
        self.deny(
            "P1", where, sources,
            "An identifying or private column is used in {clause}; such columns may only be "
            "joined on (bare, between two datasets), grouped by per consumer, or counted with "
            "count(DISTINCT ...).",
            "Count it with count(DISTINCT ...), or filter, join and group on quasi or public "
            "columns (city, gender, birth_year, category ...)." if private else
            "Use it only as a join key (a.user_id = b.user_id), as the GROUP BY key of a "
            "per-consumer subquery, or inside count(DISTINCT ...); filter on quasi or public "
            "columns instead.",
            clause=clause,
        )

    def run(self, root: Node) -> FlowResult:
        rel = self.visit(root, {}, above_final=False)
        self.result.outputs = rel.attrs
        return self.result

    # -- expressions ----------------------------------------------------------------------

    def use(self, e: Node, env: dict[int, Attr], where: str, clause: str,
            allow: set[int] | None = None) -> Attr:
        """Evaluate ``e`` as a function of its inputs: any identifier/private input is a P1
        violation (except inside count(DISTINCT) / segment_token and the ids in ``allow``).
        Returns the result's facts (never sensitive)."""
        out = Attr(one_group=True)
        for ref, fact in self._refs(e, env, where):
            if fact.sens and (allow is None or id(ref) not in allow):
                self._p1(where, fact.sens, clause)
            out = Attr(consumer=out.consumer or fact.consumer,
                       bounds=_hull(out.bounds, fact.bounds),
                       one_group=out.one_group and fact.one_group)
        return out

    def _refs(self, e: Node, env: dict[int, Attr], where: str) -> Iterator[tuple[Node, Attr]]:
        """Every attribute reference under ``e`` with its facts, in positions that use its
        value; subquery plans are visited on the way (P4)."""
        cls = e.cls
        if cls == "AttributeReference":
            fact = env.get(e.expr_id)
            if fact is not None:
                yield e, fact
            return
        if cls == "OuterReference":
            for inner in e.exprs.get("e", []):
                yield from self._refs(inner, env, where)
            for child in e.children:
                yield from self._refs(child, env, where)
            return
        if cls == "AggregateExpression" and e.fields.get("isDistinct") is True and e.children:
            function = e.children[0]
            if function.cls == "Count" and all(c.cls == "AttributeReference" for c in function.children):
                for c in function.children:  # counted distinct: an allowed position
                    fact = env.get(c.expr_id)
                    if fact is not None:
                        yield c, replace(fact, sens=frozenset())
                counted = {c.expr_id for c in function.children}
                for child in e.children[1:]:  # the FILTER clause uses values...
                    # ...except "col IS NOT NULL" of the counted column itself, which
                    # count(DISTINCT col) implies (the enforced plan's per-value count)
                    exempt = {id(n.children[0]) for n in child.walk()
                              if n.cls == "IsNotNull" and len(n.children) == 1
                              and n.children[0].cls == "AttributeReference"
                              and n.children[0].expr_id in counted}
                    for ref, fact in self._refs(child, env, where):
                        yield ref, replace(fact, sens=frozenset()) if id(ref) in exempt else fact
                return
        if cls == "SQLScalarFunction" and self.is_platform_token(e):
            inputs = e.exprs.get("inputs", [])
            if len(inputs) == 1 and inputs[0].cls == "AttributeReference":
                fact = env.get(inputs[0].expr_id)
                if fact is not None and fact.entity and self._token_position:
                    # segment_token(entity) computed in a SELECT list: its allowed position.
                    # Anywhere else (WHERE, JOIN ON, GROUP BY, CASE ...) a token singles out
                    # one consumer like the identifier it stands for (P1).
                    yield inputs[0], replace(fact, sens=frozenset())
                    return
            for i in inputs:
                yield from self._refs(i, env, where)
            return
        if cls == "WindowSpecDefinition":
            # PARTITION BY inside the window expression: bare identifiers may partition
            # per consumer (the Window node checks the same keys for P4).
            partition = set(_int_list(e.fields.get("partitionSpec")))
            keys = [e.children[i] for i in partition if i < len(e.children)]
            per_unit = any(k.cls == "AttributeReference" and env.get(k.expr_id, Attr()).unit for k in keys)
            for i, child in enumerate(e.children):
                fact = env.get(child.expr_id) if child.cls == "AttributeReference" else None
                if i in partition and per_unit and fact is not None and \
                        not any(s.column_class == PRIVATE for s in fact.sens):
                    yield child, replace(fact, sens=frozenset())
                else:
                    yield from self._refs(child, env, where)
            return
        if cls in SUBQUERIES:
            self._subquery(e, env, where)
        if cls == "With":
            # Common sub-expressions: the references stand for the definitions.
            defs = [list(self._refs(c, env, where)) for c in e.children[1:]]
            merged = Attr()
            for refs in defs:
                for ref, fact in refs:
                    yield ref, fact
                    merged = Attr(sens=merged.sens | fact.sens,
                                  consumer=merged.consumer or fact.consumer,
                                  bounds=_hull(merged.bounds, fact.bounds))
            self._common.append(merged)
            try:
                if e.children:
                    yield from self._refs(e.children[0], env, where)
            finally:
                self._common.pop()
            return
        if cls == "CommonExpressionRef" and self._common:
            yield e, self._common[-1]
            return
        shape = why_unsafe_shape(e, self._lambda_depth > 0)
        if shape is not None and (self._consumer_ctx or any(
                fact.consumer for c in e.children for _, fact in self._refs_quiet(c, env))):
            self.deny(
                "P8", where, (),
                "The expression {function} can fail at run time here ({reason}); over "
                "consumer data a failure would reveal something about a consumer.",
                "Compare dates and timestamps directly or with datediff, add interval "
                "literals of reasonable size, and build arrays and strings outside lambdas.",
                function=cls, reason=shape,
            )
        if cls == "LambdaFunction":
            self._lambda_depth += 1
            try:
                for child in e.children:
                    yield from self._refs(child, env, where)
                for key, exprs in e.exprs.items():
                    if key != "inputs":
                        for x in exprs:
                            yield from self._refs(x, env, where)
            finally:
                self._lambda_depth -= 1
            return
        if cls in MAY_FAIL:
            # Over consumer rows a failure would tell whether some row reached the call (a
            # WHERE or CASE on one consumer decides that): the arguments that can make it
            # fail must be literals proven harmless (policies.failures).
            consumer = any(fact.consumer for c in e.children for _, fact in self._refs_quiet(c, env))
            if consumer or self._consumer_ctx:
                reason = why_unsafe(cls, e.children, self.regex_groups)
                if reason is not None:
                    self.deny(
                        "P8", where, (),
                        "The function {function} can fail at run time here ({reason}); over "
                        "consumer data a failure would reveal something about a consumer.",
                        "Give {function} literal, valid arguments where it takes a pattern, "
                        "format, index or size (a pattern that compiles, an index other than "
                        "0, Spark's date letters), or remove it from expressions over "
                        "consumer data.",
                        function=cls, reason=reason,
                    )
        for child in e.children:
            yield from self._refs(child, env, where)
        for key, exprs in e.exprs.items():
            if key == "inputs":
                continue
            for x in exprs:
                yield from self._refs(x, env, where)

    def _refs_quiet(self, e: Node, env: dict[int, Attr]) -> Iterator[tuple[Node, Attr]]:
        for n in e.walk():
            if n.cls == "AttributeReference" and n.expr_id in env:
                yield n, env[n.expr_id]

    def _subquery(self, e: Node, env: dict[int, Attr], where: str) -> None:
        if e.subplan is None:
            return
        self._subquery_depth += 1
        context = self._consumer_ctx
        try:
            rel = self.visit(e.subplan, env, above_final=False)
        finally:
            self._subquery_depth -= 1
            self._consumer_ctx = context
        if rel.reads_consumer:
            self.deny(
                "P4", where, (),
                "A subquery (scalar, IN, EXISTS or LATERAL) reads consumer data: its value "
                "would carry other consumers' data into each row.",
                "Join the consumer dataset in FROM on user_id instead of reading it in a "
                "subquery.",
            )

    # -- plan nodes -----------------------------------------------------------------------

    def visit(self, node: Node, outer: dict[int, Attr], above_final: bool) -> Rel:
        cls = node.cls
        is_final = self.final is not None and node is self.final.node and self._subquery_depth == 0
        here_above = (self.final is not None and self._subquery_depth == 0
                      and any(node is n for n in self.final.above))
        if cls == "WithCTE":
            for child in node.children[:-1]:
                self.visit(child, outer, False)
            return self.visit(node.children[-1], outer, here_above)
        if cls == "CTERelationDef":
            rel = self.visit(node.children[0], outer, False)
            self._cte[int(node.fields.get("id", -1))] = rel
            return rel
        if cls == "CTERelationRef":
            defined = self._cte.get(int(node.fields.get("cteId", -1)))
            attrs = node.exprs.get("output", [])
            if defined is None:
                return Rel([(a.expr_id, a.name, Attr()) for a in attrs])
            facts = [f for _, _, f in defined.attrs]
            return Rel([(a.expr_id, a.name, facts[i] if i < len(facts) else Attr())
                        for i, a in enumerate(attrs)], defined.consumer, defined.reads_consumer)
        children = [self.visit(c, outer, here_above and not is_final) for c in node.children]
        env: dict[int, Attr] = dict(outer)
        for child in children:
            env.update({i: f for i, _, f in child.attrs})
        below = not (here_above or is_final) and self._subquery_depth == 0
        reads = any(c.reads_consumer for c in children)
        self._consumer_ctx = reads or any(c.consumer for c in children)

        if cls == "LogicalRelation":
            return self._relation(node)
        if cls in ("LocalRelation", "Range"):
            return Rel([(a.expr_id, a.name, Attr()) for a in node.exprs.get("output", [])])
        if cls == "OneRowRelation":
            return Rel([])
        if cls == "Project":
            out = []
            for e in node.exprs.get("projectList", []):
                bare = _bare(e)
                if bare is not None and bare.expr_id in env:
                    out.append((e.expr_id, e.name, env[bare.expr_id]))
                    continue
                cast = _string_cast(e)
                if cast is not None and env.get(cast.expr_id, Attr()).entity:
                    # Spark binds a SQL function's argument (segment_token(user_id)) as
                    # cast(user_id AS string) AS x: injective, so still the bare entity.
                    out.append((e.expr_id, e.name, env[cast.expr_id]))
                    continue
                inner = e.children[0] if e.cls == "Alias" and e.children else e
                if inner.cls == "SQLScalarFunction" and self.is_platform_token(inner):
                    self._token_position = True
                    try:
                        fact = self.use(e, env, e.name, "a SELECT expression")
                    finally:
                        self._token_position = False
                    # The token stands for the consumer's identifier: passed on bare it may
                    # reach the member column; used in any other position it is P1.
                    inputs = inner.exprs.get("inputs", [])
                    source = env.get(inputs[0].expr_id, Attr()) if len(inputs) == 1 and \
                        inputs[0].cls == "AttributeReference" else Attr()
                    out.append((e.expr_id, e.name, Attr(consumer=fact.consumer, token=True,
                                                        sens=source.sens)))
                    continue
                out.append((e.expr_id, e.name, self.use(e, env, e.name, "a SELECT expression")))
            return Rel(out, children[0].consumer if children else False, reads)
        if cls == "Filter":
            for e in node.exprs.get("condition", []):
                self.use(e, env, "WHERE/HAVING", "a WHERE or HAVING condition")
                if below or self._subquery_depth > 0:
                    self._multiplied_filter(e, env)
            return children[0]
        if cls == "Sort":
            for e in node.exprs.get("order", []):
                self.use(e, env, "ORDER BY", "ORDER BY")
            return children[0]
        if cls in ("GlobalLimit", "LocalLimit", "Offset", "Tail"):
            if children and children[0].consumer and (below or self._subquery_depth > 0):
                # Which consumers' rows survive a LIMIT depends on the other consumers'
                # rows (their order, their number).
                self.deny(
                    "P4", "LIMIT", (),
                    "LIMIT, OFFSET or TAIL over consumer rows below the final aggregation lets "
                    "other consumers' data decide which consumers are counted.",
                    "Filter with WHERE instead, or apply LIMIT to the released groups after "
                    "the final GROUP BY.",
                )
            return children[0] if children else Rel([])
        if cls in ("SubqueryAlias", "View", "ResolvedHint", "CollectMetrics", "Repartition"):
            return children[0] if children else Rel([])
        if cls == "RepartitionByExpression":
            for e in node.all_exprs():
                self.use(e, env, "(query)", "a repartitioning expression")
            return children[0]
        if cls == "Join":
            return self._join(node, children, env, below)
        if cls == "Aggregate":
            return self._aggregate(node, children[0], env, is_final, below)
        if cls in ("Distinct", "Deduplicate"):
            rel = children[0]
            keeps_entity = any(f.unit for _, _, f in rel.attrs)
            for _, name, fact in rel.attrs:
                if fact.sens and (is_final or not keeps_entity
                                  or any(s.column_class == PRIVATE for s in fact.sens)):
                    self._p1(name, fact.sens, "DISTINCT")
            if rel.consumer and below and not keeps_entity:
                self._cross_unit("DISTINCT", "a SELECT DISTINCT")
            if is_final:
                return Rel(rel.attrs, False, reads)
            return rel
        if cls == "Window":
            return self._window(node, children[0], env, below)
        if cls == "Generate":
            consumer = False
            for e in node.exprs.get("generator", []):
                consumer = self.use(e, env, "LATERAL VIEW", "a generator").consumer or consumer
            if consumer and (below or self._subquery_depth > 0):
                self.deny(
                    "P6", "LATERAL VIEW", (),
                    "A generator (explode, posexplode, inline, stack, LATERAL VIEW) is fed "
                    "by consumer data, so one consumer could weigh as many.",
                    "Generate rows only from literals or non-consumer data, or aggregate "
                    "without multiplying rows.",
                )
            rel = children[0]
            dropped = set(_int_list(node.fields.get("unrequiredChildIndex")))
            # generated rows repeat their row: nothing identifies one row any more
            kept = [(i, n, replace(f, unique_link=False, member_key=False))
                    for k, (i, n, f) in enumerate(rel.attrs) if k not in dropped]
            extra = [(a.expr_id, a.name, Attr(consumer=consumer, multiplied=rel.consumer))
                     for a in node.exprs.get("generatorOutput", [])]
            return Rel(kept + extra, rel.consumer, reads)
        if cls in ("Union", "Intersect", "Except"):
            if any(c.consumer for c in children) and (below or self._subquery_depth > 0):
                self.deny(
                    "P4", "(query)", (),
                    "UNION, INTERSECT and EXCEPT may not combine consumer rows below the "
                    "final aggregation.",
                    "Aggregate each part in a job of its own, or filter one dataset with OR "
                    "instead of combining rows.",
                )
            first = children[0].attrs if children else []
            merged = []
            for i, (ident, name, fact) in enumerate(first):
                for other in children[1:]:
                    if i < len(other.attrs):
                        f = other.attrs[i][2]
                        fact = Attr(sens=fact.sens | f.sens, consumer=fact.consumer or f.consumer,
                                    bounds=_hull(fact.bounds, f.bounds))
                merged.append((ident, name, replace(fact, entity=False, linked=False)))
                if fact.sens:
                    self._p1(name, fact.sens, "a set operation (UNION/INTERSECT/EXCEPT)")
            return Rel(merged, any(c.consumer for c in children), reads)
        if cls == "Expand":
            merged = Attr()
            for child in children:
                for _, _, f in child.attrs:
                    merged = Attr(sens=merged.sens | f.sens, consumer=merged.consumer or f.consumer,
                                  bounds=_hull(merged.bounds, f.bounds))
            if merged.sens:
                self._p1("GROUP BY", merged.sens, "ROLLUP, CUBE or GROUPING SETS")
            return Rel([(a.expr_id, a.name, replace(merged, sens=frozenset()))
                        for a in node.exprs.get("output", [])],
                       any(c.consumer for c in children), reads)
        # Unknown nodes are denied by the lineage pass (P7, closed world).
        return Rel([a for c in children for a in c.attrs], any(c.consumer for c in children), reads)

    def _relation(self, node: Node) -> Rel:
        ds = self.datasets.get(_relation_name(node) or "")
        attrs = node.exprs.get("output", [])
        if ds is None or not (ds.is_platform and ds.is_consumer_data):
            own = ds is not None and ds.owner == self.merchant
            key = (ds.member_key or "").lower() if own else ""
            # Uploads refuse duplicate values in columns that link to consumers, so such a
            # column (and the member key) identifies one row of the merchant's data.
            return Rel([(a.expr_id, a.name, Attr(
                member_key=bool(key) and a.name.lower() == key, column=ds is not None,
                plain=ds is not None,
                unique_link=own and a.name.lower() in UNIQUE_LINK_COLUMNS)) for a in attrs])
        entity = (ds.entity_column or "").lower()
        out = []
        for a in attrs:
            col = ds.column(a.name)
            cls = col.column_class if col is not None else PRIVATE
            source = Source(ds.full_name, a.name, cls, True)
            bounds = None
            if col is not None and col.lower_bound is not None and col.upper_bound is not None:
                bounds = (float(col.lower_bound), float(col.upper_bound))
            out.append((a.expr_id, a.name, Attr(
                sens=frozenset({source}) if cls in SENSITIVE else frozenset(),
                consumer=True, entity=a.name.lower() == entity, bounds=bounds,
                one_group=ds.one_row_per_unit, column=True, plain=True)))
        return Rel(out, consumer=True, reads_consumer=True)

    def _join(self, node: Node, children: list[Rel], env: dict[int, Attr], below: bool) -> Rel:
        left, right = children[0], children[1] if len(children) > 1 else Rel([])
        lids, rids = left.ids(), right.ids()
        join_type = _join_type(node)
        keys: list[tuple[Node, Node]] = []
        allowed: set[int] = set()
        for cond in node.exprs.get("condition", []):
            for part in _conjuncts(cond):
                if part.cls == "EqualTo" and len(part.children) == 2:
                    a, b = part.children
                    if a.cls == b.cls == "AttributeReference" and (
                        (a.expr_id in lids and b.expr_id in rids)
                        or (a.expr_id in rids and b.expr_id in lids)
                    ):
                        if a.expr_id in rids:
                            a, b = b, a
                        fa, fb = env.get(a.expr_id, Attr()), env.get(b.expr_id, Attr())
                        sens = fa.sens | fb.sens
                        # An identifier may meet another dataset's column, never a literal
                        # list (VALUES), an expression, or a private column.
                        if sens and (any(x.column_class == PRIVATE for x in sens)
                                     or not (fa.column and fb.column)):
                            self._p1("JOIN ON", sens, "a join key that is not an identifier "
                                     "joined to another dataset's column")
                        keys.append((a, b))
                        allowed.update((id(a), id(b)))
                        continue
                self.use(part, env, "JOIN ON", "a join condition", allow=allowed)
        semi = "LeftSemi" in join_type or "LeftAnti" in join_type
        if (left.consumer != right.consumer) and not semi and (below or self._subquery_depth > 0):
            decided = [
                part for cond in node.exprs.get("condition", []) for part in _conjuncts(cond)
                if not (part.cls == "EqualTo" and all(id(c) in allowed for c in part.children))
                and any(f.consumer for _, f in self._refs_quiet(part, env))
            ]
            if not keys or decided:
                self.deny(
                    "P6", "JOIN ON", (),
                    "How many rows a consumer's row meets in this join depends on consumer "
                    "data (a join without an equality key, or a condition on consumer columns), "
                    "so one consumer could weigh as many.",
                    "Join on equal keys only (o.item_id = i.item_id, m.phone_hash = "
                    "c.phone_hash) and put conditions on consumer columns in WHERE.",
                )
        # The side an outer join pads with NULLs: its entity is NULL on every padded row,
        # so grouping, partitioning or counting by it would put many consumers' rows (all
        # the unmatched ones) under one NULL "consumer".
        left_padded = "RightOuter" in join_type or "FullOuter" in join_type
        right_padded = "LeftOuter" in join_type or "FullOuter" in join_type
        equated = False
        if left.consumer and right.consumer and (below or self._subquery_depth > 0):
            # Entities of one kind only: a member key that stands for the consumer it was
            # linked to is not the same consumer as a user_id of another row.
            equated = any(
                (fa := env.get(a.expr_id, Attr())).entity and (fb := env.get(b.expr_id, Attr())).entity
                and fa.member_key == fb.member_key
                for a, b in keys)
            if not equated or "FullOuter" in join_type:
                self.deny(
                    "P4", "JOIN ON", (),
                    "Two relations of consumer data are joined without equating their "
                    "consumers: rows of one consumer would be combined with another's.",
                    "Join consumer datasets on their entity columns (o.user_id = c.user_id) "
                    "with an inner or left join; filter each side in WHERE.",
                )
        linked_left = linked_right = False
        one_left = one_right = False  # each consumer meets at most one row of that side
        if left.consumer != right.consumer:
            for a, b in keys:
                fa, fb = env.get(a.expr_id, Attr()), env.get(b.expr_id, Attr())
                if left.consumer and any(s.column_class != PRIVATE for s in fa.sens) and not fb.consumer:
                    linked_right = True
                    one_right = one_right or fb.unique_link or fb.member_key
                if right.consumer and any(s.column_class != PRIVATE for s in fb.sens) and not fa.consumer:
                    linked_left = True
                    one_left = one_left or fa.unique_link or fa.member_key
        # A join may repeat each side's rows: uniqueness facts do not survive it, except a
        # member key on the side just linked to one consumer by a unique column, and a join
        # of one consumer's rows with that same consumer's rows (entities equated).
        if equated:
            return Rel(_unpadded(left.attrs, left_padded) if semi else
                       _unpadded(left.attrs, left_padded) + _unpadded(right.attrs, right_padded),
                       True, left.reads_consumer or right.reads_consumer)
        # The side that is not consumer data may meet each consumer's row several times.
        multiplied_left = right.consumer and not left.consumer and not one_left and not semi
        multiplied_right = left.consumer and not right.consumer and not one_right
        lattrs = [(i, n, replace(f, linked=True, one_group=f.one_group or one_left,
                                 unique_link=False, member_key=f.member_key and one_left,
                                 multiplied=f.multiplied or multiplied_left)
                   if linked_left else replace(f, unique_link=False, member_key=False,
                                               multiplied=f.multiplied or multiplied_left))
                  for i, n, f in left.attrs]
        rattrs = [(i, n, replace(f, linked=True, one_group=f.one_group or one_right,
                                 unique_link=False, member_key=f.member_key and one_right,
                                 multiplied=f.multiplied or multiplied_right)
                   if linked_right else replace(f, unique_link=False, member_key=False,
                                                multiplied=f.multiplied or multiplied_right))
                  for i, n, f in right.attrs]
        # The padded side of an outer join loses its entity (see _unpadded); its other
        # facts stand: a NULL is a value of no consumer.
        attrs = _unpadded(lattrs, left_padded) if semi else \
            _unpadded(lattrs, left_padded) + _unpadded(rattrs, right_padded)
        reads = left.reads_consumer or right.reads_consumer
        return Rel(attrs, left.consumer or right.consumer, reads)

    def _multiplied_filter(self, condition: Node, env: dict[int, Attr]) -> None:
        """P6 in WHERE: a condition that compares the rows joined or generated onto a
        consumer's row with that consumer's data decides how many of them the consumer
        keeps (the same condition in JOIN ON is refused by _join)."""
        for part in _conjuncts(condition):
            facts = [f for _, f in self._refs_quiet(part, env)]
            if any(f.multiplied for f in facts) and any(f.consumer and not f.multiplied for f in facts):
                self.deny(
                    "P6", "WHERE", (),
                    "A condition compares rows joined or generated onto each consumer's row "
                    "with that consumer's data, so how many of them a consumer keeps depends "
                    "on consumer data: one consumer could weigh as many.",
                    "Filter consumer columns and the other rows' columns in separate "
                    "conditions (each compared with literals), or join on equal keys only.",
                )
                return

    def _aggregate(self, node: Node, child: Rel, env: dict[int, Attr], is_final: bool,
                   below: bool) -> Rel:
        groups = node.exprs.get("groupingExpressions", [])
        per_unit = any(_bare(g) is not None and (
            env.get(_bare(g).expr_id, Attr()).unit
            # a member key joined to one consumer on a unique link stands for that consumer
            or (env.get(_bare(g).expr_id, Attr()).linked and env.get(_bare(g).expr_id, Attr()).member_key
                and env.get(_bare(g).expr_id, Attr()).one_group))
            for g in groups)
        group_facts: dict[int, Attr] = {}
        if is_final:
            self.result.grouped = bool(groups)
        for g in groups:
            bare = _bare(g)
            fact = env.get(bare.expr_id) if bare is not None else None
            if is_final:
                key = fact if fact is not None else self.use(g, env, "GROUP BY", "a GROUP BY expression")
                self.result.one_group_keys = self.result.one_group_keys and key.one_group
            if fact is not None:
                group_facts[bare.expr_id] = fact
                if fact.sens and (is_final or not per_unit
                                  or any(s.column_class == PRIVATE for s in fact.sens)):
                    self._p1(g.name or "GROUP BY", fact.sens, "a GROUP BY key of released rows"
                             if is_final else "a GROUP BY key")
            else:
                self.use(g, env, "GROUP BY", "a GROUP BY expression")
        if child.consumer and not per_unit and not is_final and (below or self._subquery_depth > 0):
            self._cross_unit("GROUP BY", "an aggregation")
        # One row per consumer (grouped by the entity and nothing that varies within a
        # consumer): then every output is a single value per consumer.
        single = per_unit and all(
            (f := (env.get(_bare(g).expr_id) if _bare(g) is not None else None)) is not None
            and (f.unit or f.one_group) for g in groups)
        if per_unit and not any(_bare(g) is not None and env.get(_bare(g).expr_id, Attr()).unit
                                for g in groups):
            # Grouped by a linked member key: the rows are that member's consumer's, and the
            # key stands for the consumer above (P4 joins, segment members).
            for g in groups:
                bare = _bare(g)
                if bare is not None and env.get(bare.expr_id, Attr()).member_key:
                    env[bare.expr_id] = replace(env[bare.expr_id], entity=True)
                    group_facts[bare.expr_id] = env[bare.expr_id]
        out = []
        agg_index = 0
        for e in node.exprs.get("aggregateExpressions", []):
            bare = _bare(e)
            if bare is not None and bare.expr_id in group_facts:
                fact = group_facts[bare.expr_id]
                out.append((e.expr_id, e.name, fact if not is_final else replace(
                    fact, entity=False, linked=False)))
                continue
            fact = replace(self.use(e, env, e.name, "an aggregate's argument or FILTER"),
                           one_group=single, plain=not is_final and _plain_aggregate(e, env))
            if is_final:
                agg_index = self._release_aggregates(e, env, agg_index, child.consumer)
                fact = replace(fact, entity=False)
            out.append((e.expr_id, e.name, fact))
        if is_final:
            return Rel(out, False, child.reads_consumer)
        return Rel(out, child.consumer, child.reads_consumer)

    def _release_aggregates(self, output: Node, env: dict[int, Attr], index: int,
                            rows_are_consumers: bool = False) -> int:
        """Mode-specific rules for the aggregates of the release step (P3 / dp)."""
        for agg in output.walk():
            if agg.cls != "AggregateExpression" or not agg.children:
                continue
            function = agg.children[0]
            args = function.children
            consumer = any(f.consumer for a in args for _, f in self._refs_quiet(a, env))
            distinct = agg.fields.get("isDistinct") is True
            # Over consumer rows, a computed argument weights rows even when it reads only
            # merchant columns (CASE WHEN m.member_id = '...' THEN 1e6 END).
            if self.release == "threshold" and (consumer or rows_are_consumers):
                for a in args:
                    if a.cls == "Literal" or self._plain(_bare_or_cast(a), env):
                        continue
                    clamp = declared_clamp(a)
                    if clamp is not None and self._plain(_bare_or_cast(clamp[0]), env):
                        continue  # a bare column clamped to literal bounds weights no one
                    self.deny(
                        "P3", output.name, {s for _, f in self._refs_quiet(a, env) for s in f.sens},
                        "In threshold mode an aggregate's argument over consumer data must be a "
                        "bare column, a CAST of one, or a constant; {column} computes it.",
                        "Move the condition into WHERE or FILTER (WHERE ...), and aggregate the "
                        "column itself: sum(amount) FILTER (WHERE city = 'Hangzhou').",
                        column=output.name,
                    )
                    break
            if self.release == "dp" and self._subquery_depth == 0:
                self._dp_aggregate(output, function, args, distinct, env, index, agg)
            index += 1
        return index

    @staticmethod
    def _plain(ref: Node | None, env: dict[int, Attr]) -> bool:
        """A bare column whose values no expression computed from consumer data (a
        weight `CASE WHEN <one consumer> THEN 1e6 END` in a subquery is not plain)."""
        if ref is None:
            return False
        fact = env.get(ref.expr_id)
        return fact is None or fact.plain or not fact.consumer

    def _dp_aggregate(self, output: Node, function: Node, args: list[Node], distinct: bool,
                      env: dict[int, Attr], index: int, agg: Node) -> None:
        filtered = len(agg.children) > 1  # FILTER (WHERE ...)
        key = signature(agg)
        earlier = self._dp_signatures.get(key)
        if earlier is not None:
            first = next(a for a in self.result.dp_aggregates if a.index == earlier)
            self.result.dp_aggregates.append(replace(first, index=index, column=output.name,
                                                     same_as=earlier))
            return
        self._dp_signatures[key] = index
        name = function.cls
        unsupported = (
            "In dp mode the release step supports count(*), count(expr), count(DISTINCT "
            "user_id), sum and avg; {function} in {column} is not supported.",
            "Use count, count(DISTINCT user_id), sum or avg; for a spread, release sum and "
            "count of squares in separate columns, or ask the admin for threshold mode.",
        )
        if name == "Count" and not distinct:
            self.result.dp_aggregates.append(DpAggregate(index, "count", None, output.name))
            return
        if name == "Count" and distinct:
            if len(args) == 1 and args[0].cls == "AttributeReference" and \
                    env.get(args[0].expr_id, Attr()).unit and not filtered:
                self.result.dp_aggregates.append(DpAggregate(index, "count_units", None, output.name))
                return
            self.deny("P2", output.name, (), *unsupported,
                      function="count(DISTINCT) of a column other than the consumer",
                      column=output.name)
            return
        if name in DP_SUMS and not distinct and len(args) == 1:
            bounds = None
            consumer = False
            for _, fact in self._refs_quiet(args[0], env):
                consumer = consumer or fact.consumer
                bounds = _hull(bounds, fact.bounds)
            clamp = declared_clamp(args[0])
            if clamp is not None:
                # bounds from the query: the tighter of its clamp and the policy's
                lo, hi = clamp[1]
                policy = bounds
                bounds = (max(lo, policy[0]), min(hi, policy[1])) if policy else (lo, hi)
                if bounds[0] > bounds[1]:
                    bounds = policy
            if bounds is not None:
                # a consumer may contribute nothing: the clamp always includes zero
                bounds = (min(bounds[0], 0.0), max(bounds[1], 0.0))
            if bounds is None:
                self.deny(
                    "D2", output.name, (),
                    "In dp mode each consumer's contribution to a sum is clamped to the "
                    "declared per-consumer bounds of the columns it is computed from; {column} "
                    "is computed from no column with declared bounds.",
                    "Sum or average a column with declared bounds (e.g. orders.amount, "
                    "consumers.birth_year, vip_level), declare bounds in the query with "
                    "least(greatest(x, lo), hi), or count rows instead.",
                    column=output.name,
                )
                return
            kind = "avg" if name in ("Average", "TryAverage") else "sum"
            self.result.dp_aggregates.append(DpAggregate(index, kind, bounds, output.name))
            return
        self.deny("P2", output.name, (), *unsupported,
                  function=name.lower() + (" DISTINCT" if distinct else ""), column=output.name)

    def _window(self, node: Node, child: Rel, env: dict[int, Attr], below: bool) -> Rel:
        partition = node.exprs.get("partitionSpec", [])
        by_entity = any(_bare(p) is not None and env.get(_bare(p).expr_id, Attr()).unit
                        for p in partition)
        for p in partition:
            bare = _bare(p)
            fact = env.get(bare.expr_id) if bare is not None else None
            if fact is not None:
                if fact.sens and (not by_entity or any(s.column_class == PRIVATE for s in fact.sens)):
                    self._p1("PARTITION BY", fact.sens, "a window's PARTITION BY")
            else:
                self.use(p, env, "PARTITION BY", "a window's PARTITION BY")
        for e in node.exprs.get("orderSpec", []):
            self.use(e, env, "PARTITION BY/ORDER BY", "a window's ORDER BY")
        extra = []
        for e in node.exprs.get("windowExpressions", []):
            # a window's value varies from row to row even within one consumer
            fact = replace(self.use(e, env, e.name, "a window function"), one_group=False,
                           plain=by_entity and _plain_aggregate(e, env))
            extra.append((e.expr_id, e.name, fact))
        if child.consumer and not by_entity and (below or self._subquery_depth > 0):
            self.deny(
                "P4", "OVER", (),
                "A window function over consumer rows that is not partitioned by the "
                "consumer carries other consumers' data into each row.",
                "Partition the window by user_id (OVER (PARTITION BY user_id ...)), or apply "
                "the window to the released groups after the final GROUP BY.",
            )
        return Rel(child.attrs + extra, child.consumer, child.reads_consumer)

    def _cross_unit(self, where: str, what: str) -> None:
        self.deny(
            "P4", where, (),
            "{what} combines rows of different consumers below the final aggregation; only "
            "the release step may combine consumers.",
            "Group by user_id in the inner query (a per-consumer rollup) and combine "
            "consumers only in the final GROUP BY.",
            what=what[0].upper() + what[1:],
        )

