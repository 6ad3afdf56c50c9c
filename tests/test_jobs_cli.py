"""`yushan submit|approve|download` act like the API, audited with origin "cli"; `yushan
check` exits 3 when the policy denies."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import audit
from yushan.config import set_config
from yushan.db import session_scope

pytestmark = pytest.mark.spark


@pytest.fixture
def run_cli(demo_config, tmp_path):
    from yushan.cli import main

    def invoke(*args: str, sql: str | None = None):
        argv = ["--home", str(demo_config.home), *args]
        if sql is not None:
            path = tmp_path / "query.sql"
            path.write_text(sql)
            argv += ["--sql-file", str(path)]
        return CliRunner().invoke(main, argv, catch_exceptions=False)

    yield invoke
    set_config(demo_config)  # the CLI replaced the process-wide configuration


def test_a_denied_query_is_queued_on_submission_and_the_check_exits_3(run_cli, demo_config, tmp_path):
    # Submitting answers "queued" (the executor's check decides); the dry run says why not.
    sql = "SELECT phone FROM platform.consumers"
    result = run_cli("submit", "--as", "insight_isv", "--merchant", "hanfu_house",
                     "--kind", "aggregate", "--json", sql=sql)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["state"] == "queued" and doc["violations"] == [] and doc["release"] is None
    with session_scope(demo_config) as session:
        (entry,) = audit.query(session, job=doc["id"], action="job.submit")
    assert entry["origin"] == "cli" and entry["actor"] == "insight_isv"
    checked = run_cli("check", "--as", "insight_isv", "--merchant", "hanfu_house",
                      "--kind", "aggregate", "--json", sql=sql)
    assert checked.exit_code == 3, checked.output
    assert "P1" in {v["rule"] for v in json.loads(checked.output)["violations"]}
    from jobs_support import user

    from jobs import service

    with session_scope(demo_config) as session:
        job = service.get_visible_job(session, user(session, "insight_isv"), doc["id"])
        service.cancel(session, user(session, "insight_isv"), job)  # leave no work for other tests


def test_an_allowed_submission_is_queued_and_strangers_cannot_approve(run_cli, demo_config):
    result = run_cli("submit", "--as", "hanfu_owner", "--merchant", "hanfu_house",
                     "--kind", "aggregate", "--json",
                     sql="SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["state"] == "queued"
    other = run_cli("approve", str(doc["id"]), "--as", "tea_owner")
    assert other.exit_code != 0 and "no job" in other.output
    early = run_cli("approve", str(doc["id"]), "--as", "hanfu_owner")
    assert early.exit_code == 1  # not awaiting approval yet
    wrong = run_cli("submit", "--as", "hanfu_owner", "--merchant", "tea_garden",
                    "--kind", "aggregate", sql="SELECT 1 AS x")
    assert wrong.exit_code == 1
    from jobs_support import user

    from jobs import service

    with session_scope(demo_config) as session:
        job = service.get_visible_job(session, user(session, "hanfu_owner"), doc["id"])
        service.cancel(session, user(session, "hanfu_owner"), job)  # leave no work for other tests


def test_jobs_lists_every_visible_job_newest_first(run_cli, demo_config):
    from jobs_support import user

    from jobs import service

    made = []
    for i in range(3):
        result = run_cli("submit", "--as", "tea_owner", "--merchant", "tea_garden", "--kind", "aggregate",
                         "--name", f"listed {i}", "--json", sql=f"SELECT {i} AS x")
        assert result.exit_code == 0, result.output
        made.append(json.loads(result.output)["id"])
    with session_scope(demo_config) as session:
        owner = user(session, "tea_owner")
        for job_id in made[:2]:
            service.cancel(session, owner, service.get_visible_job(session, owner, job_id))
        # Page by page (the listing's keyset) gives exactly the one-shot answer.
        paged = [j.id for j in service.iter_visible_jobs(session, owner, page=2)]
        assert paged == [j.id for j in service.visible_jobs(session, owner, limit=10_000)]
        assert paged[:3] == list(reversed(made))
        service.cancel(session, owner, service.get_visible_job(session, owner, made[2]))

    listed = run_cli("jobs", "--as", "tea_owner", "--json")
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.output)
    assert doc["next_cursor"] is None and [j["id"] for j in doc["jobs"]][:3] == list(reversed(made))
    assert all(j["merchant"] == "tea_garden" for j in doc["jobs"])  # never another tenant's
    text = run_cli("jobs", "--as", "tea_owner", "--state", "cancelled", "--merchant", "tea_garden")
    assert text.exit_code == 0 and all(str(i) in text.output for i in made)
    assert "hanfu_house" not in run_cli("jobs", "--as", "tea_owner").output
    assert run_cli("jobs", "--as", "tea_owner", "--state", "nonsense").exit_code == 2
