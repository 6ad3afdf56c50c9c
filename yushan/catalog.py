"""What a job may read: the datasets of the platform and of one merchant, as plain data.

The policy engine and the sandbox work on these records, never on ORM objects, so that a
decision depends only on what is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from yushan.accounts import PLATFORM
from yushan.config import Config
from yushan.models import Dataset, DatasetColumn, Tenant

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
    columns = tuple(ColumnInfo(c.name, c.data_type, c.column_class, c.lower_bound, c.upper_bound)
                    for c in ds.columns)
    return _info(config, ds, ds.tenant.slug, columns)


def readable_datasets(session: Session, config: Config, merchant: str) -> dict[str, DatasetInfo]:
    """Datasets a job run for ``merchant`` may read, keyed by lower-case full name.

    That is: active platform datasets shared with merchants, and the merchant's own active
    datasets. Anything else must look exactly like a dataset that does not exist.

    Two plain queries (datasets, then their columns), no ORM objects: every dry-run check
    asks this, and loading a dozen datasets with their columns as mapped objects cost
    more than the rest of the request's Python work.
    """
    d = Dataset.__table__.c
    stmt = (
        select(d.id, d.full_name, d.name, Tenant.slug, d.is_consumer_data, d.entity_column, d.k,
               d.member_key, d.storage_path, d.encrypted, d.wrapped_key, d.release_mode,
               d.max_groups, d.max_rows, d.one_row_per_unit, d.version)
        .join(Tenant, d.tenant_id == Tenant.id)
        .where(d.withdrawn_at.is_(None))
        .where(or_((Tenant.slug == PLATFORM) & d.shared.is_(True), Tenant.slug == merchant))
        .order_by(d.full_name)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return {}
    c = DatasetColumn.__table__.c
    columns: dict[int, list[ColumnInfo]] = {row.id: [] for row in rows}
    for col in session.execute(
        select(c.dataset_id, c.name, c.data_type, c.column_class, c.lower_bound, c.upper_bound)
        .where(c.dataset_id.in_(list(columns)))
        .order_by(c.dataset_id, c.position)
    ):
        columns[col.dataset_id].append(
            ColumnInfo(col.name, col.data_type, col.column_class, col.lower_bound, col.upper_bound))
    return {row.full_name.lower(): _info(config, row, row.slug, tuple(columns[row.id])) for row in rows}


def _info(config: Config, ds, owner: str, columns: tuple[ColumnInfo, ...]) -> DatasetInfo:
    """The record of a dataset ``ds`` (a mapped ``Dataset`` or a row with its columns)."""
    return DatasetInfo(
        id=ds.id,
        full_name=ds.full_name,
        owner=owner,
        name=ds.name,
        columns=columns,
        is_consumer_data=bool(ds.is_consumer_data),
        entity_column=ds.entity_column,
        k=ds.k,
        member_key=ds.member_key,
        storage_path=(config.home / ds.storage_path).resolve(),
        encrypted=bool(ds.encrypted),
        wrapped_key=ds.wrapped_key,
        release_mode=(ds.release_mode or "dp") if ds.is_consumer_data else None,
        max_groups=ds.max_groups,
        max_rows=ds.max_rows,
        one_row_per_unit=bool(ds.one_row_per_unit),
        version=(ds.version or 1) if owner == PLATFORM else None,
    )
