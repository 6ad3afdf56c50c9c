"""Platform data lifecycle with real Spark and a real database (SQLite and PostgreSQL):
register from CSV or Parquet (a server path under YUSHAN_HOME/import/ or an upload), refresh
into a new immutable version, old files kept while a pending job may read them, jobs' audit
naming the version they read; over the API and the CLI."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from onboarding_helpers import PASSWORD, populate
from web_support import assert_documented, bearer

pytestmark = pytest.mark.spark

CLASSES = {"user_id": "identifier", "city": "quasi", "amount": "quasi"}
CITIES = ["Hangzhou", "Shanghai"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory, spark):
    from tests_config import module_config

    from yushan.config import Config

    config = module_config(tmp_path_factory.mktemp("platform-home"))
    if request.param == "postgresql":
        from conftest import _reset_postgres

        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
        config = Config.from_env(home=config.home, database_url=url, spark_master="local[2]",
                                 spark_shuffle_partitions=4, spark_driver_memory="1g")
    populate(config)
    (config.home / "import").mkdir()
    return config


@pytest.fixture(scope="module")
def client(home):
    from web import create_app

    return create_app(home).test_client()


@pytest.fixture(scope="module")
def token(client):
    response = client.post("/api/v1/token", json={"username": "admin", "password": PASSWORD})
    return response.get_json()["token"]


def _csv(rows: int, offset: int = 0) -> str:
    lines = ["user_id,city,amount"]
    lines += [f"{offset + i},{CITIES[i % 2]},{(i % 50) + 0.5}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def _entries(config, action: str, dataset: str | None = None) -> list[dict]:
    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        return [e for e in audit.query(session, action=action)
                if dataset is None or e["objects"].get("dataset") == dataset]


def _info(config, name: str):
    from yushan.catalog import readable_datasets
    from yushan.db import session_scope

    with session_scope(config) as session:
        return readable_datasets(session, config, "shop_a").get(f"platform.{name}")


def test_register_a_csv_on_the_server_with_policy_and_bounds(home, client, token):
    (home.home / "import" / "visits.csv").write_text(_csv(100))
    body = {"name": "visits", "path": "visits.csv", "classes": CLASSES, "entity_column": "user_id",
            "k": 2, "release": "threshold", "bounds": {"amount": [0, 100]}}
    outside = client.post("/api/v1/platform-datasets", json={**body, "path": str(home.home / "keys")},
                          headers=bearer(token))
    assert outside.status_code == 400 and "YUSHAN_HOME/import/" in outside.get_json()["error"]["message"]
    response = client.post("/api/v1/platform-datasets", json=body, headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    assert_documented(response, "/api/v1/platform-datasets", "POST")
    doc = response.get_json()
    assert (doc["name"], doc["version"], doc["rows"], doc["release"], doc["k"]) == (
        "platform.visits", 1, 100, "threshold", 2)
    assert doc["versions"][0]["format"] == "csv" and doc["bounds"] == {"amount": [0.0, 100.0]}
    info = _info(home, "visits")
    assert info.version == 1 and info.release_mode == "threshold"
    assert info.column("amount").data_type == "double" and info.column("amount").upper_bound == 100.0
    assert (home.platform_warehouse_dir / "visits").is_dir()
    [entry] = _entries(home, "dataset.register", "platform.visits")
    assert entry["details"]["format"] == "csv" and entry["details"]["policy"]["release"] == "threshold"
    # Bounds on a text column are refused by name before anything is kept.
    bad = client.post("/api/v1/platform-datasets", json={**body, "name": "visits_b", "bounds": {"city": [0, 1]}},
                      headers=bearer(token))
    assert bad.status_code == 422 and "Column city is not numeric" in bad.get_json()["error"]["message"]
    assert not (home.platform_warehouse_dir / "visits_b").exists()


def test_upload_a_parquet_file_as_a_public_platform_dataset(home, client, token):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"item_id": pa.array(range(10), pa.int64()), "category": ["tea"] * 10}), buffer)
    fields = {"name": "catalog", "classes": json.dumps({"item_id": "public", "category": "public"}),
              "file": (io.BytesIO(buffer.getvalue()), "catalog.parquet")}
    response = client.post("/api/v1/platform-datasets", data=fields, headers=bearer(token),
                           content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert doc["consumer_data"] is False and doc["release"] is None and doc["rows"] == 10
    assert doc["versions"][0]["format"] == "parquet"
    merchant = client.post("/api/v1/token", json={"username": "owner_a", "password": PASSWORD}).get_json()["token"]
    refused = client.post("/api/v1/platform-datasets", data={**fields, "file": (io.BytesIO(buffer.getvalue()), "x.parquet")},
                          headers=bearer(merchant), content_type="multipart/form-data")
    assert refused.status_code == 403


def test_a_refresh_adds_a_version_and_keeps_old_files_while_a_pending_job_needs_them(home, client, token):
    from jobs import service
    from onboarding.cli import dataset_cli
    from yushan.config import set_config
    from yushan.db import session_scope
    from yushan.models import User

    with session_scope(home) as session:  # a job queued before the refresh (no worker runs)
        owner = session.query(User).filter_by(username="owner_a").one()
        job = service.submit(session, home, owner, "shop_a", "aggregate",
                             "SELECT city, count(*) AS n FROM platform.visits GROUP BY city")
        job_id = job.id
    (home.home / "import" / "visits2.csv").write_text(_csv(140, offset=1000))
    response = client.post("/api/v1/platform-datasets", json={"name": "visits", "path": "visits2.csv"},
                           headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert (doc["version"], doc["rows"]) == (2, 140)
    assert [(v["version"], v["files_kept"], v["superseded_at"] is not None) for v in doc["versions"]] == [
        (1, True, True), (2, True, False)]
    assert _info(home, "visits").version == 2
    assert (home.platform_warehouse_dir / "visits").is_dir()  # the queued job may still read it
    assert (home.platform_warehouse_dir / "visits.v2").is_dir()
    [refresh] = _entries(home, "dataset.refresh", "platform.visits")
    assert refresh["details"]["previous_version"] == 1 and refresh["details"]["rows"] == 140

    with session_scope(home) as session:
        owner = session.query(User).filter_by(username="owner_a").one()
        service.cancel(session, owner, service.get_visible_job(session, owner, job_id))
    set_config(home)
    try:
        result = CliRunner().invoke(dataset_cli, ["prune", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["removed"] == [{"dataset": "platform.visits", "version": 1}]
        shown = CliRunner().invoke(dataset_cli, ["show", "visits"])
        assert "v1" in shown.output and "files removed" in shown.output and "current" in shown.output
    finally:
        set_config(None)
    assert not (home.platform_warehouse_dir / "visits").exists()
    assert _entries(home, "dataset.version_remove", "platform.visits")


def test_a_refresh_that_changes_a_type_or_loses_entities_is_rejected_and_keeps_the_version(home, client, token):
    (home.home / "import" / "typed.csv").write_text("user_id,city,amount\n1,Hangzhou,high\n2,Shanghai,low\n")
    response = client.post("/api/v1/platform-datasets", json={"name": "visits", "path": "typed.csv"},
                           headers=bearer(token))
    assert response.status_code == 422
    failed = [c for c in response.get_json()["error"]["report"]["checks"] if not c["passed"]]
    assert [(c["check"], c["column"]) for c in failed] == [("same_type", "amount")]
    (home.home / "import" / "nulls.csv").write_text("user_id,city,amount\n1,Hangzhou,1.5\n,Shanghai,2.5\n")
    response = client.post("/api/v1/platform-datasets", json={"name": "visits", "path": "nulls.csv"},
                           headers=bearer(token))
    assert response.status_code == 422
    failed = [c for c in response.get_json()["error"]["report"]["checks"] if not c["passed"]]
    assert [(c["check"], c["failed_rows"]) for c in failed] == [("entity_present", 1)]
    assert _info(home, "visits").version == 2
    assert not (home.platform_warehouse_dir / "visits.v3").exists()


def test_cli_registers_and_refreshes_and_lists(home, tmp_path):
    from onboarding.cli import dataset_cli
    from yushan.config import set_config

    source = tmp_path / "shops.csv"
    source.write_text("user_id,city\n1,Hangzhou\n2,Shanghai\n3,Hangzhou\n")
    set_config(home)
    runner = CliRunner()
    try:
        result = runner.invoke(dataset_cli, [
            "register", "shops", str(source), "--class", "user_id=identifier", "--class", "city=quasi",
            "--entity", "user_id", "--one-row-per-unit", "--k", "2", "--release", "threshold"])
        assert result.exit_code == 0, result.output
        assert "platform.shops  version 1  3 rows" in result.output
        assert "exact results cannot stop two jobs" in result.output
        again = runner.invoke(dataset_cli, ["register", "shops", str(source), "--class", "user_id=identifier",
                                            "--class", "city=quasi", "--entity", "user_id"])
        assert again.exit_code == 1 and "already exists: refresh it" in again.output
        source.write_text("user_id,city\n1,Hangzhou\n1,Shanghai\n")
        repeated = runner.invoke(dataset_cli, ["refresh", "shops", str(source)])
        assert repeated.exit_code == 1 and "entity_unique" in repeated.output
        source.write_text("user_id,city\n1,Hangzhou\n2,Shanghai\n3,Hangzhou\n4,Shanghai\n")
        refreshed = runner.invoke(dataset_cli, ["refresh", "--json", "shops", str(source)])
        assert refreshed.exit_code == 0, refreshed.output
        assert json.loads(refreshed.output)["version"] == 2
        listed = runner.invoke(dataset_cli, ["list"])
        assert "platform.shops" in listed.output and "v2" in listed.output
    finally:
        set_config(None)


@pytest.mark.slow
def test_a_job_audits_the_version_it_read(home):
    from jobs_support import WorkerThread

    from jobs import service
    from yushan.db import session_scope
    from yushan.models import Job, User

    sql = "SELECT city, count(*) AS n FROM platform.visits GROUP BY city"
    with WorkerThread(home):
        with session_scope(home) as session:
            owner = session.query(User).filter_by(username="owner_a").one()
            job_id = service.submit(session, home, owner, "shop_a", "aggregate", sql).id
        import time

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with session_scope(home) as session:
                state = session.get(Job, job_id).state
            if state not in ("queued", "running"):
                break
            time.sleep(0.5)
    assert state == "awaiting_approval", state
    [entry] = [e for e in _entries(home, "job.execute") if e["objects"].get("job") == job_id
               or e["objects"].get("job_id") == job_id]
    assert entry["details"]["dataset_versions"] == {"platform.visits": 2}
