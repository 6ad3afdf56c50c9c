"""Cursor pagination of ``GET /api/v1/jobs``, ``/audit`` and ``/datasets`` (SQLite and
PostgreSQL): every item once, in order, filters kept, other tenants never seen."""

from __future__ import annotations

import base64

import pytest
from web_support import api_token, assert_documented, bearer, populate

from web import create_app

GOOD = {"merchant": "hanfu_house", "kind": "aggregate"}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    app = create_app(any_db_config)
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in
              ("auditor", "hanfu_owner", "tea_owner", "insight_isv", "other_isv")}
    return any_db_config, client, tokens


def submit(client, token, merchant: str, n: int) -> list[int]:
    ids = []
    for i in range(n):
        response = client.post("/api/v1/jobs", headers=bearer(token), json={
            "merchant": merchant, "kind": "aggregate", "sql": f"SELECT {i} AS x", "name": f"j{i}"})
        assert response.status_code == 201, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def pages(client, token, path: str, key: str, **params) -> tuple[list[dict], int]:
    """Every item of a list, following next_cursor; and how many pages it took."""
    items, cursor, count = [], None, 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, headers=bearer(token), query_string=query)
        assert response.status_code == 200, response.get_json()
        assert_documented(response, path, "GET")
        doc = response.get_json()
        assert len(doc[key]) <= int(params.get("limit", 10**9))
        items += doc[key]
        count += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            return items, count
        assert doc[key], "a page with a next page is never empty"


def test_jobs_page_through_every_visible_job_once_newest_first(world):
    _, client, t = world
    hanfu = submit(client, t["insight_isv"], "hanfu_house", 4) + submit(client, t["hanfu_owner"], "hanfu_house", 3)
    tea = submit(client, t["tea_owner"], "tea_garden", 3)

    jobs, count = pages(client, t["hanfu_owner"], "/api/v1/jobs", "jobs", limit=2)
    assert count == 4
    assert [j["id"] for j in jobs] == list(reversed(hanfu))  # newest first, each once
    # The provider sees its own submissions only; the other tenant's never.
    mine, _ = pages(client, t["insight_isv"], "/api/v1/jobs", "jobs", limit=3)
    assert [j["id"] for j in mine] == list(reversed(hanfu[:4]))
    theirs, _ = pages(client, t["tea_owner"], "/api/v1/jobs", "jobs", limit=1)
    assert [j["id"] for j in theirs] == list(reversed(tea))
    everything, _ = pages(client, t["auditor"], "/api/v1/jobs", "jobs", limit=4)
    assert sorted(j["id"] for j in everything) == sorted(hanfu + tea)

    # Filters hold on every page: state and merchant.
    cancelled = hanfu[1:4]
    for job_id in cancelled:
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(t["hanfu_owner"])).status_code == 200
    got, count = pages(client, t["hanfu_owner"], "/api/v1/jobs", "jobs", limit=2, state="cancelled")
    assert [j["id"] for j in got] == list(reversed(cancelled)) and count == 2
    assert all(j["state"] == "cancelled" for j in got)
    by_merchant, _ = pages(client, t["auditor"], "/api/v1/jobs", "jobs", limit=2, merchant="tea_garden")
    assert [j["id"] for j in by_merchant] == list(reversed(tea))
    # Another tenant's merchant answers like an unknown one: nothing.
    assert pages(client, t["hanfu_owner"], "/api/v1/jobs", "jobs", merchant="tea_garden")[0] == []
    assert pages(client, t["hanfu_owner"], "/api/v1/jobs", "jobs", merchant="nobody")[0] == []

    # A cursor carries no authority: another tenant following it sees its own jobs only.
    first = client.get("/api/v1/jobs?limit=1", headers=bearer(t["hanfu_owner"])).get_json()
    other = client.get("/api/v1/jobs", headers=bearer(t["tea_owner"]),
                       query_string={"cursor": first["next_cursor"]}).get_json()
    assert {j["id"] for j in other["jobs"]} <= set(tea)

    # Another list's cursor is refused.
    audit_cursor = client.get("/api/v1/audit?limit=1", headers=bearer(t["auditor"])).get_json()["next_cursor"]
    refused = client.get("/api/v1/jobs", headers=bearer(t["hanfu_owner"]), query_string={"cursor": audit_cursor})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "bad_cursor"

    # One page when everything fits; the default limit is 100.
    whole = client.get("/api/v1/jobs", headers=bearer(t["hanfu_owner"])).get_json()
    assert len(whole["jobs"]) == 7 and whole["next_cursor"] is None


@pytest.mark.parametrize("cursor", [
    "not a cursor!", "%%%", "e30", base64.urlsafe_b64encode(b'["jobs", 5]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["audit", "5"]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["datasets", 5]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["jobs", "yesterday", 5]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'["jobs", "2026-01-01T00:00:00", true]').decode().rstrip("="),
    "A" * 600,
])
def test_a_bad_cursor_is_a_400_that_says_so(world, cursor):
    _, client, t = world
    for path, token in (("/api/v1/jobs", t["hanfu_owner"]), ("/api/v1/audit", t["auditor"]),
                        ("/api/v1/datasets", t["hanfu_owner"])):
        response = client.get(path, headers=bearer(token), query_string={"cursor": cursor})
        assert response.status_code == 400, (path, cursor)
        assert_documented(response, path, "GET")
        error = response.get_json()["error"]
        assert error["code"] == "bad_cursor" and "next_cursor" in error["message"]


def test_limits_are_bounded(world):
    _, client, t = world
    for path, token, high in (("/api/v1/jobs", t["hanfu_owner"], 1000),
                              ("/api/v1/audit", t["auditor"], 10_000),
                              ("/api/v1/datasets", t["hanfu_owner"], 1000)):
        for limit in (0, high + 1):
            response = client.get(f"{path}?limit={limit}", headers=bearer(token))
            assert response.status_code == 422, (path, limit)
        assert client.get(f"{path}?limit=two", headers=bearer(token)).status_code == 400
        assert client.get(f"{path}?limit={high}", headers=bearer(token)).status_code == 200


def test_audit_pages_through_every_entry_once_with_filters(world):
    _, client, t = world
    submit(client, t["insight_isv"], "hanfu_house", 3)
    whole = client.get("/api/v1/audit?limit=10000", headers=bearer(t["auditor"])).get_json()
    assert whole["next_cursor"] is None
    paged, count = pages(client, t["auditor"], "/api/v1/audit", "entries", limit=4)
    assert paged == whole["entries"] and count == -(-len(whole["entries"]) // 4)
    submits, _ = pages(client, t["auditor"], "/api/v1/audit", "entries", limit=2, action="job.submit")
    assert len(submits) == 3 and all(e["action"] == "job.submit" for e in submits)
    assert [e["seq"] for e in submits] == sorted((e["seq"] for e in submits), reverse=True)
    # CSV pages too: the next cursor in a header.
    csv = client.get("/api/v1/audit?format=csv&limit=2", headers=bearer(t["auditor"]))
    assert csv.status_code == 200 and len(csv.get_data(as_text=True).splitlines()) == 3
    following = client.get("/api/v1/audit", headers=bearer(t["auditor"]),
                           query_string={"cursor": csv.headers["X-Next-Cursor"], "limit": 1})
    assert following.get_json()["entries"][0]["seq"] == whole["entries"][2]["seq"]
    # Offset (the older way) still works, but not together with a cursor.
    assert client.get("/api/v1/audit?offset=2&limit=1", headers=bearer(t["auditor"])
                      ).get_json()["entries"][0]["seq"] == whole["entries"][2]["seq"]
    both = client.get("/api/v1/audit", headers=bearer(t["auditor"]),
                      query_string={"cursor": csv.headers["X-Next-Cursor"], "offset": 1})
    assert both.status_code == 400


def test_datasets_page_by_name(world):
    _, client, t = world
    whole = client.get("/api/v1/datasets", headers=bearer(t["hanfu_owner"])).get_json()
    assert whole["next_cursor"] is None and len(whole["datasets"]) == 5
    paged, count = pages(client, t["hanfu_owner"], "/api/v1/datasets", "datasets", limit=2)
    assert paged == whole["datasets"] and count == 3
    names = [d["name"] for d in paged]
    assert names == sorted(names) and "tea_garden.members" not in names
