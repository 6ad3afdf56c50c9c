"""The JSON API without running jobs: scoping, validation, errors, audit, OpenAPI.

Job execution through the API is in test_web_jobs.py (real Spark, demo world).
"""

from __future__ import annotations

import json

import pytest
from web_support import api_token, assert_documented, bearer, populate

from web import create_app


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in
              ("admin", "auditor", "hanfu_owner", "tea_owner", "insight_isv", "other_isv")}
    return any_db_config, client, tokens


def names(client, token) -> set[str]:
    response = client.get("/api/v1/datasets", headers=bearer(token))
    assert_documented(response, "/api/v1/datasets", "GET")
    return {d["name"] for d in response.get_json()["datasets"]}


def test_datasets_are_scoped_to_what_the_caller_may_use(world):
    _, client, t = world
    platform = {"platform.consumers", "platform.orders", "platform.behaviors", "platform.items"}
    assert names(client, t["hanfu_owner"]) == platform | {"hanfu_house.members"}
    assert names(client, t["tea_owner"]) == platform | {"tea_garden.members"}
    assert names(client, t["insight_isv"]) == platform | {"hanfu_house.members"}
    assert names(client, t["other_isv"]) == platform | {"tea_garden.members"}
    assert names(client, t["auditor"]) == platform
    response = client.get("/api/v1/datasets", headers=bearer(t["hanfu_owner"]))
    consumers = next(d for d in response.get_json()["datasets"] if d["name"] == "platform.consumers")
    assert consumers["entity_column"] == "user_id" and consumers["k"] == 50
    classes = {c["name"]: c["class"] for c in consumers["columns"]}
    assert classes["phone"] == "private" and classes["user_id"] == "identifier"
    assert "storage_path" not in json.dumps(response.get_json())


def post_job(client, token, body, path="/api/v1/jobs", raw=None):
    if raw is not None:
        return client.post(path, data=raw, headers={**bearer(token),
                                                     "Content-Type": "application/json"})
    return client.post(path, json=body, headers=bearer(token))


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/check"])
def test_job_requests_are_validated_before_anything_runs(world, path):
    _, client, t = world
    isv = t["insight_isv"]
    good = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"}
    cases = [
        (post_job(client, isv, None, path, raw=b"{not json"), 400),
        (post_job(client, isv, ["a list"], path), 400),
        (post_job(client, isv, {**good, "sql": 5}, path), 400),
        (post_job(client, isv, {**good, "sql": "SELECT 1 " + "-- x\n" * 400000}, path), 413),
        (post_job(client, isv, {**good, "sql": "SELECT 1 " + "-- x\n" * 30000}, path), 413),
        (post_job(client, isv, {**good, "kind": "export_all"}, path), 422),
        (post_job(client, isv, {**good, "sql": "   "}, path), 422),
        # not authorised by tea_garden: looks exactly like a merchant that does not exist
        (post_job(client, isv, {**good, "merchant": "tea_garden"}, path), 404),
        (post_job(client, isv, {**good, "merchant": "no_such_shop"}, path), 404),
        (post_job(client, t["hanfu_owner"], {**good, "merchant": "tea_garden"}, path), 404),
        (post_job(client, t["auditor"], good, path), 403),
        (post_job(client, t["admin"], good, path), 403),
        (client.post(path, json=good), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.get_json())
        assert_documented(response, path, "POST")
    missing = post_job(client, isv, {**good, "merchant": "no_such_shop"}, path).get_json()
    hidden = post_job(client, isv, {**good, "merchant": "tea_garden"}, path).get_json()
    assert missing == hidden


def test_unknown_jobs_answer_404_for_every_role(world):
    _, client, t = world
    # Only a role that may never cancel any job is refused before the lookup (403).
    role_gated = {("POST", "/api/v1/jobs/999999/cancel"): {"admin", "auditor"}}
    for username, token in t.items():
        for method, path in (("GET", "/api/v1/jobs/999999"), ("POST", "/api/v1/jobs/999999/approve"),
                             ("POST", "/api/v1/jobs/999999/cancel"),
                             ("GET", "/api/v1/jobs/999999/result?format=csv")):
            response = client.open(path, method=method, headers=bearer(token))
            expected = 403 if username in role_gated.get((method, path), ()) else 404
            assert response.status_code == expected, (username, method, path, response.status_code)
            assert set(response.get_json()["error"]) == {"code", "message"}


def test_audit_is_for_auditors_only_with_filters_and_csv(world):
    _, client, t = world
    for user in ("hanfu_owner", "insight_isv", "admin"):
        response = client.get("/api/v1/audit", headers=bearer(t[user]))
        assert response.status_code == 403
        assert_documented(response, "/api/v1/audit", "GET")
        assert client.get("/api/v1/audit/verify", headers=bearer(t[user])).status_code == 403
    response = client.get("/api/v1/audit?format=json", headers=bearer(t["auditor"]))
    assert_documented(response, "/api/v1/audit", "GET")
    entries = response.get_json()["entries"]
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)
    assert {"hanfu_owner", "insight_isv"} <= {e["actor"] for e in entries}
    only = client.get("/api/v1/audit?actor=tea_owner&action=auth.token",
                      headers=bearer(t["auditor"])).get_json()["entries"]
    assert only and all(e["actor"] == "tea_owner" and e["action"] == "auth.token" for e in only)
    assert client.get("/api/v1/audit?since=2999-01-01", headers=bearer(t["auditor"])
                      ).get_json()["entries"] == []
    assert client.get("/api/v1/audit?since=yesterday", headers=bearer(t["auditor"])
                      ).status_code == 400
    csv = client.get("/api/v1/audit?format=csv", headers=bearer(t["auditor"]))
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert csv.get_data(as_text=True).splitlines()[0].startswith("id,seq,ts,actor")
    verify = client.get("/api/v1/audit/verify", headers=bearer(t["auditor"]))
    assert_documented(verify, "/api/v1/audit/verify", "GET")
    assert verify.get_json()["ok"] is True and verify.get_json()["first_bad"] is None


def test_openapi_document_is_served_and_lists_the_spec_paths(world):
    _, client, _ = world
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/token", "/api/v1/datasets", "/api/v1/jobs/check", "/api/v1/jobs",
                 "/api/v1/jobs/{id}", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/{id}/approve",
                 "/api/v1/jobs/{id}/reject", "/api/v1/jobs/{id}/result", "/api/v1/audit",
                 "/api/v1/audit/verify", "/api/v1/openapi.json"):
        assert path in doc["paths"], path
    from jsonschema import Draft202012Validator

    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name


def test_every_api_route_the_app_serves_is_documented(world):
    import re

    _, client, _ = world
    doc = client.get("/api/v1/openapi.json").get_json()
    served = set()
    for rule in client.application.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?(job_id|id)>", "{id}", rule.rule)
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served - documented == set(), "API routes missing from openapi.json"


def test_health_and_headers(world):
    _, client, t = world
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    response = client.get("/api/v1/datasets", headers=bearer(t["hanfu_owner"]))
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    unknown = client.get("/api/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "not_found"
    wrong_method = client.put("/api/v1/jobs")
    assert wrong_method.status_code == 405 and "error" in wrong_method.get_json()
