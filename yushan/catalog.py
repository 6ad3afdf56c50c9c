"""What a job may read: the datasets of the platform and of one merchant, as plain data.

The policy engine and the sandbox work on these records, never on ORM objects, so that a
decision depends only on what is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from yushan.accounts import PLATFORM
from yushan.config import Config
from yushan.models import Dataset, Tenant

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    data_type: str  # Spark SQL type, e.g. "bigint", "decimal(12,2)"
    column_class: str  # identifier | private | quasi | public
    lower_bound: float | None = None  # per-consumer bounds for dp sums (None: not summable)
    upper_bound: float | None = None


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    full_name: str  # "<owner>.<name>", the name jobs use
    owner: str  # tenant slug; "platform" for platform datasets
    name: str
    columns: tuple[ColumnInfo, ...]
    is_consumer_data: bool
    entity_column: str | None
    k: int | None
    member_key: str | None
    storage_path: Path  # absolute
    encrypted: bool
    wrapped_key: bytes | None = None
    release_mode: str | None = None  # consumer data: "dp" | "threshold"
    max_groups: int | None = None  # dp: groups one consumer may contribute to
    max_rows: int | None = None  # dp: rows one consumer may contribute per group
    one_row_per_unit: bool = False  # the entity column is unique in this dataset
    version: int | None = None  # platform data: the version whose files storage_path names

    @property
    def is_platform(self) -> bool:
        return self.owner == PLATFORM

    def column(self, name: str) -> ColumnInfo | None:
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)


def dataset_info(config: Config, ds: Dataset) -> DatasetInfo:
    return DatasetInfo(
        id=ds.id,
        full_name=ds.full_name,
        owner=ds.tenant.slug,
        name=ds.name,
        columns=tuple(ColumnInfo(c.name, c.data_type, c.column_class, c.lower_bound, c.upper_bound)
                      for c in ds.columns),
        is_consumer_data=ds.is_consumer_data,
        entity_column=ds.entity_column,
        k=ds.k,
        member_key=ds.member_key,
        storage_path=(config.home / ds.storage_path).resolve(),
        encrypted=ds.encrypted,
        wrapped_key=ds.wrapped_key,
        release_mode=(ds.release_mode or "dp") if ds.is_consumer_data else None,
        max_groups=ds.max_groups,
        max_rows=ds.max_rows,
        one_row_per_unit=bool(ds.one_row_per_unit),
        version=(ds.version or 1) if ds.tenant.slug == PLATFORM else None,
    )


def readable_datasets(session: Session, config: Config, merchant: str) -> dict[str, DatasetInfo]:
    """Datasets a job run for ``merchant`` may read, keyed by lower-case full name.

    That is: active platform datasets shared with merchants, and the merchant's own active
    datasets. Anything else must look exactly like a dataset that does not exist.
    """
    stmt = (
        select(Dataset)
        .join(Tenant, Dataset.tenant_id == Tenant.id)
        .where(Dataset.withdrawn_at.is_(None))
        .where(
            or_(
                (Tenant.slug == PLATFORM) & Dataset.shared.is_(True),
                Tenant.slug == merchant,
            )
        )
        .options(selectinload(Dataset.columns), selectinload(Dataset.tenant))
        .order_by(Dataset.full_name)
    )
    return {ds.full_name.lower(): dataset_info(config, ds) for ds in session.scalars(stmt)}
