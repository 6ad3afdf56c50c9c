"""The decision: run the lineage pass, apply rules P1-P7 to the job's outputs, plan P3."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from policies.carry import CarryPlan, plan_carry
from policies.dp import plan_dp
from policies.flow import Flow, FlowResult, release_mode
from policies.jvm import jvm_regex_groups
from policies.lineage import FinalAggregation, Lineages, Output, find_final, quasi_raw, sensitive
from policies.model import OWN, Mode, Source, Violation, sorted_sources
from policies.segment import platform_token_matcher
from policies.sparkplan import AnalyzedQuery, PlanRefused, QueryError, analyze
from policies.tree import Node
from yushan.catalog import DatasetInfo

KINDS = ("aggregate", "segment")
DEFAULT_K = 50
MAX_SEGMENT_LABELS = 100


@dataclass
class Decision:
    """What the policy decided about one job, and what it needs to run it enforced."""

    kind: str
    merchant: str
    violations: list[Violation]
    columns: list[str] = field(default_factory=list)
    columns_read: list[tuple[str, str]] = field(default_factory=list)
    datasets_read: list[str] = field(default_factory=list)
    k: int = DEFAULT_K
    consumer_datasets: list[str] = field(default_factory=list)
    query: AnalyzedQuery | None = None
    final: FinalAggregation | None = None
    carry: CarryPlan | None = None
    datasets: Mapping[str, DatasetInfo] | None = None
    # How released values are protected: "dp", "threshold", or None (no consumer data).
    release: str | None = None
    # dp: the job's privacy cost (charged to the merchant's budget when it starts running)
    # and the expected 95% half-width of each output column ({column: {"ci95": x}}).
    epsilon: float | None = None
    delta: float | None = None
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    flow: FlowResult | None = None
    error: QueryError | None = None  # a syntax or name error (not a policy decision)
    dp: Any = None  # policies.dp.DpPlan for dp jobs

    @property
    def allowed(self) -> bool:
        return not self.violations and self.error is None

    @property
    def decision(self) -> str:
        if self.error is not None:
            return "error"
        return "allow" if self.allowed else "deny"

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "violations": [v.to_dict() for v in self.violations],
            "columns_read": [{"dataset": d, "column": c} for d, c in self.columns_read],
            "datasets_read": list(self.datasets_read),
            "columns": list(self.columns),
            "kind": self.kind,
            "k": self.k,
            "release": self.release,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accuracy": dict(self.accuracy),
            **({"error": self.error.to_dict()} if self.error is not None else {}),
            "enforcement": self.enforcement_summary(),
        }

    def enforcement_summary(self) -> dict[str, Any] | None:
        if not self.allowed or self.query is None:
            return None
        if self.kind == "segment":
            return {"min_members_per_segment": self.k, "max_labels": MAX_SEGMENT_LABELS}
        if self.final is None or not self.consumer_datasets:
            return None
        return {"k": self.k, "entities": sorted(self.carry.entities) if self.carry else []}

    def execute(self, spark: SparkSession):
        """Run the job with P3 enforced inside Spark (see :mod:`policies.enforce`)."""
        from policies.enforce import execute

        if not self.allowed:
            raise PermissionError("the policy denied this job; it cannot be executed")
        return execute(spark, self)


def check(
    spark: SparkSession,
    sql: str,
    kind: str,
    merchant: str,
    datasets: Mapping[str, DatasetInfo],
) -> Decision:
    """Decide whether ``sql`` may run as a ``kind`` job for ``merchant``.

    The catalog holding exactly ``datasets`` must already be installed in ``spark``.
    Nothing is executed; the decision is made on Spark's analyzed plan.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    try:
        query = analyze(spark, sql)
    except PlanRefused as refused:
        return Decision(kind, merchant, [refused.violation])
    except QueryError as error:
        return Decision(kind, merchant, [], error=error)
    return decide(query, kind, merchant, datasets, platform_token_matcher(spark, merchant),
                  regex_groups=jvm_regex_groups(spark))


def decide(query: AnalyzedQuery, kind: str, merchant: str, datasets: Mapping[str, DatasetInfo],
           is_platform_token, regex_groups=None) -> Decision:
    root = query.tree
    final, blocker = find_final(root) if kind == "aggregate" else (None, None)
    lineages = Lineages(datasets, merchant, final, is_platform_token)
    outputs = lineages.run(root)
    release = release_mode(root, {k.lower(): v for k, v in datasets.items()})
    flow = Flow(datasets, merchant, final, release if kind == "aggregate" else None,
                is_platform_token, regex_groups).run(root)
    consumer = sorted({r.dataset.full_name for r in lineages.relations if r.dataset.is_consumer_data})
    ks = [r.dataset.k or DEFAULT_K for r in lineages.relations if r.dataset.is_consumer_data]
    decision = Decision(
        kind, merchant, lineages.violations, columns=[name for _, name, _ in outputs],
        columns_read=sorted(lineages.columns_read), datasets_read=sorted(lineages.datasets_read), k=max(ks, default=DEFAULT_K),
        consumer_datasets=consumer, query=query, final=final, datasets=datasets,
        # Segment jobs are exact, each segment over >= k consumers (the contract's segment
        # section), whatever the datasets' mode.
        release=release if kind == "aggregate" else ("threshold" if release else None),
    )
    lineages.violations.extend(flow.violations)  # the decision's own list
    decision.flow = flow
    if kind == "aggregate":
        _check_aggregate_outputs(decision, lineages, outputs, final, blocker)
        if final is not None and consumer:
            _plan_p3(decision, lineages, root, final)
    else:
        _check_segment_outputs(decision, lineages, outputs, datasets, merchant)
        if consumer:
            _check_segment_link(decision, lineages, flow)
            _plan_segment_carry(decision, lineages, root, flow)
    if decision.release == "dp" and final is not None and final.node.cls != "Aggregate":
        lineages.deny(
            "P3", "DISTINCT", set(),
            "In dp mode a SELECT DISTINCT over consumer data cannot be released; only counts, "
            "sums and averages per group can.",
            "Use GROUP BY with count(DISTINCT user_id) instead of SELECT DISTINCT.",
        )
    if decision.allowed and decision.release == "dp" and final is not None:
        plan_dp(decision, flow)
    _dedupe(decision)
    return decision


def _check_aggregate_outputs(decision: Decision, lineages: Lineages, outputs: list[Output],
                             final: FinalAggregation | None, blocker: Node | None) -> None:
    deny = lineages.deny
    for _, name, lin in outputs:
        raw = sensitive(lin, Mode.RAW)
        if raw:
            deny("P1", name, raw,
                 "This output column carries identifying or private values of consumers.",
                 "Remove the column, or count it: count(DISTINCT user_id) AS buyers.")
        tokens = {s for s, m in lin if m == Mode.TOKEN}
        if tokens:
            deny("P1", name, tokens, "segment_token() may only be used in segment jobs.",
                 "Submit the job with kind 'segment' and columns segment, member.")
        quasi = quasi_raw(lin)
        if quasi and final is not None:
            deny("P2", name, quasi,
                 "This output column carries quasi-identifying values that are neither a "
                 "GROUP BY key nor an allowed aggregate.",
                 "Group by the column, or aggregate it with count, sum, avg, stddev or variance.")
    if decision.consumer_datasets and final is None:
        consumer_sources = {
            s for _, _, lin in outputs for s, _ in lin if s.consumer
        } or {
            Source(r.dataset.full_name, r.dataset.entity_column or "", "identifier", True)
            for r in lineages.relations if r.dataset.is_consumer_data
        }
        combined = blocker is not None and _has_aggregate(blocker)
        lineages.deny(
            "P5", ", ".join(decision.columns) or "(query)", consumer_sources,
            "The job reads consumer data, but its last step is a {operation}, not an "
            "aggregation, so its rows cannot be held to the k-threshold." if combined else
            "The job reads consumer data but returns row-level output; only aggregated rows "
            "(or a segment job) may leave.",
            "Make the aggregation the last step (ORDER BY/LIMIT may follow); run separate "
            "jobs instead of combining aggregates." if combined else
            "Aggregate with GROUP BY quasi or public columns, e.g. SELECT city, "
            "count(DISTINCT user_id) ... GROUP BY city; or submit a segment job.",
            **({"operation": blocker.cls} if combined and blocker is not None else {}),
        )
    if final is not None and lineages.expand_over_consumer:
        lineages.deny(
            "P3", "GROUP BY", set(),
            "ROLLUP, CUBE and GROUPING SETS over consumer data are not allowed: overlapping "
            "groups invite differencing.",
            "Run one GROUP BY per job.",
        )


def _has_aggregate(node: Node) -> bool:
    return node.cls in ("Aggregate", "Distinct") or any(_has_aggregate(c) for c in node.children)


def _plan_p3(decision: Decision, lineages: Lineages, root: Node, final: FinalAggregation) -> None:
    """Static half of P3: the entity of each consumer dataset must reach the aggregation."""
    cte_defs = {int(n.fields.get("id", -1)): n for n in _walk_plans(root) if n.cls == "CTERelationDef"}
    child = final.node.children[0]
    carry = plan_carry(child, final.path + (0,), lineages.datasets, cte_defs)
    decision.carry = carry
    main = {r.dataset.full_name for r in lineages.relations
            if r.dataset.is_consumer_data and not r.in_subquery}
    for ds, why in carry.problems:
        info = lineages.datasets.get(ds.lower())
        entity = info.entity_column if info else "user_id"
        lineages.deny(
            "P3", "GROUP BY", {Source(ds, entity or "", "identifier", True)},
            "The number of distinct consumers per row cannot be counted for {dataset}: {why}.",
            "Keep {entity} in every subquery between {dataset} and the final GROUP BY (select "
            "it, or group by it in the inner query).",
            dataset=ds, why=why, entity=entity or "",
        )
    if not main:
        lineages.deny(
            "P3", "(query)", {Source(d, "", "identifier", True) for d in decision.consumer_datasets},
            "Consumer data ({datasets}) is read only inside a subquery, so the consumers behind "
            "each released row cannot be counted.",
            "Join the consumer dataset in FROM instead of reading it in IN/EXISTS.",
            datasets=", ".join(decision.consumer_datasets),
        )


def _walk_plans(node: Node):
    yield node
    for child in node.children:
        yield from _walk_plans(child)


def _check_segment_outputs(decision: Decision, lineages: Lineages, outputs: list[Output],
                           datasets: Mapping[str, DatasetInfo], merchant: str) -> None:
    deny = lineages.deny
    names = [name.lower() for _, name, _ in outputs]
    if names != ["segment", "member"]:
        deny("P5", ", ".join(n for _, n, _ in outputs) or "(query)", set(),
             "A segment job must return exactly two columns: segment, member.",
             "SELECT <label> AS segment, segment_token(user_id) AS member ... (or your own "
             "member key as member).")
        return
    (_, _, label), (_, _, member) = outputs
    bad = sensitive(label, Mode.RAW, Mode.KEY) | {s for s, m in label if m == Mode.TOKEN}
    if bad:
        deny("P1", "segment", bad,
             "The segment label depends on identifying or private columns.",
             "Derive labels from quasi or public columns (city, vip_level, category ...).")
    member_keys = {
        (ds.full_name, ds.member_key.lower())
        for ds in datasets.values() if ds.owner == merchant and ds.member_key
    }
    tokens = [(s, m) for s, m in member if m == Mode.TOKEN]
    others = [(s, m) for s, m in member if m != Mode.TOKEN]
    token_ok = bool(tokens) and not others and all(
        _is_entity(s, lineages) for s, _ in tokens
    )
    own_ok = bool(others) and not tokens and all(
        s.column_class == OWN and (s.dataset, s.column.lower()) in member_keys and m == Mode.RAW
        for s, m in others
    )
    if not (token_ok or own_ok):
        deny("P1", "member", {s for s, _ in member},
             "member must be segment_token(<entity column>) or your own member key, unchanged.",
             "Use segment_token(c.user_id) AS member, or m.member_id AS member from your own "
             "dataset.")


def _plan_segment_carry(decision: Decision, lineages: Lineages, root: Node,
                        flow: FlowResult) -> None:
    """Segments count distinct consumers: their entity must reach the output. A member
    that is segment_token(entity) is one consumer already (the token is injective); a
    member key joined to consumers on a column whose values are unique (phone_hash:
    uploads refuse duplicates) stands for at most one member per consumer, so counting
    members never counts a consumer twice. Otherwise the entity is carried and counted."""
    member = flow.outputs[1][2] if len(flow.outputs) == 2 else None
    if member is not None and (member.token or (member.linked and member.one_group)):
        return
    cte_defs = {int(n.fields.get("id", -1)): n for n in _walk_plans(root) if n.cls == "CTERelationDef"}
    if root.cls == "WithCTE":
        last = len(root.children) - 1
        carry = plan_carry(root.children[last], (last,), lineages.datasets, cte_defs)
    else:
        carry = plan_carry(root, (), lineages.datasets, cte_defs)
    decision.carry = carry
    for ds, why in carry.problems:
        info = lineages.datasets.get(ds.lower())
        entity = info.entity_column if info else "user_id"
        lineages.deny(
            "P3", "member", {Source(ds, entity or "", "identifier", True)},
            "The number of distinct consumers per segment cannot be counted for {dataset}: {why}.",
            "Keep {entity} in every subquery between {dataset} and the output.",
            dataset=ds, why=why, entity=entity or "",
        )


def _check_segment_link(decision: Decision, lineages: Lineages, flow: FlowResult) -> None:
    """A segment job that reads consumer data labels each member from that member's own
    consumer: ``member`` is segment_token(entity), or the merchant's member key of a row
    joined to the consumer on an identifier (m.phone_hash = c.phone_hash)."""
    if len(flow.outputs) != 2:
        return
    member = flow.outputs[1][2]
    if member.token or member.linked:
        return
    lineages.deny(
        "P4", "member", set(),
        "The members are not joined to the consumers whose data labels them, so a label "
        "could carry another consumer's data.",
        "Join your members to consumers on an identifier (m.phone_hash = c.phone_hash), or "
        "use segment_token(c.user_id) AS member.",
    )


def _is_entity(source: Source, lineages: Lineages) -> bool:
    ds = lineages.datasets.get(source.dataset.lower())
    return bool(ds and ds.is_consumer_data and ds.entity_column
                and ds.entity_column.lower() == source.column.lower())


def _dedupe(decision: Decision) -> None:
    seen, unique = set(), []
    for v in decision.violations:
        key = (v.rule, v.column, v.message)
        if key not in seen:
            seen.add(key)
            unique.append(v)
    decision.violations = unique


__all__ = ["Decision", "check", "decide", "sorted_sources"]
