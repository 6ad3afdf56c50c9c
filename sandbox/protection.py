"""The executors' protections as the workers last recorded them: what the admin page shows.

Each worker decides at start how its executors are cut off from the network
(:mod:`sandbox.netns`) and how their memory is limited (:mod:`sandbox.cgroup`), logs the
answer, and keeps it in the ``settings`` table as ``{"mode": ..., "reason": ...}``
(``jobs.worker.record_sandbox_setting``, each change audited). Where the OS refuses a
protection, executors still start; the admin page then warns that they run without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sandbox.cgroup import MemoryMode
from sandbox.netns import SETTING_KEY as NETWORK_KEY
from sandbox.netns import NetworkMode

MEMORY_KEY = "sandbox.memory_limit"


@dataclass(frozen=True)
class Protection:
    name: str
    key: str  # in the settings table
    action: str  # the audit action of a change
    protected: frozenset[str]  # modes in which executors have it; any other mode: a warning
    docs: str  # where docs/operations.md explains it, and how to restore it


NETWORK = Protection(
    "network", NETWORK_KEY, "admin.sandbox_network",
    # On a cluster master the cluster's network policy isolates jobs (docs/operations.md).
    frozenset({NetworkMode.ISOLATED.value, NetworkMode.CLUSTER.value}),
    "docs/operations.md#network",
)
MEMORY = Protection(
    "memory", MEMORY_KEY, "admin.sandbox_memory",
    frozenset({MemoryMode.CGROUP_V1.value, MemoryMode.CGROUP_V2.value}),
    "docs/operations.md#limits",
)
PROTECTIONS = (NETWORK, MEMORY)
BY_KEY = {p.key: p for p in PROTECTIONS}


@dataclass(frozen=True)
class Recorded:
    """One protection as recorded; ``mode`` None when no worker has recorded it yet."""

    protection: Protection
    mode: str | None
    reason: str = ""
    recorded_at: datetime | None = None  # when the recorded value last changed (UTC)

    @classmethod
    def of(cls, protection: Protection, value: Any, recorded_at: datetime | None) -> Recorded:
        """From a settings row's value and time (a malformed value counts as unprotected)."""
        value = value if isinstance(value, dict) else {}
        if recorded_at is not None:  # SQLite gives the stored UTC time without its zone
            recorded_at = (recorded_at.astimezone(UTC) if recorded_at.tzinfo
                           else recorded_at.replace(tzinfo=UTC))
        mode, reason = str(value.get("mode") or "unknown"), str(value.get("reason") or "")
        return cls(protection, mode, reason, recorded_at)

    @property
    def recorded(self) -> bool:
        return self.mode is not None

    @property
    def missing(self) -> bool:
        """True when executors run without this protection (as far as was recorded)."""
        return self.recorded and self.mode not in self.protection.protected
