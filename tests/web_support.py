"""A small world for web route tests: the demo's tenants, accounts, authorisations and
dataset metadata (no files, no Spark), on a fresh migrated home."""

from __future__ import annotations

from flask.testing import FlaskClient

from yushan.config import Config

PASSWORD = "demo-password"
USERS = {
    # username: (role, tenant)
    "admin": ("admin", "platform"),
    "auditor": ("auditor", "platform"),
    "hanfu_owner": ("merchant", "hanfu_house"),
    "tea_owner": ("merchant", "tea_garden"),
    "insight_isv": ("provider", "insight_isv"),
    "other_isv": ("provider", "other_isv"),
}


def populate(config: Config) -> None:
    """Tenants, demo users, grants (as in the demo) and dataset metadata."""
    from yushan.accounts import ensure_platform, ensure_tenant, ensure_user, grant
    from yushan.db import session_scope
    from yushan.demo import MEMBER_COLUMNS, _register_platform
    from yushan.models import ColumnClass, Dataset, DatasetColumn, Role, TenantKind

    with session_scope(config) as session:
        platform = ensure_platform(session)
        tenants = {
            "platform": platform,
            "hanfu_house": ensure_tenant(session, "hanfu_house", "Hanfu House", TenantKind.MERCHANT),
            "tea_garden": ensure_tenant(session, "tea_garden", "Tea Garden", TenantKind.MERCHANT),
            "insight_isv": ensure_tenant(session, "insight_isv", "Insight ISV", TenantKind.PROVIDER),
            "other_isv": ensure_tenant(session, "other_isv", "Other ISV", TenantKind.PROVIDER),
        }
        for username, (role, tenant) in USERS.items():
            ensure_user(session, username, PASSWORD, Role(role), tenants[tenant], is_demo=True)
        grant(session, tenants["hanfu_house"], tenants["insight_isv"], view_results=True, by=None)
        grant(session, tenants["tea_garden"], tenants["other_isv"], view_results=False, by=None)
        _register_platform(session, config, platform,
                           {"consumers": 1, "orders": 1, "behaviors": 1, "items": 1})
        for slug in ("hanfu_house", "tea_garden"):
            ds = Dataset(tenant_id=tenants[slug].id, name="members", full_name=f"{slug}.members",
                         shared=False, member_key="member_id", storage_path="", encrypted=True)
            ds.columns = [
                DatasetColumn(position=i, name=c, data_type=t,
                              column_class=ColumnClass.PUBLIC.value)
                for i, (c, t) in enumerate(MEMBER_COLUMNS)
            ]
            session.add(ds)


def api_token(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    response = client.post("/api/v1/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_from(html: str) -> str:
    """The CSRF token of a rendered page (the meta tag every page carries)."""
    import re

    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def page_login(client: FlaskClient, username: str, password: str = PASSWORD):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token})


_OPENAPI: dict | None = None


def openapi_document() -> dict:
    global _OPENAPI
    if _OPENAPI is None:
        import json
        from pathlib import Path

        import web

        _OPENAPI = json.loads((Path(web.__file__).parent / "openapi.json").read_text())
    return _OPENAPI


def assert_documented(response, path: str, method: str) -> None:
    """The response's status is documented for ``method path`` in the OpenAPI document,
    and a JSON body validates against the documented schema."""
    from jsonschema import Draft202012Validator

    doc = openapi_document()
    operation = doc["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
    documented = operation["responses"][status]
    if "$ref" in documented:
        documented = doc["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content = documented.get("content", {})
    if response.mimetype == "application/json" and "application/json" in content:
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(response.get_json()),
                        key=lambda e: list(e.path))
        assert not errors, f"{method} {path} {status}: {errors[0].message}"


class LiveServer:
    """The app served on a random loopback port in a thread (werkzeug), for browsers."""

    def __init__(self, app):
        import threading

        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def wait_for_job(client: FlaskClient, token: str, job_id: int, timeout: float = 300) -> dict:
    """Poll the API until the job leaves queued/running; return its document."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).get_json()
        if doc["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return doc
        time.sleep(0.3)
