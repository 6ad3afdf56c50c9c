"""``Idempotency-Key`` on job submission (SQL and templates), SQLite and PostgreSQL:
a retry gets the original answer and creates nothing; a reused key is refused."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from web_support import api_token, assert_documented, bearer, populate

from web import create_app
from yushan.db import session_scope
from yushan.models import AuditEntry, IdempotencyKey, Job

BODY = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x", "name": "once"}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in ("hanfu_owner", "insight_isv", "tea_owner")}
    return any_db_config, client, tokens


def post(client, token, body=None, key=None, path="/api/v1/jobs", raw=None):
    headers = {**bearer(token), **({"Idempotency-Key": key} if key is not None else {})}
    if raw is not None:
        return client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})
    return client.post(path, json=body, headers=headers)


def count_jobs(config) -> int:
    with session_scope(config) as session:
        return session.scalar(select(func.count()).select_from(Job))


def submit_entries(config) -> list[str]:
    with session_scope(config) as session:
        return list(session.scalars(select(AuditEntry.details).where(AuditEntry.action == "job.submit")))


def test_a_retry_with_the_same_key_answers_the_original_and_creates_nothing(world):
    config, client, t = world
    first = post(client, t["insight_isv"], BODY, key="retry-1")
    assert first.status_code == 201
    assert_documented(first, "/api/v1/jobs", "POST")
    assert "Idempotent-Replayed" not in first.headers
    # The same body, written differently (key order, spacing): the same request.
    again = post(client, t["insight_isv"], key="retry-1",
                 raw=b'{ "name": "once", "sql": "SELECT 1 AS x", "kind": "aggregate", "merchant": "hanfu_house" }')
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"] == f"/api/v1/jobs/{first.get_json()['id']}"
    assert_documented(again, "/api/v1/jobs", "POST")
    assert count_jobs(config) == 1
    # The job's creation notes the key, once (the replay audits nothing).
    entries = submit_entries(config)
    assert len(entries) == 1 and '"idempotency_key":"retry-1"' in entries[0].replace(" ", "")

    # Without a key every request is a new job.
    a, b = post(client, t["insight_isv"], BODY), post(client, t["insight_isv"], BODY)
    assert a.get_json()["id"] != b.get_json()["id"] and count_jobs(config) == 3
    assert all("idempotency_key" not in e for e in submit_entries(config)[1:])


def test_the_same_key_with_another_request_is_refused(world):
    config, client, t = world
    first = post(client, t["insight_isv"], BODY, key="k-2")
    assert first.status_code == 201
    for body, path in (({**BODY, "sql": "SELECT 2 AS x"}, "/api/v1/jobs"),
                       ({**BODY, "name": "twice"}, "/api/v1/jobs"),
                       ({"merchant": "hanfu_house", "params": {}}, "/api/v1/templates/rfm/jobs")):
        refused = post(client, t["insight_isv"], body, key="k-2", path=path)
        assert refused.status_code == 422, refused.get_json()
        assert_documented(refused, path.replace("/rfm/", "/{name}/"), "POST")
        error = refused.get_json()["error"]
        assert error["code"] == "idempotency_key_reused" and "Idempotency-Key" in error["message"]
    assert count_jobs(config) == 1
    # The original answer is still there for the original request.
    assert post(client, t["insight_isv"], BODY, key="k-2").get_json()["id"] == first.get_json()["id"]


def test_keys_are_per_user(world):
    config, client, t = world
    mine = post(client, t["insight_isv"], BODY, key="shared-key")
    theirs = post(client, t["hanfu_owner"], BODY, key="shared-key")
    assert mine.status_code == theirs.status_code == 201
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert count_jobs(config) == 2
    # Another tenant's key never answers with this tenant's job.
    tea = post(client, t["tea_owner"], {**BODY, "merchant": "tea_garden"}, key="shared-key")
    assert tea.status_code == 201 and tea.get_json()["merchant"] == "tea_garden"


def test_malformed_keys_are_refused(world):
    config, client, t = world
    for key in ("", "has space", "x" * 256, "é"):
        headers = {**bearer(t["insight_isv"]), "Idempotency-Key": key.encode("utf-8").decode("latin-1")}
        response = client.post("/api/v1/jobs", json=BODY, headers=headers)
        assert response.status_code == 400, key
        assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert count_jobs(config) == 0


def test_a_key_expires_after_24_hours(world):
    config, client, t = world
    first = post(client, t["insight_isv"], BODY, key="old")
    with session_scope(config) as session:
        for row in session.scalars(select(IdempotencyKey)):
            row.created_at = row.created_at - timedelta(hours=24, minutes=1)
    # Expired: the key is free again, even for another body.
    later = post(client, t["insight_isv"], {**BODY, "sql": "SELECT 3 AS x"}, key="old")
    assert later.status_code == 201 and "Idempotent-Replayed" not in later.headers
    assert later.get_json()["id"] != first.get_json()["id"]
    with session_scope(config) as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


def test_template_jobs_take_a_key_too(world):
    config, client, t = world
    body = {"merchant": "hanfu_house", "params": {"lookback_days": 90}}
    first = post(client, t["hanfu_owner"], body, key="tpl", path="/api/v1/templates/rfm/jobs")
    assert first.status_code == 201, first.get_json()
    assert_documented(first, "/api/v1/templates/{name}/jobs", "POST")
    again = post(client, t["hanfu_owner"], body, key="tpl", path="/api/v1/templates/rfm/jobs")
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_jobs(config) == 1
    # A refused request keeps nothing: after fixing it, the same key creates the job.
    bad = post(client, t["hanfu_owner"], {**body, "params": {"nope": 1}}, key="tpl-2",
               path="/api/v1/templates/rfm/jobs")
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] != "idempotency_key_reused"
    good = post(client, t["hanfu_owner"], body, key="tpl-2", path="/api/v1/templates/rfm/jobs")
    assert good.status_code == 201 and count_jobs(config) == 2


def test_concurrent_retries_create_one_job(world):
    config, client, t = world
    app = client.application
    answers: list = []

    def send() -> None:
        with app.test_client() as own:
            answers.append(post(own, t["insight_isv"], BODY, key="race"))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.get_json()["id"] for a in answers}) == 1
    assert count_jobs(config) == 1 and len(submit_entries(config)) == 1
