"""Log-in, tokens, throttling, sessions and CSRF, on SQLite (and PostgreSQL when set)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from web_support import (
    PASSWORD,
    api_token,
    assert_documented,
    bearer,
    csrf_from,
    page_login,
    populate,
)

from web import create_app


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    return any_db_config, app


def audit_actions(config, **filters) -> list[dict]:
    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        return audit.query(session, limit=1000, **filters)


def test_token_is_random_hashed_at_rest_and_audited(world):
    config, app = world
    client = app.test_client()
    response = client.post("/api/v1/token", json={"username": "hanfu_owner", "password": PASSWORD})
    assert_documented(response, "/api/v1/token", "POST")
    token = response.get_json()["token"]
    assert len(token) >= 40
    from yushan.db import session_scope
    from yushan.models import ApiToken

    with session_scope(config) as session:
        stored = session.scalars(select(ApiToken.token_hash)).all()
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    entries = audit_actions(config, action="auth.token")
    assert entries and entries[0]["actor"] == "hanfu_owner"
    assert token not in str(entries)


def test_wrong_password_unknown_user_and_bad_tokens_answer_401(world):
    config, app = world
    client = app.test_client()
    for body in ({"username": "hanfu_owner", "password": "nope"},
                 {"username": "nobody", "password": "x"}):
        response = client.post("/api/v1/token", json=body)
        assert response.status_code == 401
        assert_documented(response, "/api/v1/token", "POST")
        assert set(response.get_json()["error"]) == {"code", "message"}
    failed = audit_actions(config, action="auth.login_failed")
    assert {e["actor"] for e in failed} == {"hanfu_owner", "nobody"}
    for header in ({}, bearer("x" * 40), {"Authorization": "Basic abc"}):
        response = client.get("/api/v1/datasets", headers=header)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_and_expired_tokens_stop_working(world):
    config, app = world
    client = app.test_client()
    token = api_token(client, "insight_isv")
    assert client.get("/api/v1/datasets", headers=bearer(token)).status_code == 200
    revoked = client.delete("/api/v1/token", headers=bearer(token))
    assert revoked.status_code == 204
    assert client.get("/api/v1/datasets", headers=bearer(token)).status_code == 401

    token = api_token(client, "insight_isv")
    from yushan.db import session_scope
    from yushan.models import ApiToken

    with session_scope(config) as session:
        for record in session.scalars(select(ApiToken)):
            record.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert client.get("/api/v1/datasets", headers=bearer(token)).status_code == 401


def test_failed_logins_lock_the_user_then_the_address(world):
    config, app = world
    client = app.test_client()
    for _ in range(5):
        assert client.post("/api/v1/token", json={"username": "tea_owner", "password": "bad"}
                           ).status_code == 401
    # Locked: even the right password is refused for a while, with Retry-After.
    locked = client.post("/api/v1/token", json={"username": "tea_owner", "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert_documented(locked, "/api/v1/token", "POST")
    # Another user is not affected by tea_owner's lock.
    assert client.post("/api/v1/token", json={"username": "hanfu_owner", "password": PASSWORD}
                       ).status_code == 200
    # Per address: enough failures across names block the address itself.
    for i in range(30):
        client.post("/api/v1/token", json={"username": f"guess{i}", "password": "x"})
    blocked = client.post("/api/v1/token", json={"username": "hanfu_owner", "password": PASSWORD})
    assert blocked.status_code == 429
    other_ip = client.post("/api/v1/token", json={"username": "hanfu_owner", "password": PASSWORD},
                           environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other_ip.status_code == 200


def test_demo_accounts_are_refused_outside_demo_mode(world):
    config, _ = world
    from dataclasses import replace

    app = create_app(replace(config, demo_mode=False))
    response = app.test_client().post("/api/v1/token",
                                      json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 401


def test_page_login_logout_and_audit(world):
    config, app = world
    client = app.test_client()
    assert client.get("/dashboard").status_code == 302
    response = page_login(client, "auditor")
    assert response.status_code == 302 and response.headers["Location"].endswith("/dashboard")
    page = client.get("/dashboard")
    assert page.status_code == 200 and "auditor" in page.get_data(as_text=True)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    token = csrf_from(page.get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard").status_code == 302
    actions = [e["action"] for e in audit_actions(config, actor="auditor")]
    assert "auth.login" in actions and "auth.logout" in actions


def test_wrong_password_page_says_so_without_detail(world):
    _, app = world
    client = app.test_client()
    response = page_login(client, "hanfu_owner", "wrong")
    assert response.status_code == 401
    assert "Wrong user name or password" in response.get_data(as_text=True)


def test_forms_without_csrf_token_are_rejected(world):
    _, app = world
    client = app.test_client()
    response = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 400
    page_login(client, "hanfu_owner")
    for path, data in (("/logout", {}), ("/authorizations", {"provider": "other_isv"}),
                       ("/jobs/new", {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1"})):
        response = client.post(path, data=data)
        assert response.status_code == 400, path
        assert "<html" in response.get_data(as_text=True)
    # Still logged in: the forged log-out did nothing.
    assert client.get("/dashboard").status_code == 200
    # The Check endpoint wants the token as a header.
    assert client.post("/jobs/check", json={"merchant": "hanfu_house", "kind": "aggregate",
                                             "sql": "SELECT 1"}).status_code == 400


def test_open_redirect_after_login_is_refused(world):
    _, app = world
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=https://evil.example/x",
                           data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"].endswith("/dashboard")


def test_a_password_stored_with_older_parameters_is_rehashed_at_log_in(world):
    """The hash is replaced in the log-in's transaction and audited; a wrong password leaves
    it alone."""
    from werkzeug.security import generate_password_hash

    from yushan.db import session_scope
    from yushan.models import User

    config, app = world
    older = generate_password_hash(PASSWORD, method="scrypt")  # the platform's hash before
    with session_scope(config) as session:
        session.scalar(select(User).where(User.username == "tea_owner")).password_hash = older
    client = app.test_client()
    wrong = client.post("/api/v1/token", json={"username": "tea_owner", "password": "not it at all"})
    assert wrong.status_code == 401
    with session_scope(config) as session:
        assert session.scalar(select(User.password_hash).where(User.username == "tea_owner")) == older
    assert [e["action"] for e in audit_actions(config, action="auth.password_rehash")] == []
    token = api_token(client, "tea_owner")
    with session_scope(config) as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "tea_owner"))
    assert stored.startswith("$argon2id$") and stored != older
    entries = audit_actions(config, action="auth.password_rehash")
    assert len(entries) == 1 and entries[0]["objects"] == {"user": "tea_owner"}
    assert entries[0]["details"] == {"channel": "api", "algorithm": "argon2id"}
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    api_token(client, "tea_owner")  # the next log-in verifies against the new hash, no rehash
    assert page_login(app.test_client(), "tea_owner").status_code == 302
    assert len(audit_actions(config, action="auth.password_rehash")) == 1
