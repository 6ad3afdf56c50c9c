"""Master key rotation (``yushan keys rotate-master``): real files, a real database (SQLite,
and PostgreSQL when YUSHAN_TEST_DATABASE_URL is set), real crypto, no Spark.

Every upload and output reads the same bytes after a rotation; a crash between any two
steps leaves a home that reads with whichever key is in use and that a second run (or the
next start) completes; merchants' segment tokens never change; the rotation is audited and
the trail verifies."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from jobs_support import small_world, user
from sqlalchemy import select
from test_segments_review import make_output_job

import audit
from jobs import quarantine
from policies.segment import segment_token_py
from sandbox.crypto import (
    DecryptionError,
    KeyStore,
    master_key_id,
    pending_master_path,
    segment_token_keys_path,
    unwrap_key,
)
from sandbox.output import read_output
from sandbox.storage import decrypt_dataset, store_encrypted_parquet
from yushan import keys
from yushan.accounts import ensure_tenant
from yushan.catalog import dataset_info
from yushan.config import ConfigError
from yushan.db import session_scope
from yushan.models import AuditEntry, Dataset, Job, JobOutput, Tenant, TenantKind

MERCHANTS = ("hanfu_house", "tea_garden")
ENTITIES = ("u1", "u42", "13800000000")


def _upload(config, tmp_path: Path, merchant: str, name: str, rows: int) -> int:
    """A merchant dataset stored exactly as an upload stores it (encrypted Parquet)."""
    plain = tmp_path / f"plain-{name}"
    plain.mkdir()
    pq.write_table(pa.table({"member_id": [f"{name}-{i}" for i in range(rows)],
                             "value": list(range(rows))}), plain / "part-0.parquet")
    with session_scope(config) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == merchant))
        dataset = Dataset(tenant_id=tenant.id, name=name, full_name=f"{merchant}.{name}",
                          storage_path="", member_key="member_id")
        session.add(dataset)
        session.flush()
        store_encrypted_parquet(config, KeyStore(config.master_key_path), dataset, merchant, plain)
        return dataset.id


def _file_digests(config) -> dict[str, str]:
    """SHA-256 of every encrypted file: a rotation must not touch one of them."""
    found = {}
    for top in (config.merchant_data_dir, config.outputs_dir):
        for path in sorted(top.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _read_everything(config, tmp_path: Path, label: str) -> dict[str, bytes]:
    """Plaintext of every dataset and output, read by a fresh KeyStore (a new process)."""
    store = KeyStore(config.master_key_path)
    out: dict[str, bytes] = {}
    with session_scope(config) as session:
        for ds in session.scalars(select(Dataset).where(Dataset.wrapped_key.is_not(None))):
            dest = decrypt_dataset(store, dataset_info(config, ds), tmp_path / f"{label}-{ds.id}")
            out[f"dataset:{ds.id}"] = b"".join(p.read_bytes() for p in sorted(dest.iterdir()))
        for output in session.scalars(select(JobOutput).where(JobOutput.wrapped_key.is_not(None))):
            table = read_output(config, store, output.job_id, output.storage_path,
                                output.wrapped_key, output.content_hash)
            out[f"output:{output.job_id}"] = table.to_pandas().to_csv().encode()
    return out


def _tokens(config) -> dict[str, list[str]]:
    store = KeyStore(config.master_key_path)
    return {m: [segment_token_py(store.segment_token_key(m), e) for e in ENTITIES]
            for m in MERCHANTS + ("later_shop",)}


def _download(config, job_id: int):
    """Approve (once) and download the way the merchant does (``job.download``)."""
    with session_scope(config) as session:
        owner = user(session, "hanfu_owner")
        job = session.get(Job, job_id)
        if job.state == "awaiting_approval":
            quarantine.approve(session, owner, job, origin="pytest")
    with session_scope(config) as session:
        return quarantine.read_result(session, config, user(session, "hanfu_owner"),
                                      session.get(Job, job_id), origin="pytest")


@pytest.fixture
def home(any_db_config, tmp_path):
    config = any_db_config
    small_world(config)
    with session_scope(config) as session:  # a tenant created after segment-token.keys
        ensure_tenant(session, "later_shop", "Later Shop", TenantKind.MERCHANT)
    _upload(config, tmp_path, "hanfu_house", "members", 300)
    _upload(config, tmp_path, "tea_garden", "crm", 120)
    jobs = [make_output_job(config, tmp_path), make_output_job(config, tmp_path, kind="aggregate")]
    return config, jobs


def _actions(config, action: str) -> list[AuditEntry]:
    with session_scope(config) as session:
        rows = list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))
        session.expunge_all()
        return rows


def _assert_settled(config) -> None:
    """One key in use: master.key, named by the database; nothing pending; all readable."""
    assert not pending_master_path(config.master_key_path).exists()
    found = keys.status(config)
    assert found.database_key_id == found.master_key_id
    assert found.unreadable == [] and found.wrapped == 4
    keys.startup_check(config)  # nothing to resolve, no mismatch


def test_rotation_rewraps_every_data_key_and_everything_reads_the_same(home, tmp_path):
    config, jobs = home
    before_plain = _read_everything(config, tmp_path, "before")
    before_files = _file_digests(config)
    before_tokens = _tokens(config)
    before_download = _download(config, jobs[0])
    old = config.master_key_path.read_bytes()
    with session_scope(config) as session:
        old_wrapped = {d.id: d.wrapped_key for d in session.scalars(select(Dataset))}

    done = keys.rotate_master(config)

    new = config.master_key_path.read_bytes()
    assert new != old and len(new) == 32
    assert (done.old_key_id, done.new_key_id) == (master_key_id(old), master_key_id(new))
    assert (done.datasets, done.outputs) == (2, 2)
    assert oct(config.master_key_path.stat().st_mode & 0o777) == "0o600"
    assert done.retired is not None and done.retired.read_bytes() == old
    assert oct(done.retired.stat().st_mode & 0o777) == "0o600"
    # Envelope encryption: the files are untouched, only the wrapped keys changed.
    assert _file_digests(config) == before_files
    with session_scope(config) as session:
        for ds in session.scalars(select(Dataset)):
            assert ds.wrapped_key != old_wrapped[ds.id]
            with pytest.raises(DecryptionError):
                unwrap_key(old, ds.wrapped_key, f"dataset:{ds.id}")
    assert _read_everything(config, tmp_path, "after") == before_plain
    assert _download(config, jobs[0]).equals(before_download)
    assert _tokens(config) == before_tokens
    entries = _actions(config, "system.master_key_rotate")
    assert len(entries) == 1
    import json
    details = json.loads(entries[0].details)
    assert details == {"previous_key_id": master_key_id(old), "datasets": 2, "outputs": 2,
                       "old_key": "keep"}
    assert json.loads(entries[0].objects) == {"master_key": master_key_id(new)}
    assert audit.verify(config).ok
    _assert_settled(config)

    # A second rotation, deleting the old key this time.
    again = keys.rotate_master(config, delete_old=True)
    assert again.retired is None and again.old_key_id == master_key_id(new)
    assert [p.name for p in config.keys_dir.glob("master.key.retired-*")] == [done.retired.name]
    assert _read_everything(config, tmp_path, "again") == before_plain
    assert _tokens(config) == before_tokens
    assert audit.verify(config).ok
    _assert_settled(config)


def test_a_running_process_follows_the_rotation(home, tmp_path):
    """A KeyStore made before the rotation (a worker's) reads and writes under the new key."""
    config, jobs = home
    store = KeyStore(config.master_key_path)
    with session_scope(config) as session:
        output = session.scalar(select(JobOutput).where(JobOutput.job_id == jobs[0]))
        expected = read_output(config, store, output.job_id, output.storage_path,
                               output.wrapped_key, output.content_hash)
    keys.rotate_master(config)
    with session_scope(config) as session:
        output = session.scalar(select(JobOutput).where(JobOutput.job_id == jobs[0]))
        assert read_output(config, store, output.job_id, output.storage_path,
                           output.wrapped_key, output.content_hash).equals(expected)
    _, wrapped = store.new_wrapped_key("dataset:999")
    unwrap_key(config.master_key_path.read_bytes(), wrapped, "dataset:999")


def test_tokens_of_a_home_made_before_the_token_file_survive(home):
    """A home from before this version: tokens derived from the master key itself."""
    config, _ = home
    segment_token_keys_path(config.master_key_path).unlink()
    legacy = _tokens(config)
    keys.rotate_master(config)
    assert segment_token_keys_path(config.master_key_path).exists()
    assert _tokens(config) == legacy
    keys.rotate_master(config)
    assert _tokens(config) == legacy


# The steps, in order; a crash is injected *instead of* each one.
STEPS = ["_write_pending", "rewrap_rows", "_commit_rotation", "_rewrap_late", "_retire_old",
         "_install_new", "_delete_retired"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("hard", [False, True], ids=["exception", "killed"])
@pytest.mark.parametrize("step", STEPS)
def test_a_crash_between_steps_leaves_a_readable_home_and_a_second_run_completes(
        home, tmp_path, monkeypatch, step, hard):
    config, jobs = home
    before_plain = _read_everything(config, tmp_path, "before")
    before_tokens = _tokens(config)
    old = config.master_key_path.read_bytes()

    def crash(*args, **kwargs):
        if step == "rewrap_rows":  # mid-transaction: some rows already re-wrapped
            original(*args, **kwargs)
        raise Crash(step)

    original = getattr(keys, step)
    monkeypatch.setattr(keys, step, crash)
    if hard:  # killed: no clean-up after the failure
        monkeypatch.setattr(keys, "_stored_key_is_not", lambda *a: False)
    with pytest.raises(Crash):
        keys.rotate_master(config, delete_old=True)
    monkeypatch.undo()

    # Readable by a fresh process, whichever key the database uses now.
    assert _read_everything(config, tmp_path, "crashed") == before_plain
    assert _tokens(config) == before_tokens
    assert audit.verify(config).ok
    committed = step in ("_rewrap_late", "_retire_old", "_install_new", "_delete_retired")
    assert len(_actions(config, "system.master_key_rotate")) == int(committed)

    done = keys.rotate_master(config)  # the second run
    if committed:
        assert done.resumed  # it finished the first rotation rather than start another
    assert _read_everything(config, tmp_path, "second") == before_plain
    assert _tokens(config) == before_tokens
    assert config.master_key_path.read_bytes() != old
    assert len(_actions(config, "system.master_key_rotate")) == 1
    assert audit.verify(config).ok
    _assert_settled(config)
    assert _download(config, jobs[1]).num_rows > 0


def test_the_next_start_resolves_an_interrupted_rotation(home, tmp_path, monkeypatch):
    """Killed after the commit: ``yushan init`` (serve, demo) finishes the file steps."""
    config, _ = home
    before_plain = _read_everything(config, tmp_path, "before")
    monkeypatch.setattr(keys, "_rewrap_late", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        keys.rotate_master(config)
    monkeypatch.undo()
    pending = pending_master_path(config.master_key_path).read_bytes()
    from yushan.cli import initialise

    initialise(config)
    assert config.master_key_path.read_bytes() == pending
    assert _read_everything(config, tmp_path, "after") == before_plain
    _assert_settled(config)


def test_a_pending_key_the_database_never_used_is_discarded_at_start(home):
    config, _ = home
    old = config.master_key_path.read_bytes()
    keys._write_pending(config)  # killed right after writing master.key.new
    keys.startup_check(config)
    assert not pending_master_path(config.master_key_path).exists()
    assert config.master_key_path.read_bytes() == old


def test_start_refuses_a_master_key_the_database_does_not_use(home):
    config, _ = home
    keys.rotate_master(config)
    retired = next(config.keys_dir.glob("master.key.retired-*"))
    os.replace(retired, config.master_key_path)  # someone restored the wrong key file
    with pytest.raises(ConfigError, match="not the master key this database uses"):
        keys.startup_check(config)


@pytest.mark.parametrize("target", ["dir", "master", "tokens"])
def test_unsafe_key_permissions_are_refused(home, tmp_path, target):
    config, _ = home
    path = {"dir": config.keys_dir, "master": config.master_key_path,
            "tokens": segment_token_keys_path(config.master_key_path)}[target]
    old = config.master_key_path.read_bytes()
    os.chmod(path, 0o755 if target == "dir" else 0o644)
    try:
        with pytest.raises(keys.KeyRotationError, match="permissions are unsafe"):
            keys.rotate_master(config)
    finally:
        os.chmod(path, 0o700 if target == "dir" else 0o600)
    assert config.master_key_path.read_bytes() == old
    assert not pending_master_path(config.master_key_path).exists()
    assert _actions(config, "system.master_key_rotate") == []


def test_running_workers_are_refused_unless_forced(home):
    from jobs.health import forget_beat, record_beat

    config, _ = home
    record_beat(config, "host:1", {"warm": 1, "busy": 0})
    try:
        with pytest.raises(keys.KeyRotationError, match="workers are running"):
            keys.rotate_master(config)
        assert keys.rotate_master(config, force=True).datasets == 2
    finally:
        forget_beat(config, "host:1")


def test_a_data_key_no_key_opens_stops_the_rotation_with_nothing_changed(home):
    config, _ = home
    old = config.master_key_path.read_bytes()
    with session_scope(config) as session:
        ds = session.scalars(select(Dataset).order_by(Dataset.id)).first()
        ds.wrapped_key = os.urandom(60)
        broken = ds.id
    with pytest.raises(keys.KeyRotationError, match=f"dataset:{broken}"):
        keys.rotate_master(config)
    assert config.master_key_path.read_bytes() == old
    assert not pending_master_path(config.master_key_path).exists()
    assert keys.status(config).database_key_id is None


def test_rows_written_under_the_old_key_meanwhile_are_rewrapped(home, tmp_path, monkeypatch):
    """A writer that wrapped its key before the commit and inserted it after."""
    config, _ = home
    old_store = KeyStore(config.master_key_path)
    original = keys._commit_rotation

    def commit_then_late_writer(config_, old, new, **kwargs):
        counts = original(config_, old, new, **kwargs)
        _upload(config_, tmp_path, "tea_garden", "late", 50)  # still sees master.key = old
        return counts

    monkeypatch.setattr(keys, "_commit_rotation", commit_then_late_writer)
    assert old_store.master  # the writer's key was loaded before
    done = keys.rotate_master(config)
    assert done.late == 1
    assert _actions(config, "system.master_key_rewrap")
    with session_scope(config) as session:
        late = session.scalar(select(Dataset).where(Dataset.name == "late"))
        dest = decrypt_dataset(KeyStore(config.master_key_path), dataset_info(config, late),
                               tmp_path / "late-out")
    assert pq.read_table(next(dest.iterdir())).num_rows == 50


def test_cli_rotate_and_status(make_config, tmp_path, monkeypatch):
    from yushan.cli import initialise, main

    config = make_config()
    initialise(config)
    small_world(config)
    _upload(config, tmp_path, "hanfu_house", "members", 10)
    monkeypatch.setenv("YUSHAN_HOME", str(config.home))
    monkeypatch.delenv("YUSHAN_DATABASE_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "rotate-master"])
    assert result.exit_code == 0, result.output
    assert "1 dataset and 0 output keys re-wrapped" in result.output
    assert "master.key.retired-" in result.output
    result = runner.invoke(main, ["keys", "status"])
    assert result.exit_code == 0, result.output
    key_id = master_key_id(config.master_key_path.read_bytes())
    assert f"master.key:          {key_id}" in result.output
    assert f"database uses:       {key_id}" in result.output
    os.chmod(config.master_key_path, 0o640)
    result = runner.invoke(main, ["keys", "rotate-master"])
    assert result.exit_code == 1 and "permissions are unsafe" in result.output
