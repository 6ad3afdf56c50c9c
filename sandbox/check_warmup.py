"""Warming up a process's dry-run checks: its JVM's parser, analyser and plan writer.

A fresh JVM interprets Spark's parser and analyser, then compiles them as they get hot.
Measured in the web process (``/tmp``-style profile of ``POST /api/v1/jobs/check``): the
JVM's compiler threads spent more CPU than the checks themselves for the first few
hundred checks (JVM CPU per check 32 ms after 60 checks, 14 ms after 800), and the first
check of all waited for the JVM to start. ``yushan serve`` therefore checks a set of
synthetic queries in the background when it starts (:func:`warm_checks`), on a session of
its own over a synthetic catalog: no tenant's data or names, nothing audited, and the
pool's sessions (:mod:`sandbox.check_sessions`) untouched.

The queries cover the shapes the policy reads (joins, grouping, distinct counts, CTEs,
subqueries, windows, CASE, segments); denied ones are as useful as allowed ones, since the
policy reads the whole plan either way.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from yushan.catalog import ColumnInfo, DatasetInfo
from yushan.config import Config

log = logging.getLogger(__name__)

# The warm-up checks only while no one else has checked for this long.
QUIET_SECONDS = 0.5
MERCHANT = "warmup_merchant"  # not a tenant: slugs are checked against the database elsewhere


def _dataset(owner: str, name: str, columns: list[tuple[str, str, str]], root: Path, *,
             entity: str | None = None, one_row: bool = False, member_key: str | None = None,
             bounds: dict[str, tuple[float, float]] | None = None) -> DatasetInfo:
    bounds = bounds or {}
    return DatasetInfo(
        id=0, full_name=f"{owner}.{name}", owner=owner, name=name,
        columns=tuple(ColumnInfo(c, t, k, *bounds.get(c, (None, None))) for c, t, k in columns),
        is_consumer_data=entity is not None, entity_column=entity, k=50 if entity else None,
        member_key=member_key, storage_path=root / owner / name, encrypted=False,
        release_mode="dp" if entity else None, max_groups=4 if entity else None,
        max_rows=20 if entity else None, one_row_per_unit=one_row,
        version=1 if owner == "platform" else None,
    )


def synthetic_catalog(root: Path) -> dict[str, DatasetInfo]:
    """Consumer profiles, orders and behaviour, an item catalogue and a merchant's members
    and sales: the kinds of datasets real catalogs hold, under names no tenant can have."""
    q, p, i, pub, own = "quasi", "private", "identifier", "public", "own"
    datasets = [
        _dataset("platform", "consumers", [
            ("user_id", "bigint", i), ("nick", "string", p), ("phone_hash", "string", i),
            ("gender", "string", q), ("birth_year", "int", q), ("city", "string", q),
            ("province", "string", q), ("vip_level", "int", q), ("registered_at", "date", q),
        ], root, entity="user_id", one_row=True,
            bounds={"birth_year": (1950.0, 2008.0), "vip_level": (0.0, 7.0)}),
        _dataset("platform", "orders", [
            ("order_id", "bigint", p), ("user_id", "bigint", i), ("item_id", "bigint", pub),
            ("category", "string", pub), ("amount", "decimal(12,2)", q), ("channel", "string", q),
            ("ordered_at", "timestamp", q),
        ], root, entity="user_id", bounds={"amount": (0.0, 20000.0)}),
        _dataset("platform", "behaviors", [
            ("user_id", "bigint", i), ("item_id", "bigint", pub), ("action", "string", q),
            ("ts", "timestamp", q),
        ], root, entity="user_id"),
        _dataset("platform", "items", [
            ("item_id", "bigint", pub), ("category", "string", pub), ("price", "decimal(12,2)", pub),
        ], root),
        _dataset(MERCHANT, "members", [
            ("member_id", "string", own), ("phone_hash", "string", own), ("tier", "string", own),
            ("points", "int", own), ("joined_at", "date", own),
        ], root, member_key="member_id"),
        _dataset(MERCHANT, "sales", [
            ("sale_id", "string", own), ("member_id", "string", own), ("store_id", "string", own),
            ("amount", "decimal(12,2)", own), ("sold_at", "timestamp", own),
        ], root),
    ]
    return {d.full_name.lower(): d for d in datasets}


# (kind, SQL with {n}: a literal that changes every round, as users' queries do). The
# merchant's datasets are under MERCHANT's name.
QUERIES: tuple[tuple[str, str], ...] = (
    ("aggregate", "SELECT c.city, count(*) AS n FROM platform.consumers c WHERE c.birth_year >= {n} "
                  "GROUP BY c.city"),
    ("aggregate", "SELECT c.city, c.gender, sum(o.amount) AS total, count(DISTINCT o.user_id) AS buyers "
                  "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
                  "WHERE o.amount > {n} GROUP BY c.city, c.gender"),
    ("aggregate", "SELECT c.city, round(avg(o.amount), 2) AS a FROM platform.orders o "
                  "JOIN platform.consumers c ON o.user_id = c.user_id JOIN platform.items i "
                  "ON o.item_id = i.item_id WHERE i.price > {n} GROUP BY c.city ORDER BY a DESC LIMIT 10"),
    ("aggregate", "SELECT m.tier, count(*) AS n, sum(s.amount) AS total FROM warmup_merchant.members m "
                  "JOIN warmup_merchant.sales s ON m.member_id = s.member_id WHERE s.amount > {n} GROUP BY m.tier"),
    ("aggregate", "SELECT c.vip_level, count(DISTINCT c.user_id) AS members FROM warmup_merchant.members m "
                  "JOIN platform.consumers c ON m.phone_hash = c.phone_hash WHERE m.points > {n} "
                  "GROUP BY c.vip_level"),
    ("aggregate", "SELECT b.action, count(DISTINCT b.user_id) AS users FROM platform.behaviors b "
                  "JOIN platform.items i ON b.item_id = i.item_id WHERE i.price > {n} GROUP BY b.action"),
    ("aggregate", "WITH spend AS (SELECT user_id, sum(amount) AS s FROM platform.orders "
                  "WHERE amount > {n} GROUP BY user_id) SELECT c.province, count(*) AS n, avg(s.s) AS a "
                  "FROM spend s JOIN platform.consumers c ON s.user_id = c.user_id GROUP BY c.province"),
    ("aggregate", "SELECT CASE WHEN c.birth_year < 1980 THEN 'older' ELSE 'younger' END AS age, "
                  "count(*) AS n FROM platform.consumers c WHERE c.vip_level > {n} % 7 "
                  "GROUP BY CASE WHEN c.birth_year < 1980 THEN 'older' ELSE 'younger' END"),
    ("aggregate", "SELECT o.channel, count(*) AS n FROM platform.orders o WHERE o.user_id IN "
                  "(SELECT user_id FROM platform.behaviors WHERE action = 'cart') AND o.amount > {n} "
                  "GROUP BY o.channel HAVING count(*) > 10"),
    ("aggregate", "SELECT city, n, rank() OVER (ORDER BY n DESC) AS r FROM (SELECT c.city, count(*) AS n "
                  "FROM platform.consumers c WHERE c.birth_year > {n} GROUP BY c.city)"),
    ("aggregate", "SELECT c.city, c.phone_hash, count(*) AS n FROM platform.consumers c "
                  "WHERE c.vip_level > {n} % 7 GROUP BY c.city, c.phone_hash"),  # denied: P1
    ("aggregate", "SELECT o.user_id, o.amount FROM platform.orders o WHERE o.amount > {n}"),  # denied: P5
    ("aggregate", "SELECT date_trunc('MONTH', o.ordered_at) AS month, count(*) AS n, stddev(o.amount) AS sd "
                  "FROM platform.orders o WHERE o.amount BETWEEN {n} AND 10000 GROUP BY 1"),
    ("aggregate", "SELECT upper(i.category) AS category, count(*) AS n FROM platform.items i "
                  "WHERE i.price > {n} GROUP BY upper(i.category)"),
    ("segment", "SELECT CASE WHEN c.vip_level >= 5 THEN 'vip' ELSE 'regular' END AS segment, "
                "segment_token(c.user_id) AS member FROM platform.consumers c WHERE c.birth_year > {n}"),
    ("segment", "SELECT c.city AS segment, m.member_id AS member FROM warmup_merchant.members m "
                "JOIN platform.consumers c ON m.phone_hash = c.phone_hash WHERE m.points > {n}"),
)


@dataclass
class WarmUpState:
    """How far this process's check warm-up got (``/readyz`` shows it; it never fails it)."""

    target: int = 0
    done: int = 0
    failed: bool = False
    seconds: float | None = None

    def as_text(self) -> str:
        if self.target == 0:
            return "off"
        if self.failed:
            return "failed"
        return "warm" if self.done >= self.target else f"warming ({self.done}/{self.target})"


STATE = WarmUpState()


def warm_checks(config: Config, checks: int, stop: threading.Event | None = None,
                app_name: str = "yushan-web") -> int:
    """Check ``checks`` synthetic queries on a session of this process's SparkContext;
    return how many ran. Errors are logged, never raised: a warm-up is an optimisation."""
    from policies import check
    from policies.segment import register_segment_token
    from sandbox.catalog import install_catalog
    from sandbox.check_sessions import in_use_within
    from sandbox.spark import get_spark, isolated_session

    STATE.target, STATE.done, STATE.failed = checks, 0, False
    if checks <= 0:
        return 0
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="check-warm-up-"))
    try:
        base = get_spark(config, app_name)
        spark = isolated_session(base, scratch / "warehouse")
        datasets = synthetic_catalog(scratch / "data")
        install_catalog(spark, datasets)
        register_segment_token(spark, secrets.token_bytes(32), MERCHANT)
        for n in range(checks):
            if stop is not None and stop.is_set():
                break
            while in_use_within(QUIET_SECONDS) and not (stop is not None and stop.is_set()):
                time.sleep(QUIET_SECONDS)  # people's checks first
            kind, sql = QUERIES[n % len(QUERIES)]
            decision = check(spark, sql.format(n=n % 997 + 1), kind, MERCHANT, datasets)
            if decision.error is not None:  # a broken warm-up query: say so, carry on
                log.warning("check warm-up: query %d did not analyse (%s)", n % len(QUERIES),
                            decision.error.error_class)
            STATE.done = n + 1
    except Exception as exc:  # noqa: BLE001 - the class only; checks work without it
        STATE.failed = True
        log.warning("check warm-up stopped: %s", type(exc).__name__)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    STATE.seconds = round(time.monotonic() - started, 1)
    log.info("check warm-up: %d checks in %.1f s", STATE.done, STATE.seconds)
    return STATE.done


def start_warm_checks(config: Config, checks: int) -> threading.Thread | None:
    """:func:`warm_checks` in a daemon thread (``yushan serve`` at start)."""
    if checks <= 0:
        STATE.target = 0
        return None
    thread = threading.Thread(target=warm_checks, args=(config, checks), daemon=True,
                              name="check-warm-up")
    thread.start()
    return thread
