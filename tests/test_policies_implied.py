"""What the query's own filters guarantee about an aggregate's input (policies.implied).

Each case: a query whose first sum/avg/count argument is examined, and the facts that
must (and only those that may) be proven for it. A fact proven wrongly would let a value
drawn on fewer than k people through, so the "proves nothing" cases matter most.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_support import normalise

from policies import check
from policies.implied import NON_ZERO, NOT_NULL, argument_column, facts_about

pytestmark = pytest.mark.spark

ORDERS = "platform.orders o"
CONSUMERS = "platform.consumers c"
BOTH = {NOT_NULL, NON_ZERO}

CASES = [
    # (id, query, facts about the first aggregate's argument)
    ("ge-positive", f"SELECT o.channel, avg(o.amount) AS a FROM {ORDERS} WHERE o.amount >= 0.5 GROUP BY o.channel", BOTH),
    ("gt-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > 0 GROUP BY o.channel", BOTH),
    ("ge-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount >= 0 GROUP BY o.channel", {NOT_NULL}),
    ("lt-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount < 0 GROUP BY o.channel", BOTH),
    ("le-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount <= 0 GROUP BY o.channel", {NOT_NULL}),
    ("mirrored", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE 10 < o.amount GROUP BY o.channel", BOTH),
    ("mirrored-wrong-way", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE 10 > o.amount GROUP BY o.channel", {NOT_NULL}),
    ("not-equal-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount <> 0 GROUP BY o.channel", BOTH),
    ("equal-nonzero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount = 12.5 GROUP BY o.channel", BOTH),
    ("equal-zero", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount = 0 GROUP BY o.channel", {NOT_NULL}),
    ("is-not-null", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount IS NOT NULL GROUP BY o.channel", {NOT_NULL}),
    ("no-filter", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} GROUP BY o.channel", set()),
    ("or-proves-nothing", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > 5 OR o.channel = 'app' GROUP BY o.channel", set()),
    ("other-column", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.item_id > 5 GROUP BY o.channel", set()),
    ("literal-rounds-in-cast", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > 0.001 GROUP BY o.channel", BOTH),
    ("literal-negative-tiny", f"SELECT o.channel, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > -0.001 GROUP BY o.channel", {NOT_NULL}),
    ("int-column", f"SELECT c.gender, avg(c.birth_year) AS y FROM {CONSUMERS} WHERE c.birth_year > 1900 GROUP BY c.gender", BOTH),
    ("subquery-filter", f"SELECT channel, sum(amount) AS a FROM (SELECT channel, amount FROM {ORDERS} WHERE amount >= 1) GROUP BY channel", BOTH),
    ("renamed-in-subquery", f"SELECT channel, sum(x) AS a FROM (SELECT channel, amount AS x FROM {ORDERS} WHERE amount >= 1) GROUP BY channel", BOTH),
    ("computed-in-subquery", f"SELECT channel, sum(x) AS a FROM (SELECT channel, amount - 1 AS x FROM {ORDERS} WHERE amount >= 1) GROUP BY channel", set()),
    ("inner-join-filter", f"SELECT c.city, sum(o.amount) AS a FROM {ORDERS} JOIN {CONSUMERS} ON o.user_id = c.user_id AND o.amount > 2 GROUP BY c.city", BOTH),
    ("left-join-left-side", f"SELECT c.city, sum(c.birth_year) AS a FROM {CONSUMERS} LEFT JOIN {ORDERS} ON o.user_id = c.user_id WHERE c.birth_year > 1900 GROUP BY c.city", BOTH),
    ("left-join-padded-side", f"SELECT c.city, sum(o.amount) AS a FROM {CONSUMERS} LEFT JOIN (SELECT * FROM {ORDERS} WHERE amount > 2) o ON o.user_id = c.user_id GROUP BY c.city", set()),
    ("left-join-condition-does-not-filter", f"SELECT c.city, sum(c.birth_year) AS a FROM {CONSUMERS} LEFT JOIN {ORDERS} ON o.user_id = c.user_id AND c.birth_year > 1900 GROUP BY c.city", set()),
    ("case-argument", f"SELECT o.channel, sum(CASE WHEN o.amount > 5 THEN o.amount ELSE 0 END) AS a FROM {ORDERS} WHERE o.amount > 5 GROUP BY o.channel", set()),
    ("string-compare", f"SELECT o.channel, count(o.category) AS n FROM {ORDERS} WHERE o.category > 'a' GROUP BY o.channel", set()),
]


@pytest.mark.parametrize("case_id,sql,expected", CASES, ids=[c[0] for c in CASES])
def test_facts_proven_from_the_plan(spark, hanfu_dp_env, case_id, sql, expected):
    # dp mode: it allows computed arguments (clamped), whose facts must not be over-proven
    decision = check(spark, sql, "aggregate", hanfu_dp_env.merchant, hanfu_dp_env.datasets)
    assert decision.allowed, decision.to_dict()["violations"]
    _, _, aggregate = decision.final.aggregates[0]
    column = argument_column(aggregate.children[0].children[0])
    facts = facts_about(decision.final.node.children[0], column) if column is not None else set()
    assert facts == expected


NONZERO = "o.amount IS NOT NULL AND o.amount <> 0"
K = "HAVING count(DISTINCT {people}) >= 50 AND count(DISTINCT o.user_id) FILTER (WHERE " + NONZERO + ") >= 50"
RELEASED = [
    # (job, the same query with P3 written out by hand)
    # amount >= 0 lets zero amounts in: the per-value count must still be computed.
    (f"SELECT o.channel, o.category, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount >= 0 GROUP BY o.channel, o.category",
     f"SELECT o.channel, o.category, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount >= 0 GROUP BY o.channel, o.category "
     + K.format(people="o.user_id")),
    (f"SELECT o.channel, o.category, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > 0 GROUP BY o.channel, o.category",
     f"SELECT o.channel, o.category, sum(o.amount) AS a FROM {ORDERS} WHERE o.amount > 0 GROUP BY o.channel, o.category "
     + K.format(people="o.user_id")),
    # Outer-join padding: the filter below the join says nothing about the padded rows.
    (f"SELECT c.city, round(avg(o.amount), 2) AS a FROM {CONSUMERS} LEFT JOIN (SELECT * FROM {ORDERS} WHERE amount > 200) o "
     "ON o.user_id = c.user_id GROUP BY c.city",
     f"SELECT c.city, round(avg(o.amount), 2) AS a FROM {CONSUMERS} LEFT JOIN (SELECT * FROM {ORDERS} WHERE amount > 200) o "
     "ON o.user_id = c.user_id GROUP BY c.city " + K.format(people="c.user_id")),
]


@pytest.mark.parametrize("sql,by_hand", RELEASED)
def test_released_values_match_a_direct_computation(spark, hanfu_env, sql, by_hand):
    """With or without the shortcut, exactly the values of >= k people with non-zero input."""
    decision = check(spark, sql, "aggregate", hanfu_env.merchant, hanfu_env.datasets)
    assert decision.k == 50
    result = decision.execute(spark)
    assert normalise(result.dataframe.collect()) == normalise(spark.sql(by_hand).collect())


COMPARISONS = ["<", "<=", ">", ">=", "=", "<>", "<=>"]
CONSUMERS_ONLY = "platform.consumers"


def _released_and_by_hand(spark, world, key: str, aggregate: str, condition: str):
    sql = f"SELECT {key}, {aggregate} AS v FROM {CONSUMERS_ONLY} WHERE {condition} GROUP BY {key}"
    decision = check(spark, sql, "aggregate", world.merchant, world.datasets)
    assert decision.allowed, decision.to_dict()["violations"]
    released = decision.execute(spark).dataframe.collect()
    by_hand = spark.sql(
        f"{sql} HAVING count(DISTINCT user_id) >= {decision.k} AND count(DISTINCT user_id) "
        f"FILTER (WHERE vip_level IS NOT NULL AND vip_level <> 0) >= {decision.k}"
    ).collect()
    return normalise(released), normalise(by_hand)


# Boundary literals around zero, every comparison, both ways round. By city, the demo world
# has a city with more than k people but fewer than k with a non-zero vip_level: a filter
# wrongly taken to exclude zero releases it.
GRID = [(op, literal, flipped) for op in COMPARISONS for literal in ("-1", "0", "0.5", "1")
        for flipped in (False, True)]


@pytest.mark.parametrize("op,literal,flipped", GRID)
def test_every_comparison_releases_exactly_what_p3_written_by_hand_releases(
        spark, hanfu_env, op, literal, flipped):
    condition = f"{literal} {op} vip_level" if flipped else f"vip_level {op} {literal}"
    released, by_hand = _released_and_by_hand(spark, hanfu_env, "city", "sum(vip_level)", condition)
    assert released == by_hand


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    op=st.sampled_from(COMPARISONS),
    literal=st.sampled_from(["-1", "0", "0.5", "1", "2", "3.0", "5"]),
    flipped=st.booleans(),
    aggregate=st.sampled_from(["sum(vip_level)", "avg(vip_level)", "stddev(vip_level)"]),
    key=st.sampled_from(["city", "gender", "province"]),
)
def test_any_filter_releases_exactly_what_p3_written_by_hand_releases(
        spark, hanfu_env, op, literal, flipped, aggregate, key):
    """Whatever the filter proves or does not prove, the released rows are those whose
    row and value each draw on >= k people (vip_level 0 counts for nobody's value)."""
    condition = f"{literal} {op} vip_level" if flipped else f"vip_level {op} {literal}"
    released, by_hand = _released_and_by_hand(spark, hanfu_env, key, aggregate, condition)
    assert released == by_hand
