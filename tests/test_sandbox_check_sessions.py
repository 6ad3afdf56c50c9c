"""Check sessions (sandbox/check_sessions.py): a pool of sessions in one JVM, each with a
catalog of its own, so that dry-run checks for several merchants run side by side and
decide exactly as one session does; on the demo world with real Spark."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyspark.errors import AnalysisException

import policies
from policies.segment import register_segment_token
from sandbox.catalog import CATALOG_LOCK, install_catalog
from sandbox.check_sessions import CheckSessions
from sandbox.crypto import KeyStore
from sandbox.spark import REMOVED_FUNCTIONS
from yushan.catalog import readable_datasets

pytestmark = pytest.mark.spark

# (merchant, sql): allowed, denied, a name error, another merchant's table (missing), a
# division by zero (NULL with ANSI off, P8), the segment token, a syntax error, P7.
QUERIES = [
    ("hanfu_house", "SELECT city, count(*) AS n FROM platform.consumers GROUP BY city"),
    ("tea_garden", "SELECT city, count(*) AS n FROM platform.consumers GROUP BY city"),
    ("hanfu_house", "SELECT nick FROM platform.consumers"),
    ("hanfu_house", "SELECT tier, count(*) AS n FROM hanfu_house.members GROUP BY tier"),
    ("tea_garden", "SELECT tier, count(*) AS n FROM tea_garden.members GROUP BY tier"),
    ("tea_garden", "SELECT tier, count(*) AS n FROM hanfu_house.members GROUP BY tier"),
    ("hanfu_house", "SELECT no_such_column FROM platform.orders"),
    ("hanfu_house", "SELECT c.city, sum(o.amount) AS total FROM platform.orders o "
                    "JOIN platform.consumers c ON o.user_id = c.user_id GROUP BY c.city"),
    ("tea_garden", "SELECT city, count(*) / (count(*) - count(*)) AS r FROM platform.consumers GROUP BY city"),
    ("hanfu_house", "SELECT 'gold' AS segment, segment_token(user_id) AS member FROM platform.consumers"),
    ("tea_garden", "SELEC 1"),
    ("tea_garden", "SELECT reflect('java.lang.System', 'exit', 0) AS x"),
]


def _tables(spark, database: str) -> set[str]:
    try:
        return {row.tableName for row in spark.sql(f"SHOW TABLES IN {database}").collect()}
    except AnalysisException:
        return set()


def _one_session_decision(spark, config, session, merchant: str, sql: str) -> dict:
    """The decision as the web process took it before the pool: its one session, under the
    catalog lock."""
    datasets = readable_datasets(session, config, merchant)
    with CATALOG_LOCK:
        install_catalog(spark, datasets)
        register_segment_token(spark, KeyStore(config.master_key_path).segment_token_key(merchant), merchant)
        kind = "segment" if "segment_token" in sql else "aggregate"
        return policies.check(spark, sql, kind=kind, merchant=merchant, datasets=datasets).to_dict()


def test_checks_side_by_side_decide_as_one_session_does(spark, demo_config, db_session):
    from jobs.service import evaluate

    expected = [_one_session_decision(spark, demo_config, db_session, m, sql) for m, sql in QUERIES]
    assert {d["decision"] for d in expected} == {"allow", "deny", "error"}
    datasets = {m: readable_datasets(db_session, demo_config, m) for m in ("hanfu_house", "tea_garden")}

    def decide(index: int) -> dict:
        merchant, sql = QUERIES[index % len(QUERIES)]
        kind = "segment" if "segment_token" in sql else "aggregate"
        return evaluate(demo_config, sql, kind, merchant, datasets[merchant])

    with ThreadPoolExecutor(max_workers=8) as threads:  # every query three times, interleaved
        got = list(threads.map(decide, range(3 * len(QUERIES))))
    for index, decision in enumerate(got):
        assert decision == expected[index % len(QUERIES)], QUERIES[index % len(QUERIES)]


def test_each_session_has_its_own_catalog_functions_and_the_hardened_settings(spark, demo_config, db_session):
    pool = CheckSessions(spark, 2, app_name="test-checks")
    keys = KeyStore(demo_config.master_key_path)
    hanfu = readable_datasets(db_session, demo_config, "hanfu_house")
    tea = readable_datasets(db_session, demo_config, "tea_garden")
    holding = threading.Event()
    release = threading.Event()
    seen: dict[str, object] = {}

    def hold_hanfu() -> None:
        with pool.session("hanfu_house", hanfu, keys.segment_token_key("hanfu_house")) as session:
            seen["hanfu"] = session
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_hanfu)
    holder.start()
    assert holding.wait(120)
    try:
        # while hanfu_house's check holds one session, tea_garden's gets the other
        with pool.session("tea_garden", tea, keys.segment_token_key("tea_garden")) as session:
            seen["tea"] = session
            assert session is not seen["hanfu"]
            assert _tables(session, "tea_garden") == {"members"} and _tables(session, "hanfu_house") == set()
            assert _tables(seen["hanfu"], "hanfu_house") == {"members", "store_sales"}
            assert _tables(seen["hanfu"], "tea_garden") == set()
    finally:
        release.set()
        holder.join()
    assert pool.sessions == 2
    hanfu_session, tea_session = seen["hanfu"], seen["tea"]
    # settings: the base session's, apart from the warehouse
    base_conf = dict(spark.conf.getAll)
    for session in (hanfu_session, tea_session):
        conf = dict(session.conf.getAll)
        differing = {k for k in set(base_conf) | set(conf) if base_conf.get(k) != conf.get(k)}
        assert differing == {"spark.sql.warehouse.dir"}, differing
        assert conf["spark.sql.ansi.enabled"] == "false"
        registry = session._jsparkSession.sessionState().functionRegistry()
        jvm = spark._jvm
        builtin = (jvm.scala.Some("builtin"), jvm.scala.Some("system"))  # as harden_session names them
        ident = jvm.org.apache.spark.sql.catalyst.FunctionIdentifier
        assert not any(registry.functionExists(ident(name, *builtin)) for name in REMOVED_FUNCTIONS)
        assert registry.functionExists(ident("count", *builtin))
    # each merchant's segment_token is its own session's
    assert hanfu_session._jsparkSession.sessionState().catalog().isTemporaryFunction(
        spark._jvm.org.apache.spark.sql.catalyst.FunctionIdentifier.apply("segment_token"))
    # a merchant's next check finds its catalog installed in the session that holds it
    with pool.session("tea_garden", tea, keys.segment_token_key("tea_garden")) as session:
        assert session is tea_session
    with pool.session("hanfu_house", hanfu, keys.segment_token_key("hanfu_house")) as session:
        assert session is hanfu_session


def test_a_session_changing_hands_holds_exactly_the_new_merchants_catalog(spark, demo_config, db_session):
    pool = CheckSessions(spark, 1, app_name="test-checks")
    keys = KeyStore(demo_config.master_key_path)
    hanfu = readable_datasets(db_session, demo_config, "hanfu_house")
    tea = readable_datasets(db_session, demo_config, "tea_garden")
    base_tables = {db: _tables(spark, db) for db in ("hanfu_house", "tea_garden")}
    with pool.session("hanfu_house", hanfu, keys.segment_token_key("hanfu_house")) as session:
        first = session
        assert _tables(session, "hanfu_house") == {"members", "store_sales"}
    with pool.session("tea_garden", tea, keys.segment_token_key("tea_garden")) as session:
        assert session is first and pool.sessions == 1
        assert _tables(session, "hanfu_house") == set() and _tables(session, "tea_garden") == {"members"}
        decision = policies.check(session, "SELECT count(*) AS n FROM hanfu_house.members",
                                  kind="aggregate", merchant="tea_garden", datasets=tea).to_dict()
        assert decision["decision"] == "error"
        assert decision["error"]["class"] == "TABLE_OR_VIEW_NOT_FOUND"
    # the process's own session was never touched
    assert {db: _tables(spark, db) for db in ("hanfu_house", "tea_garden")} == base_tables
