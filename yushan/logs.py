"""Log lines: plain text or JSON (``YUSHAN_LOG_FORMAT=json``), with the request and job
they belong to.

Every web request gets an id (a sane incoming ``X-Request-ID``, else a new one); while the
request is handled, and while a worker runs a job, every log line of that thread carries
``request_id`` (and ``job_id``), whoever logs it: a filter on the handler reads them from
context variables set by :func:`bind`. A job remembers the id of the request that
submitted it (``jobs.request_id``, named in its ``job.submit`` audit entry), so the
worker's lines about it carry the same id.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# An incoming id is kept when it is short and plain (a proxy's UUID, a trace id);
# anything else is replaced, so a log line never carries a caller's arbitrary text.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_FIELDS = ("request_id", "job_id")

request_id_var: ContextVar[str | None] = ContextVar("yushan_request_id", default=None)
job_id_var: ContextVar[int | None] = ContextVar("yushan_job_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(incoming: str | None) -> str:
    """The incoming ``X-Request-ID`` when it is sane, else a new id."""
    value = (incoming or "").strip()
    return value if _SANE_ID.fullmatch(value) else new_request_id()


def current_request_id() -> str | None:
    return request_id_var.get()


@contextmanager
def bind(*, request_id: str | None = None, job_id: int | None = None) -> Iterator[None]:
    """Log lines of this thread (and of the context it runs) carry these ids meanwhile."""
    request_token = request_id_var.set(request_id) if request_id is not None else None
    job_token = job_id_var.set(job_id) if job_id is not None else None
    try:
        yield
    finally:
        if job_token is not None:
            job_id_var.reset(job_token)
        if request_token is not None:
            request_id_var.reset(request_token)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``job_id`` (None outside a request or a job) to a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with ``[request_id=... job_id=...]`` when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{name}={getattr(record, name)}" for name in _FIELDS
                       if getattr(record, name, None) is not None)
        return f"{line} [{ids}]" if ids else line


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, the ids, and any
    ``extra`` fields the call passed."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted (a test runner may
    swap it), like :data:`logging.lastResort`."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: int | str = logging.WARNING, fmt: str = "text",
              stream: Any = None) -> logging.Handler:
    """Send the process's log lines to stderr (or ``stream``) in ``fmt``; replaces the
    handlers a previous call installed. Returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler._yushan = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, or basicConfig's: either would print every line twice.
        if getattr(old, "_yushan", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
