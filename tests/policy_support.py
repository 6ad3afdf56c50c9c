"""Shared set-up for the policy tests: the demo world's catalog for one merchant."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sandbox.catalog import install_catalog
from sandbox.crypto import KeyStore
from sandbox.storage import decrypt_dataset
from yushan.catalog import DatasetInfo, readable_datasets
from yushan.config import Config
from yushan.db import session_factory

CASES_DIR = Path(__file__).parent / "policy_cases"


@dataclass
class PolicyWorld:
    config: Config
    merchant: str
    datasets: dict[str, DatasetInfo]
    locations: dict[str, Path]
    keystore: KeyStore

    def install(self, spark) -> None:
        """Install this merchant's catalog (decrypted own data) and its segment_token."""
        from policies.segment import register_segment_token

        install_catalog(spark, self.datasets, self.locations)
        register_segment_token(spark, self.keystore.segment_token_key(self.merchant), self.merchant)


def world(config: Config, merchant: str, workdir: Path) -> PolicyWorld:
    session = session_factory(config)()
    try:
        datasets = readable_datasets(session, config, merchant)
    finally:
        session.close()
    keystore = KeyStore(config.master_key_path)
    locations = {
        name: decrypt_dataset(keystore, info, workdir / merchant / str(info.id))
        for name, info in datasets.items()
        if info.encrypted
    }
    return PolicyWorld(config, merchant, datasets, locations, keystore)


def in_mode(env: PolicyWorld, release: str) -> PolicyWorld:
    """``env`` with every consumer dataset in ``release`` mode ("dp" or "threshold")."""
    import dataclasses

    datasets = {name: dataclasses.replace(info, release_mode=release) if info.is_consumer_data else info
                for name, info in env.datasets.items()}
    return dataclasses.replace(env, datasets=datasets)


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.json")):
        for case in json.loads(path.read_text()):
            case["file"] = path.name
            cases.append(case)
    return cases


def normalise(rows) -> list[tuple]:
    """Rows as sortable tuples; floats rounded so that summation order does not matter."""

    def value(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, Decimal):
            return v.normalize()
        if isinstance(v, list | tuple):
            return tuple(value(x) for x in v)
        return v

    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)
