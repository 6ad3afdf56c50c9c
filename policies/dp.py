"""dp mode (contract D1-D6): what a job's release will measure, what it costs, how accurate.

Made at check time from the plan alone (no data is read): the measurements of the release
step, each consumer's contribution bounds, the split of the job's ε over the measurements,
the Laplace scales, the partition-selection threshold, and each output column's expected
95% half-width. :mod:`policies.enforce` runs it (``_execute_dp``).

Model: adding or removing one consumer (all their rows in every consumer dataset). Each
consumer's rows are first reduced to one row per release group, with per-group row counts
clamped to ``max_rows`` and per-group sums clamped to the declared bounds; each consumer
reaches at most ``max_groups`` groups (exactly one when every group key is a column of a
one-row-per-consumer dataset). So one consumer changes

* the distinct-consumer count of at most G groups by 1 each:   Δ₁ = G
* a row count by at most ``max_rows`` in each of G groups:      Δ₁ = G · max_rows
* a sum by at most max(|lo|, |hi|) in each of G groups:          Δ₁ = G · max(|lo|, |hi|)

and Laplace noise of scale Δ₁/εᵢ makes measurement i εᵢ-DP. The job's ε is the sum of the
εᵢ (sequential composition); grouped releases add δ for partition selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from policies import noise
from policies.flow import DpAggregate, FlowResult

# The cost of one dp job. Per-job values are platform policy, not the query's choice.
EPSILON_PER_JOB = 1.0
DELTA_PER_JOB = 1e-6
DEFAULT_MAX_GROUPS = 4
DEFAULT_MAX_ROWS = 20
# How the job's ε is split: sums are noisier for the same ε (their bound is large), so
# they get a larger share.
WEIGHTS = {"units": 1.0, "count": 1.0, "sum": 3.0}


@dataclass
class Measurement:
    """One noisy quantity per released group."""

    kind: str  # "units" | "count" | "sum"
    aggregate: int | None  # DpAggregate.index it serves (None: the selection's unit count)
    epsilon: float = 0.0
    sensitivity: float = 0.0
    bounds: tuple[float, float] | None = None

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon

    @property
    def ci95(self) -> float:
        return noise.ci95(self.scale)


@dataclass
class DpPlan:
    aggregates: list[DpAggregate]
    measurements: list[Measurement] = field(default_factory=list)
    max_groups: int = DEFAULT_MAX_GROUPS  # G used for sensitivity (1 with one-group keys)
    max_rows: int = DEFAULT_MAX_ROWS
    one_group: bool = False
    grouped: bool = False
    epsilon: float = EPSILON_PER_JOB
    delta: float = 0.0
    threshold: float | None = None  # partition selection on the noisy unit count

    def units(self) -> Measurement:
        return next(m for m in self.measurements if m.kind == "units")

    def for_aggregate(self, index: int, kind: str) -> Measurement:
        return next(m for m in self.measurements if m.aggregate == index and m.kind == kind)


def plan_dp(decision, flow: FlowResult) -> None:
    """Fill ``decision.dp``, ``.epsilon``, ``.delta`` and ``.accuracy`` for a dp job."""
    consumer = [d for d in (decision.datasets or {}).values()
                if d.is_platform and d.is_consumer_data and d.full_name in decision.consumer_datasets]
    max_groups = min((d.max_groups or DEFAULT_MAX_GROUPS for d in consumer), default=DEFAULT_MAX_GROUPS)
    max_rows = min((d.max_rows or DEFAULT_MAX_ROWS for d in consumer), default=DEFAULT_MAX_ROWS)
    one_group = flow.one_group_keys or not flow.grouped
    g = 1 if one_group else max_groups
    plan = DpPlan(list(flow.dp_aggregates), max_groups=g, max_rows=max_rows,
                  one_group=one_group, grouped=flow.grouped)
    # The distinct-consumer count is always measured: it selects the groups to release
    # and answers count(DISTINCT user_id); one measurement serves both.
    plan.measurements.append(Measurement("units", None, sensitivity=float(g)))
    for agg in plan.aggregates:
        if agg.same_as is not None:
            continue  # measured once, released in both places
        if agg.function == "count":
            plan.measurements.append(Measurement("count", agg.index, sensitivity=float(g * max_rows)))
        elif agg.function in ("sum", "avg"):
            lo, hi = agg.bounds
            plan.measurements.append(Measurement("sum", agg.index, bounds=agg.bounds,
                                                 sensitivity=float(g * max(abs(lo), abs(hi)))))
            if agg.function == "avg":
                plan.measurements.append(Measurement("count", agg.index,
                                                     sensitivity=float(g * max_rows)))
    total = sum(WEIGHTS[m.kind] for m in plan.measurements)
    for m in plan.measurements:
        m.epsilon = plan.epsilon * WEIGHTS[m.kind] / total
        m.sensitivity = max(m.sensitivity, 1e-9)
    if plan.grouped:
        plan.delta = DELTA_PER_JOB
        plan.threshold = noise.selection_threshold(plan.units().scale, g, plan.delta)
    decision.dp = plan
    decision.epsilon = plan.epsilon
    decision.delta = plan.delta
    decision.accuracy = expected_accuracy(plan)


def expected_accuracy(plan: DpPlan) -> dict[str, dict[str, float | None]]:
    """Each aggregate column's expected 95% half-width (avg: depends on the group's size,
    so only the sum's and count's half-widths are known before the run)."""
    out: dict[str, dict[str, float | None]] = {}
    for agg in plan.aggregates:
        if agg.same_as is not None:
            agg = replace(agg, index=agg.same_as)
        if agg.function == "count_units":
            out[agg.column] = {"ci95": round(plan.units().ci95, 6)}
        elif agg.function == "count":
            out[agg.column] = {"ci95": round(plan.for_aggregate(agg.index, "count").ci95, 6)}
        elif agg.function == "sum":
            out[agg.column] = {"ci95": round(plan.for_aggregate(agg.index, "sum").ci95, 6)}
        else:
            s = plan.for_aggregate(agg.index, "sum").ci95
            c = plan.for_aggregate(agg.index, "count").ci95
            out[agg.column] = {"ci95": None, "sum_ci95": round(s, 6), "count_ci95": round(c, 6)}
    return out
