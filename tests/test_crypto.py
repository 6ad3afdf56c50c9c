"""Encryption at rest: envelope encryption that detects any change to ciphertext."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.crypto import (
    DecryptionError,
    KeyStore,
    decrypt_chunks,
    encrypt_stream,
    load_or_create_key,
    new_data_key,
    unwrap_key,
    wrap_key,
)


def _roundtrip(key: bytes, data: bytes, chunk: int) -> tuple[bytes, bytes]:
    out = io.BytesIO()
    encrypt_stream(key, io.BytesIO(data), out, chunk_size=chunk)
    sealed = out.getvalue()
    return sealed, b"".join(decrypt_chunks(key, io.BytesIO(sealed)))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(min_value=1, max_value=700))
def test_any_content_round_trips_and_is_not_in_the_clear(data, chunk):
    key = new_data_key()
    sealed, plain = _roundtrip(key, data, chunk)
    assert plain == data
    if len(data) >= 16:
        assert data not in sealed


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_chunk", "swap_chunks", "append"])
def test_tampering_is_detected(damage):
    key = new_data_key()
    data = bytes(range(256)) * 40
    sealed, _ = _roundtrip(key, data, 1000)
    body = bytearray(sealed)
    header, frames = bytes(body[:12]), []
    pos = 12
    while pos < len(body):
        size = int.from_bytes(body[pos:pos + 4], "big")
        frames.append(bytes(body[pos:pos + 4 + size]))
        pos += 4 + size
    if damage == "flip":
        body[40] ^= 1
        bad = bytes(body)
    elif damage == "truncate":
        bad = header + b"".join(frames[:-1])  # the last chunk gone: must not pass as complete
    elif damage == "drop_chunk":
        bad = header + frames[0] + b"".join(frames[2:])
    elif damage == "swap_chunks":
        bad = header + frames[1] + frames[0] + b"".join(frames[2:])
    else:
        bad = sealed + frames[0]
    with pytest.raises(DecryptionError):
        b"".join(decrypt_chunks(key, io.BytesIO(bad)))


def test_wrong_key_and_wrong_context_fail():
    master, other = new_data_key(), new_data_key()
    data_key = new_data_key()
    wrapped = wrap_key(master, data_key, "dataset:1")
    assert unwrap_key(master, wrapped, "dataset:1") == data_key
    with pytest.raises(DecryptionError):
        unwrap_key(other, wrapped, "dataset:1")
    with pytest.raises(DecryptionError):  # a key wrapped for one object opens no other
        unwrap_key(master, wrapped, "dataset:2")
    sealed, _ = _roundtrip(data_key, b"secret values", 4)
    with pytest.raises(DecryptionError):
        list(decrypt_chunks(new_data_key(), io.BytesIO(sealed)))


def test_keystore_derives_distinct_stable_segment_keys(tmp_path):
    path = tmp_path / "keys" / "master.key"
    load_or_create_key(path)
    store, again = KeyStore(path), KeyStore(path)
    assert store.segment_token_key("hanfu_house") == again.segment_token_key("hanfu_house")
    assert store.segment_token_key("hanfu_house") != store.segment_token_key("tea_garden")
    with pytest.raises(DecryptionError, match="yushan init"):
        _ = KeyStore(tmp_path / "missing.key").master
