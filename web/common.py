"""What pages and API share: who acts for which merchant, visible datasets and jobs,
request validation, result rendering, and the mapping of service errors to statuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from jobs.errors import JobError
from jobs.quota import QueueFull
from jobs.ratelimit import RateLimited
from jobs.results import RESULT_FORMATS, plain_value, render_result, stream_result, table_rows  # noqa: F401 - re-exported
from jobs.results import result_filename as _result_filename
from jobs.service import KINDS, validate_request
from jobs.service import visible_jobs as service_visible_jobs
from yushan import access
from yushan.accounts import PLATFORM
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.models import (
    Dataset,
    Job,
    JobState,
    Role,
    Tenant,
    User,
)

if TYPE_CHECKING:
    from flask import Response

    from sandbox.output import OpenedOutput

MAX_JSON_BYTES = 1024 * 1024
JOB_KINDS = KINDS
ACTIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)
JOB_ROLES = access.JOB_ROLES


class Refusal(Exception):
    """A request refused with an HTTP status and a fixed, value-free message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# ---------------------------------------------------------------- acting for merchants


def acting_merchants(session: Session, user: User) -> list[Tenant]:
    """Merchants ``user`` may run jobs for (:func:`yushan.access.acting_merchants`)."""
    return access.acting_merchants(session, user)


def visible_datasets(session: Session, config: Config, user: User) -> list[DatasetInfo]:
    """Datasets ``user`` may use or inspect, by full name.

    Merchants and providers: what jobs for their merchants may read. Admins and auditors:
    the platform's own datasets (never a merchant's, which they cannot use).
    """
    found: dict[str, DatasetInfo] = {}
    if user.role in JOB_ROLES:
        for merchant in acting_merchants(session, user):
            found.update(readable_datasets(session, config, merchant.slug))
    else:
        found.update(readable_datasets(session, config, PLATFORM))
        # Platform datasets not shared with merchants are still the platform's own.
        if user.role == Role.ADMIN.value:
            from yushan.catalog import dataset_info

            for ds in session.scalars(
                select(Dataset)
                .join(Tenant, Dataset.tenant_id == Tenant.id)
                .where(Tenant.slug == PLATFORM, Dataset.withdrawn_at.is_(None))
                .options(selectinload(Dataset.columns), selectinload(Dataset.tenant))
            ):
                found.setdefault(ds.full_name.lower(), dataset_info(config, ds))
    return [found[name] for name in sorted(found)]


def dataset_json(info: DatasetInfo) -> dict[str, Any]:
    """The API's dataset document (no storage paths, no keys)."""
    return {
        "name": info.full_name,
        "owner": info.owner,
        "consumer_data": info.is_consumer_data,
        "entity_column": info.entity_column,
        "k": info.k,
        "member_key": info.member_key,
        "columns": [
            {"name": c.name, "type": c.data_type, "class": c.column_class} for c in info.columns
        ],
    }


# ---------------------------------------------------------------- jobs


def visible_jobs(session: Session, user: User, **filters: Any) -> list[Job]:
    """Jobs ``user`` may see, newest first (:func:`jobs.service.visible_jobs`)."""
    return service_visible_jobs(session, user, **filters)


def may_resubmit(session: Session, user: User, job: Job) -> bool:
    """Whether ``user`` may submit a job like ``job`` again (edit and resubmit): only for a
    merchant they act for now; a provider whose authorisation was revoked may not."""
    return access.act_for(session, user, job.merchant.slug).allowed


def may_decide(user: User, job: Job) -> bool:
    """Only the job's merchant approves or rejects its output."""
    return access.decide_job(user, job).allowed


@dataclass(frozen=True)
class JobRequest:
    merchant: str
    kind: str
    sql: str
    name: str


def parse_job_request(body: Any, *, with_name: bool) -> JobRequest:
    """Validate ``{merchant, kind, sql, name?}``: 400 wrong shape, 413 SQL too large,
    422 unknown kind or empty SQL."""
    if not isinstance(body, dict):
        raise Refusal(400, "bad_request", "The body must be a JSON object.")
    merchant, kind, sql = body.get("merchant"), body.get("kind"), body.get("sql")
    name = body.get("name", "") if with_name else ""
    for field, value in (("merchant", merchant), ("kind", kind), ("sql", sql)):
        if not isinstance(value, str):
            raise Refusal(400, "bad_request", f"'{field}' must be a string.")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise Refusal(400, "bad_request", "'name' must be a string.")
    try:
        validate_request(kind, sql, name)  # the service's own checks, answered here first
    except JobError as exc:
        raise Refusal(exc.status, exc.code, str(exc)) from None  # fixed, value-free texts
    return JobRequest(merchant=merchant.strip(), kind=kind, sql=sql, name=name.strip())


def require_acting_merchant(session: Session, user: User, merchant: str) -> Tenant:
    """The merchant ``user`` may act for, else 404 (a merchant that did not authorise the
    caller looks exactly like one that does not exist)."""
    permission = access.act_for(session, user, merchant)
    if permission.hidden:
        raise Refusal(404, "not_found", "No such merchant among those you may act for.")
    if not permission:
        raise Refusal(403, "forbidden", "Only merchants and service providers run jobs.")
    return permission.target


def service_refusal(exc: Exception) -> Refusal | None:
    """The HTTP refusal for an exception raised by the jobs service, or None when it is
    not a refusal (then it is a server error). ``jobs.errors.JobError`` carries its status
    and code; the message is ours and fixed (exception texts may quote data)."""
    from web.errors import GENERIC_MESSAGES

    if isinstance(exc, RateLimited):
        return Refusal(exc.status, exc.code,
                       f"Too many job submissions for this merchant in the last hour (at most "
                       f"{exc.limit}); try again in {exc.retry_after} s.",
                       {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QueueFull):
        return Refusal(exc.status, exc.code,
                       f"This merchant has {exc.quota} jobs queued or running, the most it may "
                       f"have; try again in {exc.retry_after} s.",
                       {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, JobError):
        return Refusal(exc.status, exc.code, GENERIC_MESSAGES.get(exc.status, "Refused."))
    return None


# ---------------------------------------------------------------- results
# One renderer for every download (jobs.results); re-exported for the views.


def result_filename(job: Job, fmt: str, now: datetime | None = None) -> str:
    """``job-<id>-<UTC timestamp>.<ext>``: downloads never overwrite each other."""
    return _result_filename(job.id, fmt, now)


def excel_requested() -> bool:
    """``excel=1`` on a CSV download: UTF-8 with a BOM and CRLF line ends (jobs.results)."""
    from flask import request

    return request.args.get("excel", "").strip().lower() in ("1", "true", "yes", "on")


def download_response(output: OpenedOutput, fmt: str, disposition: str) -> Response:
    """A stored output as a streamed download (:func:`jobs.results.stream_result`).

    The body is produced after the view returns, so the view commits the download's audit
    entry first. It reads only the output file with its key, never the request or the
    database session: no ``stream_with_context`` is needed, and none is held open.
    """
    from flask import Response

    response = Response(stream_result(output, fmt, excel=excel_requested()))
    response.headers["Content-Type"] = RESULT_FORMATS[fmt][1]
    response.headers["Content-Disposition"] = disposition
    if fmt == "parquet":  # the stored file as it is: its size is known
        response.content_length = output.byte_size
    return response


def named_result_filename(job: Job, fmt: str, now: datetime | None = None) -> str:
    """The download's name for people: the job's name (any script) before the id and time,
    e.g. ``会员性别-job-12-20260101T000000Z.csv``; unnamed jobs keep the plain name."""
    import re

    plain = result_filename(job, fmt, now)
    label = re.sub(r"[^\w.-]+", "_", job.name or "", flags=re.UNICODE).strip("._-")[:60]
    return f"{label}-{plain}" if label else plain


def attachment_header(filename: str) -> str:
    """A Content-Disposition for any file name: ASCII fallback plus RFC 5987 UTF-8 form."""
    from urllib.parse import quote

    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"
