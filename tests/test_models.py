"""The metadata database: migrations and models, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from yushan.access import act_for
from yushan.accounts import (
    ensure_platform,
    ensure_tenant,
    ensure_user,
    grant,
    verify_password,
)
from yushan.db import get_engine, session_scope
from yushan.models import Base, Dataset, DatasetColumn, Job, Role, TenantKind


def test_migrations_create_every_model_table(any_db_config):
    tables = set(inspect(get_engine(any_db_config)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_models_round_trip(any_db_config):
    with session_scope(any_db_config) as s:
        platform = ensure_platform(s)
        shop = ensure_tenant(s, "shop", "Shop", TenantKind.MERCHANT)
        isv = ensure_tenant(s, "isv", "ISV", TenantKind.PROVIDER)
        owner = ensure_user(s, "owner", "pw-1", Role.MERCHANT, shop)
        provider = ensure_user(s, "prov", "pw-2", Role.PROVIDER, isv)
        grant(s, shop, isv, view_results=True, by=owner)
        ds = Dataset(tenant_id=platform.id, name="consumers", full_name="platform.consumers",
                     is_consumer_data=True, entity_column="user_id", k=50,
                     storage_path="warehouse/platform/consumers")
        ds.columns = [DatasetColumn(position=0, name="user_id", data_type="bigint",
                                    column_class="identifier")]
        s.add(ds)
        s.flush()
        s.add(Job(merchant_id=shop.id, submitted_by=provider.id, kind="aggregate",
                  sql="SELECT 1", violations=[{"rule": "P1"}]))
    with session_scope(any_db_config) as s:
        job = s.scalar(select(Job))
        assert job.state == "queued" and job.violations == [{"rule": "P1"}]
        ds = s.scalar(select(Dataset).where(Dataset.full_name == "platform.consumers"))
        assert [c.column_class for c in ds.columns] == ["identifier"]
        prov = job.submitter
        assert act_for(s, prov, "shop").target.slug == "shop"
        assert act_for(s, prov, "other").hidden  # like a merchant that does not exist


def test_active_dataset_names_are_unique_but_withdrawn_ones_free_the_name(any_db_config):
    from yushan.models import utcnow

    with session_scope(any_db_config) as s:
        shop = ensure_tenant(s, "shop", "Shop", TenantKind.MERCHANT)
        first = Dataset(tenant_id=shop.id, name="m", full_name="shop.m", storage_path="x")
        s.add(first)
        s.flush()
        first.withdrawn_at = utcnow()
        s.add(Dataset(tenant_id=shop.id, name="m", full_name="shop.m", storage_path="y"))
    with pytest.raises(IntegrityError):
        with session_scope(any_db_config) as s:
            shop = ensure_tenant(s, "shop", "Shop", TenantKind.MERCHANT)
            s.add(Dataset(tenant_id=shop.id, name="m", full_name="shop.m", storage_path="z"))


def test_passwords_are_hashed_and_demo_accounts_need_demo_mode(any_db_config):
    with session_scope(any_db_config) as s:
        shop = ensure_tenant(s, "shop", "Shop", TenantKind.MERCHANT)
        user = ensure_user(s, "demo_user", "secret-pw", Role.MERCHANT, shop, is_demo=True)
        assert "secret-pw" not in user.password_hash
        assert user.password_hash.startswith("$argon2id$")
        assert verify_password(user, "secret-pw", demo_mode=True)
        assert not verify_password(user, "wrong", demo_mode=True)
        assert not verify_password(user, "secret-pw", demo_mode=False)
        assert not verify_password(None, "secret-pw", demo_mode=True)


def test_sqlite_transactions_of_one_process_take_turns(make_config):
    """Every SQLite transaction holds the write lock from its start; a second one in the
    same process waits for the first to end (on a lock, not SQLite's polling), and a
    transaction that ends any way, commit, rollback or close, hands the turn on."""
    import threading

    from sqlalchemy import text

    from yushan.cli import initialise
    from yushan.db import session_factory

    config = make_config()
    initialise(config)
    first = session_factory(config)()
    first.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the turn is this transaction's
    done = threading.Event()

    def second() -> None:
        with session_scope(config) as session:
            session.execute(text("SELECT count(*) FROM users"))
        done.set()

    waiting = threading.Thread(target=second)
    waiting.start()
    assert not done.wait(0.5)  # the first transaction still holds the turn
    first.commit()
    assert done.wait(30)
    waiting.join()
    for end in ("rollback", "close"):
        session = session_factory(config)()
        session.execute(text("SELECT 1"))
        getattr(session, end)()
        with session_scope(config) as other:  # the turn came back: no wait
            other.execute(text("SELECT 1"))
    first.close()
