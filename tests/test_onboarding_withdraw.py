"""Taking data back out: download, crypto-shredding withdrawal, HTTP API, CLI, platform data."""

from __future__ import annotations

import io
import json
import uuid

import pyarrow.parquet as pq
import pytest
from onboarding_helpers import (
    PASSWORD,
    SCHEMA,
    actor,
    audit_actions,
    files_holding,
    good_csv,
    populate,
    upload,
    user,
)

from onboarding.errors import OnboardingError

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def home(tmp_path_factory, spark):
    from tests_config import module_config

    config = module_config(tmp_path_factory.mktemp("withdraw-home"))
    populate(config)
    return config


@pytest.fixture
def session(home):
    from yushan.db import session_factory

    s = session_factory(home)()
    yield s
    s.rollback()
    s.close()


def _name() -> str:
    return "ds_" + uuid.uuid4().hex[:8]


def test_withdrawal_shreds_key_and_files_and_hides_the_dataset(home, session, spark):
    from onboarding.withdraw import withdraw
    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset
    from yushan.catalog import dataset_info, readable_datasets

    name = _name()
    ds = upload(session, home, spark, "owner_a", name, good_csv("x", 20).encode()).dataset
    files = home.home / ds.storage_path
    before = dataset_info(home, ds)
    other = user(session, "owner_b")
    with pytest.raises(OnboardingError) as caught:
        withdraw(session, home, other, name, actor(other))
    assert caught.value.status == 404 and caught.value.message == "No such dataset."
    with pytest.raises(OnboardingError) as missing:
        withdraw(session, home, other, "no_such_dataset", actor(other))
    assert missing.value.to_dict() == caught.value.to_dict()  # indistinguishable

    owner = user(session, "owner_a")
    assert withdraw(session, home, owner, f"shop_a.{name}", actor(owner))["withdrawn"]
    session.refresh(ds)
    assert ds.wrapped_key is None and ds.withdrawn_at is not None
    assert not files.exists()
    assert f"shop_a.{name}" not in readable_datasets(session, home, "shop_a")
    # Even with the old record (and its wrapped key), nothing can be decrypted any more.
    out = decrypt_dataset(KeyStore(home.master_key_path), before, home.workspaces_dir / "gone")
    assert list(out.iterdir()) == []
    out.rmdir()
    with pytest.raises(OnboardingError) as again:
        withdraw(session, home, owner, name, actor(owner))
    assert again.value.status == 404
    assert "dataset.withdraw" in audit_actions(session, dataset=f"shop_a.{name}")
    # The name is free again.
    upload(session, home, spark, "owner_a", name, good_csv("y", 5).encode())


def test_owner_downloads_its_own_data_back(home, session, spark):
    from onboarding.withdraw import export_own_dataset

    marker = "MK" + uuid.uuid4().hex[:10]
    name = _name()
    upload(session, home, spark, "owner_a", name, good_csv(marker, 40).encode())
    owner = user(session, "owner_a")
    filename, chunks = export_own_dataset(session, home, owner, name, "csv", actor(owner))
    body = b"".join(chunks)
    assert filename == f"{name}.csv" and body.count(marker.encode()) == 40
    _, chunks = export_own_dataset(session, home, owner, name, "parquet", actor(owner))
    assert pq.read_table(io.BytesIO(b"".join(chunks))).num_rows == 40
    assert files_holding(home.home, marker.encode()) == []  # the export workspace is gone
    other = user(session, "owner_b")
    with pytest.raises(OnboardingError) as caught:
        export_own_dataset(session, home, other, f"shop_a.{name}", "csv", actor(other))
    assert caught.value.status == 404
    assert "dataset.download" in audit_actions(session, dataset=f"shop_a.{name}")


# ---------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def client(home):
    from web.app import create_app

    app = create_app(home)
    app.config["TESTING"] = True
    return app.test_client()


def _token(client, username: str) -> dict[str, str]:
    response = client.post("/api/v1/token", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"Authorization": "Bearer " + response.get_json()["token"]}


def _post(client, headers, name: str, content: bytes, filename: str = "c.csv"):
    return client.post("/api/v1/datasets", headers=headers, content_type="multipart/form-data",
                       data={"name": name, "schema": json.dumps(SCHEMA),
                             "file": (io.BytesIO(content), filename)})


def test_http_upload_reject_accept_and_withdraw(home, client, spark):
    own, other = _token(client, "owner_a"), _token(client, "owner_b")
    marker = "MK" + uuid.uuid4().hex[:10]
    name = _name()
    bad = good_csv(marker, 30) + "m1,zz,dup,abc\n"
    response = _post(client, own, name, bad.encode())
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid" and "member_id" in error["message"]
    assert {c["column"] for c in error["report"]["checks"] if not c["passed"]} >= {"member_id", "value"}
    assert name not in client.get("/api/v1/datasets", headers=own).get_data(as_text=True)

    response = _post(client, own, name, good_csv(marker, 30).encode())
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["dataset"] == f"shop_a.{name}"
    assert f"shop_a.{name}" in client.get("/api/v1/datasets", headers=own).get_data(as_text=True)
    assert name not in client.get("/api/v1/datasets", headers=other).get_data(as_text=True)
    assert files_holding(home.home, marker.encode()) == []

    download = client.get(f"/api/v1/datasets/{name}/download?format=csv", headers=own)
    assert download.status_code == 200 and download.get_data().count(marker.encode()) == 30
    assert client.get(f"/api/v1/datasets/shop_a.{name}/download", headers=other).status_code == 404
    assert client.delete(f"/api/v1/datasets/{name}", headers=other).status_code == 404
    assert client.delete(f"/api/v1/datasets/shop_a.{name}", headers=other).status_code == 404
    assert client.delete(f"/api/v1/datasets/{name}", headers=own).status_code == 200
    assert client.delete(f"/api/v1/datasets/{name}", headers=own).status_code == 404
    assert client.post("/api/v1/datasets", data={}).status_code == 401


def test_http_upload_refuses_oversize_and_wrong_roles(home, client):
    own, isv = _token(client, "owner_a"), _token(client, "isv_user")
    assert _post(client, isv, _name(), good_csv("x", 3).encode()).status_code == 403
    response = client.post("/api/v1/datasets", headers=own, json={"name": "x"})
    assert response.status_code == 400
    assert list(home.workspaces_dir.glob("upload-*")) == []


# ---------------------------------------------------------------- CLI


def test_cli_upload_and_withdraw(home, tmp_path, spark):
    from click.testing import CliRunner

    from onboarding.cli import upload_command, withdraw_command
    from yushan.config import set_config

    set_config(home)
    try:
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps(SCHEMA))
        good = tmp_path / "good.csv"
        good.write_text(good_csv("x", 10))
        bad = tmp_path / "bad.csv"
        bad.write_text(good_csv("x", 10) + "m1,zz,a,b\n")
        name = _name()
        runner = CliRunner()
        result = runner.invoke(upload_command, ["--as", "owner_a", "--name", name, "--schema",
                                                str(schema), str(bad)])
        assert result.exit_code == 1 and "member_key_unique" in result.output
        result = runner.invoke(upload_command, ["--as", "owner_a", "--name", name, "--schema",
                                                str(schema), "--json", str(good)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["dataset"] == f"shop_a.{name}"
        result = runner.invoke(withdraw_command, ["--as", "owner_b", name])
        assert result.exit_code == 1
        result = runner.invoke(withdraw_command, ["--as", "owner_a", name])
        assert result.exit_code == 0 and "withdrawn" in result.output
    finally:
        set_config(None)


# ---------------------------------------------------------------- platform datasets


def test_admin_registers_a_platform_dataset_checked_by_great_expectations(home, session, spark, tmp_path):
    import pyarrow as pa

    from onboarding.platform_datasets import register_platform_dataset
    from yushan.catalog import readable_datasets

    source = tmp_path / "visits"
    source.mkdir()
    pq.write_table(pa.table({"user_id": pa.array(range(100), pa.int64()),
                             "city": ["Hangzhou", "Shanghai"] * 50}), source / "part-0.parquet")
    admin = user(session, "admin")
    classes = {"user_id": "identifier", "city": "quasi"}
    with pytest.raises(OnboardingError) as caught:
        register_platform_dataset(session, home, admin, name="visits", source=source,
                                  classes={"user_id": "identifier"}, entity_column="user_id",
                                  k=50, actor=actor(admin), spark=spark)
    assert caught.value.status == 422
    assert caught.value.report["checks"][0] == {**caught.value.report["checks"][0],
                                                "check": "classified", "column": "city"}
    owner = user(session, "owner_a")
    with pytest.raises(OnboardingError) as refused:
        register_platform_dataset(session, home, owner, name="visits", source=source,
                                  classes=classes, entity_column="user_id", k=50,
                                  actor=actor(owner), spark=spark)
    assert refused.value.status == 403
    ds = register_platform_dataset(session, home, admin, name="visits", source=source,
                                   classes=classes, entity_column="user_id", k=50,
                                   actor=actor(admin), spark=spark)
    assert ds.full_name == "platform.visits" and ds.row_count == 100 and ds.k == 50
    info = readable_datasets(session, home, "shop_a")["platform.visits"]
    assert info.is_consumer_data and info.entity_column == "user_id"
    assert [(c.name, c.column_class) for c in info.columns] == [("user_id", "identifier"),
                                                                 ("city", "quasi")]
    assert (home.platform_warehouse_dir / "visits").is_dir()

    nulls = tmp_path / "nulls"
    nulls.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1, None, 3], pa.int64()),
                             "city": ["a", "b", "c"]}), nulls / "part-0.parquet")
    with pytest.raises(OnboardingError) as null_entity:
        register_platform_dataset(session, home, admin, name="visits_nulls", source=nulls,
                                  classes=classes, entity_column="user_id", k=50,
                                  actor=actor(admin), spark=spark)
    failed = [c for c in null_entity.value.report["checks"] if not c["passed"]]
    assert [(c["check"], c["column"], c["failed_rows"]) for c in failed] == [
        ("entity_present", "user_id", 1)]
