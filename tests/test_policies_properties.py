"""Property-based: random expressions over private columns are always denied; random
legitimate aggregations over quasi columns are always allowed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_support import PolicyWorld, in_mode, world

from policies import check

pytestmark = pytest.mark.spark

C = "platform.consumers"
SENSITIVE = ["nick", "phone", "phone_hash", "user_id"]
WRAPPERS = [
    "upper(CAST({} AS STRING))", "substr(CAST({} AS STRING), 1, 3)", "concat(CAST({} AS STRING), 'a')",
    "sha2(CAST({} AS STRING), 256)", "CAST({} AS STRING)", "length(CAST({} AS STRING))",
    "coalesce(CAST({} AS STRING), 'z')", "CASE WHEN gender = 'F' THEN CAST({} AS STRING) ELSE city END",
    "array(CAST({} AS STRING))[0]", "named_struct('a', {}).a", "reverse(CAST({} AS STRING))",
    "concat_ws('-', city, CAST({} AS STRING))", "lower(CAST({} AS STRING))", "hash({})",
    "to_json(named_struct('v', {}))", "nvl(CAST({} AS STRING), nick)", "md5(CAST({} AS STRING))",
    "IF(vip_level > 3, CAST({} AS STRING), 'x')", "element_at(array({}), 1)",
]
CONTEXTS = [
    "SELECT {e} AS v FROM " + C,
    "SELECT gender, {e} AS v FROM " + C + " GROUP BY gender, {e}",
    "SELECT {e} AS v, count(*) AS n FROM " + C + " GROUP BY 1",
    "SELECT gender, max({e}) AS v FROM " + C + " GROUP BY gender",
    "SELECT v, count(*) AS n FROM (SELECT {e} AS v FROM " + C + ") GROUP BY v",
    "WITH t AS (SELECT {e} AS v FROM " + C + ") SELECT v FROM t",
    "SELECT gender, first({e}) AS v FROM " + C + " GROUP BY gender",
    "SELECT DISTINCT {e} AS v FROM " + C,
]

expressions = st.recursive(
    st.sampled_from(SENSITIVE),
    lambda inner: st.builds(lambda w, e: w.format(e), st.sampled_from(WRAPPERS), inner),
    max_leaves=4,
)

KEYS = ["gender", "city", "vip_level", "birth_year", "province"]
AGGS = ["count(*)", "count(DISTINCT user_id)", "sum(vip_level)", "avg(birth_year)",
        "stddev(birth_year)", "round(avg(birth_year), 1)", "count(DISTINCT phone)",
        "variance(vip_level)", "approx_count_distinct(city)", "count(DISTINCT nick)",
        "count(*) FILTER (WHERE city = 'Hangzhou')", "sum(vip_level) FILTER (WHERE birth_year > 1990)"]
FILTERS = ["", "WHERE birth_year > 1980", "WHERE city = 'Hangzhou'", "WHERE vip_level BETWEEN 1 AND 5",
           "WHERE vip_level IS NOT NULL", "WHERE registered_at >= DATE'2015-01-01'"]


@pytest.fixture(scope="module")
def hanfu(demo_config, spark, tmp_path_factory) -> PolicyWorld:
    env = in_mode(world(demo_config, "hanfu_house", tmp_path_factory.mktemp("policy-props")), "threshold")
    env.install(spark)
    return env


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(expr=expressions, context=st.sampled_from(CONTEXTS))
def test_any_expression_over_private_columns_is_denied(hanfu, spark, expr, context):
    sql = context.format(e=expr)
    decision = check(spark, sql, "aggregate", hanfu.merchant, hanfu.datasets)
    assert not decision.allowed, sql
    assert {v.rule for v in decision.violations} & {"P1", "P2", "P4", "P5"}


@SETTINGS
@given(
    keys=st.lists(st.sampled_from(KEYS), unique=True, max_size=3),
    aggs=st.lists(st.sampled_from(AGGS), min_size=1, max_size=4),
    where=st.sampled_from(FILTERS),
    having=st.sampled_from(["", "HAVING count(*) > 10"]),
    order=st.sampled_from(["", "ORDER BY 1", "ORDER BY 1 LIMIT 5"]),
)
def test_legitimate_aggregations_are_allowed(hanfu, spark, keys, aggs, where, having, order):
    select = ", ".join(keys + [f"{a} AS a{i}" for i, a in enumerate(aggs)])
    group = f"GROUP BY {', '.join(keys)}" if keys else ""
    sql = f"SELECT {select} FROM {C} {where} {group} {having} {order}"
    decision = check(spark, sql, "aggregate", hanfu.merchant, hanfu.datasets)
    assert decision.allowed, (sql, decision.to_dict()["violations"])
    if all(a.split("(")[0] in ("count", "sum", "avg") and "DISTINCT" not in a or a == "count(DISTINCT user_id)"
           for a in aggs):
        # what dp mode supports is allowed there too, with a cost
        dp = check(spark, sql, "aggregate", hanfu.merchant, in_mode(hanfu, "dp").datasets)
        assert dp.allowed and dp.epsilon > 0, (sql, dp.to_dict()["violations"])
