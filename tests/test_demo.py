"""The demo world matches ../shared/spec/demo-data.md: names, schemas, classes, sizes,
determinism, the ~60% phone_hash match, skewed cities and the demo accounts."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from yushan.access import act_for
from yushan.catalog import readable_datasets
from yushan.demo import Sizes, build_platform
from yushan.models import Authorization, Dataset, User

pytestmark = pytest.mark.spark

SPEC_CLASSES = {
    "platform.consumers": {
        "user_id": "identifier", "nick": "private", "phone": "private",
        "phone_hash": "identifier", "gender": "quasi", "birth_year": "quasi", "city": "quasi",
        "province": "quasi", "vip_level": "quasi", "registered_at": "quasi",
    },
    "platform.orders": {
        "order_id": "private", "user_id": "identifier", "merchant_id": "public",
        "item_id": "public", "category": "public", "amount": "quasi", "channel": "quasi",
        "ship_address": "private", "ordered_at": "quasi",
    },
    "platform.behaviors": {
        "user_id": "identifier", "item_id": "public", "merchant_id": "public",
        "action": "quasi", "ts": "quasi",
    },
    "platform.items": {c: "public" for c in ("item_id", "merchant_id", "category", "title", "price")},
}


def test_platform_datasets_have_the_spec_columns_and_classes(db_session):
    for full, classes in SPEC_CLASSES.items():
        ds = db_session.scalar(select(Dataset).where(Dataset.full_name == full))
        assert ds is not None, full
        assert {c.name: c.column_class for c in ds.columns} == classes
        if full == "platform.items":
            assert not ds.is_consumer_data and ds.k is None
        else:
            assert ds.is_consumer_data and ds.entity_column == "user_id" and ds.k == 50


def test_parquet_schemas_and_sizes(demo_config, spark):
    sizes = Sizes.for_scale(0.01)
    expected_types = {
        "consumers": {"user_id": "bigint", "birth_year": "int", "registered_at": "date"},
        "orders": {"order_id": "bigint", "amount": "decimal(12,2)", "ordered_at": "timestamp"},
        "behaviors": {"user_id": "bigint", "ts": "timestamp"},
        "items": {"item_id": "bigint", "price": "decimal(12,2)"},
    }
    for name, types in expected_types.items():
        df = spark.read.parquet(str(demo_config.platform_warehouse_dir / name))
        assert df.count() == getattr(sizes, name)
        dtypes = dict(df.dtypes)
        for col, typ in types.items():
            assert dtypes[col] == typ, (name, col)
        assert list(dtypes) == list(SPEC_CLASSES[f"platform.{name}"])


def test_value_ranges_follow_the_spec(demo_config, spark):
    from pyspark.sql import functions as F

    wh = demo_config.platform_warehouse_dir
    c = spark.read.parquet(str(wh / "consumers"))
    row = c.agg(
        F.min("user_id"), F.min("birth_year"), F.max("birth_year"), F.min("vip_level"),
        F.max("vip_level"), F.countDistinct("gender"), F.countDistinct("city"),
        F.sum(F.when(F.col("phone").rlike("^1[3-9][0-9]{9}$"), 0).otherwise(1)),
        F.sum(F.when(F.col("phone_hash") == F.sha2("phone", 256), 0).otherwise(1)),
    ).first()
    assert row[0] == 2_200_000_000_000
    assert 1950 <= row[1] and row[2] <= 2008 and row[3] == 0 and row[4] == 7
    assert row[5] == 2 and 20 <= row[6] <= 30
    assert row[7] == 0, "every phone is 11 digits starting 13-19"
    assert row[8] == 0, "phone_hash is the lowercase hex SHA-256 of phone"
    top3 = [r.city for r in c.groupBy("city").count().orderBy(F.desc("count")).limit(3).collect()]
    assert top3 == ["Hangzhou", "Shanghai", "Beijing"]
    o = spark.read.parquet(str(wh / "orders"))
    stats = o.agg(
        F.min("order_id"), F.avg(F.when(F.col("channel") == "mobile", 1).otherwise(0)),
        F.min("ordered_at"), F.max("ordered_at"),
        F.sum(F.when(F.col("merchant_id").isin("hanfu_house", "tea_garden"), 1).otherwise(0)),
        F.countDistinct("merchant_id"),
    ).first()
    assert stats[0] == 3_000_000_000_000_000
    assert 0.63 < stats[1] < 0.73, "about 68% of orders are mobile"
    assert str(stats[2]) >= "2025-01-01" and str(stats[3]) <= "2026-11-01"
    assert stats[4] > 0 and stats[5] >= 15
    b = spark.read.parquet(str(wh / "behaviors"))
    assert {r.action for r in b.select("action").distinct().collect()} == {
        "view", "fav", "cart", "follow_store"}


def test_about_sixty_percent_of_members_match_a_consumer(demo_config, spark, tmp_path):
    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset
    from yushan.db import session_scope

    with session_scope(demo_config) as s:
        infos = readable_datasets(s, demo_config, "hanfu_house")
    members_info = infos["hanfu_house.members"]
    plain = tmp_path / "members"  # plaintext never under YUSHAN_HOME
    decrypt_dataset(KeyStore(demo_config.master_key_path), members_info, plain)
    members = spark.read.parquet(str(plain))
    consumers = spark.read.parquet(str(demo_config.platform_warehouse_dir / "consumers"))
    total = members.count()
    matched = members.join(consumers, "phone_hash", "left_semi").count()
    assert total == Sizes.for_scale(0.01).hanfu_members
    assert 0.5 <= matched / total <= 0.7
    assert members.select("member_id").distinct().count() == total
    assert {r.tier for r in members.select("tier").distinct().collect()} == {"gold", "silver", "bronze"}


def test_merchant_datasets_are_encrypted_and_private(demo_config, db_session):
    for full in ("hanfu_house.members", "hanfu_house.store_sales", "tea_garden.members"):
        ds = db_session.scalar(select(Dataset).where(Dataset.full_name == full))
        assert ds.encrypted and ds.wrapped_key and not ds.shared
        files = list((demo_config.home / ds.storage_path).iterdir())
        assert files and all(f.read_bytes()[:4] == b"YSE1" for f in files)
    hanfu = readable_datasets(db_session, demo_config, "hanfu_house")
    tea = readable_datasets(db_session, demo_config, "tea_garden")
    assert "hanfu_house.members" in hanfu and "tea_garden.members" not in hanfu
    assert "tea_garden.members" in tea and "hanfu_house.store_sales" not in tea
    assert {"platform.consumers", "platform.orders", "platform.behaviors", "platform.items"} <= set(hanfu)


def test_demo_accounts_and_authorisations(db_session):
    # Other tests of the run may add their own (non-demo) people to this shared world.
    users = {u.username: u for u in db_session.scalars(select(User)) if u.is_demo}
    roles = {name: users[name].role for name in users}
    assert roles == {
        "admin": "admin", "auditor": "auditor", "hanfu_owner": "merchant",
        "tea_owner": "merchant", "insight_isv": "provider", "other_isv": "provider",
    }
    assert act_for(db_session, users["insight_isv"], "hanfu_house").allowed
    assert not act_for(db_session, users["insight_isv"], "tea_garden")
    assert act_for(db_session, users["other_isv"], "tea_garden").allowed
    assert not act_for(db_session, users["hanfu_owner"], "tea_garden")
    grants = {(a.merchant.slug, a.provider.slug): a.view_results
              for a in db_session.scalars(select(Authorization))}
    assert grants[("hanfu_house", "insight_isv")] is True


def test_same_seed_same_world_other_seed_other_world(spark, make_config):
    def snapshot(seed: int, home_suffix: str) -> list:
        config = make_config(home=make_config().home.parent / home_suffix)
        build_platform(spark, config, Sizes.for_scale(0.002), seed, lambda *_: None)
        df = spark.read.parquet(str(config.platform_warehouse_dir / "consumers"))
        return sorted(tuple(r) for r in df.collect())

    first, again, other = snapshot(7, "a"), snapshot(7, "b"), snapshot(8, "c")
    assert first == again
    assert first != other


def test_demo_merchants_have_the_demo_sized_privacy_budget(demo_config, db_session):
    import audit
    from jobs.budget import budget_json
    from yushan.accounts import get_tenant

    for slug in ("hanfu_house", "tea_garden"):
        doc = budget_json(db_session, demo_config, get_tenant(db_session, slug))
        assert (doc["epsilon"], doc["delta"]) == (1000.0, 1e-4), slug
    (entry,) = audit.query(db_session, action="demo.build")
    assert set(entry["details"]["budgets"]) == {"hanfu_house", "tea_garden"}
