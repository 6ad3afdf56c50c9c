"""Operations: liveness and readiness, the reverse-proxy and cookie settings read from the
environment, and ``yushan --version``."""

from __future__ import annotations

import http.client
import json
import threading

import pytest
from click.testing import CliRunner
from web_support import assert_documented, populate

from web import create_app
from web.edges import create_server
from yushan.config import Config, ConfigError


@pytest.fixture
def home(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    return config


def test_healthz_needs_no_database_and_readyz_says_why_not(home, make_config):
    client = create_app(home).test_client()
    response = client.get("/readyz")
    assert_documented(response, "/readyz", "GET")
    assert response.status_code == 503
    assert any("worker heartbeat" in r for r in response.get_json()["reasons"])
    from jobs.health import record_beat

    record_beat(home, "host:1:x", {"size": 1, "live": 1, "idle": 1, "faults": 0, "started": 1})
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    assert_documented(response, "/readyz", "GET")
    # A database that does not answer: /healthz still 200, /readyz 503.
    broken = Config.from_env(home=home.home, database_url="postgresql+psycopg://nobody@127.0.0.1:1/x")
    client = create_app(broken).test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["reasons"] == ["the database does not answer"]


def test_settings_that_config_extra_only_pretended_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("YUSHAN_COOKIE_SECURE", "1")
    monkeypatch.setenv("YUSHAN_TRUSTED_PROXY", "127.0.0.1")
    monkeypatch.setenv("YUSHAN_JOB_CPU_SECONDS", "42")
    config = Config.from_env(home=tmp_path)
    assert config.cookie_secure is True and config.trusted_proxy == "127.0.0.1"
    from sandbox.limits import Limits

    assert Limits.from_config(config).cpu_seconds == 42
    app = create_app(config)
    assert app.config["SESSION_COOKIE_SECURE"] is True  # although served on loopback
    monkeypatch.setenv("YUSHAN_COOKIE_SECURE", "0")
    assert create_app(Config.from_env(home=tmp_path)).config["SESSION_COOKIE_SECURE"] is False
    monkeypatch.setenv("YUSHAN_TRUSTED_PROXY", "proxy.example")
    with pytest.raises(ConfigError, match="YUSHAN_TRUSTED_PROXY"):
        Config.from_env(home=tmp_path)


def _failed_login_ip(config: Config, forwarded_for: str) -> str:
    """POST a wrong password through waitress (as ``yushan serve`` sets it up) with an
    X-Forwarded-For header; the audit entry's origin address."""
    import audit
    from yushan.cli import waitress_proxy_settings
    from yushan.db import session_scope

    app = create_app(config)
    server = create_server(app, config, host="127.0.0.1", port=0, threads=2,
                           **waitress_proxy_settings(config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        conn.request("POST", "/api/v1/token", json.dumps({"username": "hanfu_owner",
                                                          "password": "wrong"}),
                     {"Content-Type": "application/json", "X-Forwarded-For": forwarded_for})
        assert conn.getresponse().status == 401
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=10)
    with session_scope(config) as session:
        entry = audit.query(session, action="auth.login_failed", limit=1)[0]
    return entry["origin"]


def test_the_real_client_address_comes_from_a_trusted_proxy_only(home):
    import dataclasses

    assert "ip=127.0.0.1" in _failed_login_ip(home, "203.0.113.9")  # header ignored
    proxied = dataclasses.replace(home, trusted_proxy="127.0.0.1")
    assert "ip=203.0.113.9" in _failed_login_ip(proxied, "203.0.113.9")


def test_version():
    from yushan import __version__
    from yushan.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
