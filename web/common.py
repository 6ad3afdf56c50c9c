"""What pages and API share: who acts for which merchant, visible datasets and jobs,
request validation, result rendering, and the mapping of service errors to statuses."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from yushan.accounts import PLATFORM
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.models import (
    Authorization,
    Dataset,
    Job,
    JobKind,
    JobState,
    Role,
    Tenant,
    TenantKind,
    User,
)

MAX_SQL_BYTES = 100 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_NAME_CHARS = 200
RESULT_FORMATS: dict[str, tuple[str, str]] = {
    # format -> (file extension, media type)
    "json": ("json", "application/json"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "parquet": ("parquet", "application/vnd.apache.parquet"),
}
JOB_KINDS = tuple(k.value for k in JobKind)
ACTIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)
JOB_ROLES = (Role.PROVIDER.value, Role.MERCHANT.value)


class Refusal(Exception):
    """A request refused with an HTTP status and a fixed, value-free message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# ---------------------------------------------------------------- acting for merchants


def acting_merchants(session: Session, user: User) -> list[Tenant]:
    """Merchants ``user`` may run jobs for: its own (merchant) or those that authorised it."""
    if user.role == Role.MERCHANT.value:
        return [user.tenant]
    if user.role != Role.PROVIDER.value:
        return []
    return list(
        session.scalars(
            select(Tenant)
            .join(Authorization, Authorization.merchant_id == Tenant.id)
            .where(
                Authorization.provider_id == user.tenant_id,
                Authorization.revoked_at.is_(None),
                Tenant.kind == TenantKind.MERCHANT.value,
            )
            .order_by(Tenant.slug)
        )
    )


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


def visible_jobs(session: Session, user: User, *, states: tuple[str, ...] | None = None,
                 merchant_id: int | None = None, limit: int = 100) -> list[Job]:
    """Jobs ``user`` may see, newest first: a provider its own submissions, a merchant
    the jobs run for it, an auditor all of them; an admin none (admins read no jobs)."""
    stmt = select(Job).options(selectinload(Job.merchant), selectinload(Job.submitter))
    if user.role == Role.PROVIDER.value:
        stmt = stmt.where(Job.submitted_by == user.id)
    elif user.role == Role.MERCHANT.value:
        stmt = stmt.where(Job.merchant_id == user.tenant_id)
    elif user.role != Role.AUDITOR.value:
        return []
    if states:
        stmt = stmt.where(Job.state.in_(states))
    if merchant_id is not None:
        stmt = stmt.where(Job.merchant_id == merchant_id)
    return list(session.scalars(stmt.order_by(Job.id.desc()).limit(limit)))


def may_decide(user: User, job: Job) -> bool:
    """Only the job's merchant approves or rejects its output."""
    return user.role == Role.MERCHANT.value and user.tenant_id == job.merchant_id


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
    if len(sql.encode("utf-8")) > MAX_SQL_BYTES:
        raise Refusal(413, "too_large", f"The SQL is larger than {MAX_SQL_BYTES // 1024} KB.")
    if kind not in JOB_KINDS:
        raise Refusal(422, "invalid_kind", "'kind' must be one of: " + ", ".join(JOB_KINDS) + ".")
    if not sql.strip():
        raise Refusal(422, "invalid_sql", "The SQL is empty.")
    if len(name) > MAX_NAME_CHARS:
        raise Refusal(422, "invalid_name", f"'name' is longer than {MAX_NAME_CHARS} characters.")
    return JobRequest(merchant=merchant.strip(), kind=kind, sql=sql, name=name.strip())


def require_acting_merchant(session: Session, user: User, merchant: str) -> Tenant:
    """The merchant ``user`` may act for, else 404 (a merchant that did not authorise the
    caller looks exactly like one that does not exist)."""
    from yushan.accounts import can_act_for

    if user.role not in JOB_ROLES:
        raise Refusal(403, "forbidden", "Only merchants and service providers run jobs.")
    tenant = can_act_for(session, user, merchant)
    if tenant is None:
        raise Refusal(404, "not_found", "No such merchant among those you may act for.")
    return tenant


def service_refusal(exc: Exception) -> Refusal | None:
    """The HTTP refusal for an exception raised by the jobs service, or None when it is
    not a refusal (then it is a server error). ``jobs.errors.JobError`` carries its status
    and code; the message is ours and fixed (exception texts may quote data)."""
    from jobs.errors import JobError
    from web.errors import GENERIC_MESSAGES

    if isinstance(exc, JobError):
        return Refusal(exc.status, exc.code, GENERIC_MESSAGES.get(exc.status, "Refused."))
    return None


# ---------------------------------------------------------------- results


def plain_value(value: Any) -> Any:
    """A JSON-friendly form of a result value."""
    if isinstance(value, Decimal):
        # Aggregates (sums, averages) are what leaves; a float is what JSON readers expect.
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def table_rows(table, limit: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows (plain values) of a pyarrow Table."""
    if limit is not None:
        table = table.slice(0, limit)
    columns = list(table.column_names)
    rows = [{k: plain_value(v) for k, v in row.items()} for row in table.to_pylist()]
    return columns, rows


def render_result(table, fmt: str, *, excel: bool = False) -> bytes:
    """The table as a JSON document, CSV or Parquet file.

    ``excel`` (CSV only): UTF-8 with a byte-order mark and CRLF line ends, which Excel
    needs to open Chinese text as UTF-8 rather than the system's code page.
    """
    if fmt == "json":
        columns, rows = table_rows(table)
        return json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False).encode("utf-8")
    if fmt == "csv":
        columns, rows = table_rows(table)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n" if excel else "\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return ("\ufeff" if excel else "").encode("utf-8") + out.getvalue().encode("utf-8")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    raise Refusal(422, "invalid_format", "'format' must be one of: json, csv, parquet.")


def result_filename(job: Job, fmt: str, now: datetime | None = None) -> str:
    """``job-<id>-<UTC timestamp>.<ext>``: downloads never overwrite each other."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"job-{job.id}-{stamp}.{RESULT_FORMATS[fmt][0]}"


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
