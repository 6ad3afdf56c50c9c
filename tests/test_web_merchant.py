"""Merchant pages: granting and revoking providers changes what they may do, audited."""

from __future__ import annotations

import pytest
from web_support import api_token, bearer, csrf_from, page_login, populate

from web import create_app


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    return any_db_config, create_app(any_db_config)


def test_grant_and_revoke_a_provider(world):
    config, app = world
    merchant = app.test_client()
    page_login(merchant, "tea_owner")
    isv = app.test_client()
    token = api_token(isv, "insight_isv")
    body = {"merchant": "tea_garden", "kind": "aggregate", "sql": "SELECT 1 AS x"}
    assert isv.post("/api/v1/jobs/check", json=body, headers=bearer(token)).status_code == 404

    csrf = csrf_from(merchant.get("/authorizations").get_data(as_text=True))
    response = merchant.post("/authorizations", data={"provider": "insight_isv", "view_results": "1",
                                                      "csrf_token": csrf})
    assert response.status_code == 302
    html = merchant.get("/authorizations").get_data(as_text=True)
    assert 'id="auth-insight_isv"' in html
    me = isv.get("/api/v1/me", headers=bearer(token)).get_json()
    assert "tea_garden" in me["merchants"]

    response = merchant.post("/authorizations/insight_isv/revoke", data={"csrf_token": csrf})
    assert response.status_code == 302
    assert "tea_garden" not in isv.get("/api/v1/me", headers=bearer(token)).get_json()["merchants"]
    # revoking again, or a tenant that is not a provider: not found
    assert merchant.post("/authorizations/insight_isv/revoke",
                         data={"csrf_token": csrf}).status_code == 404
    assert merchant.post("/authorizations/hanfu_house/revoke",
                         data={"csrf_token": csrf}).status_code == 404

    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        actions = [e["action"] for e in audit.query(session, actor="tea_owner")]
    assert "authorization.grant" in actions and "authorization.revoke" in actions


def test_merchant_only_sees_its_own_authorisations(world):
    _, app = world
    client = app.test_client()
    page_login(client, "hanfu_owner")
    html = client.get("/authorizations").get_data(as_text=True)
    assert 'id="auth-insight_isv"' in html and 'id="auth-other_isv"' not in html


def test_empty_approvals_queue(world):
    _, app = world
    client = app.test_client()
    page_login(client, "hanfu_owner")
    assert 'id="no-approvals"' in client.get("/approvals").get_data(as_text=True)
