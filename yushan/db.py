"""Engine, sessions and migrations for the metadata database (SQLite WAL or PostgreSQL)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from yushan.config import Config, ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web app read while a worker writes; busy_timeout waits out short locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


SQLITE_BUSY_SECONDS = 30


def _sqlite_begin(conn) -> None:
    # pysqlite's implicit transactions start lazily, which lets two writers both read the
    # audit head before either writes. BEGIN IMMEDIATE takes the write lock up front.
    dbapi_connection = conn.connection.dbapi_connection
    turn = getattr(dbapi_connection, "take_turn", None)
    if turn is not None:
        turn()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if turn is not None:
            dbapi_connection.end_turn()
        raise


class _WriteTurns:
    """This process's threads take turns at a SQLite database's write lock.

    Every transaction holds that lock from its start (BEGIN IMMEDIATE). Left to SQLite, a
    thread that finds it taken polls, sleeping up to 100 ms between tries, so under a dozen
    concurrent requests some waited seconds while others got in at once; here the threads
    of one process queue on a lock that hands over as soon as a transaction ends, and only
    other processes (workers) are left to SQLite's polling.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def take(self) -> None:
        if not self._lock.acquire(timeout=SQLITE_BUSY_SECONDS):
            raise sqlite3.OperationalError("database is locked")

    def give_back(self) -> None:
        self._lock.release()


def _turn_taking_connection(turns: _WriteTurns) -> type[sqlite3.Connection]:
    """A sqlite3 connection class whose transactions take turns (``connect_args``
    ``factory``): its turn is taken at BEGIN and given back when the transaction ends."""

    class TurnTakingConnection(sqlite3.Connection):
        holds_turn = False

        def take_turn(self) -> None:
            turns.take()
            self.holds_turn = True

        def end_turn(self) -> None:
            if self.holds_turn:
                self.holds_turn = False
                turns.give_back()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self.end_turn()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self.end_turn()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self.end_turn()

    return TurnTakingConnection


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False,
                                   "factory": _turn_taking_connection(_WriteTurns())}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            engine.dialect._yushan_sqlite = True  # type: ignore[attr-defined]

            @event.listens_for(engine, "connect")
            def _no_implicit(dbapi_connection, _record):
                dbapi_connection.isolation_level = None  # we issue BEGIN ourselves

            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (ArgumentError, ModuleNotFoundError, ValueError) as exc:
        raise ConfigError(f"YUSHAN_DATABASE_URL is not usable: {exc}") from None
    return engine


@lru_cache(maxsize=8)
def sqlite_snapshot_engine(url: str) -> Engine:
    """A SQLite engine for long reads: plain (deferred) BEGIN gives a read snapshot.

    The application's engine starts every transaction with BEGIN IMMEDIATE, which would
    hold the write lock, and so stop all writers, for as long as e.g. an audit
    verification runs.
    """
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")

    return engine


def get_engine(config: Config) -> Engine:
    if config.is_sqlite:
        config.check_home_writable()
    return _engine_for(config.database_url)


def dispose_engines() -> None:
    """Close pooled connections (after fork, in tests)."""
    for engine in list(_engine_sessionmakers):
        engine.dispose()
    _engine_sessionmakers.clear()
    _engine_for.cache_clear()
    sqlite_snapshot_engine.cache_clear()


_engine_sessionmakers: dict[Engine, sessionmaker[Session]] = {}


def session_factory(config: Config) -> sessionmaker[Session]:
    engine = get_engine(config)
    if engine not in _engine_sessionmakers:
        # The audit writer reads the home (signing key, head file) from session.info.
        _engine_sessionmakers[engine] = sessionmaker(
            engine, expire_on_commit=False, info={"yushan_config": config}
        )
    return _engine_sessionmakers[engine]


def end_transaction(session: Session) -> None:
    """Commit the session's transaction, if one is open, before work that takes a while and
    needs no database (a query's analysis, a password hash): on SQLite every transaction
    holds the write lock from its first statement (``BEGIN IMMEDIATE``), so such work done
    inside one made every other request wait for it. Loaded objects stay usable (sessions
    do not expire them on commit)."""
    if session.in_transaction():
        session.commit()


@contextmanager
def session_scope(config: Config) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on error."""
    session = session_factory(config)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check_connection(config: Config) -> None:
    """Raise a ConfigError naming the URL's host when the database does not answer."""
    try:
        with get_engine(config).connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        origin = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise ConfigError(
            f"cannot connect to the database in YUSHAN_DATABASE_URL: {origin}"
        ) from None


def alembic_config(config: Config):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", config.database_url.replace("%", "%%"))
    cfg.attributes["yushan_config"] = config
    return cfg


def migrate(config: Config) -> None:
    """Bring the database schema to the newest revision."""
    from alembic import command

    check_connection(config)
    command.upgrade(alembic_config(config), "head")
