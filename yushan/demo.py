"""The demo world of ``../shared/spec/demo-data.md``, built deterministically with Spark.

Randomness is a hash of (seed, purpose, row number): the same seed gives the same world
whatever the partitioning. Platform datasets go to ``warehouse/platform/<name>/`` as
Parquet; merchant datasets are encrypted like uploads; tenants, users, authorisations and
dataset metadata are registered in the database.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from yushan.accounts import ensure_platform, ensure_tenant, ensure_user, grant
from yushan.config import Config
from yushan.db import session_scope
from yushan.models import (
    BudgetPeriod,
    ColumnClass,
    Dataset,
    DatasetColumn,
    Role,
    Tenant,
    TenantKind,
    budget_period,
)

# The demo accounts' published password (spec/demo-data.md); they log in only in demo mode.
DEMO_PASSWORD = "demo-password"  # noqa: S105 - documented, demo mode only
Progress = Callable[[str, float], None]

# Cities, largest first; the draw below is skewed towards the head of the list.
CITIES: list[tuple[str, str]] = [
    ("Hangzhou", "Zhejiang"), ("Shanghai", "Shanghai"), ("Beijing", "Beijing"),
    ("Shenzhen", "Guangdong"), ("Guangzhou", "Guangdong"), ("Chengdu", "Sichuan"),
    ("Nanjing", "Jiangsu"), ("Suzhou", "Jiangsu"), ("Wuhan", "Hubei"), ("Xi'an", "Shaanxi"),
    ("Chongqing", "Chongqing"), ("Tianjin", "Tianjin"), ("Ningbo", "Zhejiang"),
    ("Changsha", "Hunan"), ("Qingdao", "Shandong"), ("Zhengzhou", "Henan"),
    ("Jinan", "Shandong"), ("Hefei", "Anhui"), ("Fuzhou", "Fujian"), ("Xiamen", "Fujian"),
    ("Kunming", "Yunnan"), ("Shenyang", "Liaoning"), ("Dalian", "Liaoning"),
    ("Harbin", "Heilongjiang"), ("Nanning", "Guangxi"), ("Guiyang", "Guizhou"),
    ("Nanchang", "Jiangxi"), ("Shijiazhuang", "Hebei"), ("Taiyuan", "Shanxi"),
    ("Urumqi", "Xinjiang"),
]
CITY_ZH = {
    "Hangzhou": "杭州", "Shanghai": "上海", "Beijing": "北京", "Shenzhen": "深圳",
    "Guangzhou": "广州", "Chengdu": "成都", "Nanjing": "南京", "Suzhou": "苏州",
    "Wuhan": "武汉", "Xi'an": "西安", "Chongqing": "重庆", "Tianjin": "天津",
    "Ningbo": "宁波", "Changsha": "长沙", "Qingdao": "青岛", "Zhengzhou": "郑州",
    "Jinan": "济南", "Hefei": "合肥", "Fuzhou": "福州", "Xiamen": "厦门", "Kunming": "昆明",
    "Shenyang": "沈阳", "Dalian": "大连", "Harbin": "哈尔滨", "Nanning": "南宁",
    "Guiyang": "贵阳", "Nanchang": "南昌", "Shijiazhuang": "石家庄", "Taiyuan": "太原",
    "Urumqi": "乌鲁木齐",
}
NICK_CHARS = list("子涵梓萱欣怡浩然宇轩诗雨俊杰思远雅婷明轩若曦嘉怡一诺晨阳佳琪")
ROADS = ["文一西路", "延安路", "南京路", "长安街", "人民路", "解放路", "中山路", "建国路"]
MERCHANTS = [
    "hanfu_house", "tea_garden", "silk_road", "jade_studio", "porcelain_co", "bamboo_home",
    "panda_toys", "lotus_beauty", "dragon_sports", "phoenix_shoes", "golden_rice",
    "river_fish", "mountain_honey", "cloud_tech", "sunrise_baby", "moon_bakery",
    "spring_outdoor", "autumn_books", "winter_wear", "summer_fruit", "east_pets",
    "west_coffee",
]
CATEGORIES = {
    "hanfu_house": ["hanfu", "hair_accessories", "embroidered_shoes"],
    "tea_garden": ["green_tea", "oolong", "tea_sets"],
}
OTHER_CATEGORIES = ["apparel", "home", "toys", "beauty", "sports", "food", "electronics", "books"]
STORES = ["HZ-WestLake", "HZ-Binjiang", "SH-Xintiandi", "BJ-Sanlitun", "SZ-Nanshan"]

PLATFORM_DATASETS: dict[str, dict] = {
    "consumers": {
        "description": "Consumer profiles",
        "entity": "user_id",
        "k": 50,
        "one_row_per_unit": True,
        "columns": [
            ("user_id", "bigint", "identifier"), ("nick", "string", "private"),
            ("phone", "string", "private"), ("phone_hash", "string", "identifier"),
            ("gender", "string", "quasi"), ("birth_year", "int", "quasi"),
            ("city", "string", "quasi"), ("province", "string", "quasi"),
            ("vip_level", "int", "quasi"), ("registered_at", "date", "quasi"),
        ],
    },
    "orders": {
        "description": "Orders placed on the platform",
        "entity": "user_id",
        "k": 50,
        "columns": [
            ("order_id", "bigint", "private"), ("user_id", "bigint", "identifier"),
            ("merchant_id", "string", "public"), ("item_id", "bigint", "public"),
            ("category", "string", "public"), ("amount", "decimal(12,2)", "quasi"),
            ("channel", "string", "quasi"), ("ship_address", "string", "private"),
            ("ordered_at", "timestamp", "quasi"),
        ],
    },
    "behaviors": {
        "description": "Browsing behaviour: views, favourites, carts, store follows",
        "entity": "user_id",
        "k": 50,
        "columns": [
            ("user_id", "bigint", "identifier"), ("item_id", "bigint", "public"),
            ("merchant_id", "string", "public"), ("action", "string", "quasi"),
            ("ts", "timestamp", "quasi"),
        ],
    },
    "items": {
        "description": "Item catalogue (not consumer data)",
        "entity": None,
        "k": None,
        "columns": [
            ("item_id", "bigint", "public"), ("merchant_id", "string", "public"),
            ("category", "string", "public"), ("title", "string", "public"),
            ("price", "decimal(12,2)", "public"),
        ],
    },
}
MEMBER_COLUMNS = [
    ("member_id", "string"), ("phone_hash", "string"), ("tier", "string"),
    ("points", "int"), ("points_expire_at", "date"), ("home_store", "string"),
    ("joined_at", "date"),
]
STORE_SALES_COLUMNS = [
    ("sale_id", "string"), ("member_id", "string"), ("store_id", "string"),
    ("sku", "string"), ("amount", "decimal(12,2)"), ("sold_at", "timestamp"),
]


@dataclass(frozen=True)
class Sizes:
    consumers: int
    orders: int
    behaviors: int
    items: int
    hanfu_members: int
    store_sales: int
    tea_members: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        def n(base: int, floor: int = 10) -> int:
            return max(floor, int(round(base * scale)))

        return cls(
            consumers=n(100_000, 100),
            orders=n(1_000_000),
            behaviors=n(2_000_000),
            items=n(20_000, 50),
            hanfu_members=n(20_000),
            store_sales=n(100_000),
            tea_members=n(8_000),
        )


class _Rand:
    """Deterministic uniform draws in [0, 1) from (seed, purpose, row id)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, purpose: str, col: str = "id"):
        from pyspark.sql import functions as F

        h = F.xxhash64(F.lit(self.seed), F.lit(purpose), F.col(col))
        return F.pmod(h, F.lit(2**31 - 1)).cast("double") / float(2**31 - 1)

    def index(self, purpose: str, n: int, col: str = "id", skew: float = 1.0):
        from pyspark.sql import functions as F

        u = self(purpose, col)
        if skew != 1.0:
            u = F.pow(u, F.lit(skew))
        return F.least(F.floor(u * n), F.lit(n - 1)).cast("long")


def _pick(values: list[str], index_col):
    from pyspark.sql import functions as F

    return F.element_at(F.array(*[F.lit(v) for v in values]), (index_col + 1).cast("int"))


def _phone(rand: _Rand, col: str):
    """An 11-digit phone number derived from a consumer's row number (reproducible)."""
    from pyspark.sql import functions as F

    second = _pick(list("3456789"), rand.index("phone2", 7, col))
    rest = F.lpad(F.floor(rand("phone9", col) * 1_000_000_000).cast("long").cast("string"), 9, "0")
    return F.concat(F.lit("1"), second, rest)


def _coprime_step(n: int) -> int:
    step = 1_000_003
    while math.gcd(step, n) != 1:
        step += 2
    return step


def build_platform(spark, config: Config, sizes: Sizes, seed: int, progress: Progress) -> dict[str, int]:
    """Write the four platform datasets; return their row counts."""
    from pyspark.sql import functions as F

    rand = _Rand(seed)
    out = config.platform_warehouse_dir
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    def write(df, name: str, files: int) -> None:
        df.coalesce(files).write.mode("overwrite").parquet(str(out / name))
        counts[name] = getattr(sizes, name)

    progress("items", 0.05)
    merchant_idx = rand.index("item_merchant", len(MERCHANTS), skew=2.0)
    items = spark.range(sizes.items).select(
        (F.lit(1_000_000) + F.col("id")).alias("item_id"),
        _pick(MERCHANTS, merchant_idx).alias("merchant_id"),
        F.col("id"),
    )
    cat_all = {m: CATEGORIES.get(m, OTHER_CATEGORIES) for m in MERCHANTS}
    category = F.coalesce(
        *[
            F.when(F.col("merchant_id") == m, _pick(cats, rand.index("item_cat", len(cats))))
            for m, cats in cat_all.items()
        ]
    )
    items = items.select(
        "item_id",
        "merchant_id",
        category.alias("category"),
        F.concat(F.col("merchant_id"), F.lit(" item #"), F.col("id").cast("string")).alias("title"),
        (F.floor(rand("price") * 99_900 + 100) / 100).cast("decimal(12,2)").alias("price"),
    )
    write(items, "items", 1)

    progress("consumers", 0.15)
    city_idx = rand.index("city", len(CITIES), skew=2.0)
    days_registered = (F.lit(18 * 365 + 300))
    consumers = spark.range(sizes.consumers).select(
        (F.lit(2_200_000_000_000) + F.col("id")).alias("user_id"),
        F.concat(
            _pick(NICK_CHARS, rand.index("nick1", len(NICK_CHARS))),
            _pick(NICK_CHARS, rand.index("nick2", len(NICK_CHARS))),
            F.lpad(F.floor(rand("nickd") * 1000).cast("int").cast("string"), 3, "0"),
        ).alias("nick"),
        _phone(rand, "id").alias("phone"),
        F.when(rand("gender") < 0.52, "F").otherwise("M").alias("gender"),
        (F.lit(1950) + rand.index("birth", 59)).cast("int").alias("birth_year"),
        _pick([c for c, _ in CITIES], city_idx).alias("city"),
        _pick([p for _, p in CITIES], city_idx).alias("province"),
        rand.index("vip", 8, skew=1.6).cast("int").alias("vip_level"),
        F.date_add(F.lit("2008-01-01").cast("date"),
                   F.floor(rand("reg") * days_registered).cast("int")).alias("registered_at"),
    ).withColumn("phone_hash", F.sha2("phone", 256))
    consumers = consumers.select([c for c, _, _ in PLATFORM_DATASETS["consumers"]["columns"]])
    write(consumers, "consumers", 2)

    progress("orders", 0.30)
    item_lookup = spark.read.parquet(str(out / "items")).select(
        (F.col("item_id") - 1_000_000).alias("item_idx"), "item_id", "merchant_id", "category", "price"
    )
    order_seconds = 669 * 86400  # 2025-01-01 .. 2026-11-01
    orders = (
        spark.range(sizes.orders)
        .select(
            F.col("id"),
            rand.index("order_user", sizes.consumers, skew=1.5).alias("user_idx"),
            rand.index("order_item", sizes.items, skew=1.3).alias("item_idx"),
            (F.lit(1) + rand.index("qty", 3)).alias("qty"),
            rand("channel").alias("u_channel"),
            rand.index("addr_city", len(CITIES), skew=2.0).alias("addr_city"),
            F.floor(rand("ordered") * order_seconds).cast("long").alias("offset"),
        )
        .join(F.broadcast(item_lookup), "item_idx")
        .select(
            (F.lit(3_000_000_000_000_000) + F.col("id")).alias("order_id"),
            (F.lit(2_200_000_000_000) + F.col("user_idx")).alias("user_id"),
            "merchant_id",
            "item_id",
            "category",
            (F.col("price") * F.col("qty")).cast("decimal(12,2)").alias("amount"),
            F.when(F.col("u_channel") < 0.68, "mobile").otherwise("pc").alias("channel"),
            F.concat(
                _pick([CITY_ZH[c] for c, _ in CITIES], F.col("addr_city")),
                F.lit("市"),
                _pick(ROADS, rand.index("road", len(ROADS))),
                (F.floor(rand("house") * 900) + 1).cast("int").cast("string"),
                F.lit("号"),
            ).alias("ship_address"),
            (F.lit("2025-01-01 00:00:00").cast("timestamp")
             + F.make_dt_interval(secs=F.col("offset"))).alias("ordered_at"),
        )
    )
    write(orders, "orders", 4)

    progress("behaviors", 0.55)
    behavior_seconds = 669 * 86400
    action_u = rand("action")
    behaviors = (
        spark.range(sizes.behaviors)
        .select(
            F.col("id"),
            rand.index("beh_user", sizes.consumers, skew=1.4).alias("user_idx"),
            rand.index("beh_item", sizes.items, skew=1.3).alias("item_idx"),
            F.when(action_u < 0.70, "view").when(action_u < 0.80, "fav")
            .when(action_u < 0.95, "cart").otherwise("follow_store").alias("action"),
            F.floor(rand("beh_ts") * behavior_seconds).cast("long").alias("offset"),
        )
        .join(F.broadcast(item_lookup.select("item_idx", "item_id", "merchant_id")), "item_idx")
        .select(
            (F.lit(2_200_000_000_000) + F.col("user_idx")).alias("user_id"),
            "item_id",
            "merchant_id",
            "action",
            (F.lit("2025-01-01 00:00:00").cast("timestamp")
             + F.make_dt_interval(secs=F.col("offset"))).alias("ts"),
        )
    )
    write(behaviors, "behaviors", 4)
    return counts


def _members(spark, rand: _Rand, n: int, prefix: str, consumers: int, offset: int):
    """A merchant's CRM: ~60% of members are platform consumers (same phone)."""
    from pyspark.sql import functions as F

    step = _coprime_step(consumers)
    consumer_idx = F.pmod(F.col("id") * F.lit(step) + F.lit(offset), F.lit(consumers))
    df = spark.range(n).withColumn("cidx", consumer_idx)
    matched = rand(prefix + "match") < 0.6
    tier_u = rand(prefix + "tier")
    return df.select(
        F.concat(F.lit(prefix), F.lpad(F.col("id").cast("string"), 8, "0")).alias("member_id"),
        F.when(matched, F.sha2(_phone(rand, "cidx"), 256))
        .otherwise(F.sha2(F.concat(F.lit("offline:" + prefix), F.col("id").cast("string")), 256))
        .alias("phone_hash"),
        F.when(tier_u < 0.1, "gold").when(tier_u < 0.4, "silver").otherwise("bronze").alias("tier"),
        F.floor(rand(prefix + "points") * 20_000).cast("int").alias("points"),
        F.date_add(F.lit("2026-11-01").cast("date"),
                   F.floor(rand(prefix + "expire") * 420).cast("int")).alias("points_expire_at"),
        _pick(STORES, rand.index(prefix + "store", len(STORES), skew=1.5)).alias("home_store"),
        F.date_add(F.lit("2015-01-01").cast("date"),
                   F.floor(rand(prefix + "joined") * 4300).cast("int")).alias("joined_at"),
    )


def _store_sales(spark, rand: _Rand, n: int, members: int):
    from pyspark.sql import functions as F

    return spark.range(n).select(
        F.concat(F.lit("S"), F.lpad(F.col("id").cast("string"), 9, "0")).alias("sale_id"),
        F.concat(F.lit("HF"), F.lpad(rand.index("sale_member", members, skew=1.5)
                                     .cast("string"), 8, "0")).alias("member_id"),
        _pick(STORES, rand.index("sale_store", len(STORES))).alias("store_id"),
        F.concat(F.lit("SKU-"), F.lpad(rand.index("sku", 500).cast("string"), 4, "0")).alias("sku"),
        (F.floor(rand("sale_amount") * 150_000 + 1_000) / 100).cast("decimal(12,2)").alias("amount"),
        (F.lit("2025-01-01 00:00:00").cast("timestamp")
         + F.make_dt_interval(secs=F.floor(rand("sold_at") * 669 * 86400).cast("long"))).alias("sold_at"),
    )


def _register_platform(session: Session, config: Config, platform: Tenant, counts: dict[str, int]) -> None:
    for name, spec in PLATFORM_DATASETS.items():
        full = f"platform.{name}"
        existing = session.scalar(
            select(Dataset).where(Dataset.full_name == full, Dataset.withdrawn_at.is_(None))
        )
        if existing is not None:
            session.delete(existing)
            session.flush()
        ds = Dataset(
            tenant_id=platform.id,
            name=name,
            full_name=full,
            description=spec["description"],
            is_consumer_data=spec["entity"] is not None,
            entity_column=spec["entity"],
            k=spec["k"],
            release_mode="dp" if spec["entity"] is not None else None,
            max_groups=4 if spec["entity"] is not None else None,
            max_rows=20 if spec["entity"] is not None else None,
            one_row_per_unit=bool(spec.get("one_row_per_unit")),
            shared=True,
            storage_path=str((config.platform_warehouse_dir / name).relative_to(config.home)),
            encrypted=False,
            row_count=counts[name],
        )
        ds.columns = [
            DatasetColumn(position=i, name=c, data_type=t, column_class=cls,
                          lower_bound=DEMO_BOUNDS.get((name, c), (None, None))[0],
                          upper_bound=DEMO_BOUNDS.get((name, c), (None, None))[1])
            for i, (c, t, cls) in enumerate(spec["columns"])
        ]
        session.add(ds)
    session.flush()


# Per-consumer bounds of summable columns (dp mode), as the demo-data contract gives them.
DEMO_BOUNDS = {
    ("orders", "amount"): (0.0, 20000.0),
    ("consumers", "birth_year"): (1950.0, 2008.0),
    ("consumers", "vip_level"): (0.0, 7.0),
}


def _register_merchant_dataset(
    session: Session, config: Config, keystore, tenant: Tenant, name: str, description: str,
    columns: list[tuple[str, str]], member_key: str | None, plaintext: Path, rows: int,
) -> Dataset:
    from sandbox.storage import store_encrypted_parquet

    full = f"{tenant.slug}.{name}"
    existing = session.scalar(
        select(Dataset).where(Dataset.full_name == full, Dataset.withdrawn_at.is_(None))
    )
    if existing is not None:
        session.delete(existing)
        session.flush()
    ds = Dataset(
        tenant_id=tenant.id, name=name, full_name=full, description=description,
        is_consumer_data=False, shared=False, member_key=member_key,
        storage_path="", encrypted=True, row_count=rows,
    )
    ds.columns = [
        DatasetColumn(position=i, name=c, data_type=t, column_class=ColumnClass.PUBLIC.value)
        for i, (c, t) in enumerate(columns)
    ]
    session.add(ds)
    session.flush()
    store_encrypted_parquet(config, keystore, ds, tenant.slug, plaintext)
    return ds


def build_demo(
    config: Config, scale: float = 1.0, seed: int = 7, progress: Progress | None = None, spark=None
) -> dict[str, int]:
    """Build (or rebuild) the demo world in ``config.home``; return dataset row counts."""
    from sandbox.crypto import KeyStore
    from sandbox.spark import get_spark

    if scale <= 0:
        raise ValueError("--scale must be greater than 0")
    report = progress or (lambda _step, _fraction: None)
    sizes = Sizes.for_scale(scale)
    spark = spark or get_spark(config, "yushan-demo")
    counts = build_platform(spark, config, sizes, seed, report)

    rand = _Rand(seed)
    keystore = KeyStore(config.master_key_path)
    config.workspaces_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="demo-", dir=config.workspaces_dir))
    try:
        report("merchant datasets", 0.80)
        merchant_frames = {
            ("hanfu_house", "members"): (_members(spark, rand, sizes.hanfu_members, "HF",
                                                  sizes.consumers, 0), sizes.hanfu_members),
            ("hanfu_house", "store_sales"): (_store_sales(spark, rand, sizes.store_sales,
                                                          sizes.hanfu_members), sizes.store_sales),
            ("tea_garden", "members"): (_members(spark, rand, sizes.tea_members, "TG",
                                                 sizes.consumers, 7), sizes.tea_members),
        }
        for (merchant, name), (df, _rows) in merchant_frames.items():
            df.coalesce(1).write.mode("overwrite").parquet(str(scratch / merchant / name))

        report("accounts and catalog", 0.92)
        with session_scope(config) as session:
            platform = ensure_platform(session)
            hanfu = ensure_tenant(session, "hanfu_house", "Hanfu House 汉服之家", TenantKind.MERCHANT)
            tea = ensure_tenant(session, "tea_garden", "Tea Garden 茶园", TenantKind.MERCHANT)
            insight = ensure_tenant(session, "insight_isv", "Insight ISV 洞察服务商", TenantKind.PROVIDER)
            other = ensure_tenant(session, "other_isv", "Other ISV 其他服务商", TenantKind.PROVIDER)
            users = [
                ("admin", Role.ADMIN, platform), ("auditor", Role.AUDITOR, platform),
                ("hanfu_owner", Role.MERCHANT, hanfu), ("tea_owner", Role.MERCHANT, tea),
                ("insight_isv", Role.PROVIDER, insight), ("other_isv", Role.PROVIDER, other),
            ]
            for username, role, tenant in users:
                ensure_user(session, username, DEMO_PASSWORD, role, tenant, is_demo=True)
            grant(session, hanfu, insight, view_results=True, by=None)
            grant(session, tea, other, view_results=False, by=None)
            _register_platform(session, config, platform, counts)
            descriptions = {
                "members": "CRM members",
                "store_sales": "Offline point-of-sale",
            }
            for (merchant, name), (_df, rows) in merchant_frames.items():
                tenant = hanfu if merchant == "hanfu_house" else tea
                cols = MEMBER_COLUMNS if name == "members" else STORE_SALES_COLUMNS
                key = "member_id" if name == "members" else "sale_id"
                _register_merchant_dataset(
                    session, config, keystore, tenant, name, descriptions[name], cols, key,
                    scratch / merchant / name, rows,
                )
                counts[f"{merchant}.{name}"] = rows
            budgets = _demo_budgets(session, (hanfu, tea))
            _audit_demo(session, scale, seed, counts, budgets)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report("done", 1.0)
    return counts


# Demo-sized privacy budgets (per calendar month; the contract's demo data): the tour and
# the test suites run many dp jobs. New merchants get the platform default instead.
DEMO_BUDGET = {"epsilon": 1000.0, "delta": 1e-4}


def _demo_budgets(session: Session, merchants: tuple[Tenant, ...]) -> dict[str, dict]:
    """Open (or reset) the demo merchants' current period with the demo budget; the
    ``demo.build`` entry records it. Later periods open with the same allowance."""
    start, end = budget_period()
    opened = {}
    for merchant in merchants:
        period = session.scalar(select(BudgetPeriod).where(BudgetPeriod.merchant_id == merchant.id,
                                                           BudgetPeriod.period_start == start))
        if period is None:
            period = BudgetPeriod(merchant_id=merchant.id, period_start=start, period_end=end,
                                  epsilon_spent=0.0, delta_spent=0.0)
            session.add(period)
        period.epsilon, period.delta = DEMO_BUDGET["epsilon"], DEMO_BUDGET["delta"]
        opened[merchant.slug] = {**DEMO_BUDGET, "period_start": start.isoformat(),
                                 "period_end": end.isoformat()}
    session.flush()
    return opened


def _audit_demo(session: Session, scale: float, seed: int, counts: dict[str, int],
                budgets: dict[str, dict]) -> None:
    from audit import Actor, record

    record(
        session,
        "demo.build",
        actor=Actor.system("cli"),
        objects={"datasets": sorted(counts)},
        details={"scale": scale, "seed": seed, "rows": counts, "budgets": budgets},
    )


def demo_exists(config: Config) -> bool:
    """True when the demo world's platform data and accounts are present."""
    if not (config.platform_warehouse_dir / "consumers").exists():
        return False
    with session_scope(config) as session:
        return session.scalar(select(Dataset.id).where(Dataset.full_name == "platform.consumers")) is not None
