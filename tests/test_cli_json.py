"""``--json`` prints the API's JSON (api.md "Command line"): every command with ``--json``
is run for real (``yushan ...`` through its click group, on the home and database the app
uses) and its document compared with the API's body for the same object, value for value
and type for type (a decimal is a number, times are ISO 8601 with their offset, nulls are
nulls). On the demo's tenants and accounts (web_support.populate), SQLite and PostgreSQL;
jobs are moved through their states as the worker does, outputs are real encrypted ones.
``yushan check --json`` needs Spark: tests/test_jobs_cli.py covers it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from test_results_streaming import approved_job
from web_support import api_token, assert_documented, bearer, populate

from web import create_app
from yushan.config import set_config
from yushan.db import session_scope
from yushan.models import Job

RESULT = pa.table({
    "city": ["杭州", "=1+1", None],
    "spend": pa.array([Decimal("12.50"), Decimal("0.10"), None], pa.decimal128(12, 2)),
    "at": pa.array([datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None, None], pa.timestamp("us", tz="UTC")),
    "n": pa.array([1, None, 3], pa.int64()),
})


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    client = create_app(any_db_config).test_client()
    tokens = {u: api_token(client, u) for u in ("admin", "auditor", "hanfu_owner", "insight_isv")}
    env = {"YUSHAN_HOME": str(any_db_config.home), "YUSHAN_DATABASE_URL": any_db_config.database_url}

    def cli(*args: str, input: str | None = None) -> str:
        from yushan.cli import main

        result = CliRunner(env=env).invoke(main, list(args), input=input, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    yield any_db_config, client, tokens, cli
    set_config(None)


def same(cli_text: str, api_body) -> None:
    """The same JSON value: equal, and equal in type (``1`` is not ``1.0``, nor ``"1"``)."""
    cli_doc = json.loads(cli_text)
    assert json.dumps(cli_doc, sort_keys=True) == json.dumps(api_body, sort_keys=True)


def api(client, token, path, method="GET", documented: str | None = None, **kwargs):
    response = client.open(f"/api/v1{path}", method=method, headers=bearer(token), **kwargs)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    if documented:
        assert_documented(response, f"/api/v1{documented}", method)
    return response


def test_job_commands_print_the_apis_job_documents(world):
    config, client, t, cli = world
    job_id = approved_job(config, RESULT)
    with session_scope(config) as session:  # a dp job's fields: epsilon and accuracy
        job = session.get(Job, job_id)
        job.release, job.epsilon, job.accuracy = "dp", 1.0, {"spend": {"ci95": 2.5}}
    # yushan jobs --json = GET /jobs (every page of it)
    listed = api(client, t["hanfu_owner"], "/jobs", documented="/jobs").get_json()
    same(cli("jobs", "--as", "hanfu_owner", "--json"), listed)
    shown = api(client, t["hanfu_owner"], f"/jobs/{job_id}", documented="/jobs/{id}").get_json()
    assert shown["created_at"].endswith("+00:00") and "T" in shown["created_at"]
    assert listed["jobs"][0] == shown
    # yushan download --format json = GET /jobs/<id>/result?format=json, byte for byte
    body = api(client, t["hanfu_owner"], f"/jobs/{job_id}/result?format=json").get_data()
    assert cli("download", str(job_id), "--as", "hanfu_owner", "--format", "json").encode() == body
    assert json.loads(body)["rows"][0]["spend"] == 12.5
    # yushan submit --json = GET /jobs/<id> of the job it queued
    submitted = json.loads(cli("submit", "--as", "insight_isv", "--merchant", "hanfu_house",
                               "--kind", "aggregate", "--sql-file", "-", "--json",
                               input="SELECT 1 AS x"))
    same(json.dumps(submitted),
         api(client, t["insight_isv"], f"/jobs/{submitted['id']}", documented="/jobs/{id}").get_json())


def test_approve_prints_what_the_api_answers(world):
    config, client, t, cli = world
    job_id = approved_job(config, RESULT)
    with session_scope(config) as session:  # back to awaiting approval, twice over
        session.get(Job, job_id).state = "awaiting_approval"
    printed = cli("approve", str(job_id), "--as", "hanfu_owner", "--json")
    same(printed, api(client, t["hanfu_owner"], f"/jobs/{job_id}").get_json())
    assert json.loads(printed)["summary"] == {"released_rows": 3, "suppressed_rows": 0}


def test_budget_commands_print_the_apis_budget_documents(world):
    _, client, t, cli = world
    same(cli("budget", "show", "hanfu_house", "--json"),
         api(client, t["admin"], "/budgets/hanfu_house", documented="/budgets/{merchant}").get_json())
    printed = cli("budget", "set", "hanfu_house", "--epsilon", "12.5", "--delta", "0.000001", "--json")
    shown = api(client, t["admin"], "/budgets/hanfu_house", documented="/budgets/{merchant}").get_json()
    same(printed, shown)
    assert shown["epsilon"] == 12.5 and shown["period_start"].endswith("+00:00")
    answered = api(client, t["admin"], "/budgets/hanfu_house", method="PUT",
                   json={"epsilon": 12.5, "delta": 0.000001}).get_json()
    same(printed, answered)


def test_audit_verify_prints_the_apis_verdict(world):
    _, client, t, cli = world
    same(cli("audit", "verify", "--json"),
         api(client, t["auditor"], "/audit/verify", documented="/audit/verify").get_json())


def test_platform_dataset_commands_print_the_apis_documents(world):
    _, client, t, cli = world
    listed = api(client, t["admin"], "/platform-datasets", documented="/platform-datasets").get_json()
    same(cli("dataset", "list", "--as", "admin", "--json"), listed)
    same(cli("dataset", "show", "platform.orders", "--as", "admin", "--json"),
         api(client, t["admin"], "/platform-datasets/platform.orders").get_json())
    version = listed["datasets"][0]["versions"][0]
    assert version["created_at"] is None or version["created_at"].endswith("+00:00")


def test_withdraw_prints_what_the_api_answers(world):
    config, client, t, cli = world
    printed = json.loads(cli("withdraw", "--as", "hanfu_owner", "members", "--json"))
    with session_scope(config) as session:  # the API withdraws tea_garden's alike
        from yushan.models import Dataset

        assert session.scalar(select(Dataset).where(Dataset.full_name == "hanfu_house.members")).withdrawn_at
    tea = api_token(client, "tea_owner")
    answered = api(client, tea, "/datasets/members", method="DELETE").get_json()
    assert set(printed) == set(answered)
    assert {k: type(v) for k, v in printed.items()} == {k: type(v) for k, v in answered.items()}
