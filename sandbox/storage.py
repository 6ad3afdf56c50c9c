"""Merchant datasets at rest: Parquet files encrypted one by one under a per-dataset key."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from sandbox.crypto import KeyStore, decrypt_file, encrypt_file
from yushan.catalog import DatasetInfo
from yushan.config import Config
from yushan.models import Dataset

SUFFIX = ".parquet.enc"


def dataset_dir(config: Config, merchant: str, dataset_id: int) -> Path:
    return config.merchant_data_dir / merchant / str(dataset_id)


def store_encrypted_parquet(
    config: Config, keystore: KeyStore, dataset: Dataset, merchant: str, plaintext_dir: Path
) -> None:
    """Encrypt every Parquet file of ``plaintext_dir`` into the dataset's directory.

    Sets ``storage_path``, ``encrypted``, ``wrapped_key``, ``byte_size`` and
    ``content_hash`` on ``dataset`` (which must have an id). The caller removes the
    plaintext directory.
    """
    key, wrapped = keystore.new_wrapped_key(f"dataset:{dataset.id}")
    target = dataset_dir(config, merchant, dataset.id)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    overall = hashlib.sha256()
    size = 0
    for index, part in enumerate(sorted(plaintext_dir.glob("*.parquet"))):
        digest = encrypt_file(key, part, target / f"part-{index:05d}{SUFFIX}")
        overall.update(digest.encode())
        size += part.stat().st_size
    dataset.storage_path = str(target.relative_to(config.home))
    dataset.encrypted = True
    dataset.wrapped_key = wrapped
    dataset.byte_size = size
    dataset.content_hash = overall.hexdigest()


def decrypt_dataset(keystore: KeyStore, info: DatasetInfo, dest_dir: Path) -> Path:
    """Decrypt a merchant dataset's files into ``dest_dir`` (inside a job workspace)."""
    if not info.encrypted or info.wrapped_key is None:
        raise ValueError(f"{info.full_name} is not an encrypted dataset")
    key = keystore.unwrap(info.wrapped_key, f"dataset:{info.id}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    for part in sorted(info.storage_path.glob(f"*{SUFFIX}")):
        decrypt_file(key, part, dest_dir / part.name.removesuffix(".enc"))
    return dest_dir


def shred_dataset(config: Config, dataset: Dataset) -> None:
    """Crypto-shred: forget the data key and delete the ciphertext."""
    dataset.wrapped_key = None
    path = config.home / dataset.storage_path
    if dataset.encrypted and path.exists():
        shutil.rmtree(path)
