"""Upload -> validate -> encrypt -> register, all or nothing.

Plaintext exists only in a private workspace (``YUSHAN_HOME/work/upload-<random>``, mode
0700) that is removed when the upload ends, whatever the outcome. The dataset's database
row, its encrypted files and its audit entries are committed together; on any failure the
files are removed and nothing is registered.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from onboarding import errors
from onboarding.csv_reader import (
    MAX_LINE_BYTES,
    check_filename,
    codec_for,
    normalise_csv,
    save_upload,
    sniff_format,
)
from onboarding.errors import OnboardingError
from onboarding.parquet_reader import number_parquet
from onboarding.report import FileRejected, ValidationReport
from onboarding.schema import UploadSchema, check_dataset_name, parse_schema
from yushan import access, metrics
from yushan.config import Config
from yushan.db import end_transaction
from yushan.models import ColumnClass, Dataset, DatasetColumn, Tenant, User

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from audit import Actor

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
WORKSPACE_PREFIX = "upload-"


def _quiet(_stage: str, _fraction: float) -> None:
    return None


@contextmanager
def upload_workspace(config: Config) -> Iterator[Path]:
    """A private directory for one upload's plaintext, removed on exit."""
    config.workspaces_dir.mkdir(parents=True, exist_ok=True)
    path = config.workspaces_dir / f"{WORKSPACE_PREFIX}{secrets.token_hex(12)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def merchant_of(session: Session, user: User) -> Tenant:
    """The merchant a user uploads for: its own tenant, for merchant users only."""
    permission = access.manage_own_data(user)
    if not permission:
        raise errors.forbidden(permission.reason)
    tenant = session.get(Tenant, user.tenant_id)
    if tenant is None:
        raise errors.forbidden()
    return tenant


def active_dataset(session: Session, full_name: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.full_name == full_name, Dataset.withdrawn_at.is_(None))
    )


@dataclass(frozen=True)
class UploadResult:
    dataset: Dataset
    report: ValidationReport

    def to_dict(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "dataset": ds.full_name,
            "name": ds.name,
            "rows": ds.row_count,
            "bytes": ds.byte_size,
            "member_key": ds.member_key,
            "columns": [{"name": c.name, "type": c.data_type, "class": c.column_class}
                        for c in ds.columns],
            "report": self.report.to_dict(),
        }


def upload_dataset(session: Session, config: Config, user: User, *, name: Any, schema: Any,
                   source: BinaryIO, filename: str | None, actor: Actor,
                   encoding: str | None = None, spark: SparkSession | None = None,
                   progress: Progress = _quiet, expected_size: int | None = None) -> UploadResult:
    """Stream ``source`` into a private workspace and ingest it (CLI, tests)."""
    with upload_workspace(config) as workspace:
        raw = workspace / "upload.bin"
        try:
            save_upload(source, raw, config.max_upload_bytes, progress, expected_size)
        except OnboardingError as exc:
            _refuse(session, actor, exc, name)
            raise
        return ingest_file(session, config, user, name=name, schema=schema, raw=raw,
                           workspace=workspace, filename=filename, actor=actor,
                           encoding=encoding, spark=spark, progress=progress)


@dataclass(frozen=True)
class _Checked:
    merchant: Tenant
    short: str
    schema: UploadSchema
    filename: str


def _check_request(session: Session, user: User, *, name: Any, schema: Any,
                   filename: str | None, encoding: str | None) -> _Checked:
    """The checks that need no file content: who uploads, the name (free), the schema,
    the file's name and the encoding's name. Raises OnboardingError (not audited)."""
    merchant = merchant_of(session, user)
    short = check_dataset_name(name)
    declared = schema if isinstance(schema, UploadSchema) else parse_schema(schema)
    plain_name = check_filename(filename)
    codec_for(encoding)  # an unknown encoding name is a 400 before any work
    full_name = f"{merchant.slug}.{short}"
    if active_dataset(session, full_name) is not None:
        raise errors.conflict(f"A dataset named {short} already exists; withdraw it first "
                              "or choose another name.")
    return _Checked(merchant, short, declared, plain_name)


def precheck(session: Session, user: User, *, name: Any, schema: Any, filename: str | None,
             actor: Actor, encoding: str | None = None) -> Tenant:
    """The checks of :func:`ingest_file` that need no file content, for an upload
    validated later (asynchronously): a refusal is audited and raised exactly as
    :func:`ingest_file` would. Returns the merchant. :func:`ingest_file` checks again."""
    try:
        return _check_request(session, user, name=name, schema=schema, filename=filename,
                              encoding=encoding).merchant
    except OnboardingError as exc:
        _refuse(session, actor, exc, name, merchant_slug=user_tenant_slug(session, user))
        raise


def ingest_file(session: Session, config: Config, user: User, *, name: Any, schema: Any,
                raw: Path, workspace: Path, filename: str | None, actor: Actor,
                encoding: str | None = None, spark: SparkSession | None = None,
                progress: Progress = _quiet, idempotency_key: str | None = None,
                before_commit: Callable[[UploadResult], None] | None = None,
                on_refuse: Callable[[OnboardingError], None] | None = None) -> UploadResult:
    """Validate the received file ``raw`` (inside ``workspace``) and register it, or refuse.

    The one path of every upload, synchronous or not (``onboarding/background.py``).
    Refusals raise :class:`OnboardingError` (400/403/409/413/422) after auditing them; a
    422 carries the validation report. Commits ``session``; ``before_commit(result)`` runs
    in that transaction (the API keeps its answer for an ``idempotency_key``, which the
    ``dataset.upload`` entry notes), and ``on_refuse(error)`` in the transaction that
    audits a refusal. No transaction is held while the file is validated.
    """
    try:
        checked = _check_request(session, user, name=name, schema=schema, filename=filename,
                                 encoding=encoding)
        end_transaction(session)  # SQLite: no write lock held while Spark validates
        report = _validate(config, workspace, raw, checked.filename, checked.schema, encoding,
                           spark, progress)
        if not report.passed:
            raise errors.rejected(report.to_dict())
    except OnboardingError as exc:
        _refuse(session, actor, exc, name, merchant_slug=user_tenant_slug(session, user),
                on_refuse=on_refuse)
        raise
    progress("store", 0.0)
    return _register(session, config, user, checked.merchant, checked.short, checked.schema,
                     report, workspace, actor, spark, idempotency_key=idempotency_key,
                     before_commit=before_commit, on_refuse=on_refuse)


def user_tenant_slug(session: Session, user: User) -> str | None:
    tenant = session.get(Tenant, user.tenant_id)
    return tenant.slug if tenant else None


def _validate(config: Config, workspace: Path, raw: Path, filename: str, schema: UploadSchema,
              encoding: str | None, spark: SparkSession | None,
              progress: Progress) -> ValidationReport:
    from onboarding import validate

    file_format: str | None = None
    codec: str | None = None
    try:
        file_format = sniff_format(raw, filename)
        staging = workspace / "staging"
        spark = spark or _spark(config)
        if file_format == "csv":
            upload = normalise_csv(raw, workspace / "numbered.csv", encoding,
                                   max_line_bytes=_max_line_bytes(config), progress=progress)
            codec = upload.encoding
            raw.unlink()  # the numbered copy replaces it; halves the plaintext on disk
            progress("parse", 0.0)
            specs = validate.stage_csv(spark, upload, schema, staging)
        else:
            upload = number_parquet(raw, workspace / "numbered.parquet")
            raw.unlink()
            progress("parse", 0.0)
            specs = validate.stage_parquet(spark, upload, schema, staging)
        progress("validate", 0.0)
        plan = validate.plan_checks(schema, specs, file_format)
        report = validate.run_checks(spark, staging, plan, upload.rows, file_format, codec)
        progress("validate", 1.0)
        return report
    except FileRejected as exc:
        return ValidationReport(rows=None, checks=[exc.result], file_format=file_format,
                                encoding=codec)


def _max_line_bytes(config: Config) -> int:
    value = config.extra.get("max_line_bytes")
    return int(value) if value else MAX_LINE_BYTES


def _spark(config: Config) -> SparkSession:
    from sandbox.spark import get_spark

    return get_spark(config, "yushan-onboarding")


def _register(session: Session, config: Config, user: User, merchant: Tenant, short: str,
              schema: UploadSchema, report: ValidationReport, workspace: Path, actor: Actor,
              spark: SparkSession | None, *, idempotency_key: str | None = None,
              before_commit: Callable[[UploadResult], None] | None = None,
              on_refuse: Callable[[OnboardingError], None] | None = None) -> UploadResult:
    from sandbox.crypto import KeyStore
    from sandbox.storage import dataset_dir, store_encrypted_parquet

    spark = spark or _spark(config)
    plaintext = workspace / "final"
    # The declared columns in the declared order; the staging flags stay behind.
    spark.read.parquet(str(workspace / "staging")).select(*schema.names) \
        .write.mode("error").parquet(str(plaintext))
    full_name = f"{merchant.slug}.{short}"
    dataset = Dataset(
        tenant_id=merchant.id, name=short, full_name=full_name, description="",
        is_consumer_data=False, shared=False, member_key=schema.member_key,
        storage_path="", encrypted=True, row_count=report.rows, created_by=user.id,
        source_encoding=report.encoding,
    )
    dataset.columns = [
        DatasetColumn(position=i, name=c.name, data_type=c.type,
                      column_class=ColumnClass.PUBLIC.value)
        for i, c in enumerate(schema.columns)
    ]
    stored: Path | None = None
    try:
        session.add(dataset)
        session.flush()
        stored = dataset_dir(config, merchant.slug, dataset.id)
        store_encrypted_parquet(config, KeyStore(config.master_key_path), dataset, merchant.slug,
                                plaintext)
        stored = config.home / dataset.storage_path
        objects = {"dataset": full_name, "merchant": merchant.slug, "dataset_id": dataset.id}
        _audit(session, "dataset.validate", actor, full_name, merchant, report.audit_summary(),
               dataset_id=dataset.id)
        _audit_record(session, "dataset.upload", actor, objects, {
            "rows": report.rows, "bytes": dataset.byte_size, "format": report.file_format,
            "encoding": report.encoding, "columns": schema.describe(),
            "member_key": schema.member_key, "content_sha256": dataset.content_hash,
            **({"idempotency_key": idempotency_key} if idempotency_key else {}),
        })
        metrics.on_commit(session, metrics.upload, "accepted")
        if before_commit is not None:
            before_commit(UploadResult(dataset, report))
        session.commit()
    except IntegrityError:
        session.rollback()
        _remove(stored)
        # Two uploads raced for one name: the unique index kept the first.
        exc = errors.conflict(f"A dataset named {short} already exists.")
        _refuse(session, actor, exc, short, merchant_slug=merchant.slug, on_refuse=on_refuse)
        raise exc from None
    except BaseException:
        session.rollback()
        _remove(stored)
        raise
    shutil.rmtree(plaintext, ignore_errors=True)
    return UploadResult(dataset, report)


def _remove(path: Path | None) -> None:
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _audit(session: Session, action: str, actor: Actor, full_name: str, merchant: Tenant,
           details: dict[str, Any], dataset_id: int | None = None) -> None:
    objects: dict[str, Any] = {"dataset": full_name, "merchant": merchant.slug}
    if dataset_id is not None:
        objects["dataset_id"] = dataset_id
    _audit_record(session, action, actor, objects, details)


def _audit_record(session: Session, action: str, actor: Actor, objects: dict[str, Any],
                  details: dict[str, Any]) -> None:
    from audit import record

    record(session, action, actor=actor, objects=objects, details=details)


def _refuse(session: Session, actor: Actor, exc: OnboardingError, name: Any,
            merchant_slug: str | None = None,
            on_refuse: Callable[[OnboardingError], None] | None = None) -> None:
    """Audit a refused upload (its reason and counts, never values) and commit that alone
    (with what ``on_refuse(exc)`` adds to the transaction)."""
    session.rollback()
    objects: dict[str, Any] = {}
    if isinstance(name, str) and len(name) <= 64 and name.isprintable():
        objects["name"] = name
        if merchant_slug:
            objects["dataset"] = f"{merchant_slug}.{name}"
    if merchant_slug:
        objects["merchant"] = merchant_slug
    details: dict[str, Any] = {"status": exc.status, "code": exc.code}
    if exc.report is not None:
        failed = [
            {"check": c["check"], "column": c["column"], "failed_rows": c["failed_rows"]}
            for c in exc.report.get("checks", []) if not c.get("passed")
        ]
        _audit_record(session, "dataset.validate", actor, objects, {
            "passed": False, "rows": exc.report.get("rows"),
            "checks_run": len(exc.report.get("checks", [])), "failed": failed,
        })
        details["failed_checks"] = len(failed)
    else:
        details["reason"] = exc.message
    _audit_record(session, "dataset.reject", actor, objects, details)
    metrics.on_commit(session, metrics.upload, exc.code)  # a closed set of refusal codes
    if on_refuse is not None:
        on_refuse(exc)
    session.commit()


def workspace_is_private(path: Path) -> bool:
    """True when only the owner may enter ``path`` (used by tests and the sweeper)."""
    return (os.stat(path).st_mode & 0o077) == 0
