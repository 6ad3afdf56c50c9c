"""``yushan backup``: a copy made while the app works restores into a new home whose audit
trail verifies and whose job results download; ``--verify`` catches a damaged copy; the
PostgreSQL path (pg_dump on the snapshot that read the audit head)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from web_support import api_token, bearer, populate, wait_for_job

from web import create_app
from yushan import backup as backups
from yushan.config import Config

ROOT = str(Path(__file__).resolve().parent.parent)


def yushan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command line in its own process, as an operator runs it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("YUSHAN_")}
    return subprocess.run([sys.executable, "-m", "yushan", *args], cwd=ROOT,
                          env={**base, "PYTHONPATH": ROOT, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def restore(backup: Path, home: Path) -> None:
    """The restore of docs/operations.md (SQLite): the files into a new home."""
    home.mkdir(mode=0o700)
    for name in ("keys", *backups.DATA_DIRS):
        if (backup / name).is_dir():
            shutil.copytree(backup / name, home / name)
    for name in ("audit-head.json", "yushan.db"):
        shutil.copy2(backup / name, home / name)


@pytest.mark.spark
@pytest.mark.slow
def test_a_backup_made_while_the_app_works_restores_and_verifies(demo_config, worker, tmp_path):
    app = create_app(demo_config)
    client = app.test_client()
    isv, owner = api_token(client, "insight_isv"), api_token(client, "hanfu_owner")
    sql = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"
    job_id = client.post("/api/v1/jobs", headers=bearer(isv), json={
        "merchant": "hanfu_house", "kind": "aggregate", "sql": sql}).get_json()["id"]
    assert wait_for_job(client, isv, job_id)["state"] == "awaiting_approval"
    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(owner)).status_code == 200
    original = client.get(f"/api/v1/jobs/{job_id}/result?format=json", headers=bearer(owner))
    assert original.status_code == 200

    # The app keeps working (jobs submitted, run, audited) while the backup is made.
    stop = threading.Event()
    submitted: list[int] = []

    def busy() -> None:
        busy_client = app.test_client()
        while not stop.is_set() and len(submitted) < 20:
            response = busy_client.post("/api/v1/jobs", headers=bearer(isv), json={
                "merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"})
            submitted.append(response.status_code)
            stop.wait(0.1)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    target = tmp_path / "backup"
    try:
        made = yushan("backup", str(target), env={"YUSHAN_HOME": str(demo_config.home)})
    finally:
        stop.set()
        thread.join(timeout=30)
    assert made.returncode == 0, made.stderr
    assert "backed up" in made.stdout and submitted and set(submitted) == {201}
    assert os.stat(target).st_mode & 0o077 == 0  # it holds the keys
    checked = yushan("backup", "--verify", str(target))
    assert checked.returncode == 0 and "backup verified" in checked.stdout, checked.stderr
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "sqlite" and manifest["versions"]["yushan"]
    assert any(name.startswith("outputs/") for name in manifest["files"])

    # The live trail names the backup and its manifest.
    import audit
    from yushan.db import session_scope

    with session_scope(demo_config) as session:
        entry = audit.query(session, action="backup.create")[0]
    details = entry["details"] if isinstance(entry["details"], dict) else json.loads(entry["details"])
    assert details["manifest_sha256"] == backups.sha256_file(target / "manifest.json")

    home = tmp_path / "restored"
    restore(target, home)
    verified = yushan("audit", "verify", env={"YUSHAN_HOME": str(home)})
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
    restored = Config.from_env(home=home, database_url=f"sqlite:///{home / 'yushan.db'}")
    restored_client = create_app(restored).test_client()
    downloaded = restored_client.get(f"/api/v1/jobs/{job_id}/result?format=json",
                                     headers=bearer(api_token(restored_client, "hanfu_owner")))
    assert downloaded.status_code == 200
    assert downloaded.get_json() == original.get_json()


def test_verify_names_what_is_damaged_missing_or_added(make_config, tmp_path):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    target = backups.create(config, tmp_path / "b").target
    assert backups.verify(target) == []
    key = target / "keys" / "master.key"
    key.write_bytes(bytes(b ^ 1 for b in key.read_bytes()))
    (target / "keys" / "stray.key").write_bytes(b"x")
    (target / "audit-head.json").unlink()
    problems = backups.verify(target)
    assert "keys/master.key: content differs from the manifest (SHA-256)" in problems
    assert "keys/stray.key: not in the manifest" in problems
    assert "audit-head.json: missing" in problems
    refused = yushan("backup", "--verify", str(target))
    assert refused.returncode == 1 and "cannot be trusted" in refused.stderr
    # A backup goes into a new directory outside the home, never over another.
    again = yushan("backup", str(target), env={"YUSHAN_HOME": str(config.home)})
    assert again.returncode == 1 and "not an empty directory" in again.stderr
    inside = yushan("backup", str(config.home / "b"), env={"YUSHAN_HOME": str(config.home)})
    assert inside.returncode == 1 and "inside YUSHAN_HOME" in inside.stderr


def test_postgresql_backup_restores_with_pg_restore(postgres_url, make_config, tmp_path):
    from conftest import _reset_postgres
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from yushan.cli import initialise

    _reset_postgres(postgres_url)
    config = make_config(database_url=postgres_url)
    initialise(config)
    populate(config)
    client = create_app(config).test_client()
    api_token(client, "hanfu_owner")  # an auth.token entry
    env = {"YUSHAN_HOME": str(config.home), "YUSHAN_DATABASE_URL": postgres_url}
    no_client = yushan("backup", str(tmp_path / "none"), env={**env, "PATH": "/nonexistent"})
    assert no_client.returncode == 1 and "pg_dump is not installed" in no_client.stderr
    assert not (tmp_path / "none").exists()
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("the PostgreSQL client tools are not installed")
    made = yushan("backup", str(tmp_path / "b"), env=env)
    assert made.returncode == 0, made.stderr
    target = tmp_path / "b"
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "postgresql" and manifest["database"]["pg_dump"]
    assert backups.verify(target) == []

    url = make_url(postgres_url)
    name = f"yushan_restore_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        restored_url = url.set(database=name)
        libpq = restored_url.set(drivername="postgresql").render_as_string(hide_password=False)
        done = subprocess.run(["pg_restore", "--no-owner", f"--dbname={libpq}",
                               str(target / "database.dump")], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        home = tmp_path / "restored"
        home.mkdir(mode=0o700)
        shutil.copytree(target / "keys", home / "keys")
        shutil.copy2(target / "audit-head.json", home / "audit-head.json")
        verified = yushan("audit", "verify", env={
            "YUSHAN_HOME": str(home),
            "YUSHAN_DATABASE_URL": restored_url.render_as_string(hide_password=False)})
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
    finally:
        from yushan.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
