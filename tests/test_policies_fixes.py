"""Mechanical fixes of denied queries ("apply suggestion"): the rewrites keep the question,
leave what they cannot rewrite safely alone, and every fix offered makes the policy allow
the job (checked on the demo world in threshold and dp mode)."""

from __future__ import annotations

import pytest

from policies.fixes import (
    candidates,
    case_to_filter,
    count_distinct,
    rename_outputs,
    reorder_outputs,
)

JOIN = "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id GROUP BY c.city"


# --- the rewrites (text only) -------------------------------------------------------------


def test_one_branch_case_inside_an_aggregate_becomes_a_filter():
    sql = ("SELECT c.city, sum(CASE WHEN o.channel = 'mobile' THEN o.amount END) AS mobile,\n"
           "       count(case when c.gender = 'F' then 1 end) AS women,\n"
           "       avg(IF(c.gender = 'M', c.vip_level, NULL)) AS men_vip,\n"
           "       count(DISTINCT CASE WHEN c.vip_level > 3 THEN c.user_id ELSE NULL END) AS vips\n"
           + JOIN)
    assert case_to_filter(sql) == (
        "SELECT c.city, sum(o.amount) FILTER (WHERE o.channel = 'mobile') AS mobile,\n"
        "       count(*) FILTER (WHERE c.gender = 'F') AS women,\n"
        "       avg(c.vip_level) FILTER (WHERE c.gender = 'M') AS men_vip,\n"
        "       count(DISTINCT c.user_id) FILTER (WHERE c.vip_level > 3) AS vips\n" + JOIN)


def test_else_zero_is_only_dropped_where_it_changes_nothing():
    # sum: zeros add nothing
    assert case_to_filter("SELECT sum(CASE WHEN a > 1 THEN b ELSE 0 END) AS s FROM t") == \
        "SELECT sum(b) FILTER (WHERE a > 1) AS s FROM t"
    # avg and count: the zeros are part of the answer; no rewrite
    assert case_to_filter("SELECT avg(CASE WHEN a > 1 THEN b ELSE 0 END) AS s FROM t") is None
    assert case_to_filter("SELECT count(CASE WHEN a > 1 THEN 1 ELSE 0 END) AS s FROM t") is None


def test_what_is_not_one_plain_branch_is_left_alone():
    untouched = [
        "SELECT sum(CASE WHEN a > 1 THEN b WHEN a > 0 THEN c END) AS s FROM t",  # two branches
        "SELECT sum(CASE a WHEN 1 THEN b END) AS s FROM t",  # a simple CASE
        "SELECT sum(CASE WHEN a > 1 THEN b END) FILTER (WHERE c = 1) AS s FROM t",  # has FILTER
        "SELECT sum(CASE WHEN a > 1 THEN b END) OVER () AS s FROM t",  # a window
        "SELECT sum(CASE WHEN a > 1 THEN b ELSE c END) AS s FROM t",  # another value
        "SELECT sum(b * 2) AS s FROM t",
        "SELECT max(CASE WHEN a > 1 THEN b END) AS s FROM t",  # not an allowed aggregate
        "SELECT 'sum(CASE WHEN a THEN b END)' AS s FROM t",  # inside a string
        "SELECT count(DISTINCT CASE WHEN a > 1 THEN 1 END) AS s FROM t",
    ]
    for sql in untouched:
        assert case_to_filter(sql) is None, sql


def test_a_nested_case_stays_inside_its_branch():
    sql = "SELECT sum(CASE WHEN a > 1 THEN (CASE WHEN b > 0 THEN b END) END) AS s FROM t"
    assert case_to_filter(sql) == \
        "SELECT sum((CASE WHEN b > 0 THEN b END)) FILTER (WHERE a > 1) AS s FROM t"


def test_count_of_a_named_column_becomes_a_distinct_count():
    sql = "SELECT c.city, count(c.phone) AS n, count(c.gender) AS g, count(*) AS all_ FROM x c"
    assert count_distinct(sql, {"phone"}) == \
        "SELECT c.city, count(DISTINCT c.phone) AS n, count(c.gender) AS g, count(*) AS all_ FROM x c"
    assert count_distinct("SELECT count(DISTINCT c.phone) FROM x c", {"phone"}) is None
    assert count_distinct("SELECT count(upper(c.phone)) FROM x c", {"phone"}) is None


def test_outputs_are_renamed_whatever_their_aliases():
    sql = ("WITH m AS (SELECT member_id, phone_hash FROM hanfu_house.members)\n"
           "SELECT CASE WHEN c.vip_level >= 5 THEN 'vip' ELSE 'regular' END tier, m.member_id\n"
           "FROM m JOIN platform.consumers c ON m.phone_hash = c.phone_hash")
    assert rename_outputs(sql, ["segment", "member"]) == sql.replace(
        "END tier, m.member_id\n", "END segment, m.member_id AS member\n")
    assert rename_outputs("SELECT a AS x, count(*) n FROM t", ["segment", "member"]) == \
        "SELECT a AS segment, count(*) member FROM t"
    assert rename_outputs("SELECT a, b, c FROM t", ["segment", "member"]) is None
    assert rename_outputs("SELECT * FROM t", ["segment", "member"]) is None
    assert rename_outputs("SELECT a, b FROM t UNION SELECT c, d FROM u", ["segment", "member"]) is None
    assert reorder_outputs("SELECT m.member_id, c.city FROM t") == "SELECT c.city, m.member_id FROM t"


def test_candidates_answer_only_the_violations_they_are_for():
    p3 = {"rule": "P3", "column": "s", "sources": [], "message_template":
          "In threshold mode an aggregate's argument over consumer data must be a bare column, "
          "a CAST of one, or a constant; {column} computes it."}
    sql = "SELECT c.city, sum(CASE WHEN c.gender = 'F' THEN c.vip_level END) AS s FROM platform.consumers c GROUP BY c.city"
    assert [c.code for c in candidates(sql, "aggregate", [p3])] == ["filter"]
    assert candidates(sql, "aggregate", [{**p3, "rule": "P2", "message_template": "other"}]) == []


# --- offered only when the policy allows the result ----------------------------------------


def decide(world, sql: str, kind: str = "aggregate") -> dict:
    from jobs.service import evaluate

    return evaluate(world.config, sql, kind, world.merchant, world.datasets)


def offered(world, sql: str, kind: str = "aggregate") -> tuple[dict, list[dict]]:
    from jobs.service import suggest_fixes

    decision = decide(world, sql, kind)
    return decision, suggest_fixes(world.config, sql, kind, world.merchant, world.datasets, decision)


THRESHOLD_CASES = [
    ("filter", "SELECT c.city, sum(CASE WHEN o.channel = 'mobile' THEN o.amount ELSE 0 END) AS mobile "
               + JOIN),
    ("filter", "SELECT c.city, count(CASE WHEN c.gender = 'F' THEN 1 END) AS women, "
               "count(DISTINCT CASE WHEN c.vip_level > 3 THEN c.user_id END) AS vips "
               "FROM platform.consumers c GROUP BY c.city"),
    ("count_distinct", "SELECT c.city, count(c.phone) AS phones FROM platform.consumers c GROUP BY c.city"),
]


@pytest.mark.spark
@pytest.mark.parametrize(("code", "sql"), THRESHOLD_CASES)
def test_threshold_mode_fixes_lead_to_an_allowed_check(hanfu_world, code, sql):
    decision, fixes = offered(hanfu_world, sql)
    assert decision["decision"] == "deny"
    assert [f["code"] for f in fixes] == [code]
    fix = fixes[0]
    assert fix["allowed"] and fix["resolves"] == list(range(len(decision["violations"])))
    assert decide(hanfu_world, fix["sql"], fix["kind"])["decision"] == "allow"


SEGMENT_SQL = ("SELECT CASE WHEN c.vip_level >= 5 THEN 'vip' ELSE 'regular' END AS tier, m.member_id\n"
               "FROM hanfu_house.members m JOIN platform.consumers c ON m.phone_hash = c.phone_hash")


@pytest.mark.spark
def test_dp_mode_segment_fixes_lead_to_an_allowed_check(hanfu_dp_world):
    # columns under other names in a segment job: renamed (in whichever order passes)
    swapped = ("SELECT m.member_id, CASE WHEN c.vip_level >= 5 THEN 'vip' ELSE 'regular' END\n"
               "FROM hanfu_house.members m JOIN platform.consumers c ON m.phone_hash = c.phone_hash")
    for sql in (SEGMENT_SQL, swapped):
        decision, fixes = offered(hanfu_dp_world, sql, "segment")
        assert decision["decision"] == "deny" and [f["code"] for f in fixes] == ["segment_columns"]
        assert decide(hanfu_dp_world, fixes[0]["sql"], "segment")["decision"] == "allow"
        assert "AS segment" in fixes[0]["sql"] and "AS member" in fixes[0]["sql"]
    # segment-shaped rows submitted as an aggregate job: the kind changes, the SQL does not
    sql = "SELECT c.city AS segment, segment_token(c.user_id) AS member FROM platform.consumers c"
    decision, fixes = offered(hanfu_dp_world, sql)
    assert [(f["code"], f["kind"], f["sql"]) for f in fixes] == [("segment_kind", "segment", sql)]
    assert decide(hanfu_dp_world, sql, "segment")["decision"] == "allow"


@pytest.mark.spark
def test_a_fix_the_policy_would_still_deny_is_not_offered(hanfu_dp_world, hanfu_world):
    # dp mode releases no count(DISTINCT phone): counting distinct is no fix there
    _, fixes = offered(hanfu_dp_world, THRESHOLD_CASES[2][1])
    assert fixes == []
    # a fix for one violation among others is offered for that one only
    sql = ("SELECT c.city, min(c.birth_year) AS y, count(CASE WHEN c.gender = 'F' THEN 1 END) AS women "
           "FROM platform.consumers c GROUP BY c.city")
    decision, fixes = offered(hanfu_world, sql)
    assert len(fixes) == 1 and not fixes[0]["allowed"]
    resolved = [decision["violations"][i]["column"] for i in fixes[0]["resolves"]]
    assert resolved == ["women"]
    # an allowed query, or a syntax error, gets no fix
    assert offered(hanfu_world, "SELECT c.city, count(*) AS n FROM platform.consumers c GROUP BY c.city")[1] == []
    assert offered(hanfu_world, "SELECT city, count(* AS n FROM platform.consumers GROUP BY city")[1] == []
