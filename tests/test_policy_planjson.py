"""The fast plan writer (policies/PlanJson.java) writes the very document Spark's
``toJSON`` writes, for every query of the policy corpus, parsed and analyzed, and for
the plans the enforcement builds: the policy reads one or the other, never a difference."""

from __future__ import annotations

import json

import pytest
from policy_support import PolicyWorld, load_cases, world

from policies import check
from policies.planjson import _UNAVAILABLE, _writer, plan_json
from policies.sparkplan import PlanRefused, QueryError, analyze, parse_query

pytestmark = pytest.mark.spark

CASES = load_cases()


@pytest.fixture(scope="module")
def hanfu(demo_config, spark, tmp_path_factory) -> PolicyWorld:
    env = world(demo_config, "hanfu_house", tmp_path_factory.mktemp("planjson"))
    env.install(spark)
    return env


def test_the_writer_compiles_in_the_sessions_jvm(spark):
    assert _writer(spark) is not _UNAVAILABLE


def test_every_corpus_query_is_written_as_spark_writes_it(hanfu, spark):
    compared = 0
    for case in CASES:
        try:
            parsed = parse_query(spark, case["sql"])
        except (PlanRefused, QueryError):
            continue
        assert json.loads(plan_json(spark, parsed)) == json.loads(parsed.toJSON()), case["id"]
        try:
            analyzed = analyze(spark, case["sql"]).jplan
        except (PlanRefused, QueryError):
            continue
        assert json.loads(plan_json(spark, analyzed)) == json.loads(analyzed.toJSON()), case["id"]
        compared += 1
    assert compared >= 150


LITERALS = [
    "SELECT 1 AS i, 2.5 AS d, 1e300 AS f, CAST(1.5 AS FLOAT) AS r, 'a\"b\\\\c\\n\u4e2d' AS s, NULL AS n, "
    "true AS b, X'00ff' AS bin, DATE'2024-01-01' AS day, TIMESTAMP'2024-01-01 10:00:00' AS ts, "
    "INTERVAL 3 DAYS AS iv, array(1, 2) AS arr, map('k', 1) AS m, named_struct('a', 1) AS st, "
    "CAST(12.50 AS DECIMAL(10, 2)) AS dec, CAST('NaN' AS DOUBLE) AS nan",
    "SELECT c.city FROM platform.consumers c LEFT ANTI JOIN platform.orders o ON o.user_id = c.user_id "
    "WHERE c.city IN ('Urumqi', 'Hangzhou') AND c.city RLIKE '^[A-Z]' "
    "GROUP BY ROLLUP(c.city) ORDER BY c.city NULLS LAST LIMIT 3",
    "WITH t AS (SELECT user_id, sum(amount) AS s FROM platform.orders GROUP BY user_id) "
    "SELECT count(*) FROM t WHERE s > (SELECT avg(amount) FROM platform.orders) "
    "AND EXISTS (SELECT 1 FROM platform.consumers c WHERE c.user_id = t.user_id)",
]


@pytest.mark.parametrize("sql", LITERALS, ids=["literals", "joins-and-grouping", "subqueries"])
def test_literals_joins_and_subqueries_are_written_as_spark_writes_them(hanfu, spark, sql):
    analyzed = analyze(spark, sql).jplan
    assert json.loads(plan_json(spark, analyzed)) == json.loads(analyzed.toJSON())


def test_enforced_plans_are_written_as_spark_writes_them(hanfu, spark):
    sql = ("SELECT c.city, count(DISTINCT o.user_id) AS buyers, round(avg(o.amount), 2) AS a "
           "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id GROUP BY c.city")
    decision = check(spark, sql, "aggregate", hanfu.merchant, hanfu.datasets)
    assert decision.allowed
    frame = decision.execute(spark).dataframe
    analyzed = frame._jdf.queryExecution().analyzed()
    assert json.loads(plan_json(spark, analyzed)) == json.loads(analyzed.toJSON())
