"""Wake idle workers the moment a job is queued, instead of at their next poll.

Each worker on this host listens on a Unix datagram socket in Linux's abstract namespace
(no file to clean up; the path length of ``YUSHAN_HOME`` does not matter) and registers
its name as a file under ``YUSHAN_HOME/run/wake/``. Whoever queues a job (a submission, a
retry) marks the database session; once that transaction has *committed*, every
registered worker gets one byte. A worker that wakes still claims through the durable
queue, so a wake-up is only a hint: a lost or spurious one (any local user can send to an
abstract socket) costs nothing but a poll, and workers on other hosts, which no datagram
reaches, keep polling the queue.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import select
import socket
from pathlib import Path

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


def notify(config: Config) -> int:
    """Send every registered worker a wake-up; returns how many were reached."""
    directory = registry_dir(config)
    try:
        names = [entry.name for entry in directory.iterdir() if entry.name.startswith(_PREFIX)]
    except OSError:
        return 0
    reached = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            try:
                sender.sendto(b"!", "\0" + name)
                reached += 1
            except ConnectionRefusedError:
                # Nobody listens under that name any more (a killed worker): forget it.
                with contextlib.suppress(OSError):
                    (directory / name).unlink()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):  # full: it is awake anyway
                    log.debug("wake-up to %s failed: %s", name, exc)
    return reached


class WakeListener:
    """A worker's end: :meth:`wait` returns early when a job was queued."""

    def __init__(self, config: Config):
        self.name = _PREFIX + secrets.token_hex(12)
        self.marker = registry_dir(config) / self.name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind("\0" + self.name)
            self.sock.setblocking(False)
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
        except OSError:
            self.sock.close()
            raise

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken by a queued job."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        with contextlib.suppress(OSError):  # another slot may have taken this one
            self.sock.recv(64)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.marker.unlink()
        self.sock.close()
