"""Asynchronous uploads (``Prefer: respond-async``), SQLite and PostgreSQL, real Spark:
202 with a status URL, validated in the web process's pool by the synchronous path's own
function; accepted or rejected exactly as a synchronous upload would be; the status only
for the merchant's own users; a restart fails what was validating; Idempotency-Key."""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid

import pytest
from onboarding_helpers import PASSWORD, SCHEMA, files_holding, good_csv, hexdigest, populate
from sqlalchemy import func, select
from web_support import assert_documented, csrf_from, page_login

from web import create_app
from yushan.db import session_scope
from yushan.models import AuditEntry, Dataset, Upload

pytestmark = pytest.mark.spark

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def world(any_db_config, spark):
    populate(any_db_config)
    app = create_app(any_db_config)
    client = app.test_client()
    tokens = {}
    for username in ("owner_a", "owner_b", "isv_user"):
        answer = client.post("/api/v1/token", json={"username": username, "password": PASSWORD})
        tokens[username] = answer.get_json()["token"]
    return any_db_config, client, tokens


def _name() -> str:
    return "ds_" + uuid.uuid4().hex[:8]


def post(client, token, name, content: bytes, headers=None):
    return client.post("/api/v1/datasets",
                       headers={"Authorization": f"Bearer {token}", **(headers or {})},
                       content_type="multipart/form-data",
                       data={"name": name, "schema": json.dumps(SCHEMA),
                             "file": (io.BytesIO(content), "members.csv")})


def wait(client, token, url, timeout=180.0) -> dict:
    deadline = time.monotonic() + timeout
    seen_validating = False
    while True:
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.get_json()
        assert_documented(response, "/api/v1/uploads/{upload_id}", "GET")
        doc = response.get_json()
        if doc["state"] != "validating":
            assert "Retry-After" not in response.headers
            return doc
        seen_validating = True
        assert int(response.headers["Retry-After"]) >= 1
        assert 0.0 <= doc["progress"] < 1.0 and doc["phase"] in ("queued", "reading", "validating",
                                                                  "storing")
        assert time.monotonic() < deadline, "the upload never finished"
        time.sleep(0.2 if seen_validating else 0.05)


def no_workspaces(config) -> bool:
    return list(config.workspaces_dir.glob("upload-*")) == []


def actions(config, action) -> list[str]:
    with session_scope(config) as session:
        return list(session.scalars(select(AuditEntry.details).where(AuditEntry.action == action)))


def test_an_async_upload_answers_202_then_is_accepted_like_a_synchronous_one(world):
    config, client, t = world
    marker = "MK" + uuid.uuid4().hex[:10]
    name = _name()
    started = post(client, t["owner_a"], name, good_csv(marker, 120).encode(), ASYNC)
    assert started.status_code == 202, started.get_json()
    assert_documented(started, "/api/v1/datasets", "POST")
    body = started.get_json()
    assert body["state"] == "validating" and body["id"].startswith("up_")
    assert started.headers["Location"] == body["status_url"] == f"/api/v1/uploads/{body['id']}"
    assert started.headers["Preference-Applied"] == "respond-async"

    doc = wait(client, t["owner_a"], body["status_url"])
    assert doc["state"] == "accepted" and doc["progress"] == 1.0 and doc["error"] is None
    assert doc["name"] == name and doc["id"] == body["id"]
    # The same body as a synchronous upload of the same file.
    sync = post(client, t["owner_a"], _name(), good_csv(marker, 120).encode())
    assert sync.status_code == 201
    expected = sync.get_json()
    assert set(doc["dataset"]) == set(expected)
    assert doc["dataset"]["dataset"] == f"shop_a.{name}" and doc["dataset"]["rows"] == 120
    assert doc["dataset"]["columns"] == expected["columns"]
    assert doc["dataset"]["report"]["checks"] == expected["report"]["checks"]
    with session_scope(config) as session:
        assert session.scalar(select(Dataset).where(Dataset.full_name == f"shop_a.{name}")) is not None
        assert session.get(Upload, body["id"]).workspace is None
    assert len(actions(config, "dataset.upload")) == 2
    assert no_workspaces(config)
    assert files_holding(config.home, marker.encode()) == []


def test_a_rejected_async_upload_reports_the_synchronous_error_and_keeps_nothing(world):
    config, client, t = world
    marker = "MK" + uuid.uuid4().hex[:10]
    name = _name()
    bad = (good_csv(marker, 80) + f"m1,{hexdigest()},{marker},1\nm900,zz,{marker},x\n").encode()
    sync = post(client, t["owner_a"], name, bad)
    assert sync.status_code == 422
    started = post(client, t["owner_a"], name, bad, ASYNC)
    assert started.status_code == 202
    doc = wait(client, t["owner_a"], started.headers["Location"])
    assert doc["state"] == "rejected" and doc["dataset"] is None
    assert {"error": doc["error"]} == sync.get_json()  # the very same error document
    assert doc["error"]["code"] == "invalid" and doc["error"]["report"]["checks"]
    with session_scope(config) as session:
        assert session.scalar(select(func.count()).select_from(Dataset)
                              .where(Dataset.name == name)) == 0
    assert len(actions(config, "dataset.reject")) == 2  # audited as the synchronous one
    assert no_workspaces(config)
    assert files_holding(config.home, marker.encode()) == []
    # Refusals that need no file are answered at once, as synchronously.
    clash = post(client, t["owner_a"], "Bad-Name", bad, ASYNC)
    assert clash.status_code == 400 and no_workspaces(config)


def test_only_the_merchants_own_users_see_an_upload(world):
    config, client, t = world
    started = post(client, t["owner_a"], _name(), good_csv("x", 20).encode(), ASYNC)
    url = started.headers["Location"]
    missing = client.get("/api/v1/uploads/up_" + "0" * 24,
                         headers={"Authorization": f"Bearer {t['owner_a']}"})
    assert missing.status_code == 404
    assert_documented(missing, "/api/v1/uploads/{upload_id}", "GET")
    for other in ("owner_b", "isv_user"):
        hidden = client.get(url, headers={"Authorization": f"Bearer {t[other]}"})
        assert hidden.status_code == 404 and hidden.get_json() == missing.get_json()
    assert client.get(url).status_code == 401
    assert wait(client, t["owner_a"], url)["state"] == "accepted"


def test_a_restart_while_validating_fails_the_upload_and_removes_its_file(world, monkeypatch):
    from onboarding import background

    config, client, t = world
    # The process "dies" before its pool starts the validation.
    monkeypatch.setattr(background.UploadRunner, "submit", lambda self, upload_id, actor: None)
    started = post(client, t["owner_a"], _name(), good_csv("x", 20).encode(), ASYNC)
    assert started.status_code == 202
    upload_id = started.get_json()["id"]
    with session_scope(config) as session:
        workspace = config.home / session.get(Upload, upload_id).workspace
    assert (workspace / "upload.bin").exists()
    gone = subprocess.Popen(["true"])  # a pid no process has any more
    gone.wait()
    with session_scope(config) as session:
        session.get(Upload, upload_id).runner = f"{background.HOST}:{gone.pid}:0123abcd"

    create_app(config)  # the web process starts again
    assert not workspace.exists() and no_workspaces(config)
    doc = client.get(started.headers["Location"],
                     headers={"Authorization": f"Bearer {t['owner_a']}"}).get_json()
    assert doc["state"] == "failed" and doc["dataset"] is None
    assert doc["error"] == {"code": "interrupted",
                            "message": "The server restarted while validating; upload the file again."}
    # Uploads this process is validating are left alone.
    assert background.runner_gone(background.RUNNER, None) is False


def test_an_idempotent_retry_answers_the_same_202(world):
    config, client, t = world
    name = _name()
    content = good_csv("x", 30).encode()
    key = {"Idempotency-Key": "async-" + uuid.uuid4().hex}
    first = post(client, t["owner_a"], name, content, {**ASYNC, **key})
    again = post(client, t["owner_a"], name, content, {**ASYNC, **key})
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # A retry without the preference is the same request: the same answer.
    plain = post(client, t["owner_a"], name, content, key)
    assert plain.status_code == 202 and plain.get_json() == first.get_json()
    assert wait(client, t["owner_a"], first.headers["Location"])["state"] == "accepted"
    with session_scope(config) as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == 1
        assert session.scalar(select(func.count()).select_from(Dataset)
                              .where(Dataset.name == name)) == 1
    entries = actions(config, "dataset.upload")
    assert len(entries) == 1 and key["Idempotency-Key"] in entries[0]
    # Replayed after the outcome too; another request with the key is refused.
    assert post(client, t["owner_a"], name, content, {**ASYNC, **key}).get_json() == first.get_json()
    reused = post(client, t["owner_a"], _name(), content, {**ASYNC, **key})
    assert reused.status_code == 422 and reused.get_json()["error"]["code"] == "idempotency_key_reused"
    assert no_workspaces(config)


def test_a_full_pool_serves_the_upload_synchronously(world):
    from onboarding.background import UploadRunner

    config, client, t = world
    runner = UploadRunner(config, workers=1, backlog=0)
    client.application.extensions["yushan_uploads"] = runner
    assert runner.reserve()
    answer = post(client, t["owner_a"], _name(), good_csv("x", 10).encode(), ASYNC)
    assert answer.status_code == 201 and "Preference-Applied" not in answer.headers
    runner.release()


def test_the_upload_page_uploads_asynchronously_and_shows_the_outcome(world):
    config, client, t = world
    page_login(client, "owner_a", PASSWORD)
    csrf = csrf_from(client.get("/datasets/upload").get_data(as_text=True))

    def send(name, content):
        return client.post("/datasets/upload", headers=ASYNC, content_type="multipart/form-data",
                           data={"name": name, "schema": json.dumps(SCHEMA), "encoding": "auto",
                                 "csrf_token": csrf,
                                 "file": (io.BytesIO(content.encode()), "members.csv")})

    def settle(started) -> dict:
        assert started.status_code == 202, started.get_data(as_text=True)
        url = started.get_json()["status_url"]
        assert url.startswith("/datasets/uploads/")
        for _ in range(900):
            doc = client.get(url).get_json()
            if doc["state"] != "validating":
                return started.get_json()
            time.sleep(0.2)
        raise AssertionError("the upload never finished")

    good = settle(send(_name(), good_csv("PAGEMARK", 40)))
    page = client.get(good["page_url"])
    assert page.status_code == 201 and "Accepted and encrypted" in page.get_data(as_text=True)
    bad_name = _name()
    bad = settle(send(bad_name, good_csv("PAGEMARK", 40) + "m1," + hexdigest() + ",x,1\n"))
    page = client.get(bad["page_url"])
    body = page.get_data(as_text=True)
    assert page.status_code == 422 and "Nothing was kept" in body and "member_id" in body
    assert f'value="{bad_name}"' in body and "PAGEMARK" not in body  # the entries are kept
    # Another merchant's user finds no such upload.
    other = create_app(config).test_client()
    page_login(other, "owner_b", PASSWORD)
    assert other.get(bad["status_url"]).status_code == 404
    assert other.get(bad["page_url"]).status_code == 404
    # In Chinese too.
    zh = client.get(bad["page_url"], headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "未保存任何内容" in zh
    assert no_workspaces(config)


def test_the_client_waits_for_an_async_upload_with_progress(world, tmp_path):
    from web_support import LiveServer

    from yushan.client import Client, Invalid

    config, client, t = world
    with LiveServer(client.application) as server, Client(server.url, t["owner_a"]) as yc:
        path = tmp_path / "members.csv"
        path.write_text(good_csv("x", 50))
        seen: list[dict] = []
        name = _name()
        result = yc.upload(name, path, SCHEMA, wait=True, on_progress=seen.append,
                           poll_interval=0.2)
        assert result["dataset"] == f"shop_a.{name}" and result["rows"] == 50
        assert seen and seen[-1]["state"] == "accepted"
        assert [s["progress"] for s in seen] == sorted(s["progress"] for s in seen)
        path.write_text(good_csv("x", 50) + "m1," + hexdigest() + ",x,1\n")
        with pytest.raises(Invalid) as caught:
            yc.upload(_name(), path, SCHEMA, wait=True, poll_interval=0.2)
        assert caught.value.status == 422 and caught.value.code == "invalid"
        assert [c["check"] for c in caught.value.report["checks"] if not c["passed"]] == [
            "member_key_unique"]
