"""Shared set-up for the onboarding tests: a fresh home with two merchants and an admin."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

from audit import Actor
from yushan.accounts import ensure_tenant, ensure_user
from yushan.config import Config
from yushan.models import Role, TenantKind, User

PASSWORD = "a-long-test-password"
SCHEMA = {"member_key": "member_id", "columns": [
    {"name": "member_id", "type": "string"}, {"name": "phone_hash", "type": "string"},
    {"name": "coupon", "type": "string"}, {"name": "value", "type": "int"}]}


def populate(config: Config) -> None:
    from yushan.cli import initialise
    from yushan.db import session_scope

    initialise(config)
    with session_scope(config) as session:
        shop = ensure_tenant(session, "shop_a", "Shop A", TenantKind.MERCHANT)
        other = ensure_tenant(session, "shop_b", "Shop B", TenantKind.MERCHANT)
        platform = ensure_tenant(session, "platform", "Platform", TenantKind.PLATFORM)
        isv = ensure_tenant(session, "isv", "ISV", TenantKind.PROVIDER)
        ensure_user(session, "owner_a", PASSWORD, Role.MERCHANT, shop)
        ensure_user(session, "owner_b", PASSWORD, Role.MERCHANT, other)
        ensure_user(session, "admin", PASSWORD, Role.ADMIN, platform)
        ensure_user(session, "isv_user", PASSWORD, Role.PROVIDER, isv)


def user(session, username: str) -> User:
    from sqlalchemy import select

    return session.scalar(select(User).where(User.username == username))


def actor(u: User) -> Actor:
    return Actor.for_user(u, "test")


def hexdigest() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def good_csv(marker: str, rows: int = 200) -> str:
    return "member_id,phone_hash,coupon,value\n" + "".join(
        f"m{i},{hexdigest()},{marker},{i % 50}\n" for i in range(rows))


def upload(session, config, spark, username: str, name: str, content: bytes, *,
           schema=None, filename: str = "data.csv", encoding: str | None = None):
    from onboarding.ingest import upload_dataset

    u = user(session, username)
    return upload_dataset(session, config, u, name=name, schema=json.dumps(schema or SCHEMA),
                          source=io.BytesIO(content), filename=filename, actor=actor(u),
                          encoding=encoding, spark=spark)


def files_holding(home: Path, marker: bytes) -> list[Path]:
    """Every file under ``home`` whose bytes contain ``marker`` (like grep -r)."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            try:
                if marker in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def audit_actions(session, **filters) -> list[str]:
    import audit

    return [e["action"] for e in audit.query(session, limit=1000, **filters)]
