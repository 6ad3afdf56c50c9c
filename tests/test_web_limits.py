"""Request rate limits (web/limits.py): checks and submissions per user, log-ins per client
address, 429 in the API's error shape with Retry-After, through the app (SQLite, and
PostgreSQL when configured) and through waitress behind a trusted proxy. No Spark: the
limited requests are refused or queued before anything is checked (a refused request
counts like any other)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading

import pytest
from web_support import api_token, assert_documented, bearer, csrf_from, page_login, populate

from web import create_app
from web.edges import create_server
from yushan.config import Config, ConfigError

# 422 before any Spark work: an unknown kind (the view still ran: the request counted).
BAD_CHECK = {"merchant": "hanfu_house", "kind": "bogus", "sql": "SELECT 1 AS x"}
JOB = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    return any_db_config


def limited(config: Config, **limits: str):
    """An app whose limits are ``limits`` (``check``, ``submit``, ``login``), the others off."""
    settings = {f"rate_limit_{k}": limits.get(k, "") for k in ("check", "submit", "login")}
    return create_app(dataclasses.replace(config, **settings))


def assert_refused(response, path: str | None = None) -> int:
    """429 with a whole number of seconds in Retry-After (and, on the API, the contract's
    error shape); the seconds."""
    assert response.status_code == 429
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= 60
    if path is not None:
        assert response.get_json()["error"]["code"] == "too_many_requests"
        assert f"try again in {wait} s" in response.get_json()["error"]["message"]
        assert_documented(response, path, "POST")
    return wait


def test_checks_are_limited_per_user_whatever_token_or_page_they_use(world):
    app = limited(world, check="3/minute")
    client = app.test_client()
    owner, isv = api_token(client, "hanfu_owner"), api_token(client, "insight_isv")
    for _ in range(3):
        response = client.post("/api/v1/jobs/check", json=BAD_CHECK, headers=bearer(owner))
        assert response.status_code == 422
        assert response.headers["X-RateLimit-Limit"] == "3"
    assert_refused(client.post("/api/v1/jobs/check", json=BAD_CHECK, headers=bearer(owner)),
                   "/api/v1/jobs/check")
    # a second token of the same person buys nothing
    again = api_token(client, "hanfu_owner")
    assert_refused(client.post("/api/v1/jobs/check", json=BAD_CHECK, headers=bearer(again)))
    # ... nor does the editor's Check button (same allowance), which answers JSON too
    page = app.test_client()
    page_login(page, "hanfu_owner")
    token = csrf_from(page.get("/jobs/new").get_data(as_text=True))
    refused = page.post("/jobs/check", json=BAD_CHECK, headers={"X-CSRFToken": token})
    assert_refused(refused)
    assert refused.get_json()["error"]["code"] == "too_many_requests"
    # another user of the same merchant is not held back by the first one's checks
    assert client.post("/api/v1/jobs/check", json=BAD_CHECK, headers=bearer(isv)).status_code == 422


def test_submissions_are_limited_per_user_on_the_api_and_the_pages(world):
    app = limited(world, submit="2/minute")
    client = app.test_client()
    isv, owner = api_token(client, "insight_isv"), api_token(client, "hanfu_owner")
    for _ in range(2):
        assert client.post("/api/v1/jobs", json=JOB, headers=bearer(isv)).status_code == 201
    assert_refused(client.post("/api/v1/jobs", json=JOB, headers=bearer(isv)), "/api/v1/jobs")
    params = {"merchant": "hanfu_house", "params": {}}
    assert_refused(client.post("/api/v1/templates/rfm/jobs", json=params, headers=bearer(isv)),
                   "/api/v1/templates/{name}/jobs")
    # the job form: the error page, with Retry-After
    page = app.test_client()
    page_login(page, "insight_isv")
    token = csrf_from(page.get("/jobs/new").get_data(as_text=True))
    refused = page.post("/jobs/new", data={**JOB, "name": "", "csrf_token": token})
    assert_refused(refused)
    assert "text/html" in refused.content_type
    # the merchant's own user still submits
    assert client.post("/api/v1/jobs", json=JOB, headers=bearer(owner)).status_code == 201
    from yushan.db import session_scope
    from yushan.models import Job

    with session_scope(world) as session:
        assert session.query(Job).count() == 3  # nothing refused was queued


def test_log_ins_are_limited_per_client_address(world):
    app = limited(world, login="3/minute")
    client = app.test_client()
    first, second = {"REMOTE_ADDR": "192.0.2.1"}, {"REMOTE_ADDR": "192.0.2.2"}
    body = {"username": "hanfu_owner", "password": "demo-password"}
    # right or wrong, every attempt counts
    assert client.post("/api/v1/token", json={**body, "password": "wrong"}, environ_base=first).status_code == 401
    for _ in range(2):
        assert client.post("/api/v1/token", json=body, environ_base=first).status_code == 200
    assert_refused(client.post("/api/v1/token", json=body, environ_base=first), "/api/v1/token")
    # the log-in page from the same address: the error page
    token = csrf_from(client.get("/login", environ_base=first).get_data(as_text=True))
    refused = client.post("/login", data={**body, "csrf_token": token}, environ_base=first)
    assert_refused(refused)
    # another address logs in, as the same person too
    assert client.post("/api/v1/token", json=body, environ_base=second).status_code == 200
    # reading the log-in page is not limited
    assert client.get("/login", environ_base=first).status_code == 200


def _token_status(config: Config, forwarded_for: str, port_holder: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port_holder["port"], timeout=30)
    conn.request("POST", "/api/v1/token",
                 json.dumps({"username": "hanfu_owner", "password": "demo-password"}),
                 {"Content-Type": "application/json", "X-Forwarded-For": forwarded_for})
    response = conn.getresponse()
    response.read()
    return response.status


@pytest.mark.parametrize("proxied", [False, True])
def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(world, proxied):
    from yushan.cli import waitress_proxy_settings

    config = dataclasses.replace(world, trusted_proxy="127.0.0.1" if proxied else "")
    app = limited(config, login="2/minute")
    server = create_server(app, config, host="127.0.0.1", port=0, threads=2,
                           **waitress_proxy_settings(config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        port = {"port": server.effective_port}
        statuses = [_token_status(config, "203.0.113.7", port) for _ in range(3)]
        assert statuses == [200, 200, 429]
        # another client behind the proxy: its own allowance; without a trusted proxy the
        # header is not believed and every client is the proxy's address
        assert _token_status(config, "203.0.113.8", port) == (200 if proxied else 429)
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=10)


def test_limits_are_settings(monkeypatch, tmp_path):
    for name in ("YUSHAN_RATE_LIMIT_CHECK", "YUSHAN_RATE_LIMIT_SUBMIT", "YUSHAN_RATE_LIMIT_LOGIN",
                 "YUSHAN_RATE_LIMIT_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    config = Config.from_env(home=tmp_path)
    assert (config.rate_limit_check, config.rate_limit_submit, config.rate_limit_login) == (
        "60/minute", "60/minute", "30/minute")
    assert config.rate_limit_storage == "memory://"
    monkeypatch.setenv("YUSHAN_RATE_LIMIT_CHECK", "10/second;300/hour")
    monkeypatch.setenv("YUSHAN_RATE_LIMIT_LOGIN", "off")
    config = Config.from_env(home=tmp_path)
    assert config.rate_limit_check == "10/second;300/hour" and config.rate_limit_login == ""
    monkeypatch.setenv("YUSHAN_RATE_LIMIT_SUBMIT", "lots")
    with pytest.raises(ConfigError, match="YUSHAN_RATE_LIMIT_SUBMIT"):
        Config.from_env(home=tmp_path)
    monkeypatch.setenv("YUSHAN_RATE_LIMIT_SUBMIT", "0/minute")
    with pytest.raises(ConfigError, match="at least 1"):
        Config.from_env(home=tmp_path)
    monkeypatch.delenv("YUSHAN_RATE_LIMIT_SUBMIT")
    monkeypatch.setenv("YUSHAN_RATE_LIMIT_STORAGE", "ftp://user:secret@host")
    with pytest.raises(ConfigError, match="storage URI") as refused:
        Config.from_env(home=tmp_path)
    assert "secret" not in str(refused.value)


def test_without_limits_nothing_is_counted(world):
    app = limited(world)  # all off
    client = app.test_client()
    token = api_token(client, "hanfu_owner")
    response = client.post("/api/v1/jobs/check", json=BAD_CHECK, headers=bearer(token))
    assert response.status_code == 422 and "X-RateLimit-Limit" not in response.headers
