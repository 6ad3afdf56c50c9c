"""Each job template on the demo world (scale 0.01): the policy allows it, and its enforced
result equals a direct computation with plain Spark on the same Parquet files; every
segment has at least k members; segment tokens are stable per merchant and differ between
merchants. Parameters are validated before they reach SQL."""

from __future__ import annotations

from collections import Counter
from datetime import date
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

import policies
from jobs.errors import InvalidRequest, NotFound
from jobs.templates.registry import get_template, prepare_sql, templates
from policies.segment import register_segment_token, segment_token_py
from sandbox.catalog import CATALOG_LOCK, install_catalog
from sandbox.crypto import KeyStore
from sandbox.storage import decrypt_dataset
from yushan.catalog import readable_datasets
from yushan.db import session_scope

pytestmark = [pytest.mark.spark, pytest.mark.slow]
K = 50


@pytest.fixture(scope="module")
def world(demo_config, spark, tmp_path_factory):
    """Decrypted merchant datasets (as a sandbox workspace would hold them) and a runner."""
    keystore = KeyStore(demo_config.master_key_path)
    clear = tmp_path_factory.mktemp("clear")
    datasets, locations = {}, {}
    for merchant in ("hanfu_house", "tea_garden"):
        with session_scope(demo_config) as session:
            datasets[merchant] = readable_datasets(session, demo_config, merchant)
        locations[merchant] = {
            name: decrypt_dataset(keystore, info, clear / str(info.id))
            for name, info in datasets[merchant].items() if info.encrypted
        }

    class World:
        config = demo_config

        def install(self, merchant: str) -> None:
            install_catalog(spark, datasets[merchant], locations[merchant])
            register_segment_token(spark, keystore.segment_token_key(merchant), merchant)

        def run(self, merchant: str, kind: str, sql: str) -> list[dict]:
            """The enforced, released rows of ``sql`` (after the policy allowed it)."""
            with CATALOG_LOCK:
                self.install(merchant)
                decision = policies.check(spark, sql, kind=kind, merchant=merchant,
                                          datasets=datasets[merchant])
                assert decision.allowed, decision.to_dict()["violations"]
                return [r.asDict() for r in decision.execute(spark).dataframe.collect()]

        def template(self, name: str, merchant: str = "hanfu_house", **params) -> list[dict]:
            template = get_template(name)
            parsed = template.parse_params(params)
            sql = template.render(parsed, merchant)
            if template.preparation is not None:
                with CATALOG_LOCK:
                    self.install(merchant)
                    sql = prepare_sql(spark, name, template.params_json(parsed), merchant, sql)
            self.last_sql = sql
            return self.run(merchant, template.kind.value, sql)

        def members(self, merchant: str = "hanfu_house"):
            return spark.read.parquet(str(locations[merchant][f"{merchant}.members"]))

        def store_sales(self):
            return spark.read.parquet(str(locations["hanfu_house"]["hanfu_house.store_sales"]))

        def token_key(self, merchant: str) -> bytes:
            return keystore.segment_token_key(merchant)

    return World()


def platform(spark, config, name: str):
    return spark.read.parquet(str(config.platform_warehouse_dir / name))


def test_every_template_is_registered_with_both_languages_and_renders_with_defaults():
    assert list(templates()) == ["rfm", "membership_health", "store_overlap", "omnichannel", "lookalike"]
    for template in templates().values():
        assert template.title["en"] and template.title["zh"]
        assert all(p.label["en"] and p.label["zh"] for p in template.params)
        assert template.render(template.parse_params({}), "hanfu_house").lstrip().upper().startswith(("SELECT", "WITH"))


@pytest.mark.parametrize("params", [
    {"as_of": "2026-11-01'; DROP TABLE x; --"},
    {"lookback_days": "1 OR 1=1"},
    {"lookback_days": "0"},
    {"high_spend": "nan"},
    {"unknown": "1"},
])
def test_parameters_are_parsed_and_bounded_before_they_reach_sql(params):
    with pytest.raises(InvalidRequest) as caught:
        get_template("rfm").parse_params(params)
    assert "DROP" not in str(caught.value) and "OR 1=1" not in str(caught.value)


def test_choices_and_merchant_names_are_closed_lists():
    with pytest.raises(InvalidRequest):
        get_template("lookalike").parse_params({"seed_tier": "gold' OR '1'='1"})
    with pytest.raises(NotFound):
        get_template("membership_health").render({"as_of": date(2026, 11, 1)}, "x`.members --")


def test_rfm_segments_match_a_direct_computation_and_each_has_k_members(world, spark):
    as_of, lookback = date(2026, 11, 1), 730
    released = world.template("rfm", as_of=as_of.isoformat(), lookback_days=lookback,
                              recent_days=90, frequent_orders=3, high_spend=3000)
    # Direct: members -> consumers by phone_hash -> this merchant's orders in the window.
    consumers = platform(spark, world.config, "consumers").select("user_id", "phone_hash")
    orders = (platform(spark, world.config, "orders")
              .filter((F.col("merchant_id") == "hanfu_house")
                      & (F.col("ordered_at") >= F.lit("2024-11-01").cast("timestamp"))
                      & (F.col("ordered_at") < F.lit("2026-11-01").cast("timestamp")))
              .select("user_id", "amount", "ordered_at"))
    per_member = (world.members().join(consumers, "phone_hash", "left").join(orders, "user_id", "left")
                  .groupBy("member_id")
                  .agg(F.count("amount").alias("f"), F.coalesce(F.sum("amount"), F.lit(0)).alias("m"),
                       F.datediff(F.lit("2026-11-01").cast("date"), F.to_date(F.max("ordered_at"))).alias("r"))
                  .collect())

    def label(row) -> str:
        if row.f == 0:
            return "inactive"
        recent, frequent, high = row.r <= 90, row.f >= 3, row.m >= 3000
        if recent and frequent and high:
            return "champions"
        if frequent or high:
            return "loyal"
        return "promising" if recent else "at_risk"

    direct = Counter()
    expected = set()
    labelled = [(label(r), r.member_id) for r in per_member]
    sizes = Counter(lab for lab, _ in labelled)
    for lab, member in labelled:
        if sizes[lab] >= K:
            expected.add((lab, member))
            direct[lab] += 1
    got = {(r["segment"], r["member"]) for r in released}
    assert got == expected
    assert got, "at least one segment reaches k on the demo world"
    assert all(n >= K for n in Counter(s for s, _ in got).values())
    assert any(n < K for n in sizes.values()), "the small tiers were suppressed, not released"


def test_membership_health_matches_a_direct_computation(world):
    rows = world.template("membership_health", as_of="2026-11-01")
    members = world.members().toPandas()
    for horizon in (30, 60, 90):
        window = (members.points_expire_at >= date(2026, 11, 1)) & (
            members.points_expire_at < date.fromordinal(date(2026, 11, 1).toordinal() + horizon))
        members[f"expiring_{horizon}d"] = members.points.where(window, 0)
    direct = members.groupby(["tier", "home_store"]).agg(
        members=("member_id", "count"), points_balance=("points", "sum"),
        expiring_30d=("expiring_30d", "sum"), expiring_60d=("expiring_60d", "sum"),
        expiring_90d=("expiring_90d", "sum")).reset_index()
    expected = {(r.tier, r.home_store): (r.members, r.points_balance, r.expiring_30d, r.expiring_60d,
                                         r.expiring_90d) for r in direct.itertuples()}
    got = {(r["tier"], r["store"]): (r["members"], r["points_balance"], r["expiring_30d"],
                                     r["expiring_60d"], r["expiring_90d"]) for r in rows}
    assert got == expected
    assert all(r["expiring_30d"] <= r["expiring_60d"] <= r["expiring_90d"] <= r["points_balance"] for r in rows)


def test_store_overlap_matches_a_direct_computation(world):
    rows = world.template("store_overlap", since="2025-01-01", until="2026-10-31")
    sales = world.store_sales().toPandas()
    visits = sales[["member_id", "store_id"]].drop_duplicates()
    pairs = visits.merge(visits, on="member_id").groupby(["store_id_x", "store_id_y"]).size()
    store_members = visits.groupby("store_id").size()
    expected = {(a, b): (int(n), int(store_members[a])) for (a, b), n in pairs.items()}
    got = {(r["store_a"], r["store_b"]): (r["shared_members"], r["members_a"]) for r in rows}
    assert got == expected
    diagonal = [r for r in rows if r["store_a"] == r["store_b"]]
    assert diagonal and all(float(r["share_of_a"]) == 1.0 for r in diagonal)


def test_omnichannel_matches_a_direct_computation_with_the_k_threshold(world, spark):
    rows = world.template("omnichannel", since="2025-01-01", until="2026-10-31")
    consumers = platform(spark, world.config, "consumers").select("user_id", "phone_hash")
    matched = world.members().join(consumers, "phone_hash").select("member_id", "tier", "user_id")
    online = (platform(spark, world.config, "orders").filter(F.col("merchant_id") == "hanfu_house")
              .groupBy("user_id").agg(F.sum("amount").alias("on_spend")))
    offline = world.store_sales().groupBy("member_id").agg(F.sum("amount").alias("off_spend"))
    joined = matched.join(online, "user_id", "left").join(offline, "member_id", "left")
    direct = joined.groupBy("tier").agg(
        F.countDistinct("user_id").alias("members"),
        F.count("on_spend").alias("online_buyers"), F.sum("on_spend").alias("online_spend"),
        F.count("off_spend").alias("offline_buyers"), F.sum("off_spend").alias("offline_spend"),
        # P3 per value: entities whose input is present (and, for sums, not zero).
        F.countDistinct(F.when(F.col("on_spend") != 0, F.col("user_id"))).alias("k_on"),
        F.countDistinct(F.when(F.col("off_spend") != 0, F.col("user_id"))).alias("k_off"),
    ).collect()
    # dp mode (the demo's default): every released tier exists, its values carry noise of
    # known scale (members: Laplace b = 9 at ε = 1 over 9 measurements; 100 is beyond
    # 99.99%), and tiers with too few members are not released (partition selection).
    truth = {r.tier: r for r in direct}
    got = {r["tier"]: r for r in rows}
    assert set(got) <= set(truth)
    for tier, r in got.items():
        assert abs(r["members"] - truth[tier].members) <= 100
    assert all(truth[t].members >= 20 for t in got), "tiny tiers are never released"
    assert all(isinstance(v[2], Decimal) and v[2] > 0 for v in got.values())


def test_lookalike_scores_with_the_learned_model_and_excludes_members(world, spark):
    size = 200
    rows = world.template("lookalike", seed_tier="bronze", audience_size=size)
    assert "segment_token(c.user_id)" in world.last_sql and ">= 1.0\n" not in world.last_sql
    assert {r["segment"] for r in rows} == {"lookalike"}
    tokens = {r["member"] for r in rows}
    assert size <= len(tokens) <= size + 20  # ties at the threshold may add a few
    # Direct: the same linear score (the weights the sandbox learned, read from its query)
    # over the Parquet files, top `size` non-members, as this merchant's tokens.
    score_sql = world.last_sql.split("WHERE (", 1)[1].rsplit(") >= ", 1)
    threshold = float(score_sql[1])
    consumers = platform(spark, world.config, "consumers")
    member_hashes = world.members().select("phone_hash").distinct()
    outsiders = consumers.join(member_hashes, "phone_hash", "left_anti").alias("c")
    scored = outsiders.select("user_id", F.expr(score_sql[0]).alias("score"))
    chosen = [r.user_id for r in scored.filter(F.col("score") >= threshold).collect()]
    key = world.token_key("hanfu_house")
    assert tokens == {segment_token_py(key, uid) for uid in chosen}
    # Members are never in their own lookalike audience.
    members = [r.user_id for r in consumers.join(member_hashes, "phone_hash").select("user_id").collect()]
    assert not tokens & {segment_token_py(key, uid) for uid in members}
    # The model learned something: the audience scores above the rest of the platform.
    mean = scored.agg(F.avg("score")).first()[0]
    assert threshold > mean


def test_segment_tokens_are_stable_for_a_merchant_and_differ_between_merchants(world):
    sql = ("SELECT 'women' AS segment, segment_token(user_id) AS member "
           "FROM platform.consumers WHERE gender = 'F'")
    hanfu = {r["member"] for r in world.run("hanfu_house", "segment", sql)}
    again = {r["member"] for r in world.run("hanfu_house", "segment", sql)}
    tea = {r["member"] for r in world.run("tea_garden", "segment", sql)}
    assert hanfu == again
    assert len(hanfu) == len(tea) >= K
    assert not hanfu & tea
