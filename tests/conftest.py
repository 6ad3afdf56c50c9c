"""Shared fixtures: one SparkSession and one demo world (scale 0.01) for the whole run.

Set ``YUSHAN_TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
to run the database-backed tests on PostgreSQL as well: each run gets its own fresh
database created from that server and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from yushan.config import Config, set_config

DEMO_SCALE = float(os.environ.get("YUSHAN_TEST_SCALE", "0.01"))

# The suite logs in, checks and submits far faster than people do: the request rate limits
# (web/limits.py) are raised for every app and server it starts, subprocesses included.
# tests/test_web_limits.py sets low limits of its own.
TEST_RATE_LIMIT = "100000/minute"
for _setting in ("YUSHAN_RATE_LIMIT_CHECK", "YUSHAN_RATE_LIMIT_SUBMIT", "YUSHAN_RATE_LIMIT_LOGIN"):
    os.environ.setdefault(_setting, TEST_RATE_LIMIT)


def _make_config(home: Path, database_url: str | None = None, **overrides) -> Config:
    return Config.from_env(
        home=home,
        database_url=database_url or f"sqlite:///{home / 'yushan.db'}",
        spark_master="local[2]",
        spark_shuffle_partitions=4,
        spark_driver_memory="1g",
        **overrides,
    )


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(**overrides)`` -> a Config on a fresh home under tmp_path (not initialised)."""

    def factory(**overrides) -> Config:
        home = overrides.pop("home", None) or tmp_path / f"home-{uuid.uuid4().hex[:8]}"
        return _make_config(Path(home), **overrides)

    return factory


@pytest.fixture(scope="session")
def spark_config(tmp_path_factory) -> Config:
    return _make_config(tmp_path_factory.mktemp("spark-home"))


@pytest.fixture(scope="session")
def spark(spark_config: Config):
    """The one SparkSession of the test run (local[2], 4 shuffle partitions)."""
    from sandbox.spark import get_spark, stop_spark

    session = get_spark(spark_config, "yushan-tests")
    yield session
    stop_spark()


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory, spark) -> Iterator[Config]:
    """A home holding the demo world at scale 0.01 (SQLite), built once per run."""
    from yushan.cli import initialise
    from yushan.demo import build_demo

    home = tmp_path_factory.mktemp("demo-home")
    config = _make_config(home)
    initialise(config)
    build_demo(config, scale=DEMO_SCALE, seed=7, spark=spark)
    set_config(config)
    yield config
    set_config(None)


@pytest.fixture
def db_session(demo_config: Config):
    """A session on the demo database; rolled back unless the test commits."""
    from yushan.db import session_factory

    session = session_factory(demo_config)()
    yield session
    session.rollback()
    session.close()


def _postgres_admin_url() -> str | None:
    return os.environ.get("YUSHAN_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this run (skipped when none is configured)."""
    base = _postgres_admin_url()
    if not base:
        pytest.skip("YUSHAN_TEST_DATABASE_URL is not set (PostgreSQL tests run in CI)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"yushan_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    from yushan.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_config(request, make_config) -> Config:
    """A fresh, migrated home on SQLite, and on PostgreSQL when configured."""
    from yushan.cli import initialise

    if request.param == "sqlite":
        config = make_config()
    else:
        url = request.getfixturevalue("postgres_url")
        config = make_config(database_url=url)
        _reset_postgres(url)
    initialise(config)
    return config


def _reset_postgres(url: str) -> None:
    """Drop every table of the per-run PostgreSQL database so each test starts empty."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    from yushan.db import dispose_engines

    dispose_engines()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts a person may look at (screenshots, reports)."""
    path = Path(__file__).parent / "output"
    path.mkdir(exist_ok=True)
    return path



@pytest.fixture(scope="session")
def hanfu_dp_world(demo_config, tmp_path_factory):
    """hanfu_house's catalog in the demo world as registered: consumer data in dp mode
    (its own datasets decrypted once)."""
    from policy_support import world

    return world(demo_config, "hanfu_house", tmp_path_factory.mktemp("policy-world"))


@pytest.fixture(scope="session")
def hanfu_world(hanfu_dp_world):
    """The same catalog with consumer data in threshold mode: exact results to compare."""
    from policy_support import in_mode

    return in_mode(hanfu_dp_world, "threshold")


@pytest.fixture
def hanfu_env(hanfu_world, spark):
    """``hanfu_world`` installed in the session: what a job for hanfu_house sees."""
    hanfu_world.install(spark)
    return hanfu_world


@pytest.fixture(scope="module")
def worker(demo_config: Config):
    """One job worker with one warm executor on the demo world, in a thread of the test
    process, for the test module."""
    from jobs_support import WorkerThread

    with WorkerThread(demo_config) as running:
        yield running.worker


@pytest.fixture
def hanfu_dp_env(hanfu_dp_world, spark):
    """``hanfu_dp_world`` installed in the session (dp mode, as the demo registers it)."""
    hanfu_dp_world.install(spark)
    return hanfu_dp_world
