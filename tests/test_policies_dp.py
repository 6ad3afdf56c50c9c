"""dp mode (contract D1-D6): the guarantee's ingredients, tested where they can be stated.

* clamping holds whatever expression a sum computes (hypothesis over expression trees);
* a consumer reaches at most ``max_groups`` groups;
* removing one consumer changes the pre-noise group values by at most the sensitivity the
  noise is calibrated to;
* OpenDP's samplers have the scale the accounting assumes (statistical tests);
* the check tells the cost and the expected accuracy before anything runs.
"""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import check, noise
from policies.enforce import contributions

pytestmark = pytest.mark.spark

J = "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id"


def _dp(hanfu_dp_env, spark, sql: str):
    decision = check(spark, sql, "aggregate", hanfu_dp_env.merchant, hanfu_dp_env.datasets)
    assert decision.allowed, [v.message for v in decision.violations]
    assert decision.release == "dp"
    return decision


# -- expressions a hostile analyst might sum ----------------------------------------------

_leaf = st.sampled_from(["o.amount", "c.birth_year", "c.vip_level", "1", "1000000000000", "-5000"])
_cond = st.sampled_from(["c.gender = 'F'", "c.city = 'Hangzhou'", "o.channel = 'pc'",
                         "c.birth_year > 1990", "o.amount > 100"])


def _expr(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(_cond, children, children).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
        children.map(lambda c: f"abs({c})"),
    )


EXPRESSIONS = st.recursive(_leaf, _expr, max_leaves=6)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(expression=EXPRESSIONS)
def test_each_consumers_sum_is_clamped_whatever_the_expression(expression, hanfu_dp_env, spark):
    sql = f"SELECT c.city, sum({expression}) AS s {J} GROUP BY c.city"
    decision = check(spark, sql, "aggregate", hanfu_dp_env.merchant, hanfu_dp_env.datasets)
    if not decision.allowed:  # literals only: no declared bounds to clamp to
        assert {v.rule for v in decision.violations} == {"D2"}
        assert not any(c in expression for c in ("amount", "birth_year", "vip_level"))
        return
    (agg,) = decision.dp.aggregates
    lo, hi = agg.bounds
    parts = contributions(spark, decision)
    value = f"__v{agg.index}"
    low, high = parts.selectExpr(f"min({value})", f"max({value})").first()
    if low is not None:
        assert lo <= low and high <= hi


def test_a_consumer_reaches_at_most_max_groups_groups(hanfu_dp_env, spark):
    decision = _dp(hanfu_dp_env, spark, "SELECT o.category, count(*) AS n FROM platform.orders o GROUP BY o.category")
    assert not decision.dp.one_group and decision.dp.max_groups == 4
    parts = contributions(spark, decision)
    most = parts.groupBy("__u").count().selectExpr("max(count)").first()[0]
    assert most <= 4
    # the data has consumers who bought in more categories than that
    raw = spark.sql("SELECT max(n) FROM (SELECT user_id, count(DISTINCT category) n FROM platform.orders GROUP BY user_id)").first()[0]
    assert raw > 4


def test_group_keys_of_the_consumers_own_row_put_each_consumer_in_one_group(hanfu_dp_env, spark):
    decision = _dp(hanfu_dp_env, spark, f"SELECT c.city, count(DISTINCT o.user_id) AS b, avg(o.amount) AS a {J} GROUP BY c.city")
    assert decision.dp.one_group and decision.dp.max_groups == 1
    parts = contributions(spark, decision)
    assert parts.groupBy("__u").count().selectExpr("max(count)").first()[0] == 1


@pytest.mark.parametrize("sql", [
    f"SELECT o.category, sum(o.amount * 3 + 7) AS s, count(*) AS n {J} GROUP BY o.category",
    f"SELECT c.gender, avg(o.amount) AS a {J} GROUP BY c.gender",
])
def test_removing_one_consumer_moves_the_release_by_at_most_the_sensitivity(sql, hanfu_dp_env, spark):
    """Before noise, the group values are sums of the consumers' reduced rows, so removing a
    consumer changes them by exactly that consumer's rows: their L1 size must stay within
    each measurement's sensitivity."""
    decision = _dp(hanfu_dp_env, spark, sql)
    plan = decision.dp
    parts = contributions(spark, decision)
    for agg in plan.aggregates:
        for kind, column in (("sum", f"__v{agg.index}"), ("count", f"__c{agg.index}"),
                             ("count", f"__n{agg.index}")):
            if column not in parts.columns or (column.startswith("__n") and agg.function != "avg"):
                continue  # a sum's row count only scales it; an average's is measured
            measurement = plan.for_aggregate(agg.index, kind)
            worst = parts.groupBy("__u").agg({column: "sum"}).selectExpr(
                f"max(abs(`sum({column})`))").first()[0]
            assert worst <= measurement.sensitivity + 1e-6, (column, worst, measurement.sensitivity)
    units = parts.groupBy("__u").count().selectExpr("max(count)").first()[0]
    assert units <= plan.units().sensitivity


def test_the_weighted_target_cannot_decide_a_released_sum(hanfu_dp_env, spark):
    """DOM-1: one consumer's amount weighted by 10^12 moves the sum by at most the bound."""
    weighted = _dp(hanfu_dp_env, spark, f"SELECT sum(o.amount + CASE WHEN c.city = 'Hangzhou' AND c.gender = 'F' THEN o.amount * 1000000000000 ELSE 0 END) AS s {J}")
    plain = _dp(hanfu_dp_env, spark, f"SELECT sum(o.amount) AS s {J}")
    s_weighted = float(weighted.execute(spark).dataframe.first()[0])
    s_plain = float(plain.execute(spark).dataframe.first()[0])
    consumers = spark.sql("SELECT count(*) FROM platform.consumers WHERE city = 'Hangzhou' AND gender = 'F'").first()[0]
    assert consumers > 0
    # at most each such consumer's clamp (20,000) apart, plus noise: nowhere near 10^12
    assert abs(s_weighted - s_plain) < consumers * 20000 + 10 * weighted.dp.aggregates[0].bounds[1] * 4


def test_the_check_tells_cost_and_accuracy_before_running(hanfu_dp_env, spark):
    decision = _dp(hanfu_dp_env, spark, f"SELECT c.city, count(DISTINCT o.user_id) AS buyers, sum(o.amount) AS s, avg(o.amount) AS a {J} GROUP BY c.city")
    doc = decision.to_dict()
    assert doc["release"] == "dp" and doc["epsilon"] == pytest.approx(1.0) and 0 < doc["delta"] < 1e-3
    assert doc["accuracy"]["buyers"]["ci95"] == pytest.approx(noise.ci95(decision.dp.units().scale))
    assert doc["accuracy"]["s"]["ci95"] > doc["accuracy"]["buyers"]["ci95"]
    assert doc["accuracy"]["a"]["ci95"] is None  # an average's width depends on the group
    spent = sum(m.epsilon for m in decision.dp.measurements)
    assert spent == pytest.approx(decision.epsilon)


def test_released_values_come_with_their_half_width(hanfu_dp_env, spark):
    decision = _dp(hanfu_dp_env, spark, f"SELECT c.city, count(DISTINCT o.user_id) AS buyers, avg(o.amount) AS a {J} GROUP BY c.city ORDER BY buyers DESC")
    result = decision.execute(spark)
    rows = result.dataframe.collect()
    result.confirm()
    assert rows, "the largest cities pass partition selection"
    assert set(result.accuracy) == {"buyers", "a"}
    assert result.accuracy["a"]["ci95"] > 0
    # released groups passed the selection threshold (noisy count), never tiny ones
    assert all(r["buyers"] >= decision.dp.threshold - 3 * decision.dp.units().scale for r in rows)


def test_repeated_aggregates_are_measured_once(hanfu_dp_env, spark):
    """HAVING count(*) and the output count(*) are one measurement: one value, one cost."""
    decision = _dp(hanfu_dp_env, spark, "SELECT c.city, count(*) AS n, rank() OVER (ORDER BY count(*) DESC) AS r FROM platform.consumers c GROUP BY c.city ORDER BY n DESC")
    counts = [m for m in decision.dp.measurements if m.kind == "count"]
    assert len(counts) == 1
    rows = decision.execute(spark).dataframe.collect()
    ranks = [r["r"] for r in rows]
    assert ranks == sorted(ranks)  # the window ranks the very values released


# -- the samplers ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.5, 4.0, 250.0])
def test_laplace_sampler_has_the_scale_the_accounting_assumes(scale):
    draws = noise.laplace([0.0] * 20000, scale)
    mean_abs = statistics.fmean(abs(x) for x in draws)
    assert mean_abs == pytest.approx(scale, rel=0.05)  # E|Laplace(b)| = b
    assert abs(statistics.fmean(draws)) < 0.05 * scale
    beyond = sum(abs(x) > noise.ci95(scale) for x in draws) / len(draws)
    assert 0.04 < beyond < 0.06


@pytest.mark.parametrize("scale", [2.0, 40.0])
def test_discrete_laplace_sampler_is_integral_with_its_scale(scale):
    draws = noise.discrete_laplace([100] * 20000, scale)
    assert all(isinstance(x, int) for x in draws)
    deviations = [abs(x - 100) for x in draws]
    # discrete Laplace with parameter b: E|X| = 2q/(1-q^2) * ... close to b for b >= 2
    q = math.exp(-1.0 / scale)
    expected = 2 * q / (1 - q * q)
    assert statistics.fmean(deviations) == pytest.approx(expected, rel=0.05)


def test_selection_threshold_bounds_delta():
    scale, groups, delta = 4.0, 4, 1e-6
    tau = noise.selection_threshold(scale, groups, delta)
    # a group made by one consumer (count 1) passes with probability 1/2 exp(-(tau-1)/b)
    assert groups * 0.5 * math.exp(-(tau - 1) / scale) == pytest.approx(delta)


@pytest.mark.parametrize("sql", [
    "SELECT n, count(*) AS k FROM (SELECT o.user_id, o.category, count(*) AS n FROM platform.orders o GROUP BY o.user_id, o.category) GROUP BY n",
    f"SELECT r, count(*) AS k FROM (SELECT c.city, row_number() OVER (PARTITION BY c.user_id ORDER BY c.birth_year) AS r {J}) GROUP BY r",
    # a unique link column laundered through a cross join (found by attacking the policy)
    "SELECT d.x, sum(c.vip_level) FILTER (WHERE c.gender = 'M' AND c.birth_year = 2005 AND c.city = 'Hangzhou' AND c.registered_at = DATE'2016-08-11') AS s FROM platform.consumers c JOIN (SELECT m.phone_hash, g.x FROM hanfu_house.members m CROSS JOIN (SELECT explode(sequence(1, 1000)) AS x) g) d ON c.phone_hash = d.phone_hash GROUP BY d.x",
])
def test_keys_that_vary_within_a_consumer_are_bounded_by_max_groups(sql, hanfu_dp_env, spark):
    """A per-(consumer, category) count, or a row number, takes several values for one
    consumer: such keys must not be treated as one group per consumer."""
    decision = _dp(hanfu_dp_env, spark, sql)
    assert not decision.dp.one_group and decision.dp.max_groups == 4


@pytest.mark.parametrize("key", [
    "c.gender",  # string
    "trunc(c.registered_at, 'YEAR')",  # date
    "date_trunc('YEAR', o.ordered_at)",  # timestamp (the session's time zone)
    "CAST(c.vip_level AS DECIMAL(5,2))",  # decimal
])
def test_released_group_keys_keep_their_values_and_types(key, hanfu_dp_env, spark):
    """Group keys go back to Spark after the noise as Spark computed them: each released
    key has the exact query's type and is one of its keys (a time zone shift or a
    rounding would make new ones)."""
    sql = f"SELECT {key} AS k, count(DISTINCT o.user_id) AS n {J} GROUP BY {key}"
    decision = _dp(hanfu_dp_env, spark, sql)
    frame = decision.execute(spark).dataframe
    exact = spark.sql(sql)
    assert frame.schema.fields[0].dataType == exact.schema.fields[0].dataType
    released = {r[0] for r in frame.collect()}
    assert released, "no group was released: the test would prove nothing"
    assert released <= {r[0] for r in exact.collect()}


def test_a_global_aggregate_releases_one_row_even_when_nothing_matches(hanfu_dp_env, spark):
    decision = _dp(hanfu_dp_env, spark, f"SELECT count(*) AS n, sum(o.amount) AS s {J} WHERE o.amount < -1")
    rows = decision.execute(spark).dataframe.collect()
    assert len(rows) == 1
