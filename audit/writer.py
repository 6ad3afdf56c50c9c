"""Appending entries: ``record`` in the caller's transaction, chained and serialised.

Appends are serialised on the single ``audit_head`` row: on SQLite every write transaction
already starts with ``BEGIN IMMEDIATE`` (one writer at a time); on PostgreSQL the row is
locked with ``SELECT ... FOR UPDATE`` until the caller's transaction ends. The entry is
added to the caller's session, so it commits with the action it records or not at all.
After the commit the signed head file is advanced (see ``audit.keys.advance_head``).
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session

from audit.chain import CHECKPOINT_KIND, GENESIS, canonical_json, entry_hash, sign_point_tagged
from audit.keys import (
    advance_head,
    configs_by_url,
    init_keys,
    load_signing_key,
)
from yushan import metrics
from yushan.config import Config, ConfigError, get_config
from yushan.models import AuditCheckpoint, AuditEntry, AuditHead

log = logging.getLogger(__name__)

HEAD_ROW_ID = 1
# A signed checkpoint is stored in the database every this many entries.
CHECKPOINT_EVERY = 1000

# Closed world: an action is "<category>.<verb>" with a known category (see
# docs/interfaces.md for the verbs in use). A typo fails loudly in tests instead of
# producing entries nobody filters for.
CATEGORIES = frozenset(
    {"auth", "authorization", "backup", "budget", "dataset", "job", "policy", "admin", "audit",
     "demo", "system"}
)
_ACTION_RE = re.compile(r"^([a-z]+)\.[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")

# Session.info keys (private to this module).
_TX = "_audit_tx"          # (transaction, (seq, hash)) of the head locked in it
_PENDING = "_audit_dirty"  # entries were added in the current transaction
_COMMITTED = "_audit_commit_head"  # (seq, hash) to anchor once the commit is done
CONFIG_INFO_KEY = "yushan_config"  # set by whoever builds sessions for a Config


@dataclass(frozen=True)
class Actor:
    """Who acted, in which role and tenant, from where (``ip=... ua=...`` or ``cli``)."""

    username: str
    role: str
    tenant: str
    origin: str

    @classmethod
    def system(cls, origin: str) -> Actor:
        """The platform itself: ``Actor.system("cli")``, ``Actor.system("worker")``."""
        return cls(username="system", role="system", tenant="platform", origin=origin)

    @classmethod
    def for_user(cls, user: Any, origin: str) -> Actor:
        """A logged-in ``yushan.models.User`` (its tenant is loaded if needed)."""
        return cls(
            username=user.username, role=str(user.role), tenant=user.tenant.slug, origin=origin
        )

    @staticmethod
    def web_origin(ip: str | None, user_agent: str | None) -> str:
        return f"ip={ip or '-'} ua={(user_agent or '-')[:200]}"


def now_ts() -> str:
    """ISO-8601 UTC with microseconds: sorts as text and hashes the same everywhere."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (Decimal, Path)):
        return str(value)
    raise TypeError(f"audit details cannot hold a {type(value).__name__}")


def _to_text(value: Mapping[str, Any] | None) -> str:
    # Stored exactly as hashed; readers get json.loads of this text.
    return canonical_json(dict(value or {}), default=_jsonable)


def check_action(action: str) -> str:
    match = _ACTION_RE.match(action or "")
    if not match or match.group(1) not in CATEGORIES or len(action) > 64:
        raise ValueError(f"unknown audit action {action!r}")
    return action


def _current_tx(session: Session):
    return session.get_nested_transaction() or session.get_transaction()


# Statements built once: constructing them per append costs more than running them.
_ENTRIES = AuditEntry.__table__
_HEAD = AuditHead.__table__
_SELECT_HEAD = select(_HEAD.c.seq, _HEAD.c.head_hash).where(_HEAD.c.id == HEAD_ROW_ID)
_SELECT_HEAD_LOCKED = _SELECT_HEAD.with_for_update()
_INSERT_ENTRY = _ENTRIES.insert()
_UPDATE_HEAD = (
    _HEAD.update()
    .where(_HEAD.c.id == HEAD_ROW_ID)
    .values(seq=bindparam("new_seq"), head_hash=bindparam("new_hash"))
)


def _read_head(session: Session, lock: bool) -> tuple[int, str] | None:
    row = session.execute(_SELECT_HEAD_LOCKED if lock else _SELECT_HEAD).first()
    return None if row is None else (row[0], row[1])


def _locked_head(session: Session) -> tuple[int, str]:
    """(seq, hash) of the chain head, locked for this transaction (row created on first use).

    Cached per transaction (savepoints included): a rolled-back savepoint makes the cache
    stale, and then the innermost transaction no longer matches, so the row is read again.
    """
    tx = _current_tx(session)
    cached = session.info.get(_TX)
    if cached is not None and cached[0] is tx:
        return cached[1]
    head = _read_head(session, lock=True)
    if head is None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        session.execute(
            dialect_insert(AuditHead)
            .values(id=HEAD_ROW_ID, seq=0, head_hash=GENESIS)
            .on_conflict_do_nothing()
        )
        head = _read_head(session, lock=True)
    return head


def record(
    session: Session,
    action: str,
    *,
    actor: Actor,
    objects: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Append an entry to the chain inside the caller's transaction; return its id.

    ``objects`` names what was acted on (``{"job": 12, "merchant": "hanfu_house"}``);
    ``details`` says how (rules, columns read, counts, hashes, error text) and never holds
    data values from datasets. The entry is written at once (so it is visible to the rest
    of the transaction) and commits or rolls back with it.
    """
    check_action(action)
    seq, prev_hash = _locked_head(session)
    fields = {
        "seq": seq + 1,
        "ts": now_ts(),
        "actor": actor.username,
        "role": actor.role,
        "tenant": actor.tenant,
        "origin": actor.origin,
        "action": action,
        "objects": _to_text(objects),
        "details": _to_text(details),
    }
    digest = entry_hash(prev_hash, fields)
    session.execute(
        _INSERT_ENTRY, {"id": fields["seq"], "prev_hash": prev_hash, "entry_hash": digest,
                        **fields}
    )
    session.execute(_UPDATE_HEAD, {"new_seq": fields["seq"], "new_hash": digest})
    if fields["seq"] % CHECKPOINT_EVERY == 0:
        _add_checkpoint(session, fields["seq"], digest)
    session.info[_TX] = (_current_tx(session), (fields["seq"], digest))
    session.info[_PENDING] = True
    metrics.on_commit(session, metrics.audit_appended, action.partition(".")[0])
    return fields["seq"]


def _add_checkpoint(session: Session, seq: int, digest: str) -> None:
    config = config_for(session)
    if config is None:
        log.warning("audit checkpoint %d skipped: no configuration for this database", seq)
        return
    if not config.audit_signing_key_path.exists():
        init_keys(config)
    signature = sign_point_tagged(load_signing_key(config), CHECKPOINT_KIND, seq, digest)
    session.execute(
        AuditCheckpoint.__table__.insert(),
        {"seq": seq, "head_hash": digest, "signature": signature,
         "created_at": datetime.now(UTC)},
    )


# --- which installation a session belongs to ---------------------------------------------

_urls: dict[Any, str] = {}  # engine -> its URL as text (rendering it costs per commit)


def config_for(session: Session) -> Config | None:
    """The Config whose database this session writes to, or None when unknown."""
    info_config = session.info.get(CONFIG_INFO_KEY)
    if isinstance(info_config, Config):
        return info_config
    bind = session.get_bind()
    url = _urls.get(bind)
    if url is None:
        url = _urls[bind] = bind.url.render_as_string(hide_password=False)
    if url in configs_by_url:
        return configs_by_url[url]
    try:
        process_config = get_config()
    except ConfigError:
        process_config = None
    if process_config is not None and process_config.database_url == url:
        return process_config
    return _default_sqlite_home(url)


def _default_sqlite_home(url: str) -> Config | None:
    """A SQLite database in the default place (``<home>/yushan.db`` next to ``keys/``)."""
    if not url.startswith("sqlite:///"):
        return None
    db_path = Path(url[len("sqlite:///"):])
    home = db_path.parent
    if db_path.name != "yushan.db" or not (home / "keys").is_dir():
        return None
    return Config(home=home, database_url=url)


# --- anchoring the head after commit -------------------------------------------------------


def _before_commit(session: Session) -> None:
    if not session.info.get(_PENDING):
        return
    cached = session.info.get(_TX)
    if cached is not None and cached[0] is session.get_transaction():
        session.info[_COMMITTED] = cached[1]
    else:  # entries were written in savepoints: ask the database what survived
        session.info[_COMMITTED] = _read_head(session, lock=False)


def _after_commit(session: Session) -> None:
    committed = session.info.pop(_COMMITTED, None)
    _forget(session)
    if committed is None or committed[0] == 0:
        return
    config = config_for(session)
    if config is None:
        log.warning("audit head not anchored: no configuration for this database")
        return
    try:
        advance_head(config, *committed)
    except Exception:  # noqa: BLE001 - the commit is done: raising would misreport it
        # The entries are committed; the next append anchors a newer head. Verification
        # fails if they stay unanchored (see audit.verifier.ANCHOR_GRACE).
        log.exception("audit head file not written")


def _forget(session: Session) -> None:
    session.info.pop(_TX, None)
    session.info.pop(_PENDING, None)
    session.info.pop(_COMMITTED, None)


# Class-level listeners: one cheap check per transaction, whoever built the session.
event.listen(Session, "before_commit", _before_commit)
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _forget)
