"""The OpenAPI document (web/openapi.json, served at /api/v1/openapi.json) is valid as a
whole (openapi-spec-validator: structure, references, path parameters), complete (every
route the app serves under /api/v1 with each of its methods is documented, and every
documented operation is served) and honest about the answers every route can give; real
answers validate against the documented schemas (web_support.assert_documented, here and
in the other API tests).
"""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from web_support import api_token, assert_documented, bearer, openapi_document, populate

from web import create_app

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    return app, app.test_client()


def template(path: str) -> str:
    """A path with its parameters unnamed: Flask's ``<int:job_id>`` and the document's
    ``{id}`` name the same segment."""
    path = re.sub(r"<(?:[a-z]+:)?[a-z_]+>", "{}", path)
    return re.sub(r"\{[^}]+\}", "{}", path)


def served_operations(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            found |= {(template(rule.rule), m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_the_served_document_is_the_file_and_valid_whole(world):
    _, client = world
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document == openapi_document()
    validate(document)  # raises on any error, with its place in the document


def test_every_api_route_and_method_is_documented_and_nothing_else(world):
    app, _ = world
    document = openapi_document()
    documented = {(template(path), method) for path, ops in document["paths"].items()
                  for method in ops if method in METHODS}
    served = served_operations(app)
    assert served - documented == set(), "served under /api/v1 but not in openapi.json"
    # Documented operations outside /api/v1 (health, readiness, metrics) are served too.
    everything = {(template(rule.rule), m.lower()) for rule in app.url_map.iter_rules()
                  for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented - everything == set(), "in openapi.json but not served"
    for section in ("/api/v1/budgets/{merchant}", "/api/v1/platform-datasets",
                    "/api/v1/platform-datasets/{name}"):
        assert section in document["paths"], section


def test_every_operation_documents_the_answers_any_route_can_give():
    # Every request passes the edge checks (web/edges.py: a URL that is not UTF-8 answers
    # 400, a body over the route's cap 413) and, with a bearer scheme, authentication (401).
    document = openapi_document()
    for path, ops in document["paths"].items():
        for method, operation in ops.items():
            if method not in METHODS:
                continue
            assert any(code.startswith("2") for code in operation["responses"]), (method, path)
            needed = {"400", "413"}
            if operation.get("security", document.get("security")):
                needed.add("401")
            assert needed <= set(operation["responses"]), (method, path, needed - set(operation["responses"]))


def test_real_answers_match_their_documented_schemas(world):
    _, client = world
    tokens = {u: api_token(client, u) for u in ("admin", "auditor", "hanfu_owner", "insight_isv")}

    def check(method: str, path: str, documented: str, token: str, **kwargs):
        response = client.open(path, method=method, headers=bearer(token), **kwargs)
        assert_documented(response, documented, method)
        return response

    assert check("GET", "/api/v1/me", "/api/v1/me", tokens["hanfu_owner"]).status_code == 200
    check("GET", "/api/v1/jobs", "/api/v1/jobs", tokens["insight_isv"])
    check("GET", "/api/v1/templates", "/api/v1/templates", tokens["insight_isv"])
    check("GET", "/api/v1/audit", "/api/v1/audit", tokens["auditor"])
    check("GET", "/api/v1/budgets/hanfu_house", "/api/v1/budgets/{merchant}", tokens["insight_isv"])
    check("GET", "/api/v1/budgets/nobody", "/api/v1/budgets/{merchant}", tokens["admin"])
    check("GET", "/api/v1/platform-datasets", "/api/v1/platform-datasets", tokens["admin"])
    check("GET", "/api/v1/platform-datasets", "/api/v1/platform-datasets", tokens["hanfu_owner"])
    shown = check("GET", "/api/v1/platform-datasets/platform.orders",
                  "/api/v1/platform-datasets/{name}", tokens["admin"])
    assert shown.status_code == 200
    check("GET", "/api/v1/platform-datasets/platform.nothing", "/api/v1/platform-datasets/{name}",
          tokens["admin"])
    check("GET", "/api/v1/jobs/12345678", "/api/v1/jobs/{id}", tokens["hanfu_owner"])
    check("POST", "/api/v1/jobs/12345678/cancel", "/api/v1/jobs/{id}/cancel", tokens["hanfu_owner"])
    check("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", tokens["auditor"])
    check("DELETE", "/api/v1/datasets/members", "/api/v1/datasets/{name}", tokens["hanfu_owner"])
    check("DELETE", "/api/v1/token", "/api/v1/token", tokens["auditor"])
