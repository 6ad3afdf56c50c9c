"""Spark sessions for dry-run checks in one process (the web app's, ``yushan check``'s).

A check installs its merchant's catalog (exactly the datasets a job for that merchant may
read), registers the merchant's ``segment_token`` and analyses the query: nothing runs and
no data is read, but the catalog is per session. With one session every check queued
behind one lock, and a check for another merchant than the last one first rebuilt the
catalog (hundreds of milliseconds of DDL).

Here a small pool of sessions (``YUSHAN_CHECK_SESSIONS``) share the process's JVM and
SparkContext, each with a catalog of its own (:func:`sandbox.spark.isolated_session`), and
each used by one check at a time. A check takes, in this order: a free session already
holding its merchant's catalog (checks wanting the same catalog in the order they came); a
session not made yet; and, when it is the oldest check waiting, a free session holding a
catalog no waiting check wants, if no session holds its own or it has waited
:data:`STEAL_AFTER_SECONDS`; else it waits. Checks for the same few merchants therefore
run side by side on catalogs installed once, and an idle session goes to whoever needs one.

The decision is the one a single session gives: the same catalog (``install_catalog``),
function and settings, and the parser made to use this session on the thread that parses
(``policies.sparkplan._make_active``).
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession

from policies.segment import register_segment_token
from sandbox.catalog import catalog_state, install_catalog
from sandbox.spark import get_spark, isolated_session
from yushan.catalog import DatasetInfo
from yushan.config import Config

# A check that has waited this long takes any free session nobody is waiting for, even
# when another session holds its merchant's catalog (but is busy): a catalog installs in
# a few hundred milliseconds.
STEAL_AFTER_SECONDS = 0.25


@dataclass(eq=False)
class _Waiter:
    ticket: int
    key: Hashable
    since: float


@dataclass(eq=False)
class _Slot:
    spark: SparkSession
    key: Hashable | None = None  # (merchant, catalog state) it holds; None: unknown
    busy: bool = False
    used: float = field(default_factory=time.monotonic)


class CheckSessions:
    """A pool of at most ``size`` isolated sessions on ``base``'s SparkContext."""

    def __init__(self, base: SparkSession, size: int, app_name: str = "checks"):
        self.base = base
        self.size = max(1, size)
        self._slots: list[_Slot] = []
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []  # checks waiting for a session, oldest first
        self._tickets = itertools.count()
        warehouse = Path(str(base.conf.get("spark.sql.warehouse.dir") or "spark-warehouse")
                         .removeprefix("file:"))
        warehouse.mkdir(parents=True, exist_ok=True)
        # Per process: a dropped database deletes its directory under the warehouse.
        self._warehouse = Path(tempfile.mkdtemp(prefix=f"{app_name}-", dir=warehouse))
        atexit.register(shutil.rmtree, self._warehouse, ignore_errors=True)

    @property
    def sessions(self) -> int:
        """How many sessions the pool has made so far."""
        with self._cond:
            return len(self._slots)

    @contextmanager
    def session(self, merchant: str, datasets: Mapping[str, DatasetInfo],
                token_key: bytes) -> Iterator[SparkSession]:
        """A session holding exactly ``datasets`` and ``merchant``'s ``segment_token``, for
        this thread alone until the block ends."""
        key = (merchant, catalog_state(datasets))
        slot = self._acquire(key)
        try:
            if slot.key != key:
                slot.key = None  # until installed: a failure leaves it unknown
            install_catalog(slot.spark, datasets)  # nothing to do when it holds them already
            register_segment_token(slot.spark, token_key, merchant)
            slot.key = key
            yield slot.spark
        finally:
            self._release(slot)

    def _acquire(self, key: Hashable) -> _Slot:
        with self._cond:
            me = _Waiter(next(self._tickets), key, time.monotonic())
            self._waiters.append(me)
            try:
                while True:
                    slot = self._choose(me)
                    if slot is not None:
                        slot.busy = True
                        return slot
                    self._cond.wait(timeout=STEAL_AFTER_SECONDS)
            finally:
                self._waiters.remove(me)

    def _choose(self, me: _Waiter) -> _Slot | None:
        """The session ``me`` may take now, or None. Checks wanting the same catalog go in
        the order they came; a session changes catalog for the oldest check only, and once
        that one has waited STEAL_AFTER_SECONDS it picks before anyone else."""
        now = time.monotonic()
        oldest = self._waiters[0]
        if oldest is not me and now - oldest.since >= STEAL_AFTER_SECONDS:
            return None  # the oldest check has waited long enough: it picks first
        if any(w.key == me.key and w.ticket < me.ticket for w in self._waiters):
            return None  # an older check wants the same catalog: it goes first
        free = [s for s in self._slots if not s.busy]
        for slot in free:
            if slot.key == me.key:
                return slot
        if len(self._slots) < self.size:
            # Made under the pool's lock: once per session, a few JVM calls.
            slot = _Slot(isolated_session(self.base, self._warehouse / str(len(self._slots))))
            self._slots.append(slot)
            return slot
        if oldest is not me or not free:
            return None
        free.sort(key=lambda s: s.used)
        wanted = {w.key for w in self._waiters if w is not me}
        unwanted = [s for s in free if s.key not in wanted]
        if unwanted and not any(s.key == me.key for s in self._slots):
            return unwanted[0]  # no session holds this catalog: take an idle one
        if now - me.since >= STEAL_AFTER_SECONDS:
            return (unwanted or free)[0]
        return None

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            slot.busy = False
            slot.used = time.monotonic()
            self._cond.notify_all()


_lock = threading.Lock()
_pool: CheckSessions | None = None


def in_use_within(seconds: float) -> bool:
    """Whether this process's pool has a check running, or had one in the last
    ``seconds`` (a background warm-up gives way to people's checks)."""
    pool = _pool
    if pool is None:
        return False
    with pool._cond:
        horizon = time.monotonic() - seconds
        return any(s.busy or s.used > horizon for s in pool._slots)


def check_sessions(config: Config, app_name: str = "yushan-web") -> CheckSessions:
    """This process's pool (made on first use, with the process's SparkSession)."""
    global _pool
    base = get_spark(config, app_name)
    with _lock:
        if _pool is None or _pool.base is not base:  # a new SparkSession: a new pool
            _pool = CheckSessions(base, config.check_sessions)
        return _pool
