"""P3 enforced inside Spark: the released rows of a job, and how many were suppressed.

The analyzed plan is rewritten through the JVM, never re-parsed from text:

* the entity column of every consumer dataset is carried up to the final aggregation
  (Projects that dropped it are widened; see :mod:`policies.carry`);
* the final aggregation also computes ``count(DISTINCT entity)`` per consumer dataset, and
  per aggregate value ``count(DISTINCT entity) FILTER (WHERE input IS NOT NULL [AND input
  <> 0])``; all of these share Spark's one distinct-aggregation pass over the entity;
* a Filter requiring every count >= k sits right above the aggregation (below HAVING's
  own filter, ORDER BY, LIMIT and windows, so they only ever see released rows), and a
  Project hides the counts.

The aggregation result is materialised once (it is small) so that the suppressed rows
can be counted without running the query twice. Segment jobs get the same treatment per
label. The enforced plan is checked again by the policy before anything runs.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from policies import functions as fn
from policies.carry import output_ids
from policies.engine import MAX_SEGMENT_LABELS, Decision, decide
from policies.implied import NON_ZERO, NOT_NULL, argument_column, facts_about
from policies.jvm import jvm_class, jvm_constant, jvm_regex_groups
from policies.planjson import plan_json
from policies.segment import platform_token_matcher
from policies.sparkplan import AnalyzedQuery
from policies.tree import parse_plan_json

COUNT_PREFIX = "__yushan_k"


class EnforcementError(RuntimeError):
    """The job cannot be released as asked (e.g. too many segment labels). No data values."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class ExecutionResult:
    """Released rows (lazy), and how many rows the k-threshold suppressed.

    ``suppressed_rows`` is known once ``dataframe`` has been materialised (one action):
    it is then read from the metrics that action collected on its way through the plan
    (``CollectMetrics``). ``total_rows`` likewise.

    The enforced plan may still be being re-checked (:class:`_Recheck`) while the rows are
    computed: :meth:`confirm` waits for that verdict, and raises when the plan failed it.
    Nothing may be released before :meth:`confirm` returned; reading the summary confirms.
    """

    def __init__(self, dataframe: DataFrame, suppressed: int | None = None,
                 total: int | None = None, metrics: tuple[Any, str] | None = None,
                 recheck: _Recheck | None = None):
        self.dataframe = dataframe  # released rows only, the job's own columns only
        self._suppressed = suppressed
        self._total = total
        self._metrics = metrics  # (the released rows' QueryExecution, the collector's name)
        self._recheck = recheck
        # dp jobs: the 95% half-width of each released column ({column: {"ci95": x}}),
        # and the privacy cost actually spent.
        self.accuracy: dict[str, dict[str, float]] = {}
        self.epsilon: float | None = None
        self.delta: float | None = None

    def confirm(self) -> None:
        """Wait for the enforced plan's re-check; raise :class:`EnforcementError` if it failed."""
        if self._recheck is not None:
            self._recheck.wait()

    def _observed(self) -> None:
        self.confirm()
        if self._suppressed is None and self._metrics is not None:
            execution, name = self._metrics
            found = execution.observedMetrics().get(name)
            if found.isEmpty():
                raise EnforcementError(
                    "INTERNAL", "the suppressed row count is known only after the result "
                    "has been materialised")
            row = found.get()
            self._total, self._suppressed = int(row.getLong(0)), int(row.getLong(1))

    @property
    def suppressed_rows(self) -> int:
        self._observed()
        return int(self._suppressed or 0)

    @property
    def total_rows(self) -> int:
        self._observed()
        return int(self._total if self._total is not None else -1)


class _Recheck(threading.Thread):
    """:func:`recheck` of an enforced plan, run beside the job's own Spark run.

    The policy's decision was made before anything ran; this is the safety net over our
    own rewrite of the plan. It needs no rows, so it overlaps with computing them, and
    :meth:`ExecutionResult.confirm` holds the rows back until it has passed.
    """

    def __init__(self, spark: SparkSession, decision: Decision, plan, analyzed):
        super().__init__(daemon=True, name="yushan-recheck")
        self.args = (spark, decision, plan, analyzed)
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            recheck(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that releases
            self.failure = exc
        finally:
            self.args = ()

    def wait(self) -> None:
        self.join()
        if isinstance(self.failure, EnforcementError):
            raise self.failure
        if self.failure is not None:
            raise EnforcementError("POLICY_ENFORCEMENT",
                                   "the enforced plan could not be re-checked") from self.failure


class _Jvm:
    """Small helpers for building Catalyst objects through py4j.

    Every ``jvm.a.b.C`` lookup is a round trip to the JVM, so classes are looked up once
    per JVM and kept (:func:`policies.jvm.jvm_class`).
    """

    def __init__(self, spark: SparkSession):
        self.spark = spark
        self.jvm = spark._jvm
        self.js = spark._jsparkSession

    def cls(self, name: str):
        return jvm_class(self.spark, name)

    @property
    def expr(self):
        return _Namespace(self, "org.apache.spark.sql.catalyst.expressions")

    @property
    def agg(self):
        return _Namespace(self, "org.apache.spark.sql.catalyst.expressions.aggregate")

    @property
    def logical(self):
        return _Namespace(self, "org.apache.spark.sql.catalyst.plans.logical")

    def seq(self, items: list[Any]):
        # py4j converts the Python list to a java.util.List on the way (auto_convert).
        return self.cls("org.apache.spark.api.python.PythonUtils.toSeq")(list(items))

    def items(self, seq) -> list[Any]:
        return [seq.apply(i) for i in range(seq.size())]

    def child(self, node, index: int):
        return node.children().apply(index)

    def at(self, node, path: tuple[int, ...]):
        for index in path:
            node = self.child(node, index)
        return node

    def constant(self, key: str, make):
        """A JVM value built once per JVM (immutable Scala objects only)."""
        return jvm_constant(self.spark, "enforce:" + key, lambda jvm: make())

    def none(self):
        return self.constant("none", lambda: self.cls("scala.Option.empty")())

    def empty_seq(self):
        return self.constant("empty_seq", lambda: self.seq([]))

    def some(self, value):
        return self.cls("scala.Some")(value)

    def literal(self, value: int):
        def make():
            integer = self.cls("org.apache.spark.sql.types.DataTypes").IntegerType
            return self.expr.Literal.create(value, integer)
        return self.constant(f"int:{value}", make)

    def new_id(self):
        return self.cls("org.apache.spark.sql.catalyst.expressions.NamedExpression.newExprId")()

    def alias(self, child, name: str, expr_id=None):
        empty = self.empty_seq()
        return self.expr.Alias(child, name, expr_id or self.new_id(), empty, self.none(), empty)

    def aggregate(self, function, distinct: bool = False, condition=None):
        """``function`` as a complete-mode aggregate expression (``FILTER (WHERE condition)``)."""
        complete = self.constant("complete", lambda: getattr(
            self.cls("org.apache.spark.sql.catalyst.expressions.aggregate.Complete$"), "MODULE$"))
        filt = self.some(condition) if condition is not None else self.none()
        return self.agg.AggregateExpression(function, complete, distinct, filt, self.new_id())

    def count_distinct(self, entity, condition=None):
        return self.aggregate(self.agg.Count(self.seq([entity])), True, condition)

    def and_all(self, parts: list[Any]):
        out = parts[0]
        for part in parts[1:]:
            out = self.expr.And(out, part)
        return out

    def attr_by_id(self, plan, expr_id: int):
        for attr in self.items(plan.output()):
            if attr.exprId().id() == expr_id:
                return attr
        raise EnforcementError("INTERNAL", "an attribute of the plan could not be found")

    def rebuild(self, node, path: tuple[int, ...], target: tuple[int, ...], replacement):
        """``node`` with the subtree at ``target`` (below ``path``) replaced."""
        if path == target:
            return replacement
        index = target[len(path)]
        children = self.items(node.children())
        children[index] = self.rebuild(children[index], path + (index,), target, replacement)
        return node.withNewChildren(self.seq(children))

    def dataset(self, plan):
        return self.cls("org.apache.spark.sql.classic.Dataset.ofRows")(self.js, plan)

    def dataframe(self, plan) -> DataFrame:
        return DataFrame(self.dataset(plan), self.spark)


class _Namespace:
    """``j.expr.Alias`` -> the cached JVM class ``...expressions.Alias``."""

    def __init__(self, j: _Jvm, package: str):
        self._j, self._package = j, package

    def __getattr__(self, name: str):
        return self._j.cls(f"{self._package}.{name}")


def execute(spark: SparkSession, decision: Decision) -> ExecutionResult:
    query = decision.query
    if query is None:  # a denied decision has no query to run
        raise ValueError("only an allowed decision can be executed")
    j = _Jvm(spark)
    if decision.kind == "segment":
        return _execute_segment(j, decision)
    if decision.final is None or not decision.consumer_datasets:
        # No consumer data: nothing to hold to k (P5 allowed row-level output).
        df = j.dataframe(query.jplan)
        return ExecutionResult(df, 0, -1)
    if decision.release == "dp":
        return _execute_dp(j, decision)
    return _execute_aggregate(j, decision)


# -- aggregate jobs --------------------------------------------------------------------------


def _widen(j: _Jvm, node, path: tuple[int, ...], additions: dict[tuple[int, ...], list[int]]):
    """Carry entity columns up: add them to the Projects/Aggregates that dropped them."""
    if not any(p[: len(path)] == path for p in additions):
        return node
    children = [
        _widen(j, c, path + (i,), additions) for i, c in enumerate(j.items(node.children()))
    ]
    node = node.withNewChildren(j.seq(children))
    ids = additions.get(path)
    if not ids:
        return node
    child = children[0]
    extra = [j.attr_by_id(child, i) for i in ids]
    if node.nodeName() == "Project":
        return j.logical.Project(j.seq(j.items(node.projectList()) + extra), child)
    return j.logical.Aggregate(
        node.groupingExpressions(), j.seq(j.items(node.aggregateExpressions()) + extra), child,
        node.hint(),
    )


def _entity_groups(decision: Decision) -> dict[int, int]:
    """Every entity id -> the one id counted for its group of entity columns.

    Entity columns proven equal by inner equi-joins are one group, counted once. An entity
    the query already counts distinct is preferred as the group's representative: Spark
    then computes the query's count and ours in one distinct-aggregation pass.
    """
    carry = decision.carry
    parent = {i: i for i in carry.entities.values()}
    counted = {
        arg.expr_id
        for _, _, node in decision.final.aggregates
        if node.fields.get("isDistinct") is True
        for arg in node.children[0].children
        if arg.cls == "AttributeReference"
    }

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in carry.equal:
        if a in parent and b in parent:
            ra, rb = find(a), find(b)
            if ra != rb:
                # keep the counted one as the root of the merged group
                parent[rb if ra in counted else ra] = ra if ra in counted else rb
    return {i: find(i) for i in parent}


def _value_conditions(j: _Jvm, jfinal, decision: Decision,
                      groups: dict[int, int]) -> list[tuple[Any, int | None]]:
    """Per aggregate value: which input rows count towards it (non-null, non-zero, FILTER).

    Each condition comes with the entity group it is redundant for, if any: ``count(x)``
    over an entity column ``x`` counts exactly the entities the row count already counts
    (and a distinct aggregation Spark need not widen for it). Parts the query's own
    filters already guarantee (``WHERE amount > 0``) are left out (:mod:`policies.implied`).
    """
    conditions, seen = [], set()
    final_input = decision.final.node.children[0]
    aggregates = j.items(jfinal.aggregateExpressions())
    for index, path, node in decision.final.aggregates:
        jae = aggregates[index]
        for step in path:
            jae = j.child(jae, step)
        function = node.children[0]
        parts, not_null_of = [], []
        for i, arg in enumerate(function.children):
            if arg.cls == "Literal" and arg.fields.get("value") is not None:
                continue
            jarg = j.child(jae.aggregateFunction(), i)
            if function.cls == "CountIf":
                parts.append(jarg)  # only the rows where the predicate holds are counted
                continue
            column = argument_column(arg)
            known = facts_about(final_input, column) if column is not None else set()
            if NOT_NULL not in known:
                parts.append(j.expr.IsNotNull(jarg))
                not_null_of.append(arg)
            if function.cls in fn.VALUE_AGGREGATES and NON_ZERO not in known:
                # zero of the argument's own type: the expression is resolved as built
                zero = j.expr.Literal.default(jarg.dataType())
                parts.append(j.expr.Not(j.expr.EqualTo(jarg, zero)))
        if jae.filter().isDefined():
            parts.append(jae.filter().get())
        if not parts:
            continue  # every row of the group counts: same as the row count
        redundant_for = None
        if len(parts) == 1 and len(not_null_of) == 1 and not_null_of[0].cls == "AttributeReference":
            redundant_for = groups.get(not_null_of[0].expr_id)
        condition = j.and_all(parts)
        key = condition.canonicalized().toString()
        if key not in seen:
            seen.add(key)
            conditions.append((condition, redundant_for))
    return conditions


class _Enforced:
    """The final aggregation widened with distinct-entity counts (built in the JVM)."""

    def __init__(self, aggregate, original_output, count_names: list[str]):
        self.aggregate = aggregate  # outputs: the original ones, then the counts
        self.original_output = original_output  # Scala Seq of the original attributes
        self.count_names = count_names


def _entity_attribute(j: _Jvm, child, child_ids: list[int], expr_id: int):
    """The attribute ``expr_id`` of ``child``'s output, found by position when known."""
    if expr_id in child_ids:
        attr = child.output().apply(child_ids.index(expr_id))
        if attr.exprId().id() == expr_id:
            return attr
    return j.attr_by_id(child, expr_id)  # widened by us: appended, look it up


def _enforced_aggregate(j: _Jvm, decision: Decision) -> _Enforced:
    """The final aggregation, also counting distinct entities per row and per value."""
    final = decision.final
    root = decision.query.jplan
    jfinal = j.at(root, final.path)
    child = _widen(j, j.child(jfinal, 0), final.path + (0,), decision.carry.additions)
    child_ids = output_ids(final.node.children[0])
    groups = _entity_groups(decision)
    representatives = sorted(set(groups.values()))
    entities = [_entity_attribute(j, child, child_ids, i) for i in representatives]
    extras, names = [], []

    def add(expression, name: str) -> None:
        extras.append(j.alias(expression, name))
        names.append(name)

    for n, entity in enumerate(entities):
        add(j.count_distinct(entity), f"{COUNT_PREFIX}_rows_{n}")
    if final.node.cls == "Aggregate":
        conditions = _value_conditions(j, jfinal, decision, groups)
        for n, entity in enumerate(entities):
            for m, (condition, redundant_for) in enumerate(conditions):
                if redundant_for != representatives[n]:
                    add(j.count_distinct(entity, condition), f"{COUNT_PREFIX}_v{m}_{n}")
        grouping = jfinal.groupingExpressions()
        outputs = jfinal.aggregateExpressions()
        hint = jfinal.hint()
    else:  # DISTINCT: group by its own output
        outputs = grouping = jfinal.output()
        hint = j.none()
    new_agg = j.logical.Aggregate(grouping, outputs.appendedAll(j.seq(extras)), child, hint)
    return _Enforced(new_agg, jfinal.output(), names)


def _k_condition(j: _Jvm, plan, enforced: _Enforced, k: int):
    """Every count >= k, over ``plan``, whose last outputs are the counts."""
    output = plan.output()
    size = output.size()
    n = len(enforced.count_names)
    counts = [output.apply(i) for i in range(size - n, size)]
    return j.and_all([j.expr.GreaterThanOrEqual(c, j.literal(k)) for c in counts])


def _k_filter(j: _Jvm, plan, enforced: _Enforced, k: int):
    """Filter(all counts >= k) over ``plan``, whose last outputs are the counts."""
    return j.logical.Filter(_k_condition(j, plan, enforced, k), plan)


def _original_columns(j: _Jvm, plan, enforced: _Enforced):
    """Only the job's own columns of ``plan`` (whose outputs begin with them)."""
    return j.logical.Project(enforced.original_output, plan)


def _restore(j: _Jvm, plan, enforced: _Enforced):
    """Project a re-created plan's first outputs back to the original attributes."""
    original = j.items(enforced.original_output)
    output = plan.output()
    return j.logical.Project(
        j.seq([j.alias(output.apply(i), a.name(), a.exprId()) for i, a in enumerate(original)]),
        plan,
    )


def _standalone(j: _Jvm, root, plan):
    """``plan`` runnable on its own: CTE definitions it may refer to come along."""
    if root.nodeName() == "WithCTE":
        defs = j.items(root.children())[:-1]
        return j.logical.WithCTE(plan, j.seq(defs))
    return plan


def enforced_plan(spark: SparkSession, decision: Decision):
    """The whole enforced plan as one query (no materialisation): for re-checking."""
    j = _Jvm(spark)
    enforced = _enforced_aggregate(j, decision)
    guarded = _original_columns(j, _k_filter(j, enforced.aggregate, enforced, decision.k), enforced)
    return j.rebuild(decision.query.jplan, (), decision.final.path, guarded)


def recheck(spark: SparkSession, decision: Decision, plan, analyzed=None) -> None:
    """Safety net: the rewritten plan must pass the same policy."""
    if analyzed is None:
        analyzed = _Jvm(spark).dataset(plan).queryExecution().analyzed()
    tree = parse_plan_json(plan_json(spark, analyzed))
    again = decide(AnalyzedQuery(analyzed, tree), decision.kind, decision.merchant,
                   _datasets_of(decision), platform_token_matcher(spark, decision.merchant),
                   regex_groups=jvm_regex_groups(spark))
    if not again.allowed:
        raise EnforcementError("POLICY_ENFORCEMENT", "the enforced plan did not pass the policy")


def _datasets_of(decision: Decision):
    return decision.datasets or {}


_collectors = itertools.count()

# Above the final aggregation these stop reading rows early: the suppressed rows could
# then not all be seen while the released ones stream, so the aggregation is materialised.
_EARLY_STOP = frozenset({"GlobalLimit", "LocalLimit", "Tail", "Offset"})


def _passes(count_names: tuple[str, ...], k: int):
    passes = F.lit(True)
    for name in count_names:
        passes = passes & (F.col(f"`{name}`") >= k)
    return passes


def _suppression_collector(j: _Jvm, aggregate, passes):
    """``aggregate`` under a metrics collector: how many rows it made, how many short of k.

    Built as Catalyst nodes directly (a handful of JVM calls; ``DataFrame.observe`` would
    analyse a stand-in plan and register a listener, about 12 ms per job). The counts are
    read from the released rows' own execution afterwards (``observedMetrics``).
    """
    def total():
        one = j.aggregate(j.agg.Count(j.seq([j.literal(1)])))
        return j.alias(one, "total")

    short = j.alias(j.aggregate(j.agg.CountIf(j.expr.Not(passes))), "suppressed")
    metrics = j.seq([j.constant("metric:total", total), short])
    number = next(_collectors)  # a name of its own per run; also the collector's id
    name = f"yushan_k_{number}"
    return j.logical.CollectMetrics(name, metrics, aggregate, number), name


def _execute_aggregate(j: _Jvm, decision: Decision) -> ExecutionResult:
    root = decision.query.jplan
    enforced = _enforced_aggregate(j, decision)
    new_agg = enforced.aggregate
    if not any(n.cls in _EARLY_STOP for n in decision.final.above):
        # One Spark job: the rows pass a metrics collector (total, short of k) on their
        # way from the aggregation to the k filter.
        passes = _k_condition(j, new_agg, enforced, decision.k)
        collector, name = _suppression_collector(j, new_agg, passes)
        guarded = _original_columns(j, j.logical.Filter(passes, collector), enforced)
        plan = j.rebuild(root, (), decision.final.path, guarded)
        released = j.dataset(plan)
        execution = released.queryExecution()
        verdict = _Recheck(j.spark, decision, plan, execution.analyzed())
        verdict.start()
        return ExecutionResult(DataFrame(released, j.spark), metrics=(execution, name),
                               recheck=verdict)
    # Materialise the aggregation once: its rows are few, and both the suppressed count
    # and the released rows come from this one run.
    passes = _passes(tuple(enforced.count_names), decision.k)
    recheck(j.spark, decision, enforced_plan(j.spark, decision))
    checkpoint = j.dataset(_standalone(j, root, new_agg)).localCheckpoint(True)
    cp_plan = checkpoint.logicalPlan()
    counts = DataFrame(checkpoint, j.spark).agg(
        F.count(F.lit(1)), F.count(F.when(passes, F.lit(1)))
    ).first()
    total, released = int(counts[0]), int(counts[1])
    passed = _k_filter(j, cp_plan, enforced, decision.k)
    guarded = _restore(j, passed, enforced)
    plan = j.rebuild(root, (), decision.final.path, guarded)
    return ExecutionResult(j.dataframe(plan), total - released, total)


# -- segment jobs ----------------------------------------------------------------------------


def _execute_segment(j: _Jvm, decision: Decision) -> ExecutionResult:
    """Segments of at least k distinct consumers (or, without consumer data, k members).

    Members that map to one consumer count once: the consumer's entity is carried to the
    output (:mod:`policies.carry`) and counted. A member with more than one label is in no
    segment. A job with too many labels releases
    nothing, exactly like one whose every segment was suppressed (P8): nothing observable
    tells the two apart.
    """
    plan = decision.query.jplan
    carry = decision.carry
    if carry is not None and carry.entities:
        plan = _widen(j, plan, (), carry.additions)
    frame = j.dataframe(plan)
    segment, member = frame.columns[:2]
    if carry is not None and carry.entities:
        # positions, not names: the entity column may share a name with an output
        frame = frame.toDF(*[f"__c{i}" for i in range(len(frame.columns))])
        extra = [F.col(f"__c{i}") for i in range(2, len(frame.columns))]
        unit = F.coalesce(*extra) if len(extra) > 1 else extra[0]
        rows = frame.select(F.col("__c0").alias(segment), F.col("__c1").alias(member),
                            unit.alias("__unit")).distinct().localCheckpoint(eager=True)
        counted = "__unit"
    else:
        rows = frame.distinct().localCheckpoint(eager=True)
        counted = member
    # One label per member: a member in several segments (a generator or a join repeating
    # its rows with different labels) would have its data spelled out bit by bit across
    # segments that each hold k consumers. Such members are in no segment, as if unlabelled.
    labelled = rows.select(segment, member).distinct().groupBy(member).count()
    single = labelled.filter(F.col("count") == 1).select(member)
    rows = rows.join(single, on=member, how="left_semi")
    sizes = rows.groupBy(segment).agg(F.countDistinct(counted).alias("n"))
    labels = sizes.count()
    total = rows.select(segment, member).distinct().count()
    if labels > MAX_SEGMENT_LABELS:
        empty = rows.select(segment, member).limit(0)
        return ExecutionResult(empty, total, total)
    keep = sizes.filter((F.col("n") >= decision.k) & F.col(segment).isNotNull()).select(segment)
    released = (rows.join(F.broadcast(keep), on=segment, how="left_semi")
                .select(segment, member).distinct())
    kept = released.count()
    return ExecutionResult(released, total - kept, total)


# -- dp jobs ---------------------------------------------------------------------------------


def _jvm_aggregates(j: _Jvm, outputs) -> list[Any]:
    """The AggregateExpressions of ``outputs`` in the order the policy numbered them
    (outputs in order, each walked pre-order: :meth:`policies.flow.Flow._release_aggregates`)."""
    found: list[Any] = []

    def walk(e) -> None:
        if e.nodeName() == "AggregateExpression":
            found.append(e)
            return
        for child in j.items(e.children()):
            walk(child)

    for e in j.items(outputs):
        walk(e)
    return found


def _replace_aggregates(j: _Jvm, e, groups: list[Any], group_attrs: list[Any],
                        agg_attrs: list[Any], counter: list[int]):
    """``e`` with each AggregateExpression replaced by its released value's attribute and
    each grouping expression by the released group key's attribute (same walk order)."""
    if e.nodeName() == "AggregateExpression":
        attr = agg_attrs[counter[0]]
        counter[0] += 1
        return attr
    for g, attr in zip(groups, group_attrs, strict=True):
        if g.semanticEquals(e):
            return attr
    children = j.items(e.children())
    if not children:
        return e
    new = [_replace_aggregates(j, c, groups, group_attrs, agg_attrs, counter) for c in children]
    return e.withNewChildren(j.seq(new))


class _Reduced:
    """Each consumer's contribution: one row per (consumer, group), clamped (D2)."""

    def __init__(self, frame: DataFrame, keys: list[str], parts: dict[int, dict[str, str]],
                 aggregates: list[Any], grouping: list[Any]):
        self.frame, self.keys, self.parts = frame, keys, parts
        self.aggregates, self.grouping = aggregates, grouping


def contributions(spark: SparkSession, decision: Decision) -> DataFrame:
    """What each consumer contributes to a dp release, after the per-consumer reduction
    and clamping and before any noise: ``__u`` (the consumer), ``__g*`` (group keys) and
    one column per measured part. For tests and audits of the mechanism (D2)."""
    return _reduce(_Jvm(spark), decision).frame


def _reduce(j: _Jvm, decision: Decision) -> _Reduced:
    import secrets

    from pyspark.sql import Window

    plan = decision.dp
    root = decision.query.jplan
    final = decision.final
    jfinal = j.at(root, final.path)
    child = _widen(j, j.child(jfinal, 0), final.path + (0,), decision.carry.additions)
    child_ids = output_ids(final.node.children[0])
    groups_of = _entity_groups(decision)
    entities = [_entity_attribute(j, child, child_ids, i) for i in sorted(set(groups_of.values()))]
    unit = entities[0] if len(entities) == 1 else j.expr.Coalesce(j.seq(entities))
    grouping = j.items(jfinal.groupingExpressions())
    aggregates = _jvm_aggregates(j, jfinal.aggregateExpressions())
    # One row per (consumer, group): the group keys and each aggregate's per-consumer part.
    if plan.one_group:
        # Every key is a column of the consumer's own one row: group by the consumer alone
        # and take its key. One group per consumer then holds by construction, whatever the
        # analysis concluded, and no second pass is needed to cap it.
        outputs = [j.alias(unit, "__u")] + [
            j.alias(j.aggregate(j.agg.First(g, True)), f"__g{n}") for n, g in enumerate(grouping)]
        by = [unit]
    else:
        outputs = [j.alias(unit, "__u")] + [j.alias(g, f"__g{n}") for n, g in enumerate(grouping)]
        by = [unit] + grouping
    parts: dict[int, dict[str, str]] = {}
    for agg in plan.aggregates:
        parts[agg.index] = {}
        if agg.same_as is not None:
            continue
        jae = aggregates[agg.index]
        condition = jae.filter().get() if jae.filter().isDefined() else None
        function = jae.aggregateFunction()
        names: dict[str, str] = {}
        if agg.function == "count":
            outputs.append(j.alias(j.aggregate(function, False, condition), f"__c{agg.index}"))
            names["count"] = f"__c{agg.index}"
        elif agg.function in ("sum", "avg"):
            arg = j.child(function, 0)
            outputs.append(j.alias(j.aggregate(function, False, condition), f"__v{agg.index}"))
            outputs.append(j.alias(j.aggregate(j.agg.Count(j.seq([arg])), False, condition),
                                   f"__n{agg.index}"))
            names.update(value=f"__v{agg.index}", rows=f"__n{agg.index}")
        parts[agg.index] = names
    per_unit = j.logical.Aggregate(j.seq(by), j.seq(outputs), child, jfinal.hint())
    rows = j.dataframe(_standalone(j, root, per_unit))
    keys = [f"__g{n}" for n in range(len(grouping))]
    max_rows = plan.max_rows
    columns = [F.col("__u")] + [F.col(k) for k in keys]
    for agg in plan.aggregates:
        names = parts[agg.index]
        if agg.same_as is not None:
            continue
        if agg.function == "count":
            columns.append(F.least(F.col(names["count"]), F.lit(max_rows)).alias(names["count"]))
        elif agg.function in ("sum", "avg"):
            n = F.col(names["rows"]).cast("double")
            v = F.coalesce(F.col(names["value"]).cast("double"), F.lit(0.0))
            total = v * n if agg.function == "avg" else v  # per-consumer sum
            # More than max_rows rows: the consumer's sum scaled to max_rows rows (its mean
            # kept), then clamped to the declared bounds whatever the expression was.
            scaled = F.when(n > max_rows, total * F.lit(float(max_rows)) / n).otherwise(total)
            lo, hi = agg.bounds
            columns.append(F.least(F.greatest(scaled, F.lit(lo)), F.lit(hi)).alias(names["value"]))
            columns.append(F.least(F.col(names["rows"]), F.lit(max_rows)).alias(names["rows"]))
    reduced = rows.select(*columns)
    if keys and not plan.one_group:
        # At most max_groups groups per consumer, chosen by a keyed hash of the group key
        # (the key is drawn per run, so a query cannot steer which are kept).
        salt = secrets.randbits(62)
        order = F.xxhash64(F.lit(salt), *[F.col(k) for k in keys])
        rank = F.row_number().over(Window.partitionBy("__u").orderBy(order))
        reduced = reduced.withColumn("__r", rank).where(F.col("__r") <= plan.max_groups)
    return _Reduced(reduced, keys, parts, aggregates, grouping)


def _execute_dp(j: _Jvm, decision: Decision) -> ExecutionResult:
    """The dp release: per-consumer reduction and clamping, then the groups' sums and
    counts in one Spark job; noise and partition selection from OpenDP on the (few) group
    rows; the query's own post-processing (HAVING, ORDER BY, LIMIT, windows) over the
    noisy rows."""
    from policies import noise

    plan = decision.dp
    spark = j.spark
    root = decision.query.jplan
    final = decision.final
    jfinal = j.at(root, final.path)
    red = _reduce(j, decision)
    reduced, keys, parts = red.frame, red.keys, red.parts
    aggregates, grouping = red.aggregates, red.grouping
    sums = [F.count(F.lit(1)).alias("__units")]
    for agg in plan.aggregates:
        for name in parts[agg.index].values():  # (copies have none)
            sums.append(F.sum(F.col(name)).alias(name))
    grouped = reduced.groupBy(*keys).agg(*sums) if keys else reduced.agg(*sums)
    # As Arrow: the group keys go back to Spark exactly as they came (types, time zones),
    # never through Python objects; only the measurements are read here.
    exact = grouped.toArrow()
    measured = exact.drop_columns(keys).to_pylist()
    kept, values, accuracy = _noisy_rows(plan, measured, bool(keys), parts, noise)
    columns = {k: exact.column(k).take(pa.array(kept, type=pa.int64())) for k in keys}
    for i in range(len(aggregates)):
        columns[f"__a{i}"] = pa.array([row[i] for row in values], type=pa.float64())
    released = pa.table(columns)
    # The released rows as a relation typed like the original aggregation's outputs, sent
    # to the JVM as Arrow (as a list of rows they were pickled, unpickled in the JVM, and
    # that second stage took about as long as noising itself on the perf query).
    agg_types = [str(a.dataType().simpleString()) for a in aggregates]
    agg_names = [f"__a{i}" for i in range(len(aggregates))]
    table = spark.createDataFrame(released)
    table = table.select(*[F.col(k) for k in keys],
                         *[F.col(n).cast(t).alias(n) for n, t in zip(agg_names, agg_types, strict=True)])
    relation = table._jdf.queryExecution().analyzed()
    rel_out = j.items(relation.output())
    group_attrs, agg_attrs = rel_out[:len(keys)], rel_out[len(keys):]
    counter = [0]
    projected = []
    for e in j.items(jfinal.aggregateExpressions()):
        body = e.child() if e.nodeName() == "Alias" else e
        replaced = _replace_aggregates(j, body, grouping, group_attrs, agg_attrs, counter)
        projected.append(j.alias(replaced, e.name(), e.exprId()))
    project = j.logical.Project(j.seq(projected), relation)
    result = ExecutionResult(j.dataframe(j.rebuild(root, (), final.path, project)),
                             0, released.num_rows)
    result.accuracy = _column_accuracy(decision, accuracy)
    result.epsilon, result.delta = plan.epsilon, plan.delta
    return result


def _noisy_rows(plan, exact: list[dict], grouped: bool, parts: dict[int, dict[str, str]], noise):
    """Noise every measurement of every group (OpenDP) and select the groups to release.

    ``exact`` holds each group's exact measurements (``__units`` and the parts), in the
    groups' order. Returns the indexes of the released groups, their values (one per
    aggregate, in policy order) and each aggregate's 95% half-width (the largest over
    released rows, for averages)."""
    units_m = plan.units()
    units = noise.discrete_laplace([int(r["__units"]) for r in exact], units_m.scale)
    noisy: dict[str, list[float]] = {}
    for agg in plan.aggregates:
        names = parts[agg.index]
        if "count" in names:
            m = plan.for_aggregate(agg.index, "count")
            noisy[names["count"]] = noise.discrete_laplace([int(r[names["count"]] or 0) for r in exact], m.scale)
        if "value" in names:
            m = plan.for_aggregate(agg.index, "sum")
            noisy[names["value"]] = noise.laplace([float(r[names["value"]] or 0.0) for r in exact], m.scale)
            if agg.function == "avg":
                c = plan.for_aggregate(agg.index, "count")
                noisy[names["rows"]] = noise.discrete_laplace([int(r[names["rows"]] or 0) for r in exact], c.scale)
    kept: list[int] = []
    rows: list[list[float | None]] = []
    widths: dict[int, float] = {}
    count_of_aggregates = max((a.index for a in plan.aggregates), default=-1) + 1
    measured = [a for a in plan.aggregates if a.same_as is None]
    copies = [a for a in plan.aggregates if a.same_as is not None]
    for i in range(len(exact)):
        if grouped and units[i] < plan.threshold:
            continue  # DP partition selection: too few consumers to release this group
        values: list[float | None] = [None] * count_of_aggregates
        for agg in measured:
            names = parts[agg.index]
            if agg.function == "count_units":
                values[agg.index] = float(max(units[i], 0))
                widths[agg.index] = plan.units().ci95
            elif agg.function == "count":
                values[agg.index] = float(max(noisy[names["count"]][i], 0))
                widths[agg.index] = plan.for_aggregate(agg.index, "count").ci95
            elif agg.function == "sum":
                values[agg.index] = noisy[names["value"]][i]
                widths[agg.index] = plan.for_aggregate(agg.index, "sum").ci95
            else:
                total, n = noisy[names["value"]][i], noisy[names["rows"]][i]
                if n < 1:
                    values[agg.index] = None  # no reliable denominator: released as NULL
                    continue
                lo, hi = agg.bounds
                mean = min(max(total / n, lo), hi)  # a mean of clamped values lies within
                values[agg.index] = mean
                s = plan.for_aggregate(agg.index, "sum").ci95
                c = plan.for_aggregate(agg.index, "count").ci95
                width = (s + abs(mean) * c) / max(n - c, 1.0)
                widths[agg.index] = max(widths.get(agg.index, 0.0), width)
        for agg in copies:
            values[agg.index] = values[agg.same_as]
            if agg.same_as in widths:
                widths[agg.index] = widths[agg.same_as]
        kept.append(i)
        rows.append(values)
    return kept, rows, widths


def _column_accuracy(decision: Decision, widths: dict[int, float]) -> dict[str, dict[str, float]]:
    """Half-widths by output column, for outputs that are one aggregate (maybe rounded or
    cast); columns computed from several aggregates get none."""
    out: dict[str, dict[str, float]] = {}
    for agg in decision.dp.aggregates:
        if agg.index in widths and agg.column in decision.columns:
            out[agg.column] = {"ci95": round(float(widths[agg.index]), 6)}
    return out
