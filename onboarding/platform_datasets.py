"""Platform datasets: the admin registers them (Parquet or CSV), refreshes them into new
immutable versions, and sets their release policy (mode, k, per-unit limits, bounds).

Closed world: every column must be given a class; a consumer dataset names an
``identifier`` entity column that is never null, and a k of at least 2 (platform default
50). Version 1's files are under ``warehouse/platform/<name>/``, version N's under
``warehouse/platform/<name>.vN/`` (written by Spark). A refresh never rewrites files: it
adds a version, and a superseded version's files are removed (:func:`prune_versions`)
once no queued or running job created before the refresh may still read them.
Every change is audited in the transaction that makes it; :mod:`yushan.access` decides who
may (platform admins).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from onboarding import errors
from onboarding.ingest import active_dataset
from onboarding.report import CheckResult, FileRejected, ValidationReport
from onboarding.schema import HEX64_COLUMNS, HEX64_REGEX, check_dataset_name
from yushan import access
from yushan.accounts import PLATFORM, ensure_platform
from yushan.config import Config
from yushan.models import (
    ColumnClass,
    Dataset,
    DatasetColumn,
    DatasetVersion,
    Job,
    JobState,
    ReleaseMode,
    Tenant,
    User,
    utcnow,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from audit import Actor

DEFAULT_K = 50
MAX_K = 1_000_000
# Per-unit contribution limits of dp mode when the admin gives none (the demo's values).
DEFAULT_MAX_GROUPS = 4
DEFAULT_MAX_ROWS = 20
MAX_LIMIT = 1_000_000
CLASSES = tuple(c.value for c in ColumnClass)
RELEASE_MODES = tuple(m.value for m in ReleaseMode)
NUMERIC_TYPE = re.compile(r"^(tinyint|smallint|int|integer|bigint|float|double|real|decimal(\(\d+,\s*\d+\))?)$")
# Where the API may read a server-side source from (the CLI, run by the operator, may
# read anywhere): inside YUSHAN_HOME, only this directory.
IMPORT_DIR = "import"
DIFFERENCING_WARNING = (
    "exact results cannot stop two jobs from being subtracted to reveal one consumer "
    "(e.g. a city's total spend minus the same without one person); choose it only knowingly"
)

Bounds = dict[str, "tuple[float, float] | None"]


# ---------------------------------------------------------------- validation of settings


def _whole(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as a whole number in [low, high], else a 422 naming ``what``."""
    if isinstance(value, bool):
        raise errors.invalid(f"{what} must be a whole number.")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise errors.invalid(f"{what} must be a whole number.")
    if not low <= number <= high:
        raise errors.invalid(f"{what} must be between {low} and {high}.")
    return number


def _release(value: Any) -> str:
    if value not in RELEASE_MODES:
        raise errors.invalid("release must be one of " + ", ".join(RELEASE_MODES) + ".")
    return str(value)


def parse_bounds(items: list[str] | tuple[str, ...]) -> Bounds:
    """``["amount=0:20000", "age="]`` (the CLI's form) as bounds; ``col=`` clears them."""
    bounds: Bounds = {}
    for item in items:
        column, sep, spec = item.partition("=")
        if not sep or not column:
            raise errors.invalid(f"Bounds {item!r} must read column=lo:hi.")
        if not spec:
            bounds[column] = None
            continue
        lo, colon, hi = spec.partition(":")
        if not colon:
            raise errors.invalid(f"Bounds of {column} must read lo:hi.")
        bounds[column] = (lo, hi)  # type: ignore[assignment]  # checked by check_bounds
    return bounds


def check_bounds(bounds: Any, types: dict[str, str], dataset: str) -> Bounds:
    """Per-consumer bounds: on numeric columns only, lo < hi, both finite. A column mapped
    to None has its bounds cleared. Raises a 422 naming the column."""
    if bounds is None:
        return {}
    if not isinstance(bounds, dict):
        raise errors.invalid("bounds must map column names to [lo, hi].")
    checked: Bounds = {}
    for column, pair in bounds.items():
        if column not in types:
            raise errors.invalid(f"Column {column} is not in {dataset}.")
        if pair is None:
            checked[column] = None
            continue
        if not NUMERIC_TYPE.match(types[column].lower()):
            raise errors.invalid(f"Column {column} is not numeric ({types[column]}): bounds apply "
                                 "to numeric columns only.")
        if isinstance(pair, dict):
            pair = (pair.get("lo", pair.get("lower")), pair.get("hi", pair.get("upper")))
        try:
            lo, hi = (float(v) for v in pair)  # type: ignore[union-attr]
            if any(isinstance(v, bool) for v in pair):
                raise ValueError
        except (TypeError, ValueError):
            raise errors.invalid(f"Bounds of {column} must be two numbers [lo, hi].") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise errors.invalid(f"Bounds of {column} must be finite numbers.")
        if not lo < hi:
            raise errors.invalid(f"Bounds of {column}: the lower bound must be below the upper bound.")
        checked[column] = (lo, hi)
    return checked


def _policy(dataset: Dataset) -> dict[str, Any]:
    """The release policy of a dataset as data (audit details, API)."""
    return {
        "release": dataset.release_mode if dataset.is_consumer_data else None,
        "k": dataset.k, "max_groups": dataset.max_groups, "max_rows": dataset.max_rows,
        "bounds": {c.name: [c.lower_bound, c.upper_bound] for c in dataset.columns
                   if c.lower_bound is not None and c.upper_bound is not None},
    }


def _may(user: User) -> None:
    permission = access.manage_platform_datasets(user)
    if not permission:
        raise errors.forbidden(permission.reason)


def platform_dataset(session: Session, name: str) -> Dataset | None:
    """The active platform dataset ``name`` (``visits`` or ``platform.visits``)."""
    short = name.removeprefix(f"{PLATFORM}.")
    return session.scalar(
        select(Dataset)
        .join(Tenant, Dataset.tenant_id == Tenant.id)
        .where(Tenant.slug == PLATFORM, Dataset.name == short, Dataset.withdrawn_at.is_(None))
        .options(selectinload(Dataset.columns))
    )


# ---------------------------------------------------------------- release policy


def set_release_policy(
    session: Session, user: User, name: str, *, release: str | None = None, k: Any = None,
    max_groups: Any = None, max_rows: Any = None, bounds: Any = None, actor: Actor,
) -> Dataset:
    """Set a consumer dataset's release mode (``dp``|``threshold``), k, ``max_groups``,
    ``max_rows`` and per-column bounds; what is None stays. Audited
    (``admin.dataset_policy``, before and after) in the caller's transaction."""
    from audit import record

    _may(user)
    dataset = platform_dataset(session, name)
    if dataset is None:
        raise errors.not_found()
    if not dataset.is_consumer_data:
        raise errors.invalid(f"{dataset.full_name} is not consumer data: it has no release "
                             "mode, k or bounds.")
    mode = _release(release) if release is not None else None
    new_k = _whole(k, "k", 2, MAX_K) if k is not None else None
    groups = _whole(max_groups, "max_groups", 1, MAX_LIMIT) if max_groups is not None else None
    rows = _whole(max_rows, "max_rows", 1, MAX_LIMIT) if max_rows is not None else None
    checked = check_bounds(bounds, {c.name: c.data_type for c in dataset.columns}, dataset.full_name)
    before = _policy(dataset)
    if mode is not None:
        dataset.release_mode = mode
    if new_k is not None:
        dataset.k = new_k
    if groups is not None:
        dataset.max_groups = groups
    if rows is not None:
        dataset.max_rows = rows
    for column in dataset.columns:
        if column.name in checked:
            column.lower_bound, column.upper_bound = checked[column.name] or (None, None)
    after = _policy(dataset)
    if after != before:
        details: dict[str, Any] = {"before": before, "after": after}
        if after["release"] == ReleaseMode.THRESHOLD.value != before["release"]:
            details["warning"] = "differencing"  # the admin chose exact results knowingly
        record(session, "admin.dataset_policy", actor=actor,
               objects={"dataset": dataset.full_name, "dataset_id": dataset.id}, details=details)
    session.flush()
    return dataset


# ---------------------------------------------------------------- reading a source


def server_source(config: Config, raw: str) -> Path:
    """A server-side source path the API may read: inside ``YUSHAN_HOME/import/`` only (the
    rest of the home holds keys and merchants' data)."""
    root = (config.home / IMPORT_DIR).resolve()
    path = (root / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
    if not path.is_relative_to(root):
        raise errors.bad_request(f"A server path must be inside YUSHAN_HOME/{IMPORT_DIR}/.")
    return path


def _format_of(source: Path, filename: str | None = None) -> str:
    """``parquet`` or ``csv``: a directory is Parquet unless it holds only CSV files."""
    if source.is_dir():
        files = [p for p in source.iterdir() if p.is_file() and not p.name.startswith((".", "_"))]
        return "csv" if files and all(p.suffix.lower() == ".csv" for p in files) else "parquet"
    from onboarding.csv_reader import sniff_format

    try:
        return sniff_format(source, filename or source.name)
    except FileRejected as exc:
        raise errors.bad_request(str(exc)) from None


@contextmanager
def _fresh_path(config: Config, source: Path) -> Iterator[Path]:
    """``source`` under a name Spark has never listed: Spark keeps the file listing of a
    path it has read, so a file rewritten in place and read again (a refresh from the same
    path) would be seen with its old length."""
    from onboarding.ingest import upload_workspace

    with upload_workspace(config) as workspace:
        link = workspace / ("source" + ("" if source.is_dir() else source.suffix))
        link.symlink_to(source.resolve(), target_is_directory=source.is_dir())
        yield link


def _read(spark: SparkSession, source: Path, filename: str | None = None) -> tuple[DataFrame, str]:
    if not source.exists():
        raise errors.bad_request("The source does not exist on the server.")
    fmt = _format_of(source, filename)
    try:
        if fmt == "csv":
            df = (spark.read.option("header", True).option("inferSchema", True)
                  .option("mode", "FAILFAST").csv(str(source)))
        else:
            df = spark.read.parquet(str(source))
        df.schema  # noqa: B018 - resolve now: an unreadable source is refused here
    except Exception:  # the reader's message may quote a path or a value
        raise errors.bad_request(f"The source is not a readable {fmt.upper()} dataset.") from None
    return df, fmt


def _spark(config: Config, spark: SparkSession | None) -> SparkSession:
    if spark is not None:
        return spark
    from sandbox.spark import get_spark

    return get_spark(config, "yushan-onboarding")


# ---------------------------------------------------------------- register, refresh


def register_platform_dataset(
    session: Session, config: Config, user: User, *, name: str, source: Path,
    classes: dict[str, str], entity_column: str | None, k: int | None = DEFAULT_K,
    shared: bool = True, description: str = "", actor: Actor,
    spark: SparkSession | None = None, release: str | None = None, max_groups: Any = None,
    max_rows: Any = None, bounds: Any = None, one_row_per_unit: bool = False,
    filename: str | None = None,
) -> Dataset:
    """Validate ``source`` (Parquet or CSV, file or directory) and register
    ``platform.<name>`` as its version 1."""

    _may(user)
    short = check_dataset_name(name)
    full_name = f"{PLATFORM}.{short}"
    if active_dataset(session, full_name) is not None:
        raise errors.conflict(f"A platform dataset named {short} already exists: refresh it "
                              "to bring in new data.")
    if not isinstance(classes, dict) or not classes:
        raise errors.bad_request("classes must map every column to a class.")
    bad = sorted(c for c, cls in classes.items() if cls not in CLASSES)
    if bad:
        raise errors.bad_request(f"Column {bad[0]} has an unknown class; use one of "
                                 + ", ".join(CLASSES) + ".")
    consumer = entity_column is not None
    if consumer:
        if classes.get(entity_column) != ColumnClass.IDENTIFIER.value:
            raise errors.bad_request("The entity column must be declared with class identifier.")
        if k is None:
            raise errors.bad_request("Consumer data needs k of at least 2.")
        k = _whole(k, "k", 2, MAX_K)
        mode = _release(release if release is not None else ReleaseMode.DP.value)
        groups = _whole(max_groups if max_groups is not None else DEFAULT_MAX_GROUPS, "max_groups", 1, MAX_LIMIT)
        rows = _whole(max_rows if max_rows is not None else DEFAULT_MAX_ROWS, "max_rows", 1, MAX_LIMIT)
    elif release is not None or bounds or one_row_per_unit:
        raise errors.invalid("A release mode, bounds and one row per unit apply to consumer data "
                             "only: name its entity column.")
    target = config.platform_warehouse_dir / short
    if target.exists() and source.resolve() != target.resolve():
        raise errors.conflict(f"{target.relative_to(config.home)} already holds files.")
    if not source.exists():
        raise errors.bad_request("The source does not exist on the server.")
    with _fresh_path(config, source) as fresh:
        return _register(session, config, user, short, full_name, _spark(config, spark), fresh,
                         filename or source.name, source.resolve() == target.resolve(), classes=classes,
                         entity_column=entity_column, k=k, shared=shared, description=description,
                         actor=actor, mode=mode if consumer else None,
                         groups=groups if consumer else None, rows=rows if consumer else None,
                         bounds=bounds, one_row_per_unit=one_row_per_unit)


def _register(session: Session, config: Config, user: User, short: str, full_name: str,
              spark: SparkSession, source: Path, filename: str, in_place: bool, *,
              classes: dict[str, str], entity_column: str | None, k: Any, shared: bool,
              description: str, actor: Actor, mode: str | None, groups: int | None,
              rows: int | None, bounds: Any, one_row_per_unit: bool) -> Dataset:
    from audit import record

    consumer = entity_column is not None
    target = config.platform_warehouse_dir / short
    df, fmt = _read(spark, source, filename)
    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    checked = check_bounds(bounds, types, full_name) if consumer else {}
    report = _check(df, classes, entity_column, unique_entity=one_row_per_unit, file_format=fmt)
    if not report.passed:
        record(session, "dataset.validate", actor=actor, objects={"dataset": full_name},
               details=report.audit_summary())
        session.commit()
        raise errors.rejected(report.to_dict())
    if not in_place:
        df.write.mode("error").parquet(str(target))
    platform = ensure_platform(session)
    dataset = Dataset(
        tenant_id=platform.id, name=short, full_name=full_name, description=description,
        is_consumer_data=consumer, entity_column=entity_column,
        k=k if consumer else None, shared=shared,
        release_mode=mode, max_groups=groups, max_rows=rows,
        one_row_per_unit=bool(one_row_per_unit),
        storage_path=str(target.relative_to(config.home)), encrypted=False,
        row_count=report.rows, created_by=user.id, version=1,
    )
    dataset.columns = [
        DatasetColumn(position=i, name=f.name, data_type=f.dataType.simpleString(),
                      column_class=classes[f.name],
                      lower_bound=(checked.get(f.name) or (None, None))[0],
                      upper_bound=(checked.get(f.name) or (None, None))[1])
        for i, f in enumerate(df.schema.fields)
    ]
    session.add(dataset)
    session.flush()
    session.add(DatasetVersion(dataset_id=dataset.id, version=1, storage_path=dataset.storage_path,
                               source_format=fmt, row_count=report.rows, created_by=user.id))
    objects: dict[str, Any] = {"dataset": full_name, "dataset_id": dataset.id, "version": 1}
    record(session, "dataset.validate", actor=actor, objects=objects, details=report.audit_summary())
    record(session, "dataset.register", actor=actor, objects=objects, details={
        "rows": report.rows, "format": fmt, "entity_column": entity_column, "k": dataset.k,
        "shared": shared, "policy": _policy(dataset),
        "columns": [{"name": c.name, "type": c.data_type, "class": c.column_class}
                    for c in dataset.columns],
    })
    session.commit()
    return dataset


def refresh_platform_dataset(
    session: Session, config: Config, user: User, name: str, *, source: Path, actor: Actor,
    spark: SparkSession | None = None, filename: str | None = None,
) -> Dataset:
    """Bring new data into a platform dataset as a new immutable version (same columns and
    types, validated like a registration). Jobs that start afterwards read it; the old
    version's files stay until no pending job may need them."""

    _may(user)
    dataset = platform_dataset(session, name)
    if dataset is None:
        raise errors.not_found()
    if not source.exists():
        raise errors.bad_request("The source does not exist on the server.")
    with _fresh_path(config, source) as fresh:
        _refresh(session, config, user, dataset, _spark(config, spark), fresh, filename or source.name,
                 actor)
    prune_versions(session, config, actor=actor)
    return dataset


def _refresh(session: Session, config: Config, user: User, dataset: Dataset, spark: SparkSession,
             source: Path, filename: str, actor: Actor) -> None:
    from audit import record

    df, fmt = _read(spark, source, filename)
    classes = {c.name: c.column_class for c in dataset.columns}
    report = _check(df, classes, dataset.entity_column, unique_entity=bool(dataset.one_row_per_unit),
                    file_format=fmt, types={c.name: c.data_type for c in dataset.columns})
    if not report.passed:
        record(session, "dataset.validate", actor=actor,
               objects={"dataset": dataset.full_name, "dataset_id": dataset.id},
               details=report.audit_summary())
        session.commit()
        raise errors.rejected(report.to_dict())
    current = _version_rows(session, dataset)[-1]
    new = (dataset.version or 1) + 1
    target = config.platform_warehouse_dir / f"{dataset.name}.v{new}"
    if target.exists():
        raise errors.conflict(f"{target.relative_to(config.home)} already holds files.")
    df.write.mode("error").parquet(str(target))
    try:
        stamp = utcnow()
        current.superseded_at = stamp
        dataset.version, dataset.row_count = new, report.rows
        dataset.storage_path = str(target.relative_to(config.home))
        dataset.updated_at = stamp
        session.add(DatasetVersion(dataset_id=dataset.id, version=new, storage_path=dataset.storage_path,
                                   source_format=fmt, row_count=report.rows, created_by=user.id,
                                   created_at=stamp))
        objects = {"dataset": dataset.full_name, "dataset_id": dataset.id, "version": new}
        record(session, "dataset.validate", actor=actor, objects=objects, details=report.audit_summary())
        record(session, "dataset.refresh", actor=actor, objects=objects, details={
            "rows": report.rows, "format": fmt, "previous_version": new - 1, "version": new})
        session.commit()
    except Exception:
        session.rollback()
        shutil.rmtree(target, ignore_errors=True)
        raise


def _version_rows(session: Session, dataset: Dataset) -> list[DatasetVersion]:
    """The dataset's versions, oldest first; a dataset registered before versions existed
    (the demo's) gets its row for the current files."""
    rows = list(session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                                .order_by(DatasetVersion.version)))
    if not rows:
        row = DatasetVersion(dataset_id=dataset.id, version=dataset.version or 1,
                             storage_path=dataset.storage_path, row_count=dataset.row_count,
                             created_by=dataset.created_by, created_at=dataset.created_at)
        session.add(row)
        session.flush()
        rows = [row]
    return rows


def prune_versions(session: Session, config: Config, *, actor: Actor) -> list[dict[str, Any]]:
    """Remove the files of superseded versions that no queued or running job created
    before their supersession may still read; audited (``dataset.version_remove``)."""
    from audit import record

    pending = (JobState.QUEUED.value, JobState.RUNNING.value)
    oldest = session.scalar(select(Job.created_at).where(Job.state.in_(pending))
                            .order_by(Job.created_at).limit(1))
    candidates = session.scalars(
        select(DatasetVersion).where(DatasetVersion.superseded_at.is_not(None),
                                     DatasetVersion.files_removed_at.is_(None))
        .order_by(DatasetVersion.id)
    ).all()
    removed: list[dict[str, Any]] = []
    for row in candidates:
        if oldest is not None and _aware(oldest) <= _aware(row.superseded_at):
            continue  # a job from before the refresh may still read these files
        dataset = session.get(Dataset, row.dataset_id)
        row.files_removed_at = utcnow()
        entry = {"dataset": dataset.full_name if dataset else None, "version": row.version}
        record(session, "dataset.version_remove", actor=actor,
               objects={**entry, "dataset_id": row.dataset_id}, details={"path": row.storage_path})
        session.commit()
        shutil.rmtree(config.home / row.storage_path, ignore_errors=True)
        removed.append(entry)
    return removed


def _aware(value):
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------- reading the catalogue


def platform_dataset_json(session: Session, dataset: Dataset) -> dict[str, Any]:
    """A platform dataset as the admin's API and CLI show it: classes, policy, versions."""
    versions = list(session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
                                    .order_by(DatasetVersion.version)))
    if not versions:
        versions = [DatasetVersion(version=dataset.version or 1, storage_path=dataset.storage_path,
                                   row_count=dataset.row_count, created_at=dataset.created_at)]
    return {
        "name": dataset.full_name,
        "description": dataset.description,
        "consumer_data": dataset.is_consumer_data,
        "entity_column": dataset.entity_column,
        "shared": dataset.shared,
        "one_row_per_unit": bool(dataset.one_row_per_unit),
        **_policy(dataset),
        "rows": dataset.row_count,
        "version": dataset.version or 1,
        "columns": [{"name": c.name, "type": c.data_type, "class": c.column_class,
                     "bounds": [c.lower_bound, c.upper_bound] if c.lower_bound is not None else None}
                    for c in dataset.columns],
        "versions": [{"version": v.version, "rows": v.row_count,
                      "format": v.source_format or "parquet",
                      "created_at": _aware(v.created_at).isoformat() if v.created_at else None,
                      "superseded_at": _aware(v.superseded_at).isoformat() if v.superseded_at else None,
                      "files_kept": v.files_removed_at is None}
                     for v in versions],
    }


def list_platform_datasets(session: Session, user: User) -> list[Dataset]:
    """Active platform datasets, by name (platform admins only)."""
    _may(user)
    return list(session.scalars(
        select(Dataset).join(Tenant, Dataset.tenant_id == Tenant.id)
        .where(Tenant.slug == PLATFORM, Dataset.withdrawn_at.is_(None))
        .options(selectinload(Dataset.columns)).order_by(Dataset.full_name)
    ))


def update_platform_dataset(
    session: Session, user: User, dataset_id: int, *, k: Any = None, entity_column: str | None = None,
    classes: dict[str, str] | None = None, actor: Actor,
) -> Dataset:
    """Change a platform dataset's k and entity column (consumer data) and its columns'
    classes; audited (``admin.dataset_update``, before and after) in the same transaction.

    ``classes`` maps column names to classes; a column left out keeps its class.
    """
    from audit import record

    if not access.administer(user):
        raise errors.forbidden("Only the platform admin changes platform datasets.")
    dataset = session.scalar(
        select(Dataset)
        .join(Tenant, Dataset.tenant_id == Tenant.id)
        .where(Dataset.id == dataset_id, Tenant.slug == PLATFORM, Dataset.withdrawn_at.is_(None))
        .options(selectinload(Dataset.columns))
    )
    if dataset is None:
        raise errors.not_found()
    before = _settings(dataset)
    names = {c.name for c in dataset.columns}
    if dataset.is_consumer_data:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise errors.bad_request("k must be a whole number.") from None
        if not 2 <= k <= MAX_K:
            raise errors.invalid(f"k must be between 2 and {MAX_K}.")
        if entity_column not in names:
            raise errors.invalid("The entity column must be one of the dataset's columns.")
        dataset.k, dataset.entity_column = k, entity_column
    chosen = {c.name: (classes or {}).get(c.name, c.column_class) for c in dataset.columns}
    bad = sorted(name for name, cls in chosen.items() if cls not in CLASSES)
    if bad:
        raise errors.invalid(f"Column {bad[0]} has an unknown class; use one of " + ", ".join(CLASSES) + ".")
    for column in dataset.columns:
        column.column_class = chosen[column.name]
    record(session, "admin.dataset_update", actor=actor, objects={"dataset": dataset.full_name},
           details={"before": before, "after": _settings(dataset)})
    return dataset


def _settings(dataset: Dataset) -> dict[str, Any]:
    return {"k": dataset.k, "entity_column": dataset.entity_column,
            "classes": {c.name: c.column_class for c in dataset.columns}}


def _check(df, classes: dict[str, str], entity_column: str | None, *, unique_entity: bool = False,
           file_format: str = "parquet", types: dict[str, str] | None = None) -> ValidationReport:
    """Closed-world class check (and, for a refresh, the current version's column types),
    then Great Expectations on the data."""
    import great_expectations as gx

    from onboarding.validate import _runner

    E = gx.expectations
    report = ValidationReport(rows=None, file_format=file_format)
    names = [f.name for f in df.schema.fields]
    for f in df.schema.fields if types is not None else ():
        if f.name in types and types[f.name] != f.dataType.simpleString():
            report.checks.append(CheckResult("same_type", f.name, False,
                                             "The column's type differs from the current version's."))
    for name in names:
        if name not in classes:
            report.checks.append(CheckResult("classified", name, False,
                                             "The column has no class (every column needs one)."))
    for name in classes:
        if name not in names:
            report.checks.append(CheckResult("column_exists", name, False,
                                             "A classified column is not in the data."))
    if not report.passed:
        return report
    planned: list[tuple[str, str | None, str, Any]] = [
        ("not_empty", None, "The dataset has no rows.", E.ExpectTableRowCountToBeBetween(min_value=1)),
    ]
    if entity_column is not None:
        planned.append(("entity_present", entity_column, "The entity column is missing in some rows.",
                        E.ExpectColumnValuesToNotBeNull(column=entity_column)))
        if unique_entity:
            planned.append(("entity_unique", entity_column,
                            "The entity column repeats although the dataset has one row per consumer.",
                            E.ExpectColumnValuesToBeUnique(column=entity_column)))
    for name in names:
        if name.lower() in HEX64_COLUMNS:
            planned.append(("hex64", name, "The value is not 64 lowercase hex digits.",
                            E.ExpectColumnValuesToMatchRegex(column=name, regex=HEX64_REGEX)))
    results = _runner.validate(df, [p[3] for p in planned], with_rows=False, index_column=None)
    by_type = {(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r
               for r in results.results}
    for check, column, message, expectation in planned:
        found = by_type[(expectation.expectation_type, column)]
        count = (found.result or {}).get("unexpected_count")
        if check == "not_empty":
            report.rows = int((found.result or {}).get("observed_value") or 0)
        report.checks.append(CheckResult(check, column, bool(found.success),
                                         "passed" if found.success else message,
                                         expectation=expectation.expectation_type,
                                         failed_rows=int(count) if count is not None else None))
    return report
