"""Verification of the stored audit trail against its chain, checkpoints and signed head."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError

from audit.chain import CHECKPOINT_KIND, GENESIS, HEAD_KIND, check_point_any, entry_hash
from audit.keys import HeadFileError, load_keyring, read_head, register_config
from audit.writer import HEAD_ROW_ID
from yushan.config import Config
from yushan.db import get_engine, sqlite_snapshot_engine
from yushan.models import AuditCheckpoint, AuditEntry, AuditHead

_ENTRY_COLUMNS = (
    "id", "seq", "ts", "actor", "role", "tenant", "origin", "action", "objects", "details",
    "prev_hash", "entry_hash",
)
_STREAM_BATCH = 20_000
# The head file is advanced right after each commit, so entries newer than the signed head
# exist only for an instant. Entries left unanchored for longer (or dated in the future)
# were most likely added behind the application's back.
ANCHOR_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome: ``first_bad`` is the id (= sequence number) of the first bad entry."""

    ok: bool
    entries: int
    first_bad: int | None
    reason: str
    # The signing keys whose signatures were checked (checkpoints, head), oldest first.
    key_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def snapshot(config: Config) -> Iterator[Connection]:
    """A read-only connection that sees one consistent state of the database."""
    if config.is_sqlite:
        config.check_home_writable()
        engine = sqlite_snapshot_engine(config.database_url)
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    else:
        with get_engine(config).connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn


def verify(config: Config) -> VerifyResult:
    """Check every entry's hash and link, the checkpoints, and the signed head file.

    Detects edited, deleted, inserted or reordered entries and a truncated tail (fewer
    entries than the signed head names). Reads a consistent snapshot; writers go on.
    """
    register_config(config)
    try:
        keyring = load_keyring(config)
    except ValueError as exc:
        return VerifyResult(False, 0, None, f"audit keyring is damaged ({exc})")
    try:
        # Read before the snapshot: the head file never runs ahead of committed entries.
        head = read_head(config)
    except HeadFileError as exc:
        return VerifyResult(False, 0, None, f"signed head file is damaged ({exc})")
    head_key = None
    if head is not None:
        if not keyring:
            return VerifyResult(False, 0, None, "no audit verification key to check the head")
        head_key = check_point_any(keyring, HEAD_KIND, head.seq, head.hash, head.signature,
                                   named=head.key_id or None)
        if head_key is None:
            return VerifyResult(False, 0, None, "signed head file: signature does not verify")
    try:
        with snapshot(config) as conn:
            result = _verify_snapshot(conn, keyring, head, head_key)
            if head_key is not None and head_key not in result.key_ids:
                result = replace(result, key_ids=(*result.key_ids, head_key))
            return result
    except DBAPIError as exc:
        origin = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        return VerifyResult(False, 0, None, f"audit tables unreadable: {origin}")


ROTATE_ACTION = "audit.signing_key_rotate"


def _verify_snapshot(conn: Connection, keyring, head, head_key: str | None = None
                     ) -> VerifyResult:
    checkpoints = {
        seq: (digest, signature)
        for seq, digest, signature in conn.execute(
            select(AuditCheckpoint.seq, AuditCheckpoint.head_hash, AuditCheckpoint.signature)
        )
    }
    table = AuditEntry.__table__
    rows = conn.execution_options(yield_per=_STREAM_BATCH).execute(
        select(*(table.c[name] for name in _ENTRY_COLUMNS)).order_by(table.c.seq)
    )
    expected = 1
    prev = GENESIS
    hash_at_head = None
    first_unanchored: tuple[int, str] | None = None
    used: list[str] = []
    # Once the signing key has been rotated, every signature must come from a key that a
    # rotation entry (itself in the chain, signed over by the keys before it) names.
    named: set[str] | None = None
    for (row_id, seq, ts, actor, role, tenant, origin, action, objects, details,
         prev_hash, stored_hash) in rows:
        if seq != expected:
            return _bad(expected, expected - 1, f"entry {expected} is missing (next is {seq})")
        if row_id != seq:
            return _bad(seq, seq - 1, f"entry {seq} has been moved (stored id {row_id})")
        if prev_hash != prev:
            return _bad(seq, seq - 1, f"entry {seq} does not link to entry {seq - 1}")
        fields = {"seq": seq, "ts": ts, "actor": actor, "role": role, "tenant": tenant,
                  "origin": origin, "action": action, "objects": objects, "details": details}
        if entry_hash(prev, fields) != stored_hash:
            return _bad(seq, seq - 1, f"entry {seq} has been altered")
        if action == ROTATE_ACTION:
            named = _rotation_keys(named, objects, details)
        if seq in checkpoints:
            digest, signature = checkpoints.pop(seq)
            signer = check_point_any(keyring, CHECKPOINT_KIND, seq, digest, signature)
            if signer is None:
                return _bad(seq, seq - 1, f"checkpoint at entry {seq} has a bad signature")
            if named is not None and signer not in named:
                return _bad(seq, seq - 1, f"checkpoint at entry {seq} is signed by key {signer}, "
                                          "which no key rotation entry names")
            if signer not in used:
                used.append(signer)
            if digest != stored_hash:
                return _bad(seq, seq - 1, f"entry {seq} differs from its signed checkpoint")
        if head is not None and seq == head.seq:
            hash_at_head = stored_hash
        if first_unanchored is None and (head is None or seq > head.seq):
            first_unanchored = (seq, ts)
        prev = stored_hash
        expected += 1
    last = expected - 1

    if head is not None and head.seq > last:
        return _bad(last + 1, last, f"log truncated: signed head names entry {head.seq}, "
                                    f"the log ends at {last}")
    if checkpoints:
        lost = min(checkpoints)
        return _bad(last + 1, last, f"log truncated: checkpoint names entry {lost}, "
                                    f"the log ends at {last}")
    if head is not None and hash_at_head != head.hash:
        return _bad(head.seq, last, f"entry {head.seq} differs from the signed head: "
                                    "the chain was rewritten")
    if last > 0 and head is None:
        return VerifyResult(False, last, None, "signed head file is missing")
    if head_key is not None and named is not None and head_key not in named:
        return _bad(head.seq, last, f"the signed head is signed by key {head_key}, which no "
                                    "key rotation entry names")
    if first_unanchored is not None and not _recent(first_unanchored[1]):
        seq = first_unanchored[0]
        return _bad(seq, seq - 1, f"entries from {seq} on were never anchored by a signed "
                                  "head: added outside the application?")
    stored_head = conn.execute(
        select(AuditHead.seq, AuditHead.head_hash).where(AuditHead.id == HEAD_ROW_ID)
    ).first()
    if last > 0 and (stored_head is None or tuple(stored_head) != (last, prev)):
        return _bad(last + 1, last, "the chain head row does not match the last entry")
    pending = f", {last - head.seq} just committed" if head and last > head.seq else ""
    return VerifyResult(True, last, None, f"intact: {last} entries{pending}", tuple(used))


def _rotation_keys(named: set[str] | None, objects: str, details: str) -> set[str]:
    found = set(named or ())
    try:
        found.add(str(json.loads(objects)["signing_key"]))
        found.add(str(json.loads(details)["previous_key_id"]))
    except (ValueError, KeyError, TypeError):
        pass
    return found


def _recent(ts: str) -> bool:
    try:
        when = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    now = datetime.now(UTC)
    return now - ANCHOR_GRACE <= when <= now + timedelta(seconds=5)


def _bad(first_bad: int, entries: int, reason: str) -> VerifyResult:
    return VerifyResult(False, entries, first_bad, reason)
