"""The case corpus (tests/policy_cases/*.json) against the demo world at a small scale.

Every attack must be denied with the rule the case names; every legitimate analysis must
be allowed and, run with enforcement, return exactly the rows plain Spark returns for the
same question with the k-threshold applied by hand (the case's ``rows_sql``).
"""

from __future__ import annotations

import json
import re

import pytest
from policy_support import PolicyWorld, in_mode, load_cases, normalise, world

from policies import check

pytestmark = pytest.mark.spark

CASES = load_cases()


@pytest.fixture(scope="module")
def hanfu(demo_config, spark, tmp_path_factory) -> PolicyWorld:
    env = world(demo_config, "hanfu_house", tmp_path_factory.mktemp("policy-corpus"))
    env.install(spark)
    # A user-defined SQL function that is not the platform's: must be denied (P7).
    spark.sql("CREATE OR REPLACE TEMPORARY FUNCTION evil_fn(x BIGINT) RETURNS BIGINT RETURN x + 1")
    return env


def test_corpus_is_large_and_covers_every_rule():
    assert len(CASES) >= 150
    rules = {r for c in CASES for r in c.get("rules", [])}
    assert {"P1", "P2", "P3", "P4", "P5", "P6", "P7"} <= rules
    assert sum(c["expect"] == "allow" for c in CASES) >= 40
    assert any(c["kind"] == "segment" for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, hanfu, spark):
    """Cases run in threshold mode (exact rows to compare) unless they say ``"release": "dp"``."""
    hanfu.install(spark)
    release = case.get("release", "threshold")
    decision = check(spark, case["sql"], case["kind"], hanfu.merchant, in_mode(hanfu, release).datasets)
    doc = decision.to_dict()
    fired = {v["rule"] for v in doc["violations"]}
    if case["expect"] == "error":
        # P9: a syntax or name error is reported as such, with Spark's class and where.
        assert doc["decision"] == "error" and not doc["violations"], doc
        assert doc["error"]["class"].startswith(case["error_class"]), doc["error"]
        return
    if case["expect"] == "deny":
        assert doc["decision"] == "deny", f"{case['id']} was allowed"
        assert fired & set(case["rules"]), f"{case['id']}: expected one of {case['rules']}, got {fired}"
        _assert_explained(doc)
        return
    assert doc["decision"] == "allow", json.dumps(doc["violations"], indent=1)
    # What the audit trail says the job read: the columns it uses, not every column of
    # each dataset it scans.
    if "columns_read" in case:
        assert sorted(f"{c['dataset']}.{c['column']}" for c in doc["columns_read"]) == case["columns_read"]
    if "datasets_read" in case:
        assert doc["datasets_read"] == case["datasets_read"]
    result = decision.execute(spark)
    released = result.dataframe.collect()
    if release == "dp" and case["kind"] == "aggregate":
        # Noisy values: the shape is what can be compared; the guarantee has its own tests.
        assert [f.name for f in result.dataframe.schema] == [f.name for f in spark.sql(case["sql"]).schema]
        assert doc["release"] == "dp" and doc["epsilon"] > 0
        if "max_rows" in case:
            assert len(released) <= case["max_rows"]
        return
    if case["kind"] == "segment":
        _assert_segments(released, decision.k)
    if "rows_sql" in case:
        expected = spark.sql(case["rows_sql"]).collect()
        assert normalise(released) == normalise(expected)
        assert [f.name for f in result.dataframe.schema] == [f.name for f in spark.sql(case["sql"]).schema]


def test_another_tenants_dataset_reads_exactly_like_a_missing_one(hanfu, spark):
    """Only the name the submitter typed differs; class, wording and position are the same."""
    hanfu.install(spark)
    errors = [
        check(spark, f"SELECT tier, count(*) FROM {name}.members GROUP BY tier", "aggregate",
              hanfu.merchant, hanfu.datasets).to_dict()["error"]
        for name in ("tea_garden", "nosuch")
    ]
    assert errors[0]["class"] == errors[1]["class"] == "TABLE_OR_VIEW_NOT_FOUND"
    assert errors[0]["message"].replace("tea_garden", "X") == errors[1]["message"].replace("nosuch", "X")


def _assert_explained(doc: dict) -> None:
    """P9: every violation has rule, column, sources, message and suggestion."""
    for v in doc["violations"]:
        assert re.fullmatch(r"[PD][1-9]", v["rule"])
        assert v["column"] and v["message"] and v["suggestion"]
        for s in v["sources"]:
            assert set(s) == {"dataset", "column", "class"}


def _assert_segments(rows, k: int) -> None:
    sizes: dict = {}
    for segment, member in rows:
        sizes.setdefault(segment, set()).add(member)
    assert len(sizes) <= 100
    assert all(len(members) >= k for members in sizes.values())
    # one label per member: several would spell a member's data out across segments
    members = [member for _, member in rows]
    assert len(members) == len(set(members))
