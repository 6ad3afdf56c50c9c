"""Master key rotation (``yushan keys rotate-master``) and the key checks at start-up.

Envelope encryption: the master key (``keys/master.key``) wraps one data key per dataset
and per job output; the files are encrypted under the data keys and are never touched by
a rotation. Rotating re-wraps every data key, all-or-nothing:

1. ``segment-token.keys`` exists (made once from the master key: merchants' tokens do not
   depend on the master key afterwards, so they survive every rotation);
2. the new key is written whole as ``master.key.new`` (0600);
3. one database transaction re-wraps every ``wrapped_key`` (datasets, job outputs) under
   the new key, stores its id in the ``settings`` row ``master_key`` and writes the audit
   entry ``system.master_key_rotate`` (``audit.record``, same transaction);
4. after the commit: rows wrapped under the old key meanwhile (a writer that did not see
   the rotation) are re-wrapped too, then ``master.key`` is hard-linked to
   ``master.key.retired-<UTC time>`` and ``master.key.new`` renamed over it; the retired
   copy is deleted when asked (``--delete-old``).

A crash anywhere leaves a home that reads: ``sandbox.crypto.KeyStore`` opens a data key
with ``master.key`` or, failing that, ``master.key.new``. The next start (``yushan init``,
``serve``, ``demo``) or the next rotation resolves a leftover ``master.key.new`` by the key
id the database stores: the database names the new key -> the commit happened, steps 4
are finished; it names the old key (or none) -> nothing committed, the file is removed.
The database naming neither key stops the start-up with an error (wrong ``keys/``).
"""

from __future__ import annotations

import fcntl
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sandbox.crypto import (
    KEY_BYTES,
    DecryptionError,
    derive_key,
    master_key_id,
    pending_master_path,
    publish_secret,
    segment_token_keys_path,
    token_keys_document,
    unwrap_key,
    wrap_key,
)
from yushan.config import Config, ConfigError
from yushan.keyfiles import fsync_dir, unsafe_permissions
from yushan.models import Dataset, JobOutput, Setting, Tenant

SETTING = "master_key"  # settings row: which master key wraps the data keys
RETIRED_PREFIX = "master.key.retired-"


class KeyRotationError(Exception):
    """The rotation cannot start or cannot finish; nothing was lost (the message says)."""


@dataclass
class Rotation:
    """What ``rotate_master`` or a resumed rotation did."""

    old_key_id: str
    new_key_id: str
    datasets: int = 0
    outputs: int = 0
    late: int = 0  # rows re-wrapped after the commit (written meanwhile under the old key)
    retired: Path | None = None
    resumed: bool = False
    notes: list[str] = field(default_factory=list)


# --- the database's record of its master key ---------------------------------------------


def stored_key_id(session: Session) -> str | None:
    row = session.get(Setting, SETTING)
    if row is None or not isinstance(row.value, dict):
        return None
    return row.value.get("key_id")


def _stored(config: Config) -> dict | None:
    from yushan.db import session_scope

    with session_scope(config) as session:
        row = session.get(Setting, SETTING)
        return dict(row.value) if row is not None and isinstance(row.value, dict) else None


def _read_key(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) == KEY_BYTES else None


# --- permissions ---------------------------------------------------------------------------


def check_permissions(config: Config) -> None:
    """Refuse keys that others could read or that belong to someone else.

    A master key readable by other users may already have leaked, and a new key written
    into such a directory would leak too: fix the modes (``chmod 700 keys; chmod 600
    keys/*.key``) first.
    """
    keys_dir = config.keys_dir
    if not keys_dir.exists():
        raise KeyRotationError(f"{keys_dir} does not exist: run `yushan init`")
    problems = unsafe_permissions(
        [(keys_dir, 0o700)]
        + [(path, 0o600) for path in (config.master_key_path, pending_master_path(config.master_key_path),
                                      segment_token_keys_path(config.master_key_path))])
    if problems:
        raise KeyRotationError("refused, key permissions are unsafe: " + "; ".join(problems))


# --- segment-token secrets ------------------------------------------------------------------


def ensure_token_keys(config: Config) -> bool:
    """Make ``keys/segment-token.keys`` once; True when made now.

    Each tenant existing now keeps the key derived from the current master key (the
    tokens its merchants hold stay the same); tenants created later derive theirs from a
    new random root. Nothing in the file depends on the master key afterwards.
    """
    from yushan.db import session_scope

    path = segment_token_keys_path(config.master_key_path)
    if path.exists():
        return False
    master = _read_key(config.master_key_path)
    if master is None:
        raise KeyRotationError(f"{config.master_key_path} is missing or damaged")
    with session_scope(config) as session:
        slugs = list(session.scalars(select(Tenant.slug)))
    merchants = {slug: derive_key(master, f"segment-token:{slug}") for slug in slugs}
    return publish_secret(path, token_keys_document(os.urandom(KEY_BYTES), merchants))


# --- re-wrapping -----------------------------------------------------------------------------


def _wrapped_rows(session: Session, lock: bool = True
                  ) -> Iterator[tuple[Dataset | JobOutput, str]]:
    """Every row holding a wrapped data key, with the context it is bound to. Locked
    (PostgreSQL) so that a concurrent withdrawal or shredding waits for the rotation."""
    query = select(Dataset).where(Dataset.wrapped_key.is_not(None)).order_by(Dataset.id)
    for dataset in session.scalars(query.with_for_update() if lock else query):
        yield dataset, f"dataset:{dataset.id}"
    outputs_query = (select(JobOutput).where(JobOutput.wrapped_key.is_not(None))
                     .order_by(JobOutput.id))
    outputs = session.scalars(outputs_query.with_for_update() if lock else outputs_query)
    for output in outputs:
        yield output, f"output:{output.job_id}"


def rewrap_rows(session: Session, old_keys: list[bytes], new: bytes) -> dict[str, int]:
    """Wrap every data key under ``new`` (rows already under it are left as they are).

    Raises KeyRotationError, before anything is written, when a data key opens with none
    of the keys: the caller's transaction then rolls back.
    """
    counts = {"datasets": 0, "outputs": 0, "already": 0}
    unreadable: list[str] = []
    for row, context in _wrapped_rows(session):
        assert row.wrapped_key is not None  # noqa: S101 - selected so
        try:
            unwrap_key(new, row.wrapped_key, context)
            counts["already"] += 1
            continue
        except DecryptionError:
            pass
        for old in old_keys:
            try:
                data_key = unwrap_key(old, row.wrapped_key, context)
                break
            except DecryptionError:
                continue
        else:
            unreadable.append(context)
            continue
        row.wrapped_key = wrap_key(new, data_key, context)
        counts["outputs" if isinstance(row, JobOutput) else "datasets"] += 1
    if unreadable:
        shown = ", ".join(unreadable[:10]) + (" ..." if len(unreadable) > 10 else "")
        raise KeyRotationError(
            f"{len(unreadable)} data key(s) open with no known master key ({shown}); "
            "nothing was changed")
    session.flush()
    return counts


# --- the steps (module functions: tests inject failures between them) -----------------------


def _write_pending(config: Config) -> bytes:
    new = os.urandom(KEY_BYTES)
    pending = pending_master_path(config.master_key_path)
    if not publish_secret(pending, new):
        raise KeyRotationError(f"{pending} exists: another rotation is under way")
    return new


def _commit_rotation(config: Config, old: bytes, new: bytes, *, delete_old: bool) -> dict:
    from audit.writer import CONFIG_INFO_KEY, Actor, record
    from yushan.db import session_scope

    old_id, new_id = master_key_id(old), master_key_id(new)
    with session_scope(config) as session:
        session.info[CONFIG_INFO_KEY] = config
        stored = stored_key_id(session)
        if stored not in (None, old_id):
            raise KeyRotationError(
                f"the database's data keys are wrapped under master key {stored}, but "
                f"master.key is {old_id}: restore the matching keys/ first")
        counts = rewrap_rows(session, [old], new)
        value = {"key_id": new_id, "previous_key_id": old_id,
                 "rotated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "old_key": "delete" if delete_old else "keep"}
        row = session.get(Setting, SETTING)
        if row is None:
            session.add(Setting(key=SETTING, value=value))
        else:
            row.value = value
        record(session, "system.master_key_rotate", actor=Actor.system("cli"),
                     objects={"master_key": new_id},
                     details={"previous_key_id": old_id, "datasets": counts["datasets"],
                              "outputs": counts["outputs"],
                              "old_key": value["old_key"]})
    return counts


def _rewrap_late(config: Config, old: bytes, new: bytes) -> int:
    """Rows written under the old key after the commit (a process that had not seen it)."""
    from audit.writer import CONFIG_INFO_KEY, Actor, record
    from yushan.db import session_scope

    with session_scope(config) as session:
        session.info[CONFIG_INFO_KEY] = config
        counts = rewrap_rows(session, [old], new)
        late = counts["datasets"] + counts["outputs"]
        if late:
            record(session, "system.master_key_rewrap", actor=Actor.system("cli"),
                         objects={"master_key": master_key_id(new)},
                         details={"datasets": counts["datasets"], "outputs": counts["outputs"]})
    return late


def _retire_old(config: Config, old: bytes) -> Path:
    """Keep the old key as ``master.key.retired-<time>`` (a hard link: never copied half)."""
    for path in sorted(config.keys_dir.glob(RETIRED_PREFIX + "*")):
        if _read_key(path) == old:
            return path  # an interrupted run retired it already
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    retired = config.keys_dir / f"{RETIRED_PREFIX}{stamp}"
    os.link(config.master_key_path, retired)
    fsync_dir(config.keys_dir)
    return retired


def _install_new(config: Config) -> None:
    os.replace(pending_master_path(config.master_key_path), config.master_key_path)
    fsync_dir(config.keys_dir)


def _delete_retired(retired: Path) -> None:
    retired.unlink()
    fsync_dir(retired.parent)


def _finish(config: Config, old: bytes, new: bytes, rotation: Rotation, delete_old: bool) -> None:
    rotation.late = _rewrap_late(config, old, new)
    rotation.retired = _retire_old(config, old)
    _install_new(config)
    if delete_old:
        _delete_retired(rotation.retired)
        rotation.retired = None


@contextmanager
def _rotation_lock(config: Config) -> Iterator[None]:
    """One rotation at a time on this home (the lock goes with the process)."""
    fd = os.open(config.keys_dir / ".rotation.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyRotationError("another key rotation is running on this home") from None
        yield
    finally:
        os.close(fd)


# --- start-up: resolving an interrupted rotation ---------------------------------------------


def resolve_pending(config: Config) -> Rotation | None:
    """Finish or undo an interrupted rotation, by the key id the database stores.

    Returns the finished Rotation, or None when there was nothing to finish (a pending
    key the database never used is removed). Raises ConfigError when ``master.key`` is
    not the key the database uses (after any finishing): starting would write data
    under a key the database does not know.
    """
    with _rotation_lock(config):
        return _resolve(config)


def _resolve(config: Config) -> Rotation | None:
    pending = pending_master_path(config.master_key_path)
    stored = _stored(config)
    stored_id = stored.get("key_id") if stored else None
    current = _read_key(config.master_key_path)
    new = _read_key(pending)
    if pending.exists() and new is None:
        pending.unlink()  # cannot happen with publish_secret; a torn file is no key
        fsync_dir(pending.parent)
    if new is not None:
        new_id = master_key_id(new)
        if stored_id == new_id:  # committed: finish the file steps
            if current is None or master_key_id(current) == new_id:
                _install_new(config)  # already retired, or master.key gone: just install
                return Rotation(old_key_id=stored.get("previous_key_id", "?") if stored else "?",
                                new_key_id=new_id, resumed=True)
            rotation = Rotation(old_key_id=master_key_id(current), new_key_id=new_id,
                                resumed=True)
            _finish(config, current, new, rotation,
                    delete_old=bool(stored and stored.get("old_key") == "delete"))
            return rotation
        if current is not None and stored_id in (None, master_key_id(current)):
            pending.unlink()  # never committed: the database uses master.key
            fsync_dir(pending.parent)
            return None
        raise ConfigError(
            f"the database's data keys are wrapped under master key {stored_id}, which is "
            f"neither {config.master_key_path.name} nor {pending.name}: restore the keys/ "
            "directory that belongs to this database")
    if (stored and stored.get("old_key") == "delete" and current is not None
            and master_key_id(current) == stored_id):
        for path in sorted(config.keys_dir.glob(RETIRED_PREFIX + "*")):
            retired = _read_key(path)
            if retired is not None and master_key_id(retired) == stored.get("previous_key_id"):
                _delete_retired(path)  # interrupted just before deleting the old key
                return Rotation(old_key_id=master_key_id(retired), new_key_id=stored_id,
                                resumed=True)
    if stored_id is not None and current is not None and master_key_id(current) != stored_id:
        raise ConfigError(
            f"{config.master_key_path} (key id {master_key_id(current)}) is not the master key "
            f"this database uses (key id {stored_id}): restore the keys/ directory that "
            "belongs to this database")
    return None


def startup_check(config: Config) -> Rotation | None:
    """Called by ``yushan init`` (and so by ``serve`` and ``demo``) after migrating."""
    from audit.rotation import resolve_pending as resolve_audit_pending

    resolve_audit_pending(config)
    try:
        ensure_token_keys(config)
        return resolve_pending(config)
    except KeyRotationError as exc:
        raise ConfigError(str(exc)) from None


# --- the command -----------------------------------------------------------------------------


def live_workers(config: Config) -> int:
    """Workers that beat within the readiness window (they hold the master key)."""
    from jobs.health import readiness
    from yushan.db import session_scope

    with session_scope(config) as session:
        return int(readiness(session, config).checks.get("workers", 0))


def rotate_master(config: Config, *, delete_old: bool = False, force: bool = False) -> Rotation:
    """Rotate the master key (see the module text). Raises KeyRotationError when refused."""
    check_permissions(config)
    if not force and live_workers(config):
        raise KeyRotationError(
            "job workers are running: stop `yushan serve` and every `yushan worker` first "
            "(or pass --force: rows they write under the old key meanwhile are re-wrapped "
            "after the commit, but a worker may fail to read a key for a moment)")
    with _rotation_lock(config):
        resumed = _resolve(config)
        if resumed is not None:
            resumed.notes.append("an interrupted rotation was finished; no new key made")
            return resumed
        ensure_token_keys(config)
        old = _read_key(config.master_key_path)
        if old is None:
            raise KeyRotationError(f"{config.master_key_path} is missing or damaged")
        new = _write_pending(config)
        rotation = Rotation(old_key_id=master_key_id(old), new_key_id=master_key_id(new))
        try:
            counts = _commit_rotation(config, old, new, delete_old=delete_old)
        except BaseException:
            # Nothing committed: the pending key is of no use. (A crash here instead leaves
            # it for the next start, which removes it the same way.)
            pending = pending_master_path(config.master_key_path)
            if pending.exists() and _stored_key_is_not(config, master_key_id(new)):
                pending.unlink()
            raise
        rotation.datasets, rotation.outputs = counts["datasets"], counts["outputs"]
        _finish(config, old, new, rotation, delete_old)
        return rotation


def _stored_key_is_not(config: Config, key_id: str) -> bool:
    try:
        stored = _stored(config)
    except Exception:  # noqa: BLE001 - database gone: keep the file, start-up decides
        return False
    return not (stored and hmac.compare_digest(str(stored.get("key_id")), key_id))


@dataclass
class KeyStatus:
    master_key_id: str | None
    database_key_id: str | None
    pending: bool
    retired: list[str]
    token_keys: bool
    wrapped: int
    unreadable: list[str]


def status(config: Config) -> KeyStatus:
    """Which key is where, and whether every data key opens with ``master.key``."""
    from yushan.db import session_scope

    current = _read_key(config.master_key_path)
    unreadable: list[str] = []
    wrapped = 0
    with session_scope(config) as session:
        stored = stored_key_id(session)
        for row, context in _wrapped_rows(session, lock=False):
            wrapped += 1
            try:
                if current is None:
                    raise DecryptionError(context)
                unwrap_key(current, row.wrapped_key or b"", context)
            except DecryptionError:
                unreadable.append(context)
        session.rollback()
    return KeyStatus(
        master_key_id=master_key_id(current) if current else None,
        database_key_id=stored,
        pending=pending_master_path(config.master_key_path).exists(),
        retired=sorted(p.name for p in config.keys_dir.glob(RETIRED_PREFIX + "*")),
        token_keys=segment_token_keys_path(config.master_key_path).exists(),
        wrapped=wrapped,
        unreadable=unreadable,
    )
