"""Uploads refuse a column that links several members to one consumer (P8, "Segment jobs"):
through the HTTP API, validated by Great Expectations on Spark, refused whole."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from onboarding_helpers import PASSWORD, SCHEMA, files_holding, good_csv, hexdigest, populate
from sqlalchemy import select

from yushan.models import Dataset

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def home(tmp_path_factory, spark):
    from tests_config import module_config

    config = module_config(tmp_path_factory.mktemp("outcomes-upload-home"))
    populate(config)
    return config


@pytest.fixture(scope="module")
def client(home):
    from web.app import create_app

    return create_app(home).test_client()


def _upload(client, name: str, content: bytes):
    token = client.post("/api/v1/token", json={"username": "owner_a", "password": PASSWORD}).get_json()["token"]
    return client.post("/api/v1/datasets", headers={"Authorization": f"Bearer {token}"},
                       content_type="multipart/form-data",
                       data={"name": name, "schema": json.dumps(SCHEMA), "file": (io.BytesIO(content), "m.csv")})


def test_an_upload_with_a_repeated_phone_hash_is_refused_whole(home, client):
    marker = "MK" + uuid.uuid4().hex[:10]
    target = hexdigest()
    name = "dup_" + uuid.uuid4().hex[:8]
    # 50 members that all link to one consumer (acceptance UP-2), among 100 good ones
    body = good_csv(marker, 100) + "".join(f"dup{i},{target},{marker},1\n" for i in range(50))
    response = _upload(client, name, body.encode())
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    failed = [c for c in error["report"]["checks"] if not c["passed"]]
    assert [(c["check"], c["column"], c["failed_rows"]) for c in failed] == [
        ("consumer_link_unique", "phone_hash", 50)]
    assert failed[0]["expectation"] == "expect_column_values_to_be_unique"
    assert target not in response.get_data(as_text=True)  # the report names no value
    from yushan.db import session_scope

    with session_scope(home) as session:  # nothing kept
        assert session.scalar(select(Dataset).where(Dataset.name == name)) is None
    assert files_holding(home.home, marker.encode()) == []

    # the same members, each linked to its own consumer, are accepted
    fixed = good_csv(marker, 100) + "".join(f"dup{i},{hexdigest()},{marker},1\n" for i in range(50))
    assert _upload(client, name, fixed.encode()).status_code == 201
