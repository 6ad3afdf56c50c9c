"""The audit signing key and the signed head file, both outside the database.

The private key (``config.audit_signing_key_path``) is created owner-only; its public half
is written next to it (``audit-signing.pub``) so that auditors can verify without it. The
head file (``config.audit_head_path``) states, signed, the sequence number and chain hash
of the newest committed entry: a database holding fewer entries, or a different hash at
that sequence number, has been truncated or rewritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.chain import (
    HEAD_KIND,
    check_point,
    key_id,
    keyring_from_pems,
    load_public_key_pem,
    public_key_pem,
    sign_point,
)
from yushan.config import Config

# Which installation (keys, head file) each database URL belongs to: filled by every entry
# point that is given a Config, read by the writer, whose callers pass only a Session.
configs_by_url: dict[str, Config] = {}


def register_config(config: Config) -> None:
    """Tell the writer which home (keys, head file) belongs to ``config.database_url``."""
    configs_by_url[config.database_url] = config


def public_key_path(config: Config) -> Path:
    return config.audit_signing_key_path.with_suffix(".pub")


def _write_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` atomically; False when it already exists.

    Written to a temporary file first and hard-linked into place, so that a concurrent
    reader never sees a half-written key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def init_keys(config: Config) -> str:
    """Create the audit signing key pair if missing; return the public key's id.

    Idempotent and safe against concurrent callers. The key directory is owner-only.
    """
    register_config(config)
    keys_dir = config.audit_signing_key_path.parent
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    key_path = config.audit_signing_key_path
    if not key_path.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_exclusive(key_path, pem, 0o600)
    os.chmod(key_path, 0o600)
    private = load_signing_key(config)
    pub_path = public_key_path(config)
    pub_pem = public_key_pem(private.public_key())
    if not pub_path.exists() or pub_path.read_bytes() != pub_pem:
        pub_path.unlink(missing_ok=True)
        _write_exclusive(pub_path, pub_pem, 0o644)
    return key_id(private.public_key())


_key_cache: dict[str, tuple[int, Ed25519PrivateKey]] = {}
# Keyed by the key object itself (not id(): after a rotation the old object is freed and a
# new one could reuse its id, naming the wrong key in the head file).
_key_ids: dict[Ed25519PrivateKey, str] = {}


def load_signing_key(config: Config) -> Ed25519PrivateKey:
    """The private key (parsed once per process, again if the file changes)."""
    path = config.audit_signing_key_path
    stamp = path.stat().st_mtime_ns
    cached = _key_cache.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    _key_cache[str(path)] = (stamp, key)
    return key


def load_public_key(config: Config) -> Ed25519PublicKey | None:
    """The verification key: from the private key when readable, else the public file."""
    try:
        return load_signing_key(config).public_key()
    except (FileNotFoundError, PermissionError):
        pass
    try:
        return load_public_key_pem(public_key_path(config).read_bytes())
    except FileNotFoundError:
        return None


KEYRING_KIND = "yushan-audit-keyring"


def keyring_path(config: Config) -> Path:
    """Every audit signing key's public half ever used here (``yushan keys rotate-audit``)."""
    return config.keys_dir / "audit-keyring.json"


def read_keyring_file(config: Config) -> list[dict]:
    try:
        doc = json.loads(keyring_path(config).read_bytes())
    except FileNotFoundError:
        return []
    if not isinstance(doc, dict) or doc.get("kind") != KEYRING_KIND:
        raise ValueError(f"{keyring_path(config)} is not an audit keyring")
    return [entry for entry in doc.get("keys", []) if isinstance(entry, dict)]


def write_keyring_file(config: Config, entries: list[dict]) -> None:
    """Replace the keyring file whole (temporary file, then rename)."""
    path = keyring_path(config)
    data = (json.dumps({"kind": KEYRING_KIND, "version": 1, "keys": entries}, indent=1,
                       sort_keys=True) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # public keys: auditors may read them
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_keyring(config: Config) -> dict[str, Ed25519PublicKey]:
    """The verification keys by id: every key in the keyring, and the current one."""
    keyring = keyring_from_pems({str(e.get("key_id")): str(e.get("public_key"))
                                 for e in read_keyring_file(config)})
    current = load_public_key(config)
    if current is not None:
        keyring[key_id(current)] = current
    return keyring


@dataclass(frozen=True)
class SignedHead:
    seq: int
    hash: str
    ts: str
    key_id: str
    signature: str

    def to_dict(self) -> dict:
        return {
            "kind": HEAD_KIND,
            "seq": self.seq,
            "hash": self.hash,
            "ts": self.ts,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def valid_for(self, public_key: Ed25519PublicKey) -> bool:
        return check_point(public_key, HEAD_KIND, self.seq, self.hash, self.signature)


class HeadFileError(Exception):
    """The head file exists but holds no readable signed head."""


# The head file holds two fixed-size slots, each a signed head as one line of JSON padded
# with spaces. A writer overwrites the older slot in place: no rename per commit (which
# costs a journal flush on ext4), and a crash or a concurrent reader can at worst see one
# torn slot, never lose the other, valid one.
SLOT_BYTES = 512
SLOTS = 2


def read_heads_at(path: Path) -> list[SignedHead]:
    """The readable heads in the file, newest first ([] when there is no file)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    heads = []
    for slot in range(SLOTS):
        text = raw[slot * SLOT_BYTES:(slot + 1) * SLOT_BYTES].decode("utf-8", "replace").strip()
        if not text:
            continue
        try:
            doc = json.loads(text)
            if doc.get("kind") != HEAD_KIND:
                continue
            heads.append(SignedHead(
                seq=int(doc["seq"]),
                hash=str(doc["hash"]),
                ts=str(doc.get("ts", "")),
                key_id=str(doc.get("key_id", "")),
                signature=str(doc["signature"]),
            ))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn slot: the other one still stands
    if raw.strip() and not heads:
        raise HeadFileError("no readable signed head in the file")
    return sorted(heads, key=lambda h: h.seq, reverse=True)


def read_head(config: Config) -> SignedHead | None:
    """The newest signed head, or None when no head file exists yet (signature unchecked)."""
    heads = read_heads_at(config.audit_head_path)
    return heads[0] if heads else None


def _newest(raw: bytes) -> tuple[int, int]:
    """(seq, slot) of the newest readable head in ``raw``; (0, 1) when none (slot 0 next)."""
    best = (0, SLOTS - 1)
    for slot in range(SLOTS):
        try:
            seq = int(json.loads(raw[slot * SLOT_BYTES:(slot + 1) * SLOT_BYTES])["seq"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue
        if seq > best[0]:
            best = (seq, slot)
    return best


def advance_head(config: Config, seq: int, head_hash: str) -> bool:
    """Write a signed head for ``seq`` unless the file already names a newer one.

    Several processes (and threads) commit entries; each advances the head after its
    commit. An exclusive lock on the head file makes read-compare-write atomic, and the
    head only moves forward, so a slow writer never rolls it back. The file is written in
    place and never replaced, so the lock always guards the one file readers see.
    Returns True when written.
    """
    path = config.audit_head_path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        raw = os.pread(fd, SLOTS * SLOT_BYTES, 0)
        current, current_slot = _newest(raw)
        if current >= seq:
            return False
        try:
            private = load_signing_key(config)
        except FileNotFoundError:
            init_keys(config)
            private = load_signing_key(config)
        if private not in _key_ids:
            _key_ids[private] = key_id(private.public_key())
        head = SignedHead(
            seq=seq,
            hash=head_hash,
            ts=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            key_id=_key_ids[private],
            signature=sign_point(private, HEAD_KIND, seq, head_hash),
        )
        line = json.dumps(head.to_dict(), sort_keys=True).encode("utf-8")
        if len(raw) < SLOTS * SLOT_BYTES:
            os.pwrite(fd, (b" " * (SLOT_BYTES - 1) + b"\n") * SLOTS, 0)
        slot = (current_slot + 1) % SLOTS
        os.pwrite(fd, line.ljust(SLOT_BYTES - 1) + b"\n", slot * SLOT_BYTES)
        return True
    finally:
        os.close(fd)
