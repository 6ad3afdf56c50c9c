"""The check warm-up `yushan serve` runs at start (sandbox/check_warmup.py): its synthetic
queries are real checks the policy reads whole, it runs on a catalog of its own, and it
gives way to people's checks; on the test run's real SparkSession."""

from __future__ import annotations

import threading
import time

import pytest

import policies
from policies.segment import register_segment_token
from sandbox import check_warmup
from sandbox.catalog import install_catalog
from sandbox.check_sessions import check_sessions
from sandbox.spark import isolated_session

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def warm_session(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("warm-up")
    session = isolated_session(spark, root / "warehouse")
    datasets = check_warmup.synthetic_catalog(root / "data")
    install_catalog(session, datasets)
    register_segment_token(session, b"k" * 32, check_warmup.MERCHANT)
    return session, datasets


@pytest.mark.parametrize("index", range(len(check_warmup.QUERIES)))
def test_every_warm_up_query_is_analysed_and_decided(warm_session, index):
    """A query that no longer analyses would warm up only the parser: each one must reach
    a decision (allowed or denied), not a syntax or name error."""
    session, datasets = warm_session
    kind, sql = check_warmup.QUERIES[index]
    decision = policies.check(session, sql.format(n=index + 1), kind, check_warmup.MERCHANT, datasets)
    assert decision.error is None, decision.error.to_dict()
    assert decision.decision in ("allow", "deny")


def test_the_warm_up_covers_allowed_denied_dp_and_segment_checks(warm_session):
    session, datasets = warm_session
    seen = set()
    for n, (kind, sql) in enumerate(check_warmup.QUERIES):
        decision = policies.check(session, sql.format(n=n + 1), kind, check_warmup.MERCHANT, datasets)
        seen.add((kind, decision.decision, decision.release))
    assert ("aggregate", "allow", "dp") in seen
    assert ("aggregate", "deny", "dp") in seen
    assert ("aggregate", "allow", None) in seen  # the merchant's own data only
    assert ("segment", "allow", "threshold") in seen


def test_the_warm_up_waits_while_someone_checks_and_then_runs(spark, spark_config):
    """People's checks come first: while a pool session is in use the warm-up does not
    check; once the pool has been quiet it runs all its checks, and reports them."""
    pool = check_sessions(spark_config)
    datasets = check_warmup.synthetic_catalog(spark_config.home / "people")
    holding, release = threading.Event(), threading.Event()

    def person() -> None:
        with pool.session("someone", datasets, b"p" * 32):
            holding.set()
            release.wait(30)

    someone = threading.Thread(target=person)
    someone.start()
    assert holding.wait(60)
    warm = threading.Thread(target=check_warmup.warm_checks, args=(spark_config, 20))
    warm.start()
    time.sleep(1.5)
    assert check_warmup.STATE.done == 0
    assert check_warmup.STATE.as_text() == "warming (0/20)"
    release.set()
    someone.join(30)
    warm.join(120)
    assert not warm.is_alive()
    assert check_warmup.STATE.done == 20
    assert check_warmup.STATE.as_text() == "warm"


def test_no_warm_up_is_reported_as_off(spark_config):
    assert check_warmup.start_warm_checks(spark_config, 0) is None
    assert check_warmup.STATE.as_text() == "off"
