"""Audit signing key rotation (``yushan keys rotate-audit``).

1. the new key pair is made; its public half joins the keyring (``keys/audit-keyring.json``,
   public keys only, with the current one) and the private key is written whole as
   ``audit-signing.key.new`` (0600);
2. the entry ``audit.signing_key_rotate`` (objects: the new key id; details: the previous
   one) is committed (``audit.record``): the announcement of the new key is itself in the
   chain and anchored by the old key's signed head;
3. ``audit-signing.key.new`` is renamed over ``audit-signing.key`` and ``audit-signing.pub``
   rewritten. Later checkpoints (``<key id>:<signature>``) and heads are signed by the new
   key; ``yushan audit verify`` checks each signature with the key it names and lists them.

The old private key is deleted (nothing needs it: verification needs public keys only).
A leftover ``audit-signing.key.new`` is resolved by the trail: an ``audit.signing_key_rotate``
entry names it -> step 3 is finished; none does -> it is removed (``resolve_pending``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from audit.chain import key_id, public_key_pem
from audit.keys import (
    _write_exclusive,
    init_keys,
    load_signing_key,
    public_key_path,
    read_keyring_file,
    register_config,
    write_keyring_file,
)
from yushan.config import Config
from yushan.keyfiles import fsync_dir, unsafe_permissions
from yushan.models import AuditEntry

ACTION = "audit.signing_key_rotate"


class AuditKeyError(Exception):
    """The rotation was refused; nothing changed."""


def pending_path(config: Config) -> Path:
    path = config.audit_signing_key_path
    return path.with_name(path.name + ".new")


def _pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _load_pending(config: Config) -> Ed25519PrivateKey | None:
    try:
        key = serialization.load_pem_private_key(pending_path(config).read_bytes(), None)
    except FileNotFoundError:
        return None
    except ValueError:
        pending_path(config).unlink()  # torn: never used (written whole, then linked)
        return None
    return key if isinstance(key, Ed25519PrivateKey) else None


def _check_permissions(config: Config) -> None:
    problems = unsafe_permissions(((config.keys_dir, 0o700), (config.audit_signing_key_path, 0o600)))
    if problems:
        raise AuditKeyError("refused, key permissions are unsafe: " + "; ".join(problems))


def _announced(config: Config, new_id: str) -> bool:
    """Whether the trail holds the rotation entry naming ``new_id`` (committed)."""
    from yushan.db import session_scope

    with session_scope(config) as session:
        for objects in session.scalars(
                select(AuditEntry.objects).where(AuditEntry.action == ACTION)):
            try:
                if json.loads(objects).get("signing_key") == new_id:
                    return True
            except ValueError:
                continue
    return False


def _add_to_keyring(config: Config, *keys: Ed25519PrivateKey) -> None:
    entries = read_keyring_file(config)
    known = {e.get("key_id") for e in entries}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for private in keys:
        public = private.public_key()
        if key_id(public) not in known:
            entries.append({"key_id": key_id(public), "added": now,
                            "public_key": public_key_pem(public).decode("ascii")})
            known.add(key_id(public))
    write_keyring_file(config, entries)


def install_pending(config: Config, new: Ed25519PrivateKey) -> None:
    """Step 3: the pending key becomes the signing key; its public half is published."""
    os.replace(pending_path(config), config.audit_signing_key_path)
    pub = public_key_path(config)
    pub.unlink(missing_ok=True)
    _write_exclusive(pub, public_key_pem(new.public_key()), 0o644)
    fsync_dir(config.keys_dir)


def resolve_pending(config: Config) -> str | None:
    """Finish (the trail announces it) or drop (it does not) a leftover pending key.
    Returns the key id now in use when a rotation was finished."""
    new = _load_pending(config)
    if new is None:
        return None
    new_id = key_id(new.public_key())
    if _announced(config, new_id):
        install_pending(config, new)
        return new_id
    pending_path(config).unlink()
    fsync_dir(config.keys_dir)
    return None


def commit_announcement(config: Config, old_id: str, new_id: str) -> None:
    """Step 2: the rotation entry, in its own transaction (``audit.record``)."""
    from audit.writer import CONFIG_INFO_KEY, Actor, record
    from yushan.db import session_scope

    with session_scope(config) as session:
        session.info[CONFIG_INFO_KEY] = config
        record(session, ACTION, actor=Actor.system("cli"), objects={"signing_key": new_id},
               details={"previous_key_id": old_id})


def rotate_signing_key(config: Config) -> tuple[str, str]:
    """Rotate the audit signing key; returns (old key id, new key id)."""
    register_config(config)
    _check_permissions(config)  # before init_keys, which would quietly tighten the modes
    init_keys(config)
    finished = resolve_pending(config)
    old = load_signing_key(config)
    old_id = key_id(old.public_key())
    if finished is not None:
        return old_id, finished
    new = Ed25519PrivateKey.generate()
    new_id = key_id(new.public_key())
    _add_to_keyring(config, old, new)  # public halves: harmless if never used
    if not _write_exclusive(pending_path(config), _pem(new), 0o600):
        raise AuditKeyError(f"{pending_path(config)} exists: another rotation is under way")
    try:
        commit_announcement(config, old_id, new_id)
    except BaseException:
        if not _announced_safely(config, new_id):
            pending_path(config).unlink(missing_ok=True)
        raise
    install_pending(config, new)
    return old_id, new_id


def _announced_safely(config: Config, new_id: str) -> bool:
    try:
        return _announced(config, new_id)
    except Exception:  # noqa: BLE001 - database gone: keep the file, the next start decides
        return True
