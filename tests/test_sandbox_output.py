"""Job outputs at rest: encrypted (no value readable in the file), bound to their job,
checked against their content hash when read back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.crypto import DecryptionError, KeyStore, load_or_create_key
from sandbox.output import read_output, store_output


@pytest.fixture
def keystore(make_config):
    config = make_config()
    config.home.mkdir(parents=True)
    load_or_create_key(config.master_key_path)
    return config, KeyStore(config.master_key_path)


def _plain(tmp_path):
    table = pa.table({"city": ["Hangzhou-UNIQUE-CITY", "Shanghai"], "n": [51, 77]})
    path = tmp_path / "result.parquet"
    pq.write_table(table, path, compression="none")
    return table, path


def test_outputs_are_encrypted_and_read_back_whole(keystore, tmp_path):
    config, keys = keystore
    table, plain = _plain(tmp_path)
    assert b"Hangzhou-UNIQUE-CITY" in plain.read_bytes()
    stored = store_output(config, keys, 12, plain)
    cipher = (config.home / stored.storage_path).read_bytes()
    assert b"Hangzhou-UNIQUE-CITY" not in cipher
    back = read_output(config, keys, 12, stored.storage_path, stored.wrapped_key, stored.content_hash)
    assert back.equals(table)


def test_an_output_key_opens_only_its_own_job(keystore, tmp_path):
    config, keys = keystore
    _, plain = _plain(tmp_path)
    stored = store_output(config, keys, 12, plain)
    with pytest.raises(DecryptionError):
        read_output(config, keys, 13, stored.storage_path, stored.wrapped_key, stored.content_hash)


def test_a_tampered_output_is_refused(keystore, tmp_path):
    config, keys = keystore
    _, plain = _plain(tmp_path)
    stored = store_output(config, keys, 12, plain)
    path = config.home / stored.storage_path
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DecryptionError):
        read_output(config, keys, 12, stored.storage_path, stored.wrapped_key, stored.content_hash)
    with pytest.raises(DecryptionError):  # and a wrong recorded hash is noticed too
        stored2 = store_output(config, keys, 14, plain)
        read_output(config, keys, 14, stored2.storage_path, stored2.wrapped_key, "0" * 64)
