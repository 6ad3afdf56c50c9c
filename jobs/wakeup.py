"""Wake-ups for this host's idle workers when a job is queued.

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
