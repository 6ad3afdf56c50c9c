"""Asynchronous uploads (``Prefer: respond-async``): the file is received by the request,
then validated and stored in a small thread pool of the web process, by the very function
a synchronous upload calls (:func:`onboarding.ingest.ingest_file`).

An :class:`~yushan.models.Upload` row follows each one: ``validating`` with its phase
(``queued``, ``reading``, ``validating``, ``storing``) and overall progress (0..1), then
``accepted`` (the synchronous 201 body), ``rejected`` (the synchronous error) or
``failed``. The outcome is written in the transaction that audits it. The received file
waits in a private workspace under the home's work directory and is removed with the
outcome, whatever it is. When the web process stops while validating, the next start
(:func:`sweep_interrupted`) marks its uploads ``failed`` and removes their files.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from onboarding.errors import OnboardingError
from onboarding.ingest import WORKSPACE_PREFIX, UploadResult, ingest_file
from yushan.config import Config
from yushan.db import session_factory
from yushan.models import Upload, UploadState, User

if TYPE_CHECKING:
    from audit import Actor

log = logging.getLogger(__name__)

HOST = socket.gethostname()
# This process: a restarted process (even one given the same pid) has another name.
RUNNER = f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
HEARTBEAT_SECONDS = 30
# An upload whose process has not beaten for this long is taken for lost (another host).
STALE_AFTER = timedelta(seconds=6 * HEARTBEAT_SECONDS)
PROGRESS_WRITE_SECONDS = 0.5
# How long a client should wait before asking again (Retry-After while validating).
RETRY_AFTER_SECONDS = 2
RESTARTED_MESSAGE = "The server restarted while validating; upload the file again."
FAILED_MESSAGE = "The upload could not be validated because of an internal error; upload the file again."

# ingest_file's stages -> (phase, where the stage starts, its share of the whole).
STAGES: dict[str, tuple[str, float, float]] = {
    "receive": ("reading", 0.0, 0.0),
    "read": ("reading", 0.0, 0.35),
    "parse": ("validating", 0.35, 0.05),
    "validate": ("validating", 0.40, 0.45),
    "store": ("storing", 0.85, 0.15),
}


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_workspace(config: Config) -> Path:
    """A private directory (0700) for one upload's file, kept until its outcome."""
    config.workspaces_dir.mkdir(parents=True, exist_ok=True)
    path = config.workspaces_dir / f"{WORKSPACE_PREFIX}{secrets.token_hex(12)}"
    path.mkdir(mode=0o700)
    return path


def remove_workspace(config: Config, relative: str | None) -> None:
    """Remove an upload's workspace (only ever one under the home's work directory)."""
    if not relative:
        return
    path = (config.home / relative).resolve()
    base = config.workspaces_dir.resolve()
    if path.parent == base and path.name.startswith(WORKSPACE_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def relative_workspace(config: Config, path: Path) -> str:
    return str(path.resolve().relative_to(config.home.resolve()))


def status_document(upload: Upload) -> dict[str, Any]:
    """``GET /api/v1/uploads/<id>``: state, phase and progress; the synchronous 201 body
    as ``dataset`` once accepted; the synchronous error object as ``error`` otherwise."""
    return {
        "id": upload.id,
        "name": upload.name,
        "state": upload.state,
        "progress": round(float(upload.progress or 0.0), 4),
        "phase": upload.phase,
        "dataset": upload.result if upload.state == UploadState.ACCEPTED.value else None,
        "error": upload.error if upload.state in (UploadState.REJECTED.value,
                                                  UploadState.FAILED.value) else None,
        "created_at": _aware(upload.created_at).isoformat() if upload.created_at else None,
        "finished_at": _aware(upload.finished_at).isoformat() if upload.finished_at else None,
    }


def _finish(row: Upload, state: UploadState, *, status: int, result: dict[str, Any] | None = None,
            error: dict[str, Any] | None = None) -> None:
    row.state = state.value
    row.phase = state.value
    row.status = status
    row.result = result
    row.error = error
    row.finished_at = _now()
    row.heartbeat_at = row.finished_at
    if state == UploadState.ACCEPTED:
        row.progress = 1.0


class _ProgressWriter:
    """ingest_file's progress callback: phase and overall fraction into the upload's row,
    in a short transaction of its own, at most every PROGRESS_WRITE_SECONDS (and at each
    new phase). Progress only moves forward; a failed write is only logged."""

    def __init__(self, config: Config, upload_id: str):
        self.config = config
        self.upload_id = upload_id
        self.phase = ""
        self.value = 0.0
        self.written_at = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        phase, start, share = STAGES.get(stage, ("validating", self.value, 0.0))
        value = max(self.value, min(start + share * max(0.0, min(fraction, 1.0)), 0.99))
        now = time.monotonic()
        if phase == self.phase and now - self.written_at < PROGRESS_WRITE_SECONDS:
            self.value = value
            return
        self.phase, self.value, self.written_at = phase, value, now
        try:
            with session_factory(self.config)() as session:
                session.execute(update(Upload).where(
                    Upload.id == self.upload_id, Upload.state == UploadState.VALIDATING.value,
                ).values(phase=phase, progress=value, heartbeat_at=_now()))
                session.commit()
        except SQLAlchemyError:
            log.warning("upload %s: progress not recorded", self.upload_id, exc_info=True)


class UploadRunner:
    """The web process's pool for asynchronous uploads: ``workers`` validate at once and
    at most ``backlog`` more wait; beyond that :meth:`reserve` says no and the request is
    served synchronously (``Prefer`` is a preference)."""

    def __init__(self, config: Config, workers: int = 2, backlog: int = 8):
        self.config = config
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers + backlog)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._beating: threading.Thread | None = None
        self._running = 0

    def reserve(self) -> bool:
        """Take a place for one upload (give it back with :meth:`release` unless submitted)."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def submit(self, upload_id: str, actor: Actor,
               done: Callable[[str], None] | None = None) -> None:
        """Validate the committed upload ``upload_id`` in the pool (its place reserved)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix="yushan-upload")
            self._running += 1
            if self._beating is None or not self._beating.is_alive():
                self._beating = threading.Thread(target=self._beat, name="yushan-upload-heartbeat",
                                                 daemon=True)
                self._beating.start()
        self._pool.submit(self._run, upload_id, actor, done)

    def _run(self, upload_id: str, actor: Actor, done: Callable[[str], None] | None) -> None:
        try:
            run_upload(self.config, upload_id, actor)
        finally:
            with self._lock:
                self._running -= 1
            self.release()
            if done is not None:
                done(upload_id)

    def _beat(self) -> None:
        """Keep this process's validating uploads' heartbeats fresh while any runs."""
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self._running == 0:
                    self._beating = None
                    return
            try:
                with session_factory(self.config)() as session:
                    session.execute(update(Upload).where(
                        Upload.runner == RUNNER, Upload.state == UploadState.VALIDATING.value,
                    ).values(heartbeat_at=_now()))
                    session.commit()
            except SQLAlchemyError:
                log.warning("upload heartbeat not recorded", exc_info=True)


def run_upload(config: Config, upload_id: str, actor: Actor) -> None:
    """Validate and store one received upload with :func:`ingest_file`; record its outcome
    in the transaction that audits it (``failed`` on an unexpected error). Its workspace
    is removed whatever happens."""
    session = session_factory(config)()
    relative: str | None = None
    try:
        row = session.get(Upload, upload_id)
        if row is None or row.state != UploadState.VALIDATING.value:
            return
        relative = row.workspace
        user = session.get(User, row.created_by)
        if user is None or not relative:
            raise RuntimeError("upload without its user or file")
        workspace = config.home / relative

        # The files go before the outcome is committed: whoever sees the outcome finds
        # nothing of the upload left in the work directory.
        def accepted(result: UploadResult) -> None:
            remove_workspace(config, relative)
            own = session.get(Upload, upload_id)
            if own is not None:
                _finish(own, UploadState.ACCEPTED, status=201, result=result.to_dict())
                own.dataset_id = result.dataset.id
                own.workspace = None

        def refused(exc: OnboardingError) -> None:
            remove_workspace(config, relative)
            own = session.get(Upload, upload_id)
            if own is not None:
                _finish(own, UploadState.REJECTED, status=exc.status, error=exc.to_dict()["error"])
                own.workspace = None

        name, schema, filename = row.name, row.schema_text, row.filename
        encoding, key = row.encoding or None, row.idempotency_key
        session.commit()
        ingest_file(session, config, user, name=name, schema=schema,
                    raw=workspace / "upload.bin", workspace=workspace, filename=filename,
                    actor=actor, encoding=encoding, progress=_ProgressWriter(config, upload_id),
                    idempotency_key=key, before_commit=accepted, on_refuse=refused)
    except OnboardingError:
        pass  # rejected: recorded and audited by ingest_file
    except Exception:
        log.exception("upload %s failed", upload_id)
        session.rollback()
        mark_failed(session, upload_id, FAILED_MESSAGE)
    finally:
        session.close()
        remove_workspace(config, relative)


def mark_failed(session: Session, upload_id: str, message: str) -> None:
    try:
        row = session.get(Upload, upload_id)
        if row is not None and row.state == UploadState.VALIDATING.value:
            _finish(row, UploadState.FAILED, status=500,
                    error={"code": "upload_failed", "message": message})
            row.workspace = None
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.warning("upload %s: failure not recorded", upload_id, exc_info=True)


def runner_gone(runner: str | None, heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    """Is the process that validates an upload gone? Never this process; on this host a
    process that no longer runs (or an earlier one with this pid); anywhere, a process
    whose heartbeat stopped STALE_AFTER ago."""
    if runner == RUNNER:
        return False
    now = now or _now()
    if heartbeat_at is None or _aware(heartbeat_at) < now - STALE_AFTER:
        return True
    parts = (runner or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    if host != HOST:
        return False
    from sandbox.limits import pid_alive

    return pid == os.getpid() or not pid_alive(pid)


def sweep_interrupted(config: Config, session: Session | None = None,
                      upload_id: str | None = None) -> list[str]:
    """Mark ``failed`` the uploads still validating whose process is gone (a restart),
    and remove their files; returns their ids. Run when the web app starts, and for one
    upload when its status is asked for."""
    own = session is None
    session = session or session_factory(config)()
    swept: list[str] = []
    try:
        stmt = select(Upload).where(Upload.state == UploadState.VALIDATING.value)
        if upload_id is not None:
            stmt = stmt.where(Upload.id == upload_id)
        for row in session.scalars(stmt):
            if not runner_gone(row.runner, row.heartbeat_at):
                continue
            remove_workspace(config, row.workspace)
            _finish(row, UploadState.FAILED, status=503,
                    error={"code": "interrupted", "message": RESTARTED_MESSAGE})
            row.workspace = None
            swept.append(row.id)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.warning("interrupted uploads not swept: %s", type(exc).__name__)
    finally:
        if own:
            session.close()
    if swept:
        log.warning("uploads interrupted by a restart marked failed: %s", ", ".join(swept))
    return swept
