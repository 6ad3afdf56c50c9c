"""Admin pages: tenants, users and platform datasets; changes to k and classes audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from web_support import csrf_from, page_login, populate

from web import create_app


@pytest.fixture
def world(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    client = create_app(config).test_client()
    page_login(client, "admin")
    return config, client


def test_overview_lists_tenants_users_and_platform_datasets(world):
    _, client = world
    html = client.get("/admin/").get_data(as_text=True)
    for text in ("hanfu_house", "insight_isv", "tea_owner", "platform.consumers", "platform.items"):
        assert text in html
    assert "hanfu_house.members" not in html  # a merchant's dataset is not the platform's


def test_admin_changes_k_and_a_column_class(world):
    config, client = world
    from yushan.db import session_scope
    from yushan.models import Dataset

    with session_scope(config) as session:
        ds = session.scalar(select(Dataset).where(Dataset.full_name == "platform.consumers"))
        ds_id, classes = ds.id, {c.name: c.column_class for c in ds.columns}
    csrf = csrf_from(client.get("/admin/").get_data(as_text=True))
    form = {f"class_{name}": cls for name, cls in classes.items()}
    form.update({"class_city": "private", "k": "80", "entity_column": "user_id", "csrf_token": csrf})
    assert client.post(f"/admin/datasets/{ds_id}", data=form).status_code == 302
    with session_scope(config) as session:
        ds = session.get(Dataset, ds_id)
        assert ds.k == 80
        assert {c.name: c.column_class for c in ds.columns}["city"] == "private"
        import audit

        entry = audit.query(session, action="admin.dataset_update")[0]
        assert entry["details"]["before"]["k"] == 50 and entry["details"]["after"]["k"] == 80
    bad = dict(form, k="1")
    assert client.post(f"/admin/datasets/{ds_id}", data=bad).status_code == 422
    bad = dict(form, class_city="secret")
    assert client.post(f"/admin/datasets/{ds_id}", data=bad).status_code == 422
    assert client.post("/admin/datasets/999999", data=form).status_code == 404
