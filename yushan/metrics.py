"""Prometheus metrics, shared by every process of one installation.

The web app (waitress threads), the job workers and the command line are separate
processes, so the counters and histograms use ``prometheus-client``'s multiprocess mode:
each process writes its samples to memory-mapped files in one directory
(``PROMETHEUS_MULTIPROC_DIR``, by default ``yushan-metrics-<id of the home>`` in the
system's temporary directory, outside ``YUSHAN_HOME``, whose only database is the metadata
database; ``yushan serve`` empties it at start-up) and ``GET /metrics`` adds them up. The state of the queue (jobs by
state, depth, oldest queued job, live workers) is read from the database at scrape time,
so it is right whoever changed it.

prometheus-client chooses multiprocess mode when it is first imported, from the
environment: :func:`setup` sets the directory before that, and it is imported nowhere
else. Labels carry no tenant data beyond merchant slugs (never SQL, user names or values).
Counters that record a state change (audit appends, budget spent, uploads) move when the
transaction commits, never for one rolled back (:func:`on_commit`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from yushan.config import Config

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a policy check takes 0.05-5 s, a job 1 s to the 15-minute limit.
CHECK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ON_COMMIT = "_metrics_on_commit"  # Session.info key: callbacks for after the commit
_lock = threading.Lock()


def metrics_dir(config: Config) -> Path:
    """Where this installation's processes keep their samples (unless the environment
    names another directory): run-time state, outside the home (prometheus-client names
    its files ``*.db``; the home holds one database, the metadata's), one per home."""
    home = str(Path(config.home).resolve())
    digest = hashlib.sha256(home.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"yushan-metrics-{os.getuid()}-{digest}"


def setup(config: Config | None) -> Path | None:
    """Point this process (and the processes it starts) at ``config``'s metrics directory,
    unless ``PROMETHEUS_MULTIPROC_DIR`` is set already. Call before the first sample; a
    call after it changes nothing (the process keeps writing where it began)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if config is None:
        return None
    path = metrics_dir(config)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.lstat()
    except OSError as exc:  # metrics stay in this process's own memory
        log.warning("metrics directory %s cannot be created (%s)", path, exc.strerror)
        return None
    # In a shared temporary directory: only a directory of our own, closed to others.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.warning("metrics directory %s is not this user's private directory: not used", path)
        return None
    os.environ[ENV] = str(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def reset(config: Config) -> Path:
    """Empty the metrics directory of processes that are gone (``yushan serve`` at start-up,
    before its workers start): their files would otherwise be added up for ever. Files of
    live processes (``<type>_<pid>.db``) stay: they are still being written."""
    path = setup(config) or metrics_dir(config)
    for entry in path.glob("*.db"):
        pid = entry.stem.rpartition("_")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if pid.isdigit() and int(pid) == os.getpid() and _metrics.cache_info().currsize:
            continue  # this process's own, already open
        entry.unlink(missing_ok=True)
    return path


@lru_cache(maxsize=1)
def _metrics() -> dict[str, Any]:
    """The metric objects, built on first use (after :func:`setup`)."""
    if not os.environ.get(ENV):
        # No installation named (library use, some tests): a private directory keeps the
        # process in multiprocess mode, like every other, and /metrics still reads it.
        os.environ[ENV] = tempfile.mkdtemp(prefix="yushan-metrics-")
    from prometheus_client import Counter, Histogram, values

    if not getattr(values.ValueClass, "_multiprocess", False):
        log.warning("prometheus_client was imported before %s was set: this process's "
                    "samples are not shared with /metrics", ENV)
    return {
        "http": Counter("yushan_http_requests", "HTTP requests answered, by route template "
                        "and status", ["method", "route", "status"]),
        "http_seconds": Histogram("yushan_http_request_duration_seconds",
                                  "Time to answer an HTTP request", buckets=HTTP_BUCKETS),
        "check_seconds": Histogram("yushan_policy_check_seconds",
                                   "Policy check latency: dry runs in the web app or CLI, "
                                   "and each job's check in its executor", ["stage"],
                                   buckets=CHECK_BUCKETS),
        "job_seconds": Histogram("yushan_job_duration_seconds",
                                 "Wall-clock time of a job run, from claim to outcome",
                                 ["outcome"], buckets=JOB_BUCKETS),
        "epsilon": Counter("yushan_budget_epsilon_spent", "Privacy budget (epsilon) charged "
                           "to merchants' budgets", ["merchant"]),
        "uploads": Counter("yushan_uploads", "Merchant dataset uploads, by outcome "
                           "(accepted, or the refusal's code)", ["outcome"]),
        "audit": Counter("yushan_audit_appends", "Audit entries committed, by category",
                         ["category"]),
    }


# --- recording ----------------------------------------------------------------------------


def _safely(record: Callable[[], None]) -> None:
    # A metric must never fail the work it measures.
    try:
        record()
    except Exception:  # noqa: BLE001 - logged; the action itself went through
        log.exception("metric not recorded")


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    def record() -> None:
        m = _metrics()
        m["http"].labels(method, route, str(status)).inc()
        m["http_seconds"].observe(seconds)

    _safely(record)


def policy_check(stage: str, seconds: float) -> None:
    """``stage``: ``dry_run`` (web app, CLI) or ``executor`` (a job's check)."""
    _safely(lambda: _metrics()["check_seconds"].labels(stage).observe(seconds))


def job_finished(outcome: str, seconds: float) -> None:
    """``outcome``: released, blocked, failed, stopped, lost or discarded."""
    _safely(lambda: _metrics()["job_seconds"].labels(outcome).observe(seconds))


def budget_spent(merchant: str, epsilon: float) -> None:
    _safely(lambda: _metrics()["epsilon"].labels(merchant).inc(max(0.0, epsilon)))


def upload(outcome: str) -> None:
    _safely(lambda: _metrics()["uploads"].labels(outcome).inc())


def audit_appended(category: str) -> None:
    _safely(lambda: _metrics()["audit"].labels(category).inc())


def on_commit(session: Session, record: Callable[..., None], *args: Any) -> None:
    """Call ``record(*args)`` once ``session``'s transaction has committed (dropped on
    rollback): counters of state changes count what happened, not what was attempted."""
    session.info.setdefault(_ON_COMMIT, []).append((record, args))


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for record, args in session.info.pop(_ON_COMMIT, ()):
        record(*args)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_ON_COMMIT, None)


# --- exposition ---------------------------------------------------------------------------


def _queue_state(session: Session, config: Config) -> dict[str, Any]:
    """Jobs by state, the oldest queued job and the workers that beat recently."""
    from yushan.models import Job, JobState, Setting

    by_state = {state.value: 0 for state in JobState}
    for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        by_state[state] = int(count)
    oldest = session.scalar(select(func.min(Job.created_at))
                            .where(Job.state == JobState.QUEUED.value))
    now = datetime.now(UTC)
    age = 0.0
    if oldest is not None:
        age = max(0.0, (now - (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)))
                  .total_seconds())
    workers = executors = 0
    window = timedelta(seconds=config.ready_heartbeat_seconds)
    for row in session.scalars(select(Setting).where(Setting.key.like("worker:%"))):
        beat = row.value if isinstance(row.value, dict) else {}
        try:
            at = datetime.fromisoformat(str(beat.get("at")))
        except ValueError:
            continue
        if now - (at if at.tzinfo else at.replace(tzinfo=UTC)) <= window:
            workers += 1
            executors += int((beat.get("pool") or {}).get("live", 0))
    return {"by_state": by_state, "oldest_age": age, "workers": workers, "executors": executors}


class _QueueCollector:
    """Gauges read from the database at scrape time."""

    def __init__(self, session: Session, config: Config):
        self.session, self.config = session, config

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        state = _queue_state(self.session, self.config)
        jobs = GaugeMetricFamily("yushan_jobs", "Jobs by state", labels=["state"])
        for name, count in sorted(state["by_state"].items()):
            jobs.add_metric([name], count)
        yield jobs
        yield GaugeMetricFamily("yushan_queue_depth", "Jobs waiting for a worker",
                                value=state["by_state"]["queued"])
        yield GaugeMetricFamily("yushan_queue_oldest_age_seconds",
                                "How long the oldest queued job has waited (0: none queued)",
                                value=state["oldest_age"])
        yield GaugeMetricFamily("yushan_workers_alive", "Workers whose heartbeat is recent "
                                "(YUSHAN_READY_HEARTBEAT_SECONDS)", value=state["workers"])
        yield GaugeMetricFamily("yushan_executors_live", "Live sandbox executors in those "
                                "workers' pools", value=state["executors"])


def exposition(session: Session, config: Config) -> bytes:
    """The text a Prometheus server scrapes: every process's samples plus the queue."""
    _metrics()  # this process's files exist even before its first sample
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    with _lock:  # one scrape reads the directory at a time
        MultiProcessCollector(registry, path=os.environ[ENV])
        registry.register(_QueueCollector(session, config))
        return generate_latest(registry)
