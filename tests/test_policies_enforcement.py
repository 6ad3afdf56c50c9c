"""P3 enforced inside Spark: no released row (or value) draws on fewer than k consumers,
whatever the query does around the aggregation; suppressed rows are only counted."""

from __future__ import annotations

import json

import pytest
from policy_support import normalise, world

from policies import check
from policies.enforce import enforced_plan, recheck
from policies.segment import segment_token_py

pytestmark = pytest.mark.spark

CONSUMERS, ORDERS = "platform.consumers", "platform.orders"


def run(spark, hanfu_env, sql, kind="aggregate"):
    decision = check(spark, sql, kind, hanfu_env.merchant, hanfu_env.datasets)
    assert decision.allowed, json.dumps(decision.to_dict()["violations"], indent=1)
    return decision, decision.execute(spark)


def people_per_city(spark) -> dict[str, int]:
    rows = spark.sql(f"SELECT city, count(DISTINCT user_id) FROM {CONSUMERS} GROUP BY city").collect()
    return {city: n for city, n in rows}


def test_small_groups_are_suppressed_and_only_counted(spark, hanfu_env):
    decision, result = run(spark, hanfu_env, f"SELECT city, count(*) AS n FROM {CONSUMERS} GROUP BY city")
    sizes = people_per_city(spark)
    released = {city: n for city, n in result.dataframe.collect()}
    assert released == {c: n for c, n in sizes.items() if n >= decision.k}
    assert result.suppressed_rows == sum(1 for n in sizes.values() if n < decision.k) > 0
    assert decision.k == 50


def test_having_cannot_select_small_groups(spark, hanfu_env):
    # Asking only for the small groups yields nothing, never the small groups.
    _, result = run(spark, hanfu_env, f"SELECT city, count(*) AS n FROM {CONSUMERS} GROUP BY city HAVING count(*) < 50")
    assert result.dataframe.collect() == []
    assert result.suppressed_rows > 0


def test_order_by_limit_sees_only_released_rows(spark, hanfu_env):
    _, result = run(spark, hanfu_env, f"SELECT city, count(*) AS n FROM {CONSUMERS} GROUP BY city ORDER BY n ASC LIMIT 2")
    sizes = people_per_city(spark)
    expected = sorted(n for n in sizes.values() if n >= 50)[:2]
    assert sorted(n for _, n in result.dataframe.collect()) == expected


def test_window_over_released_rows_does_not_reveal_suppressed_ones(spark, hanfu_env):
    _, result = run(spark, hanfu_env, f"SELECT city, count(*) AS n, sum(count(*)) OVER () AS total FROM {CONSUMERS} GROUP BY city")
    rows = result.dataframe.collect()
    assert {total for _, _, total in rows} == {sum(n for _, n, _ in rows)}
    assert rows[0][2] < spark.sql(f"SELECT count(*) FROM {CONSUMERS}").first()[0]


def test_distinct_is_held_to_k(spark, hanfu_env):
    _, result = run(spark, hanfu_env, f"SELECT DISTINCT city FROM {CONSUMERS}")
    sizes = people_per_city(spark)
    assert {r[0] for r in result.dataframe.collect()} == {c for c, n in sizes.items() if n >= 50}


def test_global_aggregate_over_few_people_is_suppressed(spark, hanfu_env):
    _, result = run(spark, hanfu_env, f"SELECT count(*) AS n, avg(birth_year) AS y FROM {CONSUMERS} WHERE city = 'Lhasa' AND birth_year < 1960")
    assert result.dataframe.collect() == []
    assert result.suppressed_rows == 1


def test_join_fan_out_counts_people_not_rows(spark, hanfu_env):
    # Orders fan out: a city can have >= 50 order rows from fewer than 50 buyers.
    sql = (f"SELECT c.city, count(*) AS orders FROM {ORDERS} o JOIN {CONSUMERS} c ON o.user_id = c.user_id "
           "GROUP BY c.city")
    _, result = run(spark, hanfu_env, sql)
    buyers = {city: n for city, n in spark.sql(
        f"SELECT c.city, count(DISTINCT o.user_id) FROM {ORDERS} o JOIN {CONSUMERS} c ON o.user_id = c.user_id GROUP BY c.city"
    ).collect()}
    rows = {city: n for city, n in spark.sql(sql).collect()}
    fanned = [c for c in rows if rows[c] >= 50 and buyers[c] < 50]
    assert fanned, "the demo data should have a city with many orders from few buyers"
    released = {city for city, _ in result.dataframe.collect()}
    assert released == {c for c, n in buyers.items() if n >= 50}
    assert not released & set(fanned)


def test_each_value_is_held_to_k_not_just_the_row(spark, hanfu_env):
    # A large group, but the CASE narrows one value down to a handful of people.
    sql = (f"SELECT gender, count(*) AS n, count(*) FILTER (WHERE city = 'Lhasa' AND birth_year < 1960) "
           f"AS few FROM {CONSUMERS} GROUP BY gender")
    _, result = run(spark, hanfu_env, sql)
    assert result.dataframe.collect() == []
    assert result.suppressed_rows == 2
    # Without the narrowing value both genders are released.
    _, plain = run(spark, hanfu_env, f"SELECT gender, count(*) AS n FROM {CONSUMERS} GROUP BY gender")
    assert len(plain.dataframe.collect()) == 2


def _k_counts(spark, decision) -> list[str]:
    """Names of the distinct-entity counts the enforced plan computes."""
    plan = spark._jvm.org.apache.spark.sql.classic.Dataset.ofRows(
        spark._jsparkSession, enforced_plan(spark, decision)).queryExecution().analyzed()
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.nodeName() == "Aggregate":
            outputs = node.output()
            found += [outputs.apply(i).name() for i in range(outputs.size())
                      if outputs.apply(i).name().startswith("__yushan_k")]
        children = node.children()
        stack += [children.apply(i) for i in range(children.size())]
    return found


def test_counting_the_entity_itself_needs_no_second_count(spark, hanfu_env):
    # count(DISTINCT user_id) counts exactly the people of the row count: one count suffices
    # (and Spark keeps its single distinct-aggregation pass).
    decision, result = run(spark, hanfu_env, f"SELECT city, count(DISTINCT user_id) AS n FROM {CONSUMERS} GROUP BY city")
    assert _k_counts(spark, decision) == ["__yushan_k_rows_0"]
    sizes = people_per_city(spark)
    assert dict(result.dataframe.collect()) == {c: n for c, n in sizes.items() if n >= 50}


def test_counting_a_narrowed_entity_is_still_held_per_value(spark, hanfu_env):
    sql = (f"SELECT gender, count(DISTINCT user_id) FILTER (WHERE city = 'Lhasa' AND birth_year < 1960) "
           f"AS few FROM {CONSUMERS} GROUP BY gender")
    decision, result = run(spark, hanfu_env, sql)
    assert len(_k_counts(spark, decision)) == 2
    assert result.dataframe.collect() == []
    assert result.suppressed_rows == 2


def test_sum_counts_only_people_with_nonzero_input(spark, hanfu_env):
    sql = f"SELECT gender, sum(vip_level) FILTER (WHERE city = 'Lhasa') AS lhasa FROM {CONSUMERS} GROUP BY gender"
    _, result = run(spark, hanfu_env, sql)
    per_gender = spark.sql(
        f"SELECT gender, count(DISTINCT CASE WHEN city = 'Lhasa' AND vip_level <> 0 THEN user_id END) "
        f"FROM {CONSUMERS} GROUP BY gender"
    ).collect()
    assert len(result.dataframe.collect()) == sum(1 for _, n in per_gender if n >= 50)


def test_entity_is_carried_through_subqueries(spark, hanfu_env):
    sql = f"SELECT city, count(*) AS n FROM (SELECT city FROM (SELECT city, birth_year FROM {CONSUMERS}) WHERE birth_year > 1970) GROUP BY city"
    decision, result = run(spark, hanfu_env, sql)
    assert decision.carry.additions, "user_id had to be carried up"
    expected = spark.sql(
        f"SELECT city, count(*) FROM {CONSUMERS} WHERE birth_year > 1970 GROUP BY city HAVING count(DISTINCT user_id) >= 50"
    ).collect()
    assert normalise(result.dataframe.collect()) == normalise(expected)
    assert result.dataframe.columns == ["city", "n"]


def test_enforced_plan_passes_the_policy_again(spark, hanfu_env):
    decision = check(spark, f"SELECT gender, round(avg(birth_year), 1) AS y FROM {CONSUMERS} GROUP BY gender", "aggregate", hanfu_env.merchant, hanfu_env.datasets)
    recheck(spark, decision, enforced_plan(spark, decision))


def test_suppression_needs_no_data_values_in_the_result_document(spark, hanfu_env):
    decision, result = run(spark, hanfu_env, f"SELECT city, count(*) AS n FROM {CONSUMERS} GROUP BY city")
    doc = json.dumps(decision.to_dict())
    for city, _ in spark.sql(f"SELECT city, count(*) FROM {CONSUMERS} GROUP BY city").collect():
        assert city not in doc


def test_segments_hold_k_members_and_small_ones_are_suppressed(spark, hanfu_env):
    sql = f"SELECT city AS segment, segment_token(user_id) AS member FROM {CONSUMERS}"
    decision, result = run(spark, hanfu_env, sql, kind="segment")
    rows = result.dataframe.collect()
    sizes: dict[str, int] = {}
    for segment, _ in rows:
        sizes[segment] = sizes.get(segment, 0) + 1
    people = people_per_city(spark)
    assert sizes == {c: n for c, n in people.items() if n >= 50}
    assert result.suppressed_rows == sum(n for n in people.values() if n < 50)


def test_segment_tokens_are_keyed_per_merchant(spark, hanfu_env, demo_config, tmp_path):
    sql = f"SELECT gender AS segment, segment_token(user_id) AS member FROM {CONSUMERS}"
    _, result = run(spark, hanfu_env, sql, kind="segment")
    tokens = {m for _, m in result.dataframe.collect()}
    key = hanfu_env.keystore.segment_token_key("hanfu_house")
    ids = [r[0] for r in spark.sql(f"SELECT user_id FROM {CONSUMERS}").collect()]
    assert tokens == {segment_token_py(key, i) for i in ids}
    assert not tokens & {str(i) for i in ids}
    tea = world(demo_config, "tea_garden", tmp_path)
    tea.install(spark)
    decision = check(spark, sql, "segment", "tea_garden", tea.datasets)
    other = {m for _, m in decision.execute(spark).dataframe.collect()}
    assert len(other) == len(tokens) and not other & tokens


def test_token_registered_for_another_merchant_is_refused(spark, hanfu_env, demo_config, tmp_path):
    tea = world(demo_config, "tea_garden", tmp_path)
    tea.install(spark)  # segment_token now carries tea_garden's key
    sql = f"SELECT gender AS segment, segment_token(user_id) AS member FROM {CONSUMERS}"
    decision = check(spark, sql, "segment", "hanfu_house", hanfu_env.datasets)
    assert not decision.allowed
    assert "P7" in {v.rule for v in decision.violations}


def test_too_many_segment_labels_release_nothing_like_all_suppressed(spark, hanfu_env):
    """P8: a job with too many labels looks exactly like one whose segments were all
    suppressed: no rows, every row counted as suppressed, no error."""
    many = f"SELECT concat(city, '-', birth_year) AS segment, segment_token(user_id) AS member FROM {CONSUMERS}"
    tiny = (f"SELECT concat(city, '-', birth_year, '-', vip_level) AS segment, segment_token(user_id) AS member "
            f"FROM {CONSUMERS} WHERE city = 'Lhasa' AND birth_year = 1950")
    outcomes = []
    for sql in (many, tiny):
        decision = check(spark, sql, "segment", hanfu_env.merchant, hanfu_env.datasets)
        assert decision.allowed
        result = decision.execute(spark)
        rows = result.dataframe.collect()
        outcomes.append((rows, result.suppressed_rows == result.total_rows))
    assert outcomes == [([], True), ([], True)]


def test_explanations_never_show_literals_or_values(spark, hanfu_env):
    sql = f"SELECT gender, count(*) FROM {CONSUMERS} WHERE phone LIKE '13812%' AND user_id = 2200000000042 GROUP BY gender"
    doc = check(spark, sql, "aggregate", hanfu_env.merchant, hanfu_env.datasets).to_dict()
    text = json.dumps(doc)
    assert doc["decision"] == "deny"
    assert "13812" not in text and "2200000000042" not in text


def test_other_merchants_dataset_reads_like_a_missing_one(spark, hanfu_env):
    def message(table: str) -> str:
        doc = check(spark, f"SELECT * FROM {table}", "aggregate", hanfu_env.merchant, hanfu_env.datasets).to_dict()
        assert doc["decision"] == "error"  # a name error, reported as such (P9)
        assert doc["error"]["class"] == "TABLE_OR_VIEW_NOT_FOUND"
        return doc["error"]["message"].replace(table.split(".")[0], "X")

    assert message("tea_garden.members") == message("nosuch_shop.members")


def test_commands_are_never_executed(spark, hanfu_env):
    doc = check(spark, "CREATE TEMPORARY VIEW leak AS SELECT * FROM platform.consumers", "aggregate",
                hanfu_env.merchant, hanfu_env.datasets).to_dict()
    assert doc["decision"] == "deny"
    assert "leak" not in {t.name for t in spark.catalog.listTables()}
    assert spark.conf.get("spark.sql.ansi.enabled") == "false"
    check(spark, "SET spark.sql.ansi.enabled=true", "aggregate", hanfu_env.merchant, hanfu_env.datasets)
    assert spark.conf.get("spark.sql.ansi.enabled") == "false"
