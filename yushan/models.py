"""Metadata database: SQLAlchemy 2 typed models.

Schema changes go through Alembic (``yushan/migrations``); see ``make migration``.
"""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names: Alembic needs them on SQLite batch migrations.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TenantKind(enum.StrEnum):
    PLATFORM = "platform"
    MERCHANT = "merchant"
    PROVIDER = "provider"


class Role(enum.StrEnum):
    ADMIN = "admin"
    AUDITOR = "auditor"
    MERCHANT = "merchant"
    PROVIDER = "provider"


class ColumnClass(enum.StrEnum):
    IDENTIFIER = "identifier"
    PRIVATE = "private"
    QUASI = "quasi"
    PUBLIC = "public"


class ReleaseMode(enum.StrEnum):
    """How a consumer dataset's statistics are released (policy contract v2)."""

    DP = "dp"  # differentially private, charged to the merchant's budget (default)
    THRESHOLD = "threshold"  # exact, each released row over >= k consumers (admin's choice)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    BLOCKED = "blocked"
    FAILED = "failed"
    CANCELLED = "cancelled"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class JobKind(enum.StrEnum):
    AGGREGATE = "aggregate"
    SEGMENT = "segment"


TZDateTime = DateTime(timezone=True)


class Tenant(Base):
    """The platform, a merchant, or a service provider organisation."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)

    users: Mapped[list[User]] = relationship(back_populates="tenant")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    is_demo: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship(back_populates="users")


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)

    user: Mapped[User] = relationship()


class Authorization(Base):
    """A merchant authorises a service provider to run jobs on its behalf."""

    __tablename__ = "authorizations"
    __table_args__ = (
        Index(
            "uq_authorizations_active",
            "merchant_id",
            "provider_id",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    view_results: Mapped[bool] = mapped_column(Boolean, default=False)
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    granted_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)

    merchant: Mapped[Tenant] = relationship(foreign_keys=[merchant_id])
    provider: Mapped[Tenant] = relationship(foreign_keys=[provider_id])


class Dataset(Base):
    """A platform dataset (Parquet in the warehouse) or a merchant upload (encrypted)."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index(
            "uq_datasets_active_name",
            "full_name",
            unique=True,
            sqlite_where=text("withdrawn_at IS NULL"),
            postgresql_where=text("withdrawn_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    full_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # True when rows describe consumers: then entity_column and k are set (policy P3).
    is_consumer_data: Mapped[bool] = mapped_column(Boolean, default=False)
    entity_column: Mapped[str | None] = mapped_column(String(128), nullable=True)
    k: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Consumer data only: how released statistics are protected (ReleaseMode), and in dp
    # mode how much one consumer may contribute (groups, rows per group).
    release_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    max_groups: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # True when the entity column is unique (one row per consumer, e.g. profiles): a group
    # key taken from such a row puts each consumer in exactly one group.
    one_row_per_unit: Mapped[bool] = mapped_column(Boolean, default=False)
    # Platform datasets shared with merchants may be read by their jobs.
    shared: Mapped[bool] = mapped_column(Boolean, default=True)
    member_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Where the files are, relative to YUSHAN_HOME (platform data: the current version's).
    storage_path: Mapped[str] = mapped_column(String(500))
    # Platform data: the current version (a refresh adds one; see DatasetVersion).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    row_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    byte_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Merchant uploads: the text encoding the CSV arrived in (utf-8, gb18030), or None.
    source_encoding: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)

    tenant: Mapped[Tenant] = relationship()
    columns: Mapped[list[DatasetColumn]] = relationship(
        back_populates="dataset",
        order_by="DatasetColumn.position",
        cascade="all, delete-orphan",
    )

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


class DatasetVersion(Base):
    """One immutable version of a platform dataset's files. A refresh adds a version; the
    files of a superseded one are removed once no pending job may still read them."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    storage_path: Mapped[str] = mapped_column(String(500))
    source_format: Mapped[str] = mapped_column(String(16), default="parquet")
    row_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    files_removed_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)


class DatasetColumn(Base):
    __tablename__ = "dataset_columns"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    data_type: Mapped[str] = mapped_column(String(64))
    column_class: Mapped[str] = mapped_column(String(16), default=ColumnClass.PUBLIC.value)
    description: Mapped[str] = mapped_column(Text, default="")
    # Per-consumer bounds of a summable numeric column (dp mode clamps each consumer's
    # per-group sum to them); None: the column may not be summed in dp mode.
    lower_bound: Mapped[float | None] = mapped_column(Float, nullable=True)
    upper_bound: Mapped[float | None] = mapped_column(Float, nullable=True)

    dataset: Mapped[Dataset] = relationship(back_populates="columns")


# Job ids are random, not a sequence: an id tells a tenant nothing about how many jobs
# others submitted (policy P8, api.md "Additions"). Drawn from [10**15, 2**53): always 16
# digits, and exact for JSON readers (JavaScript). 64-bit in the database.
MIN_JOB_ID = 10**15
MAX_JOB_ID = 2**53 - 1
JobId = BigInteger().with_variant(Integer, "sqlite")  # SQLite: INTEGER PRIMARY KEY (64-bit rowid)


def random_job_id() -> int:
    """A random job id (jobs.lifecycle.create also makes sure it is not taken)."""
    return MIN_JOB_ID + secrets.randbelow(MAX_JOB_ID - MIN_JOB_ID + 1)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(JobId, primary_key=True, autoincrement=False, default=random_job_id)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    submitted_by: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    sql: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(32), default=JobState.QUEUED.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # The policy decision as data: {"decision", "violations": [...], "columns_read": ...}.
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    violations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Redacted for the submitter: {"class", "message"}; the full text is in the audit trail.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    released_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    suppressed_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # How the released values are protected ("dp", "threshold"; None: no consumer data),
    # for dp jobs what the run was charged (the latest attempt's cost) and each released
    # column's 95% half-width ({column: {"ci95": x}}).
    release: Mapped[str | None] = mapped_column(String(16), nullable=True)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Why the merchant rejected the output (its own words, shown to the submitter).
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The X-Request-ID of the web request that submitted it: the worker's log lines about
    # the job carry it too (yushan.logs).
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)

    merchant: Mapped[Tenant] = relationship()
    submitter: Mapped[User] = relationship()
    output: Mapped[JobOutput | None] = relationship(back_populates="job", uselist=False)


class JobOutput(Base):
    """A job's released rows, encrypted at rest, quarantined until approved."""

    __tablename__ = "job_outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(JobId, ForeignKey("jobs.id"), unique=True)
    storage_path: Mapped[str] = mapped_column(String(500))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    suppressed_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    byte_size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Per-segment sizes for segment jobs, and other summary figures.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    platform_reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    platform_reviewed_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)

    job: Mapped[Job] = relationship(back_populates="output")


class BudgetPeriod(Base):
    """A merchant's differential privacy budget for one period (policy D5), and what its
    jobs have spent of it. A new period opens (audited) with the allowance of the
    merchant's latest period, or the platform default for a merchant that has none."""

    __tablename__ = "budget_periods"
    __table_args__ = (UniqueConstraint("merchant_id", "period_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    period_start: Mapped[datetime] = mapped_column(TZDateTime)
    period_end: Mapped[datetime] = mapped_column(TZDateTime)  # exclusive
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    delta_spent: Mapped[float] = mapped_column(Float, default=0.0)
    opened_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)

    merchant: Mapped[Tenant] = relationship()


def budget_period(at: datetime | None = None) -> tuple[datetime, datetime]:
    """The budget period holding ``at`` (now): its calendar month in UTC, [start, end)."""
    at = (at or utcnow()).astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    return start, datetime(at.year + (at.month == 12), at.month % 12 + 1, 1, tzinfo=UTC)


class BudgetCharge(Base):
    """One run of a dp job charged to its merchant's budget: once per (job, attempt)."""

    __tablename__ = "budget_charges"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_id: Mapped[int] = mapped_column(ForeignKey("budget_periods.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    charged_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class IdempotencyKey(Base):
    """The answer to a creating API request sent with an ``Idempotency-Key`` header, kept
    for 24 hours: a retry with the same key and body gets it again and creates nothing
    (``web/idempotency.py``). Keys are per user; written in the transaction of what the
    request created."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the method, path and (canonical) body: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    location: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, index=True)


class UploadState(enum.StrEnum):
    """An asynchronous upload (``Prefer: respond-async``): validating until the same
    validation as a synchronous upload accepts or rejects it; failed when it could not
    finish (an unexpected error, or the web process stopped while validating)."""

    VALIDATING = "validating"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


def random_upload_id() -> str:
    """An opaque upload id: random, so that it reveals nothing about other uploads."""
    return "up_" + secrets.token_hex(12)


class Upload(Base):
    """One asynchronous upload, from its receipt to its outcome (``onboarding/background.py``).

    The received file waits in ``workspace`` (a private directory under the home's work
    directory, removed with the outcome). ``result`` is the synchronous 201 body once
    accepted; ``error`` the synchronous error body's ``error`` object once rejected or
    failed (with ``status``, the HTTP status the synchronous upload would have answered).
    ``runner`` names the process validating it (host:pid:boot), so that a restarted web
    process marks the uploads it was validating as failed."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_state", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=random_upload_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200), default="")
    # The form's text fields as sent (a page shows them again after a rejection).
    schema_text: Mapped[str] = mapped_column(Text, default="")
    encoding: Mapped[str | None] = mapped_column(String(32), nullable=True)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=UploadState.VALIDATING.value)
    phase: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    workspace: Mapped[str | None] = mapped_column(String(500), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime, nullable=True)


class Setting(Base):
    """Platform-wide switches the admin sets (e.g. platform review of segments)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)


class AuditEntry(Base):
    """One entry of the tamper-evident audit trail (hash-chained; see ``audit/``)."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    origin: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64), index=True)
    objects: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """An Ed25519 signature over the chain head at ``seq``."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class AuditHead(Base):
    """A single row that serialises appends to the chain (row lock / conditional update)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    head_hash: Mapped[str] = mapped_column(String(64))
