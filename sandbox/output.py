"""Job outputs at rest: one Parquet file, AES-GCM encrypted under a per-job data key.

The key is wrapped by the master key with context ``output:<job id>``; the content hash is
the SHA-256 of the plaintext Parquet, checked again when the output is read.

Downloads never hold an output whole (:func:`open_output`): the content hash is checked in
one streamed pass, then the Parquet file is served as stored, chunk by chunk, or its record
batches are read through a seekable decrypting view (:class:`sandbox.crypto.DecryptedFile`;
Parquet needs seeks, to its footer first), one chunk and one batch at a time.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sandbox.crypto import (
    DecryptedFile,
    DecryptionError,
    KeyStore,
    decrypt_bytes,
    decrypt_chunks,
    encrypt_file,
)
from yushan.config import Config

OUTPUT_FILE = "result.parquet.enc"
READ_BUFFER = 256 * 1024  # bytes per read of a column chunk when an output is streamed


@dataclass(frozen=True)
class StoredOutput:
    storage_path: str  # relative to YUSHAN_HOME
    wrapped_key: bytes
    content_hash: str
    byte_size: int

    def to_message(self) -> dict[str, object]:
        return {
            "storage_path": self.storage_path,
            "wrapped_key": base64.b64encode(self.wrapped_key).decode(),
            "content_hash": self.content_hash,
            "byte_size": self.byte_size,
        }

    @classmethod
    def from_message(cls, data: dict) -> StoredOutput:
        return cls(
            storage_path=data["storage_path"],
            wrapped_key=base64.b64decode(data["wrapped_key"]),
            content_hash=data["content_hash"],
            byte_size=int(data["byte_size"]),
        )


def output_dir(config: Config, job_id: int, attempt: int | None = None) -> Path:
    """``outputs/<job id>/``, or one attempt's own ``outputs/<job id>/attempt-<n>/``: a run
    whose lease was lost must never overwrite or remove the output of the run that won."""
    base = config.outputs_dir / str(job_id)
    return base if attempt is None else base / f"attempt-{int(attempt)}"


def store_output(config: Config, keystore: KeyStore, job_id: int, plaintext: Path,
                 attempt: int | None = None) -> StoredOutput:
    """Encrypt the Parquet file ``plaintext`` (in a workspace) into the job's output dir."""
    key, wrapped = keystore.new_wrapped_key(f"output:{job_id}")
    target = output_dir(config, job_id, attempt) / OUTPUT_FILE
    digest = encrypt_file(key, plaintext, target)
    return StoredOutput(
        storage_path=str(target.relative_to(config.home)),
        wrapped_key=wrapped,
        content_hash=digest,
        byte_size=plaintext.stat().st_size,
    )


def read_output(
    config: Config, keystore: KeyStore, job_id: int, storage_path: str, wrapped_key: bytes, content_hash: str
) -> pa.Table:
    """Decrypt an output in memory and check it is the one the job produced."""
    key = keystore.unwrap(wrapped_key, f"output:{job_id}")
    data = decrypt_bytes(key, config.home / storage_path)
    if hashlib.sha256(data).hexdigest() != content_hash:
        raise DecryptionError(f"output of job {job_id} does not match its content hash")
    return pq.read_table(pa.BufferReader(data))


@dataclass(frozen=True)
class OpenedOutput:
    """An output whose content hash checked out, read without ever holding it whole."""

    path: Path
    key: bytes
    byte_size: int  # of the plaintext Parquet file

    def plaintext(self) -> Iterator[bytes]:
        """The Parquet file as stored, one decrypted chunk (1 MiB) at a time."""
        with open(self.path, "rb") as src:
            yield from decrypt_chunks(self.key, src)

    def metadata(self) -> pq.FileMetaData:
        """The Parquet footer: schema and row count, without reading any rows."""
        with DecryptedFile(self.key, self.path) as raw:
            return pq.ParquetFile(raw).metadata

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The rows as record batches of at most ``batch_rows`` rows, one at a time."""
        # Without pre-buffering (on by default) the reader would read every row group's
        # columns ahead, the whole file; buffered reads fetch a column chunk in pieces.
        with DecryptedFile(self.key, self.path) as raw, \
                pq.ParquetFile(raw, pre_buffer=False, buffer_size=READ_BUFFER) as parquet:
            yield from parquet.iter_batches(batch_size=batch_rows, use_threads=False)

    def column_names(self) -> list[str]:
        with DecryptedFile(self.key, self.path) as raw:
            return list(pq.ParquetFile(raw).schema_arrow.names)


def open_output(
    config: Config, keystore: KeyStore, job_id: int, storage_path: str, wrapped_key: bytes, content_hash: str
) -> OpenedOutput:
    """Check an output against its content hash in one streamed pass (nothing is released
    from an output that is not the one the job produced), and open it for reading."""
    key = keystore.unwrap(wrapped_key, f"output:{job_id}")
    path = config.home / storage_path
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        for chunk in decrypt_chunks(key, src):
            digest.update(chunk)
            size += len(chunk)
    if digest.hexdigest() != content_hash:
        raise DecryptionError(f"output of job {job_id} does not match its content hash")
    return OpenedOutput(path, key, size)


def remove_output(config: Config, job_id: int, attempt: int | None = None) -> None:
    """Delete an output's ciphertext (the caller forgets its wrapped key): one attempt's,
    or with no ``attempt`` every attempt's."""
    shutil.rmtree(output_dir(config, job_id, attempt), ignore_errors=True)
