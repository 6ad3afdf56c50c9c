"""Tamper-evident audit trail: writer, verification, review and export.

``from audit import Actor, record`` (see docs/interfaces.md and docs/audit.md). Names are
imported lazily so that ``python -m audit.offline_verify`` needs only ``cryptography``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Actor": "audit.writer",
    "record": "audit.writer",
    "check_action": "audit.writer",
    "register_config": "audit.keys",
    "CHECKPOINT_EVERY": "audit.writer",
    "init_keys": "audit.keys",
    "read_head": "audit.keys",
    "verify": "audit.verifier",
    "VerifyResult": "audit.verifier",
    "query": "audit.review",
    "Filters": "audit.review",
    "export_csv": "audit.review",
    "export_jsonl": "audit.review",
    "export_bundle": "audit.review",
}

__all__ = sorted(_EXPORTS)

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
