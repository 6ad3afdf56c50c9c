"""Encryption at rest: envelope encryption with AES-256-GCM (``cryptography``).

A random data key per dataset or job output encrypts its files; the platform master key
(``YUSHAN_HOME/keys/master.key``, owner-only) wraps the data key. Destroying the wrapped key
destroys the data (crypto-shredding).

File format (streamed, never whole in memory): ``b"YSE1"`` + 8-byte nonce prefix, then
chunks of ``4-byte big-endian length || ciphertext+tag``. Chunk *i* uses nonce
``prefix || i (4 bytes)`` and associated data ``header || i || last-flag``, so that
reordering, dropping or truncating chunks fails authentication.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from yushan.keyfiles import fsync_dir

MAGIC = b"YSE1"
CHUNK = 1024 * 1024
KEY_BYTES = 32


class DecryptionError(Exception):
    """Ciphertext or key is wrong, corrupted or truncated."""


def write_secret_file(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only (mode 0600) holding ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def publish_secret(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Put ``data`` at ``path`` (0600) whole or not at all, durably.

    Written to a temporary file in the same directory, synced, then hard-linked into
    place (``replace=False``: False when ``path`` exists, which is kept) or renamed over
    it. A crash leaves either no file or the complete one, never a torn key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        fsync_dir(path.parent)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_or_create_key(path: Path) -> bytes:
    """Read a 32-byte key file, creating it (0600) if it does not exist."""
    if not path.exists():
        write_secret_file(path, os.urandom(KEY_BYTES))
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise DecryptionError(f"key file {path} is damaged (expected {KEY_BYTES} bytes)")
    return data


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_key(master: bytes, data_key: bytes, context: str) -> bytes:
    """Encrypt a data key under the master key, bound to ``context`` (e.g. 'dataset:12')."""
    nonce = os.urandom(12)
    return nonce + AESGCM(master).encrypt(nonce, data_key, context.encode())


def unwrap_key(master: bytes, wrapped: bytes, context: str) -> bytes:
    try:
        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], context.encode())
    except InvalidTag:
        raise DecryptionError(f"data key for {context} does not open with this master key") from None


def derive_key(master: bytes, purpose: str) -> bytes:
    """A stable sub-key for ``purpose`` (HKDF-like: HMAC-SHA256 of the purpose)."""
    return hmac.new(master, b"yushan-derive:" + purpose.encode(), hashlib.sha256).digest()


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">I?", index, last)


def encrypt_stream(key: bytes, src: BinaryIO, dst: BinaryIO, chunk_size: int = CHUNK) -> str:
    """Encrypt ``src`` into ``dst``; return the SHA-256 hex of the plaintext."""
    aes = AESGCM(key)
    prefix = os.urandom(8)
    header = MAGIC + prefix
    dst.write(header)
    digest = hashlib.sha256()
    index = 0
    current = src.read(chunk_size)
    while True:
        following = src.read(chunk_size) if current else b""
        last = not following
        digest.update(current)
        sealed = aes.encrypt(prefix + struct.pack(">I", index), current, _aad(header, index, last))
        dst.write(struct.pack(">I", len(sealed)))
        dst.write(sealed)
        if last:
            break
        current = following
        index += 1
    return digest.hexdigest()


def decrypt_chunks(key: bytes, src: BinaryIO) -> Iterator[bytes]:
    """Yield the plaintext of ``src`` chunk by chunk, authenticating each."""
    aes = AESGCM(key)
    header = src.read(12)
    if len(header) != 12 or header[:4] != MAGIC:
        raise DecryptionError("not a Yushan encrypted file")
    prefix = header[4:]
    index = 0
    while True:
        size_raw = src.read(4)
        if len(size_raw) != 4:
            raise DecryptionError("encrypted file is truncated")
        (size,) = struct.unpack(">I", size_raw)
        sealed = src.read(size)
        if len(sealed) != size:
            raise DecryptionError("encrypted file is truncated")
        nonce = prefix + struct.pack(">I", index)
        for last in (False, True):
            try:
                plain = aes.decrypt(nonce, sealed, _aad(header, index, last))
                break
            except InvalidTag:
                continue
        else:
            raise DecryptionError("encrypted file does not authenticate (wrong key or altered)")
        yield plain
        if last:
            if src.read(1):
                raise DecryptionError("data after the final chunk")
            return
        index += 1


TAG_BYTES = 16


class DecryptedFile(io.RawIOBase):
    """A seekable, read-only view of an encrypted file's plaintext, decrypting one chunk at
    a time (the chunk last read is kept): Parquet readers seek to the footer and then to
    each column chunk, and this serves them without the whole plaintext in memory.

    Every chunk read is authenticated with its index and whether it is the last one, so a
    reordered, dropped or truncated chunk fails as in :func:`decrypt_chunks`.
    """

    def __init__(self, key: bytes, path: Path):
        super().__init__()
        self._aes = AESGCM(key)
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._header = self._fh.read(12)
            if len(self._header) != 12 or self._header[:4] != MAGIC:
                raise DecryptionError("not a Yushan encrypted file")
            self._chunks = self._index(os.fstat(self._fh.fileno()).st_size)
        except BaseException:
            self._fh.close()
            raise
        self._starts = [start for start, _offset, _size in self._chunks]
        last_start, _offset, last_size = self._chunks[-1]
        self._size = last_start + last_size - TAG_BYTES
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")

    def _index(self, file_size: int) -> list[tuple[int, int, int]]:
        """(plaintext start, file offset, sealed size) of each chunk, from the length fields."""
        chunks: list[tuple[int, int, int]] = []
        offset, start = 12, 0
        while offset < file_size:
            self._fh.seek(offset)
            raw = self._fh.read(4)
            if len(raw) != 4:
                raise DecryptionError("encrypted file is truncated")
            (size,) = struct.unpack(">I", raw)
            if size < TAG_BYTES or offset + 4 + size > file_size:
                raise DecryptionError("encrypted file is truncated")
            chunks.append((start, offset + 4, size))
            start += size - TAG_BYTES
            offset += 4 + size
        if not chunks:
            raise DecryptionError("encrypted file is truncated")
        return chunks

    def _chunk(self, index: int) -> bytes:
        if self._cached[0] != index:
            _start, offset, size = self._chunks[index]
            self._fh.seek(offset)
            sealed = self._fh.read(size)
            nonce = self._header[4:] + struct.pack(">I", index)
            last = index == len(self._chunks) - 1
            try:
                plain = self._aes.decrypt(nonce, sealed, _aad(self._header, index, last))
            except InvalidTag:
                raise DecryptionError("encrypted file does not authenticate (wrong key, altered "
                                      "or truncated)") from None
            self._cached = (index, plain)
        return self._cached[1]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            plain = self._chunk(index)
            within = self._pos - self._starts[index]
            part = plain[within:within + len(view) - done]
            view[done:done + len(part)] = part
            done += len(part)
            self._pos += len(part)
        return done

    def close(self) -> None:
        self._fh.close()
        self._cached = (-1, b"")
        super().close()


def encrypt_file(key: bytes, src_path: Path, dst_path: Path) -> str:
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.with_name(dst_path.name + ".partial")
    with open(src_path, "rb") as src, open(tmp, "wb") as dst:
        digest = encrypt_stream(key, src, dst)
    os.replace(tmp, dst_path)
    return digest


def decrypt_file(key: bytes, src_path: Path, dst_path: Path) -> str:
    """Decrypt into ``dst_path``; return the SHA-256 hex of the plaintext."""
    digest = hashlib.sha256()
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        for chunk in decrypt_chunks(key, src):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def decrypt_bytes(key: bytes, src_path: Path) -> bytes:
    with open(src_path, "rb") as src:
        return b"".join(decrypt_chunks(key, src))


def master_key_id(master: bytes) -> str:
    """A public fingerprint of a master key (reveals nothing of it): which key wraps the
    database's data keys is stored as this id (``yushan keys``)."""
    return hmac.new(master, b"yushan-master-key-id", hashlib.sha256).hexdigest()[:16]


def pending_master_path(master_key_path: Path) -> Path:
    """Where ``yushan keys rotate-master`` puts the next master key until it is in use."""
    return master_key_path.with_name(master_key_path.name + ".new")


def segment_token_keys_path(master_key_path: Path) -> Path:
    """The segment-token secrets, apart from the master key so that rotating it keeps
    every merchant's tokens (``yushan.keys.ensure_token_keys`` writes the file)."""
    return master_key_path.with_name("segment-token.keys")


class KeyStore:
    """The platform master key and what is derived from it.

    The master key file is re-read when it changes (a rotation replaced it). A data key
    that does not open with it is tried with the pending key (``master.key.new``) too: a
    rotation interrupted after its database commit leaves the rows wrapped under the new
    key while ``master.key`` is still the old one, and both must read until it finishes.
    """

    def __init__(self, master_key_path: Path):
        self.path = master_key_path
        self._master: bytes | None = None
        self._stamp: tuple[int, int] | None = None
        self._tokens: tuple[tuple[int, int], dict] | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    @property
    def master(self) -> bytes:
        stamp = self._file_stamp()
        if self._master is None or stamp != self._stamp:
            if stamp is None:
                raise DecryptionError(
                    f"master key {self.path} is missing; run `yushan init` on this YUSHAN_HOME"
                )
            self._master = load_or_create_key(self.path)
            self._stamp = stamp
        return self._master

    def candidates(self) -> list[bytes]:
        """The master key, then the pending one of an unfinished rotation (if any)."""
        keys = [self.master]
        pending = pending_master_path(self.path)
        try:
            data = pending.read_bytes()
        except FileNotFoundError:
            return keys
        if len(data) == KEY_BYTES and data not in keys:
            keys.append(data)
        return keys

    def new_wrapped_key(self, context: str) -> tuple[bytes, bytes]:
        """Return ``(data_key, wrapped_data_key)`` for a new object."""
        key = new_data_key()
        return key, wrap_key(self.master, key, context)

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        try:
            return unwrap_key(self.master, wrapped, context)
        except DecryptionError:
            for other in self.candidates()[1:]:
                try:
                    return unwrap_key(other, wrapped, context)
                except DecryptionError:
                    continue
            raise

    def _token_keys(self) -> dict | None:
        path = segment_token_keys_path(self.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if self._tokens is None or self._tokens[0] != stamp:
            self._tokens = (stamp, parse_token_keys(path.read_bytes()))
        return self._tokens[1]

    def segment_token_key(self, merchant: str) -> bytes:
        """Per-merchant HMAC key for ``segment_token``; never leaves the platform.

        From ``segment-token.keys`` when it exists: the merchant's own key kept there (the
        one derived from the master key when the file was made, so that tokens merchants
        already hold stay the same), else one derived from its random root. Without the
        file (a home not yet initialised by this version), derived from the master key.
        """
        tokens = self._token_keys()
        if tokens is None:
            return derive_key(self.master, f"segment-token:{merchant}")
        kept = tokens["merchants"].get(merchant)
        if kept is not None:
            return kept
        return derive_key(tokens["root"], f"segment-token:{merchant}")


TOKEN_KEYS_KIND = "yushan-segment-token-keys"  # noqa: S105 - a document kind, not a secret


def token_keys_document(root: bytes, merchants: dict[str, bytes]) -> bytes:
    doc = {"kind": TOKEN_KEYS_KIND, "version": 1, "root": root.hex(),
           "merchants": {slug: key.hex() for slug, key in sorted(merchants.items())}}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def parse_token_keys(raw: bytes) -> dict:
    try:
        doc = json.loads(raw)
        if doc.get("kind") != TOKEN_KEYS_KIND:
            raise ValueError("kind")
        root = bytes.fromhex(doc["root"])
        merchants = {str(k): bytes.fromhex(v) for k, v in doc["merchants"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DecryptionError("segment-token.keys is damaged") from None
    if len(root) != KEY_BYTES or any(len(v) != KEY_BYTES for v in merchants.values()):
        raise DecryptionError("segment-token.keys is damaged")
    return {"root": root, "merchants": merchants}
