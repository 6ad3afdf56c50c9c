"""A merchant takes its data back: download (decrypted for it alone) and withdrawal.

Withdrawal is crypto-shredding: the wrapped data key is erased from the database in the
same transaction as the audit entry, then the ciphertext files are deleted. Later jobs
that name the dataset see it exactly as one that never existed, because
``yushan.catalog.readable_datasets`` lists active datasets only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from onboarding import errors
from onboarding.ingest import merchant_of, upload_workspace
from yushan import access
from yushan.config import Config
from yushan.models import Dataset, User

if TYPE_CHECKING:
    from audit import Actor

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("csv", "parquet")


def find_own_dataset(session: Session, user: User, name: str) -> Dataset | None:
    """The caller's active dataset named ``name`` or ``<merchant>.<name>``, else None.

    None for missing, withdrawn and other tenants' datasets alike.
    """
    if not access.manage_own_data(user) or not isinstance(name, str) or len(name) > 200:
        return None
    merchant = merchant_of(session, user)
    prefix = f"{merchant.slug}."
    full_name = name if name.startswith(prefix) else prefix + name
    if full_name.count(".") != 1:
        return None
    return session.scalar(
        select(Dataset)
        .where(Dataset.full_name == full_name, Dataset.tenant_id == merchant.id,
               Dataset.withdrawn_at.is_(None))
        .options(selectinload(Dataset.columns))
    )


def withdraw(session: Session, config: Config, user: User, name: str, actor: Actor) -> dict[str, Any]:
    """Crypto-shred the caller's dataset; 404 when it is not the caller's. Commits."""
    from audit import record

    dataset = find_own_dataset(session, user, name)
    if dataset is None:
        raise errors.not_found()
    files = config.home / dataset.storage_path if dataset.storage_path else None
    dataset.wrapped_key = None  # without it the ciphertext is noise: the data is gone
    dataset.withdrawn_at = datetime.now(UTC)
    record(session, "dataset.withdraw", actor=actor,
           objects={"dataset": dataset.full_name, "merchant": actor.tenant,
                    "dataset_id": dataset.id},
           details={"rows": dataset.row_count, "bytes": dataset.byte_size,
                    "key_destroyed": True})
    session.commit()
    if files is not None and files.is_dir() and files.resolve().is_relative_to(
            config.merchant_data_dir.resolve()):
        shutil.rmtree(files, ignore_errors=True)
        if files.exists():  # the key is gone already; the leftovers are unreadable
            log.error("ciphertext of dataset %s was not fully removed", dataset.id)
    return {"dataset": dataset.full_name, "withdrawn": True}


def export_own_dataset(session: Session, config: Config, user: User, name: str, fmt: str,
                       actor: Actor) -> tuple[str, Iterator[bytes]]:
    """The caller's dataset decrypted as one CSV or Parquet stream; audited, commits.

    Returns ``(download file name, chunk iterator)``. The plaintext lives in a private
    workspace until the iterator is exhausted or closed.
    """
    from audit import record

    if fmt not in EXPORT_FORMATS:
        raise errors.bad_request("Format must be csv or parquet.")
    dataset = find_own_dataset(session, user, name)
    if dataset is None:
        raise errors.not_found()
    record(session, "dataset.download", actor=actor,
           objects={"dataset": dataset.full_name, "merchant": actor.tenant,
                    "dataset_id": dataset.id},
           details={"format": fmt, "rows": dataset.row_count})
    session.commit()
    from yushan.catalog import dataset_info

    info = dataset_info(config, dataset)
    return f"{dataset.name}.{fmt}", _stream_export(config, info, fmt)


def _stream_export(config: Config, info, fmt: str) -> Iterator[bytes]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from sandbox.crypto import KeyStore
    from sandbox.storage import decrypt_dataset

    with upload_workspace(config) as workspace:
        parts = sorted(decrypt_dataset(KeyStore(config.master_key_path), info,
                                       workspace / "parts").glob("*.parquet"))
        out = workspace / f"export.{fmt}"
        writer = None
        try:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=65_536):
                    if writer is None:
                        writer = (pacsv.CSVWriter(str(out), batch.schema) if fmt == "csv"
                                  else pq.ParquetWriter(str(out), batch.schema))
                    writer.write_batch(batch)
                part.unlink()
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return
        with open(out, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                yield chunk


