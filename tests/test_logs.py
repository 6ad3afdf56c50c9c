"""Log lines: JSON on request, every line of a web request with its id, and the worker's
lines about a job with the id of the request that submitted it (real Spark and worker)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from web_support import api_token, bearer, wait_for_job

from web import create_app
from yushan import logs
from yushan.config import Config, ConfigError


@pytest.fixture
def json_lines():
    """Log lines of this process as JSON objects (INFO and up), while the test runs."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure(logging.INFO, "json", stream=buffer)

    def read() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    yield read
    root.removeHandler(handler)
    root.setLevel(level)


def test_the_log_settings_are_read_and_checked(monkeypatch, tmp_path):
    assert Config.from_env(home=tmp_path).log_format == "text"
    monkeypatch.setenv("YUSHAN_LOG_FORMAT", "JSON")
    monkeypatch.setenv("YUSHAN_LOG_LEVEL", "info")
    config = Config.from_env(home=tmp_path)
    assert (config.log_format, config.log_level) == ("json", "INFO")
    monkeypatch.setenv("YUSHAN_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="YUSHAN_LOG_FORMAT"):
        Config.from_env(home=tmp_path)


def test_incoming_request_ids_are_kept_only_when_sane():
    assert logs.accept_request_id("f81d4fae-7dec-11d0-a765-00a0c91e6bf6") == \
        "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    for bad in (None, "", "x" * 200, "a b", "id\nforged line", "<script>", "-leading"):
        new = logs.accept_request_id(bad)
        assert new != bad and len(new) == 32 and new.isalnum()


def test_every_line_of_a_request_carries_its_id(make_config, json_lines):
    from web_support import populate

    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    app = create_app(config)

    def noisy():  # any library's line while a request is handled
        logging.getLogger("some.library").warning("working on it")
        return "ok"

    app.add_url_rule("/noisy", view_func=noisy)
    client = app.test_client()
    response = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    other = client.get("/no/such/page", headers={"X-Request-ID": "bad id with spaces"})
    generated = other.headers["X-Request-ID"]
    assert generated != "bad id with spaces" and len(generated) == 32
    client.get("/noisy", headers={"X-Request-ID": "noisy-7"})
    lines = json_lines()
    access = {line["request_id"]: line for line in lines if line["logger"] == "yushan.access"}
    assert access["trace-42"]["route"] == "/healthz" and access["trace-42"]["status"] == 200
    assert access[generated]["route"] == "<unmatched>" and access[generated]["status"] == 404
    assert all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    noisy_lines = [line for line in lines if line["request_id"] == "noisy-7"]
    assert {line["logger"] for line in noisy_lines} == {"some.library", "yushan.access"}
    library = next(line for line in noisy_lines if line["logger"] == "some.library")
    assert (library["message"], library["level"]) == ("working on it", "WARNING")
    # Lines outside any request (the migration at start-up) carry none.
    assert all(line["request_id"] is None for line in lines if line["logger"].startswith("alembic"))


@pytest.mark.spark
@pytest.mark.slow
def test_a_job_carries_the_request_id_that_submitted_it_to_the_worker(demo_config, worker,
                                                                      json_lines):
    import audit
    from yushan.db import session_scope
    from yushan.models import Job

    client = create_app(demo_config).test_client()
    token = api_token(client, "insight_isv")
    response = client.post("/api/v1/jobs", headers={**bearer(token), "X-Request-ID": "sub-1234"},
                           json={"merchant": "hanfu_house", "kind": "aggregate",
                                 "sql": "SELECT 1 AS x"})
    assert response.status_code == 201 and response.headers["X-Request-ID"] == "sub-1234"
    job_id = response.get_json()["id"]
    wait_for_job(client, token, job_id)
    with session_scope(demo_config) as session:
        assert session.get(Job, job_id).request_id == "sub-1234"
        submit = audit.query(session, action="job.submit", job=job_id)
    details = submit[0]["details"]
    assert (json.loads(details) if isinstance(details, str) else details)["request_id"] == "sub-1234"
    worker_lines = [line for line in json_lines() if line.get("job_id") == job_id]
    assert worker_lines, "the worker logged nothing about the job"
    assert {line["request_id"] for line in worker_lines} == {"sub-1234"}
    assert any(line["logger"] == "jobs.worker" for line in worker_lines)
