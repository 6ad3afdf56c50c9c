"""Helpers shared by the audit tests: fresh installations on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import audit
from yushan.config import Config
from yushan.db import dispose_engines, migrate, session_scope

REPO = Path(__file__).resolve().parent.parent

MERCHANT = audit.Actor(username="hanfu_owner", role="merchant", tenant="hanfu_house",
                       origin="ip=127.0.0.1 ua=pytest")
PROVIDER = audit.Actor(username="insight_isv", role="provider", tenant="insight_isv",
                       origin="ip=127.0.0.2 ua=pytest")


def fresh_config(request: pytest.FixtureRequest, make_config, backend: str) -> Config:
    """A migrated home with audit keys, on ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        config = make_config()
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres(url)
        config = make_config(database_url=url)
    config.home.mkdir(parents=True, exist_ok=True)
    migrate(config)
    audit.init_keys(config)
    return config


def reset_postgres(url: str) -> None:
    """Empty the per-run PostgreSQL database so that each test starts from nothing."""
    dispose_engines()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def append(config: Config, count: int, action: str = "job.submit", actor=MERCHANT,
           per_transaction: int = 1) -> None:
    """Record ``count`` entries, ``per_transaction`` per committed transaction."""
    done = 0
    while done < count:
        with session_scope(config) as session:
            for _ in range(min(per_transaction, count - done)):
                audit.record(session, action, actor=actor,
                             objects={"job": done + 1, "merchant": "hanfu_house"},
                             details={"columns_read": [{"dataset": "hanfu_house.members",
                                                        "column": "vip_level"}]})
                done += 1


def raw_sql(config: Config, *statements: str) -> list:
    """Run SQL outside the application, as someone editing the database would."""
    engine = create_engine(config.database_url)
    results = []
    with engine.begin() as conn:
        for statement in statements:
            result = conn.exec_driver_sql(statement)
            results.append(result.fetchall() if result.returns_rows else None)
    engine.dispose()
    return results


def run_cli(config: Config, *args: str) -> subprocess.CompletedProcess:
    """``yushan audit ...`` in a separate process pointed at ``config``'s home."""
    env = {**os.environ, "YUSHAN_HOME": str(config.home),
           "YUSHAN_DATABASE_URL": config.database_url}
    return subprocess.run([sys.executable, "-m", "audit.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def writer_process(home: str, database_url: str, worker: int, count: int, start=None) -> None:
    """Body of a separate writer process (web, worker...) appending to the same chain.

    ``start`` (a barrier shared by the writers) makes them all begin appending at once, so
    that they interleave however long each one took to start.
    """
    config = Config.from_env(home=Path(home), database_url=database_url)
    audit.register_config(config)
    actor = audit.Actor(username=f"writer{worker}", role="provider", tenant="insight_isv",
                        origin=f"pid={os.getpid()}")
    if start is not None:
        with session_scope(config):
            pass  # connected and ready: only the appending is left
        start.wait(timeout=120)
    for i in range(count):
        with session_scope(config) as session:
            audit.record(session, "job.progress", actor=actor,
                         objects={"job": worker * 1000 + i}, details={"progress": i})
            if i % 3 == 0:  # some transactions carry two entries
                audit.record(session, "job.progress", actor=actor,
                             objects={"job": worker * 1000 + i}, details={"progress": -i})
    dispose_engines()
