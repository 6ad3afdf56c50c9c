"""``yushan check``: JSON like the API's, exit 3 on denial, audited."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.spark


@pytest.fixture
def run_check(demo_config, spark, tmp_path):
    from jobs.cli import check_command
    from yushan.config import get_config, set_config

    # The command acts on the process's configuration, as `yushan --home ... check` would.
    previous = get_config()
    set_config(demo_config)

    def invoke(user: str, merchant: str, sql: str, kind: str = "aggregate", *extra: str):
        path = tmp_path / "job.sql"
        path.write_text(sql)
        args = ["--as", user, "--merchant", merchant, "--kind", kind, "--sql-file", str(path), *extra]
        return CliRunner().invoke(check_command, args, catch_exceptions=False)

    yield invoke
    set_config(previous)


def test_allowed_query_exits_0_with_api_json(run_check):
    result = run_check("insight_isv", "hanfu_house",
                       "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender", "aggregate", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["decision"] == "allow" and doc["violations"] == []


def test_denied_query_exits_3_and_explains(run_check):
    result = run_check("insight_isv", "hanfu_house", "SELECT nick FROM platform.consumers", "aggregate", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.output)
    assert doc["decision"] == "deny"
    p1 = next(v for v in doc["violations"] if v["rule"] == "P1")
    assert p1["column"] == "nick"
    assert p1["sources"] == [{"dataset": "platform.consumers", "column": "nick", "class": "private"}]
    text = run_check("insight_isv", "hanfu_house", "SELECT nick FROM platform.consumers").output
    assert "P1 [nick]" in text and "fix:" in text


def test_unauthorised_provider_cannot_check(run_check):
    result = run_check("insight_isv", "tea_garden", "SELECT 1 AS x")
    assert result.exit_code == 1
    assert "decision" not in result.output


def test_bad_kind_is_a_usage_error(run_check):
    result = run_check("insight_isv", "hanfu_house", "SELECT 1 AS x", "export_all")
    assert result.exit_code == 2


def _checks(config) -> list[dict]:
    import audit
    from yushan.db import session_factory

    session = session_factory(config)()
    try:
        return audit.query(session, action="job.check", limit=1000)
    finally:
        session.rollback()
        session.close()


def test_check_is_audited(run_check, demo_config):
    before = len(_checks(demo_config))
    run_check("hanfu_owner", "hanfu_house", "SELECT tier, count(*) FROM hanfu_house.members GROUP BY tier")
    entries = _checks(demo_config)
    assert len(entries) == before + 1
    assert entries[0]["actor"] == "hanfu_owner"
