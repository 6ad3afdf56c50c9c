"""The admin sets a consumer dataset's release mode, k, per-unit limits and bounds: over the
API (``PATCH /api/v1/platform-datasets/<name>``), the CLI (``yushan dataset set-policy``)
and the admin page (with the differencing warning, en and zh); validated, audited in the
same transaction, and what the policy then reads (``readable_datasets``). SQLite and
PostgreSQL."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from web_support import api_token, assert_documented, bearer, csrf_from, page_login, populate

from web import create_app

WARNING = {
    "en": "exact results cannot stop two jobs from being subtracted to reveal one consumer",
    "zh_CN": "精确结果无法阻止用两个作业相减来揭示单个消费者",
}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    client = create_app(any_db_config).test_client()
    return any_db_config, client


def _policy_of(config, name: str):
    from yushan.catalog import readable_datasets
    from yushan.db import session_scope

    with session_scope(config) as session:
        return readable_datasets(session, config, "hanfu_house")[f"platform.{name}"]


def _entries(config, action: str) -> list[dict]:
    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        return audit.query(session, action=action)


def test_admin_switches_a_dataset_to_threshold_with_k_limits_and_bounds(world):
    config, client = world
    token = api_token(client, "admin")
    body = {"release": "threshold", "k": 80, "max_groups": 2, "max_rows": 5,
            "bounds": {"amount": [0, 5000]}}
    response = client.patch("/api/v1/platform-datasets/orders", json=body, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    assert_documented(response, "/api/v1/platform-datasets/{name}", "PATCH")
    doc = response.get_json()
    assert (doc["release"], doc["k"], doc["max_groups"], doc["max_rows"]) == ("threshold", 80, 2, 5)
    assert doc["bounds"] == {"amount": [0.0, 5000.0]}
    info = _policy_of(config, "orders")  # what the policy engine reads
    assert (info.release_mode, info.k, info.max_groups, info.max_rows) == ("threshold", 80, 2, 5)
    assert (info.column("amount").lower_bound, info.column("amount").upper_bound) == (0.0, 5000.0)
    [entry] = _entries(config, "admin.dataset_policy")
    assert entry["actor"] == "admin" and entry["objects"]["dataset"] == "platform.orders"
    assert entry["details"]["before"]["release"] == "dp" and entry["details"]["after"]["release"] == "threshold"
    assert entry["details"]["before"]["bounds"] == {"amount": [0.0, 20000.0]}
    assert entry["details"]["warning"] == "differencing"

    # Back to dp, bounds cleared with null: audited again; the same request again changes nothing.
    back = {"release": "dp", "bounds": {"amount": None}}
    assert client.patch("/api/v1/platform-datasets/orders", json=back, headers=bearer(token)).status_code == 200
    assert client.patch("/api/v1/platform-datasets/orders", json=back, headers=bearer(token)).status_code == 200
    info = _policy_of(config, "orders")
    assert info.release_mode == "dp" and info.column("amount").lower_bound is None
    assert len(_entries(config, "admin.dataset_policy")) == 2


@pytest.mark.parametrize("body, status, says", [
    ({"k": 1}, 422, "k must be between 2"),
    ({"k": "many"}, 422, "k must be a whole number"),
    ({"max_groups": 0}, 422, "max_groups must be between 1"),
    ({"max_rows": 2.5}, 422, "max_rows must be a whole number"),
    ({"release": "exact"}, 422, "release must be one of dp, threshold"),
    ({"bounds": {"amount": [10, 10]}}, 422, "lower bound must be below the upper bound"),
    ({"bounds": {"amount": [0, "inf"]}}, 422, "Bounds of amount must be finite"),
    ({"bounds": {"amount": [0]}}, 422, "Bounds of amount must be two numbers"),
    ({"bounds": {"channel": [0, 1]}}, 422, "Column channel is not numeric"),
    ({"bounds": {"nope": [0, 1]}}, 422, "Column nope is not in platform.orders"),
    ({"epsilon": 1}, 400, "Unknown field epsilon"),
])
def test_bad_settings_are_refused_by_name_and_change_nothing(world, body, status, says):
    config, client = world
    token = api_token(client, "admin")
    response = client.patch("/api/v1/platform-datasets/orders", json=body, headers=bearer(token))
    assert response.status_code == status
    assert says in response.get_json()["error"]["message"]
    assert_documented(response, "/api/v1/platform-datasets/{name}", "PATCH")
    info = _policy_of(config, "orders")
    assert (info.release_mode, info.k, info.max_groups, info.max_rows) == ("dp", 50, 4, 20)
    assert info.column("amount").upper_bound == 20000.0
    assert _entries(config, "admin.dataset_policy") == []


def test_only_admins_change_policies_and_only_of_consumer_datasets(world):
    config, client = world
    for username in ("hanfu_owner", "insight_isv", "auditor"):
        response = client.patch("/api/v1/platform-datasets/orders", json={"release": "threshold"},
                                headers=bearer(api_token(client, username)))
        assert response.status_code == 403, username
        assert client.get("/api/v1/platform-datasets",
                          headers=bearer(api_token(client, username))).status_code == 403
    token = api_token(client, "admin")
    items = client.patch("/api/v1/platform-datasets/items", json={"release": "threshold"}, headers=bearer(token))
    assert items.status_code == 422 and "not consumer data" in items.get_json()["error"]["message"]
    missing = client.patch("/api/v1/platform-datasets/nothing", json={"k": 60}, headers=bearer(token))
    assert missing.status_code == 404
    merchants = client.patch("/api/v1/platform-datasets/hanfu_house.members", json={"k": 60},
                             headers=bearer(token))
    assert merchants.status_code == 404  # a merchant's dataset is no platform dataset
    assert _policy_of(config, "orders").release_mode == "dp"


def test_listing_shows_policy_and_versions(world):
    _, client = world
    response = client.get("/api/v1/platform-datasets", headers=bearer(api_token(client, "admin")))
    assert response.status_code == 200
    assert_documented(response, "/api/v1/platform-datasets", "GET")
    by_name = {d["name"]: d for d in response.get_json()["datasets"]}
    assert set(by_name) == {"platform.consumers", "platform.orders", "platform.behaviors", "platform.items"}
    consumers = by_name["platform.consumers"]
    assert consumers["release"] == "dp" and consumers["version"] == 1
    assert [v["version"] for v in consumers["versions"]] == [1]
    assert consumers["bounds"] == {"birth_year": [1950.0, 2008.0], "vip_level": [0.0, 7.0]}
    assert by_name["platform.items"]["release"] is None


def test_cli_set_policy_prints_the_warning_and_refuses_bad_bounds(world):
    from onboarding.cli import dataset_cli
    from yushan.config import set_config

    config, _ = world
    set_config(config)
    runner = CliRunner()
    try:
        result = runner.invoke(dataset_cli, ["set-policy", "consumers", "--release", "threshold",
                                             "--k", "60", "--bounds", "birth_year=1940:2010"])
        assert result.exit_code == 0, result.output
        assert "release threshold  k 60" in result.output and WARNING["en"] in result.output
        assert "birth_year" in result.output and "bounds [1940, 2010]" in result.output
        info = _policy_of(config, "consumers")
        assert info.release_mode == "threshold" and info.column("birth_year").lower_bound == 1940.0
        bad = runner.invoke(dataset_cli, ["set-policy", "consumers", "--bounds", "city=1:2"])
        assert bad.exit_code == 1 and "Column city is not numeric" in bad.output
        bad = runner.invoke(dataset_cli, ["set-policy", "consumers", "--bounds", "vip_level=7"])
        assert bad.exit_code == 1 and "must read lo:hi" in bad.output
        refused = runner.invoke(dataset_cli, ["set-policy", "--as", "hanfu_owner", "consumers",
                                              "--release", "dp"])
        assert refused.exit_code == 1 and "only a platform admin" in refused.output
        shown = runner.invoke(dataset_cli, ["show", "--json", "consumers"])
        assert json.loads(shown.output)["k"] == 60
        listed = runner.invoke(dataset_cli, ["list"])
        assert "platform.consumers" in listed.output and "threshold" in listed.output
        [entry] = _entries(config, "admin.dataset_policy")
        assert entry["origin"] and entry["details"]["after"]["k"] == 60
    finally:
        set_config(None)


def _dataset_form(html: str, name: str) -> str:
    start = html.index(f'id="admin-ds-{name}"')
    return html[start:html.index("</form>", start)]


@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_admin_page_switches_release_mode_with_the_differencing_warning(world, lang):
    from sqlalchemy import select

    from yushan.db import session_scope
    from yushan.models import Dataset

    config, client = world
    page_login(client, "admin")
    html = client.get(f"/admin/?lang={lang}").get_data(as_text=True)
    form = _dataset_form(html, "orders")
    assert 'name="release"' in form and WARNING[lang] in form
    assert 'class="differencing-warning"' in form  # present, hidden while dp is chosen
    assert 'name="lo_amount"' in form and 'name="lo_channel"' not in form  # numeric columns only
    assert 'name="release"' not in _dataset_form(html, "items")
    with session_scope(config) as session:
        ds = session.scalar(select(Dataset).where(Dataset.full_name == "platform.orders"))
        ds_id, classes = ds.id, {f"class_{c.name}": c.column_class for c in ds.columns}
    data = {**classes, "csrf_token": csrf_from(html), "k": "50", "entity_column": "user_id",
            "release": "threshold", "max_groups": "4", "max_rows": "20",
            "lo_amount": "0", "hi_amount": "20000", "lo_item_id": "", "hi_item_id": ""}
    assert client.post(f"/admin/datasets/{ds_id}", data=data).status_code == 302
    form = _dataset_form(client.get(f"/admin/?lang={lang}").get_data(as_text=True), "orders")
    assert 'class="differencing-warning shown"' in form and WARNING[lang] in form
    assert '<option value="threshold" selected' in form
    assert _policy_of(config, "orders").release_mode == "threshold"
    [entry] = _entries(config, "admin.dataset_policy")
    assert entry["details"]["warning"] == "differencing"
    half = dict(data, lo_amount="", hi_amount="100")
    assert client.post(f"/admin/datasets/{ds_id}", data=half).status_code == 422
    assert _policy_of(config, "orders").column("amount").upper_bound == 20000.0
