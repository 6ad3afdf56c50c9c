"""The hash chain and its signatures: pure functions over plain data.

This module needs only the standard library and ``cryptography``, so that the offline
verifier (``python -m audit.offline_verify``) can use exactly the same definitions as the
writer: one place for the canonical form of an entry.

An entry's hash is ``sha256(canonical_json(fields))`` where ``fields`` holds every stored
text column of the entry plus the previous entry's hash, so that editing any column,
deleting, inserting or reordering entries breaks the chain. The signatures (Ed25519) cover
small canonical documents naming a sequence number and the chain hash at that point.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# The hash "before" the first entry.
GENESIS = "0" * 64

# The stored columns an entry's hash covers, besides ``prev``. ``id`` equals ``seq``.
HASHED_FIELDS = ("seq", "ts", "actor", "role", "tenant", "origin", "action", "objects", "details")

HEAD_KIND = "yushan-audit-head"
CHECKPOINT_KIND = "yushan-audit-checkpoint"
BUNDLE_KIND = "yushan-audit-bundle"


def canonical_json(value: Any, default=None) -> str:
    """Sorted keys, no whitespace, non-ASCII kept as is (hashed as UTF-8).

    ``default`` converts values JSON lacks (as in ``json.dumps``).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=default)


# What json.dumps(ensure_ascii=False) uses for strings (the C version when available).
_quote = json.encoder.encode_basestring


def entry_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The chain hash of one entry, given the hash of the entry before it.

    Defined as SHA-256 of ``canonical_json({**fields, "prev": prev_hash})``. Verification
    hashes every entry, so the usual case (text fields, integer seq) is spelled out with
    the keys in sorted order; it yields the same text (tests hold the two to it).
    """
    seq = fields["seq"]
    try:
        if type(seq) is not int:
            raise TypeError("seq")
        text = (
            '{"action":' + _quote(fields["action"])
            + ',"actor":' + _quote(fields["actor"])
            + ',"details":' + _quote(fields["details"])
            + ',"objects":' + _quote(fields["objects"])
            + ',"origin":' + _quote(fields["origin"])
            + ',"prev":' + _quote(prev_hash)
            + ',"role":' + _quote(fields["role"])
            + ',"seq":' + str(seq)
            + ',"tenant":' + _quote(fields["tenant"])
            + ',"ts":' + _quote(fields["ts"]) + "}"
        )
    except TypeError:  # a value that is not text (a damaged row): the general form
        text = canonical_json_entry(prev_hash, fields)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json_entry(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The canonical text an entry's hash is computed over (the definition)."""
    doc = {name: fields[name] for name in HASHED_FIELDS}
    doc["prev"] = prev_hash
    return canonical_json(doc, default=str)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: people compare it out of band."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def _signed_message(kind: str, seq: int, head_hash: str) -> bytes:
    return canonical_json({"kind": kind, "seq": seq, "hash": head_hash}).encode("utf-8")


def sign_point(private_key: Ed25519PrivateKey, kind: str, seq: int, head_hash: str) -> str:
    """Base64 Ed25519 signature stating "the chain hash at ``seq`` is ``head_hash``"."""
    return base64.b64encode(private_key.sign(_signed_message(kind, seq, head_hash))).decode()


def sign_point_tagged(private_key: Ed25519PrivateKey, kind: str, seq: int,
                      head_hash: str) -> str:
    """``<key id>:<signature>``: a stored checkpoint names the key that signed it, so that
    a trail signed by several keys (after a rotation) verifies point by point."""
    return f"{key_id(private_key.public_key())}:{sign_point(private_key, kind, seq, head_hash)}"


def signature_key_id(signature: str) -> str | None:
    """The key id a tagged signature names; None for an untagged (older) one."""
    tag, sep, _ = signature.partition(":")
    return tag if sep else None


def check_point(
    public_key: Ed25519PublicKey, kind: str, seq: int, head_hash: str, signature: str
) -> bool:
    tag, sep, bare = signature.partition(":")
    if sep and tag != key_id(public_key):
        return False
    try:
        public_key.verify(base64.b64decode(bare if sep else signature, validate=True),
                          _signed_message(kind, seq, head_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def check_point_any(keyring: Mapping[str, Ed25519PublicKey], kind: str, seq: int,
                    head_hash: str, signature: str, named: str | None = None) -> str | None:
    """The id of the keyring's key that signed this point, or None when none did.

    A point naming its key (a tagged signature, or a head's ``key_id``) is checked with
    that key only; an untagged one (signed before keys were named) with each key.
    """
    wanted = signature_key_id(signature) or named
    candidates = [wanted] if wanted else list(keyring)
    for kid in candidates:
        key = keyring.get(kid) if kid else None
        if key is not None and check_point(key, kind, seq, head_hash, signature):
            return kid
    return None


def keyring_from_pems(pems: Mapping[str, str] | list) -> dict[str, Ed25519PublicKey]:
    """Public keys by id from ``{"<id>": "<PEM>"}`` (or a list of PEMs); a PEM whose id is
    not the one it is filed under is left out."""
    found: dict[str, Ed25519PublicKey] = {}
    items = pems.items() if isinstance(pems, Mapping) else [(None, pem) for pem in pems]
    for kid, pem in items:
        try:
            key = load_public_key_pem(pem.encode("ascii"))
        except (ValueError, AttributeError, UnicodeEncodeError):
            continue
        if kid is None or kid == key_id(key):
            found[key_id(key)] = key
    return found


def sign_bytes(private_key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(private_key.sign(data)).decode()


def check_bytes(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
