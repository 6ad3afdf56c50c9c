"""The admin registers a platform dataset from Parquet: classes, entity column, k, GX-checked.

Closed world: every column must be given a class; a consumer dataset names an
``identifier`` entity column that is never null, and a k of at least 2 (platform default
50). The files end up under ``warehouse/platform/<name>/`` (copied there by Spark when
they are elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from onboarding import errors
from onboarding.ingest import active_dataset
from onboarding.report import CheckResult, ValidationReport
from onboarding.schema import HEX64_COLUMNS, HEX64_REGEX, check_dataset_name
from yushan import access
from yushan.accounts import PLATFORM, ensure_platform
from yushan.config import Config
from yushan.models import ColumnClass, Dataset, DatasetColumn, Tenant, User

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from audit import Actor

DEFAULT_K = 50
MAX_K = 1_000_000
CLASSES = tuple(c.value for c in ColumnClass)


def register_platform_dataset(
    session: Session, config: Config, user: User, *, name: str, source: Path,
    classes: dict[str, str], entity_column: str | None, k: int | None = DEFAULT_K,
    shared: bool = True, description: str = "", actor: Actor,
    spark: SparkSession | None = None,
) -> Dataset:
    """Validate ``source`` (Parquet file or directory) and register ``platform.<name>``."""
    from audit import record

    if not access.administer(user):
        raise errors.forbidden("Only the platform admin registers platform datasets.")
    short = check_dataset_name(name)
    full_name = f"{PLATFORM}.{short}"
    if active_dataset(session, full_name) is not None:
        raise errors.conflict(f"A platform dataset named {short} already exists.")
    bad = sorted(c for c, cls in classes.items() if cls not in CLASSES)
    if bad:
        raise errors.bad_request(f"Column {bad[0]} has an unknown class; use one of "
                                 + ", ".join(CLASSES) + ".")
    if entity_column is not None:
        if classes.get(entity_column) != ColumnClass.IDENTIFIER.value:
            raise errors.bad_request("The entity column must be declared with class identifier.")
        if k is None or int(k) < 2:
            raise errors.bad_request("Consumer data needs k of at least 2.")
    if spark is None:
        from sandbox.spark import get_spark

        spark = get_spark(config, "yushan-onboarding")
    try:
        df = spark.read.parquet(str(source))
    except Exception:  # the reader's message may quote a path or a value
        raise errors.bad_request("The source is not a readable Parquet dataset.") from None
    report = _check(df, classes, entity_column)
    if not report.passed:
        record(session, "dataset.validate", actor=actor, objects={"dataset": full_name},
               details=report.audit_summary())
        session.commit()
        raise errors.rejected(report.to_dict())
    target = config.platform_warehouse_dir / short
    if source.resolve() != target.resolve():
        if target.exists():
            raise errors.conflict(f"{target.relative_to(config.home)} already holds files.")
        df.write.mode("error").parquet(str(target))
    platform = ensure_platform(session)
    dataset = Dataset(
        tenant_id=platform.id, name=short, full_name=full_name, description=description,
        is_consumer_data=entity_column is not None, entity_column=entity_column,
        k=int(k) if entity_column is not None and k is not None else None, shared=shared,
        storage_path=str(target.relative_to(config.home)), encrypted=False,
        row_count=report.rows, created_by=user.id,
    )
    dataset.columns = [
        DatasetColumn(position=i, name=f.name, data_type=f.dataType.simpleString(),
                      column_class=classes[f.name])
        for i, f in enumerate(df.schema.fields)
    ]
    session.add(dataset)
    session.flush()
    objects: dict[str, Any] = {"dataset": full_name, "dataset_id": dataset.id}
    record(session, "dataset.validate", actor=actor, objects=objects, details=report.audit_summary())
    record(session, "dataset.register", actor=actor, objects=objects, details={
        "rows": report.rows, "entity_column": entity_column, "k": dataset.k, "shared": shared,
        "columns": [{"name": c.name, "type": c.data_type, "class": c.column_class}
                    for c in dataset.columns],
    })
    session.commit()
    return dataset


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


def _check(df, classes: dict[str, str], entity_column: str | None) -> ValidationReport:
    """Closed-world class check, then Great Expectations on the data."""
    import great_expectations as gx

    from onboarding.validate import _runner

    E = gx.expectations
    report = ValidationReport(rows=None, file_format="parquet")
    names = [f.name for f in df.schema.fields]
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
