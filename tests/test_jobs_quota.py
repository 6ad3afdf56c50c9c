"""The per-merchant queue quota (jobs/quota.py): a merchant with as many jobs queued or
running as its quota gets 429 queue_full with Retry-After on every way of submitting (API,
job form, template form and API, command line), audited once per burst; other merchants
are not affected. Real app and database (SQLite, and PostgreSQL when configured), no Spark:
jobs are moved with the lifecycle functions the worker uses."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from web_support import api_token, assert_documented, bearer, csrf_from, page_login, populate

import audit
from jobs import lifecycle, quota
from jobs.queue import worker_actor
from jobs.service import actor_for
from web import create_app
from yushan.accounts import get_tenant
from yushan.config import Config, ConfigError, set_config
from yushan.db import session_scope
from yushan.models import Job, JobState, User

JOB = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"}
QUOTA = 3


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    config = dataclasses.replace(any_db_config, queue_quota=QUOTA)
    set_config(config)  # the command line reads the process-wide configuration
    client = create_app(config).test_client()
    tokens = {u: api_token(client, u) for u in ("hanfu_owner", "tea_owner", "insight_isv")}
    yield config, client, tokens
    set_config(None)


def queue_jobs(config: Config, merchant: str, username: str, count: int) -> list[int]:
    with session_scope(config) as session:
        submitter = session.scalar(select(User).where(User.username == username))
        return [lifecycle.create(session, merchant_id=get_tenant(session, merchant).id,
                                 submitter_id=submitter.id, kind="aggregate", sql="SELECT 1 AS x",
                                 name="t", decision=None, actor=actor_for(submitter, "pytest")).id
                for _ in range(count)]


def move(config: Config, job_id: int, state: JobState, **values) -> None:
    with session_scope(config) as session:
        lifecycle.transition(session, session.get(Job, job_id), state, actor=worker_actor(),
                             values=values or None)


def entries(config: Config) -> list[dict]:
    with session_scope(config) as session:
        return audit.query(session, action="job.queue_full")


def test_a_full_queue_refuses_every_way_of_submitting_and_audits_once_per_burst(world):
    config, client, tokens = world
    ids = queue_jobs(config, "hanfu_house", "hanfu_owner", QUOTA)
    move(config, ids[0], JobState.RUNNING)  # running jobs count as well as queued ones
    before = quota.refusals(config, "hanfu_house")
    for token in (tokens["insight_isv"], tokens["hanfu_owner"]):
        response = client.post("/api/v1/jobs", json=JOB, headers=bearer(token))
        assert response.status_code == 429
        assert_documented(response, "/api/v1/jobs", "POST")
        error = response.get_json()["error"]
        wait = int(response.headers["Retry-After"])
        assert error["code"] == "queue_full" and f"try again in {wait} s" in error["message"]
    response = client.post("/api/v1/templates/rfm/jobs", json={"merchant": "hanfu_house", "params": {}},
                           headers=bearer(tokens["insight_isv"]))
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) >= 1
    page = create_app(config).test_client()
    page_login(page, "insight_isv")
    csrf = csrf_from(page.get("/jobs/new").get_data(as_text=True))
    refused = page.post("/jobs/new", data={**JOB, "name": "mine", "csrf_token": csrf})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "jobs queued or running" in refused.get_data(as_text=True)
    assert "SELECT 1 AS x" in refused.get_data(as_text=True)  # the form keeps what was typed
    refused = page.post("/templates/rfm", data={"merchant": "hanfu_house", "csrf_token": csrf})
    assert refused.status_code == 429 and "jobs queued or running" in refused.get_data(as_text=True)
    from jobs.cli import submit_command

    out = CliRunner().invoke(submit_command, ["--as", "insight_isv", "--merchant", "hanfu_house",
                                              "--kind", "aggregate", "--sql-file", "-"], input="SELECT 1 AS x")
    assert out.exit_code == 1 and "queued or running" in out.output and "try again in" in out.output
    assert quota.refusals(config, "hanfu_house") - before == 6
    with session_scope(config) as session:  # nothing refused was queued
        assert session.query(Job).count() == QUOTA
    first = entries(config)
    assert len(first) == 1 and first[0]["objects"] == {"merchant": "hanfu_house"}
    assert first[0]["details"]["quota"] == QUOTA and first[0]["details"]["active"] == QUOTA
    # another merchant's queue is its own
    assert client.post("/api/v1/jobs", json={**JOB, "merchant": "tea_garden"},
                       headers=bearer(tokens["tea_owner"])).status_code == 201
    # a job ends: a place frees, the next submission is accepted and ends the burst
    move(config, ids[0], JobState.FAILED, error={"class": "X", "message": "x"})
    assert client.post("/api/v1/jobs", json=JOB, headers=bearer(tokens["hanfu_owner"])).status_code == 201
    assert client.post("/api/v1/jobs", json=JOB, headers=bearer(tokens["hanfu_owner"])).status_code == 429
    second = entries(config)
    assert len(second) == 2  # a new burst, audited again, counting the refusals before it
    assert second[0]["details"]["refused_since_last_entry"] == 5


def test_retry_after_is_the_time_until_a_running_job_is_expected_to_end(world):
    config, client, tokens = world
    done = queue_jobs(config, "hanfu_house", "hanfu_owner", 3)
    now = lifecycle.now()
    with session_scope(config) as session:  # the merchant's jobs typically run 100 s
        session.execute(update(Job).where(Job.id.in_(done)).values(
            state=JobState.FAILED.value, started_at=now - timedelta(seconds=300),
            finished_at=now - timedelta(seconds=200)))
    ids = queue_jobs(config, "hanfu_house", "hanfu_owner", QUOTA)
    move(config, ids[0], JobState.RUNNING, started_at=now - timedelta(seconds=40))
    response = client.post("/api/v1/jobs", json=JOB, headers=bearer(tokens["hanfu_owner"]))
    assert response.status_code == 429
    assert 55 <= int(response.headers["Retry-After"]) <= 60  # 100 s typical, 40 s used


def test_the_quota_is_a_setting_and_zero_turns_it_off(world, monkeypatch, tmp_path):
    config, _, tokens = world
    monkeypatch.delenv("YUSHAN_QUEUE_QUOTA", raising=False)
    assert Config.from_env(home=tmp_path).queue_quota == 100
    monkeypatch.setenv("YUSHAN_QUEUE_QUOTA", "5")
    assert Config.from_env(home=tmp_path).queue_quota == 5
    monkeypatch.setenv("YUSHAN_QUEUE_QUOTA", "many")
    with pytest.raises(ConfigError, match="YUSHAN_QUEUE_QUOTA"):
        Config.from_env(home=tmp_path)
    queue_jobs(config, "hanfu_house", "hanfu_owner", QUOTA)
    client = create_app(dataclasses.replace(config, queue_quota=0)).test_client()
    assert client.post("/api/v1/jobs", json=JOB, headers=bearer(tokens["hanfu_owner"])).status_code == 201
