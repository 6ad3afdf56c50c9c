"""Audit signing key rotation (``yushan keys rotate-audit``): the whole trail still verifies,
each checkpoint and head with the key it names; the rotation is itself an entry; a crash
between steps leaves a verifiable trail and the next start finishes or drops the new key.
Real keys, real database (SQLite, and PostgreSQL when YUSHAN_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

import audit
import audit.writer
from audit import rotation
from audit.chain import (
    CHECKPOINT_KIND,
    key_id,
    load_public_key_pem,
    sign_point_tagged,
    signature_key_id,
)
from audit.keys import keyring_path, load_signing_key, public_key_path, read_head
from audit.offline_verify import verify_bundle
from yushan import keys
from yushan.db import session_scope
from yushan.models import AuditCheckpoint, AuditEntry


@pytest.fixture
def home(any_db_config, monkeypatch):
    monkeypatch.setattr(audit.writer, "CHECKPOINT_EVERY", 3)
    audit.register_config(any_db_config)
    return any_db_config


def _append(config, count: int) -> None:
    for i in range(count):
        with session_scope(config) as session:
            audit.record(session, "system.test", actor=audit.Actor.system("pytest"),
                         objects={"i": i}, details={})


def _signers(config) -> list[str | None]:
    with session_scope(config) as session:
        return [signature_key_id(c.signature) for c in
                session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))]


def test_rotation_keeps_the_whole_trail_verifiable(home, tmp_path):
    config = home
    _append(config, 5)
    old_id = key_id(load_signing_key(config).public_key())
    old_private = config.audit_signing_key_path.read_bytes()

    got_old, new_id = rotation.rotate_signing_key(config)

    assert got_old == old_id and new_id != old_id
    assert key_id(load_signing_key(config).public_key()) == new_id
    assert config.audit_signing_key_path.read_bytes() != old_private  # the old one is gone
    assert oct(config.audit_signing_key_path.stat().st_mode & 0o777) == "0o600"
    assert not rotation.pending_path(config).exists()
    assert key_id(load_public_key_pem(public_key_path(config).read_bytes())) == new_id
    ring = json.loads(keyring_path(config).read_text())
    assert [k["key_id"] for k in ring["keys"]] == [old_id, new_id]
    with session_scope(config) as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == rotation.ACTION))
        assert json.loads(entry.objects) == {"signing_key": new_id}
        assert json.loads(entry.details) == {"previous_key_id": old_id}

    _append(config, 6)
    assert set(_signers(config)) == {old_id, new_id}
    assert read_head(config).key_id == new_id
    result = audit.verify(config)
    assert result.ok, result.reason
    assert result.key_ids == (old_id, new_id)

    # Twice more: every older key stays usable for verification.
    _, third = rotation.rotate_signing_key(config)
    _append(config, 3)
    result = audit.verify(config)
    assert result.ok and result.key_ids == (old_id, new_id, third)

    # The offline bundle carries the keyring and verifies without the platform.
    bundle = tmp_path / "trail.zip"
    with session_scope(config) as session:
        audit.export_bundle(session, config, bundle)
    report = verify_bundle(str(bundle), expect_key=third)
    assert report.ok, report.problems
    assert set(report.key_ids) == {old_id, new_id, third}


def test_untagged_checkpoints_from_before_this_version_still_verify(home):
    """Checkpoints written before keys were named carry a bare signature."""
    config = home
    _append(config, 6)
    with session_scope(config) as session:
        for point in session.scalars(select(AuditCheckpoint)):
            point.signature = point.signature.partition(":")[2]
    old_id = key_id(load_signing_key(config).public_key())
    rotation.rotate_signing_key(config)
    _append(config, 3)
    result = audit.verify(config)
    assert result.ok, result.reason
    assert old_id in result.key_ids


def test_a_key_no_rotation_entry_names_is_refused(home):
    config = home
    _append(config, 4)
    rotation.rotate_signing_key(config)
    _append(config, 4)
    rogue = Ed25519PrivateKey.generate()
    rotation._add_to_keyring(config, rogue)  # slipped into the keyring
    with session_scope(config) as session:
        point = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc())).first()
        point.signature = sign_point_tagged(rogue, CHECKPOINT_KIND, point.seq, point.head_hash)
    result = audit.verify(config)
    assert not result.ok and "no key rotation entry names" in result.reason


def test_crash_before_the_announcement_drops_the_new_key(home, monkeypatch):
    config = home
    _append(config, 4)
    old_id = key_id(load_signing_key(config).public_key())
    monkeypatch.setattr(rotation, "commit_announcement",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        rotation.rotate_signing_key(config)
    monkeypatch.undo()
    assert not rotation.pending_path(config).exists()
    assert key_id(load_signing_key(config).public_key()) == old_id
    _append(config, 2)
    assert audit.verify(config).ok


@pytest.mark.parametrize("killed", [False, True])
def test_crash_after_the_announcement_is_finished_at_the_next_start(home, monkeypatch, killed):
    config = home
    _append(config, 4)
    old_id = key_id(load_signing_key(config).public_key())
    if killed:  # killed before step 3: the pending key is left as it is
        monkeypatch.setattr(rotation, "install_pending",
                            lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError):
            rotation.rotate_signing_key(config)
    else:  # the announcement committed but its answer was lost
        original = rotation.commit_announcement

        def committed_then_lost(*args):
            original(*args)
            raise ConnectionError("lost")

        monkeypatch.setattr(rotation, "commit_announcement", committed_then_lost)
        with pytest.raises(ConnectionError):
            rotation.rotate_signing_key(config)
    monkeypatch.undo()
    assert rotation.pending_path(config).exists()
    new = rotation._load_pending(config)
    new_id = key_id(new.public_key())
    _append(config, 3)  # still signed by the old key: verifies
    assert audit.verify(config).ok
    assert key_id(load_signing_key(config).public_key()) == old_id

    keys.startup_check(config)  # what `yushan init`/`serve` runs
    assert not rotation.pending_path(config).exists()
    assert key_id(load_signing_key(config).public_key()) == new_id
    _append(config, 3)
    result = audit.verify(config)
    assert result.ok and result.key_ids == (old_id, new_id)


def test_unsafe_permissions_are_refused(home):
    config = home
    os.chmod(config.audit_signing_key_path, 0o644)
    try:
        with pytest.raises(rotation.AuditKeyError, match="permissions are unsafe"):
            rotation.rotate_signing_key(config)
    finally:
        os.chmod(config.audit_signing_key_path, 0o600)
    assert not rotation.pending_path(config).exists()


def test_cli_rotate_audit_and_verify_lists_the_keys(make_config, monkeypatch):
    from yushan.cli import initialise, main

    config = make_config()
    initialise(config)
    monkeypatch.setenv("YUSHAN_HOME", str(config.home))
    monkeypatch.delenv("YUSHAN_DATABASE_URL", raising=False)
    monkeypatch.setattr(audit.writer, "CHECKPOINT_EVERY", 2)
    audit.register_config(config)
    _append(config, 3)
    old_id = key_id(load_signing_key(config).public_key())
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "rotate-audit"])
    assert result.exit_code == 0, result.output
    new_id = key_id(load_signing_key(config).public_key())
    assert f"{old_id} -> {new_id}" in result.output
    _append(config, 3)
    result = runner.invoke(main, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert f"signing key {new_id}; earlier keys {old_id}" in result.output
    result = runner.invoke(main, ["audit", "verify", "--json"])
    assert json.loads(result.output)["key_ids"] == [old_id, new_id]
