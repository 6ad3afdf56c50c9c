"""Spark sessions for dry-run checks in one process (the web app's, ``yushan check``'s).

A check installs its merchant's catalog (exactly the datasets a job for that merchant may
read), registers the merchant's ``segment_token`` and analyses the query: nothing runs and
no data is read, but the catalog is per session. With one session every check queued
behind one lock, and a check for another merchant than the last one first rebuilt the
catalog (hundreds of milliseconds of DDL).

Here a small pool of sessions (``YUSHAN_CHECK_SESSIONS``) share the process's JVM and
SparkContext, each with a catalog of its own (:func:`sandbox.spark.isolated_session`), and
each used by one check at a time. A check takes, in this order: a free session already
holding its merchant's catalog; a session not made yet; a free session holding a catalog
nobody is waiting for, when no session holds its own (or it has waited
:data:`STEAL_AFTER_SECONDS`); else it waits. Checks for the same few merchants therefore
run side by side on catalogs installed once, and an idle session goes to whoever needs one.

The decision is the one a single session gives: the same catalog (``install_catalog``),
function and settings, and the parser made to use this session on the thread that parses
(``policies.sparkplan._make_active``).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from collections import Counter
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
        self._waiting: Counter = Counter()  # keys the waiting checks want
        warehouse = Path(base.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
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
        started = time.monotonic()
        with self._cond:
            self._waiting[key] += 1
            try:
                while True:
                    slot = self._choose(key, time.monotonic() - started)
                    if slot is not None:
                        slot.busy = True
                        return slot
                    self._cond.wait(timeout=STEAL_AFTER_SECONDS)
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]

    def _choose(self, key: Hashable, waited: float) -> _Slot | None:
        free = [s for s in self._slots if not s.busy]
        for slot in free:
            if slot.key == key:
                return slot
        if len(self._slots) < self.size:
            # Made under the pool's lock: once per session, a few JVM calls.
            slot = _Slot(isolated_session(self.base, self._warehouse / str(len(self._slots))))
            self._slots.append(slot)
            return slot
        unwanted = sorted((s for s in free if not self._waiting.get(s.key)), key=lambda s: s.used)
        held = any(s.key == key for s in self._slots)
        if unwanted and (not held or waited >= STEAL_AFTER_SECONDS):
            return unwanted[0]
        return None

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            slot.busy = False
            slot.used = time.monotonic()
            self._cond.notify_all()


_lock = threading.Lock()
_pool: CheckSessions | None = None


def check_sessions(config: Config, app_name: str = "yushan-web") -> CheckSessions:
    """This process's pool (made on first use, with the process's SparkSession)."""
    global _pool
    base = get_spark(config, app_name)
    with _lock:
        if _pool is None or _pool.base is not base:  # a new SparkSession: a new pool
            _pool = CheckSessions(base, config.check_sessions)
        return _pool
