"""Wake-ups between this host's processes: workers hear of queued jobs, submitters of
their job's decision.

**Workers.** Each worker on this host listens on a Unix datagram socket in Linux's abstract namespace
(no file to clean up; the path length of ``YUSHAN_HOME`` does not matter) and registers
its name as a file under ``YUSHAN_HOME/run/wake/``. Whoever queues a job (a submission, a
retry) marks the database session; once that transaction has *committed*, every
registered worker gets one byte. A worker that wakes still claims through the durable
queue, so a wake-up is only a hint: a lost or spurious one (any local user can send to an
abstract socket) costs nothing but a poll, and workers on other hosts, which no datagram
reaches, keep polling the queue.

**Submitters.** The executor checks every job before it runs (the authoritative check).
When a worker takes a job at once, the submitting process need not check it a second time
on its own SparkSession (about 30 ms of CPU each, on the same cores as the job): it opens
a :class:`JobWatch` for the job before committing it, and the worker that claims the job
tells it so and then relays the executor's decision (:func:`tell_submitter`). These
messages carry a decision, so they are authenticated: an HMAC under a key derived from
the platform master key, bound to the job id. Anything unauthenticated, late or missing
only makes the submitter check the job itself, as it does when no worker is free.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import select
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from yushan.config import Config

log = logging.getLogger(__name__)

_FLAG = "yushan_wake_workers"
_PREFIX = "yushan-wake-"


def registry_dir(config: Config) -> Path:
    return config.home / "run" / "wake"


def wake_after_commit(session: Session) -> None:
    """Wake this host's workers once ``session``'s transaction has committed."""
    session.info[_FLAG] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_FLAG, False):
        config = session.info.get("yushan_config")
        if config is not None:
            notify(config)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_FLAG, None)


def _send(directory: Path, prefix: str, payload: bytes) -> int:
    """Send ``payload`` to every listener registered in ``directory`` under ``prefix``."""
    try:
        names = [entry.name for entry in directory.iterdir() if entry.name.startswith(prefix)]
    except OSError:
        return 0
    reached = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            try:
                sender.sendto(payload, "\0" + name)
                reached += 1
            except ConnectionRefusedError:
                # Nobody listens under that name any more (a killed process): forget it.
                with contextlib.suppress(OSError):
                    (directory / name).unlink()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):  # full: it is awake anyway
                    log.debug("wake-up to %s failed: %s", name, exc)
    return reached


def notify(config: Config) -> int:
    """Send every registered worker a wake-up; returns how many were reached."""
    return _send(registry_dir(config), _PREFIX, b"!")


class _Listener:
    """A datagram socket in the abstract namespace, registered as a file in ``directory``."""

    def __init__(self, directory: Path, name: str):
        self.name = name
        self.marker = directory / name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind("\0" + self.name)
            self.sock.setblocking(False)
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
        except OSError:
            self.sock.close()
            raise

    def _receive(self, timeout: float, size: int) -> bytes | None:
        """The next datagram within ``timeout`` seconds, else None."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        try:
            return self.sock.recv(size)
        except OSError:  # another thread took it
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.marker.unlink()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class WakeListener(_Listener):
    """A worker's end: :meth:`wait` returns early when a job was queued."""

    def __init__(self, config: Config):
        super().__init__(registry_dir(config), _PREFIX + secrets.token_hex(12))

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken by a queued job."""
        return self._receive(timeout, 64) is not None


# -- submitters ----------------------------------------------------------------------------

CLAIMED, DECIDED = "claimed", "decided"
CLAIM_WAIT = 0.25  # seconds for a free worker to claim a job just committed
DECISION_WAIT = 2.0  # then for its executor's check (seconds on a JVM's very first job)
_MAX_DATAGRAM = 60_000  # a larger decision is not relayed: the submitter checks itself


def watch_dir(config: Config) -> Path:
    return config.home / "run" / "jobs"


def _relay_key(config: Config) -> bytes:
    return _relay_key_at(config.master_key_path)


@functools.lru_cache(maxsize=8)
def _relay_key_at(master_key_path: Path) -> bytes:
    """Read once per process and home: every submission and claim needs it."""
    from sandbox.crypto import KeyStore, derive_key

    return derive_key(KeyStore(master_key_path).master, "job-decision-relay")


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def tell_submitter(config: Config, job_id: int, event: str,
                   decision: dict[str, Any] | None = None) -> int:
    """Tell the process that submitted ``job_id`` (if it waits on this host) that a worker
    has claimed it (``claimed``) or what the executor decided (``decided``)."""
    directory = watch_dir(config)
    prefix = f"{int(job_id)}."
    try:
        if not any(entry.name.startswith(prefix) for entry in directory.iterdir()):
            return 0  # nobody waits: the usual case once the submitter has its answer
        body = json.dumps({"job": int(job_id), "event": event, "decision": decision},
                          separators=(",", ":"), default=str).encode()
        if len(body) > _MAX_DATAGRAM:
            body = json.dumps({"job": int(job_id), "event": event, "decision": None}).encode()
        payload = _tag(_relay_key(config), body) + body
    except Exception:  # noqa: BLE001 - only a hint: the submitter then checks itself
        log.debug("job %s: could not tell the submitter", job_id, exc_info=True)
        return 0
    return _send(directory, prefix, payload)


class JobWatch(_Listener):
    """The submitter's end for one job: opened before the job is committed."""

    def __init__(self, config: Config, job_id: int):
        self.job_id = int(job_id)
        self.key = _relay_key(config)
        super().__init__(watch_dir(config), f"{self.job_id}.{secrets.token_hex(12)}")

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next authentic message about this job within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            payload = self._receive(left, 1 << 17)
            if payload is None:
                return None
            tag, body = payload[:32], payload[32:]
            if not hmac.compare_digest(tag, _tag(self.key, body)):
                continue  # not from a worker of this platform: ignored
            message = json.loads(body)
            if message.get("job") == self.job_id:
                return message
        return None

    def executor_decision(self, claim_wait: float = CLAIM_WAIT,
                          decision_wait: float = DECISION_WAIT) -> dict[str, Any] | None:
        """The executor's decision, if a worker claims the job within ``claim_wait`` s and
        its executor decides within ``decision_wait`` s more; else None."""
        message = self._next(claim_wait)
        if message is not None and message["event"] == CLAIMED:
            message = self._next(decision_wait)
        if message is None or message["event"] != DECIDED:
            return None
        return message.get("decision") or None


STALE_WATCH_SECONDS = 600.0  # a watch lives a few seconds; older registrations are leftovers


def sweep_watches(config: Config) -> int:
    """Forget registrations left by submitting processes that died while waiting."""
    removed = 0
    try:
        entries = list(os.scandir(watch_dir(config)))
    except OSError:
        return 0
    cutoff = time.time() - STALE_WATCH_SECONDS
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed


def open_watch(config: Config, job_id: int) -> JobWatch | None:
    """A :class:`JobWatch`, or None where nothing could answer it (then: check yourself):
    no worker listens on this host (workers elsewhere cannot reach this socket, so the
    submitter would only wait for nothing), or this host cannot have one."""
    try:
        if not any(entry.name.startswith(_PREFIX) for entry in registry_dir(config).iterdir()):
            return None
    except OSError:
        return None
    try:
        return JobWatch(config, job_id)
    except Exception:  # noqa: BLE001 - no socket, no master key: the submitter checks itself
        log.debug("job %s: no decision relay", job_id, exc_info=True)
        return None
