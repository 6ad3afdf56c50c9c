"""Refusals of a submission limit, counted in this process and audited once per burst.

A client hammering a limit must not flood the audit trail with one entry per refused
request, nor go unrecorded: the first refusal of a burst is audited, with how many this
process refused since the entry before it. A burst ends when its period changes (the
caller says what the period is: a clock hour, say) or when the caller ends it (a
submission accepted again).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from sqlalchemy.orm import Session

from audit import Actor, record


class _Tally:
    def __init__(self) -> None:
        self.total = 0
        self.since_audit = 0
        self.burst: Hashable | None = None  # the period of the audited refusal; None = ended


class RefusalLog:
    """Refusals of one limit, by (installation's database, merchant)."""

    def __init__(self, action: str):
        self.action = action
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def total(self, database_url: str, merchant: str) -> int:
        """How many refusals for ``merchant`` this process counted."""
        with self._lock:
            tally = self._tallies.get((database_url, merchant))
            return tally.total if tally else 0

    def refused(self, session: Session, database_url: str, merchant: str, actor: Actor,
                period: Hashable, details: dict) -> None:
        """Count a refusal; audit it (``details`` plus ``refused_since_last_entry``) and
        commit when it is the first of a burst (the caller's rollback would undo it)."""
        key = (database_url, merchant)
        with self._lock:
            tally = self._tallies.setdefault(key, _Tally())
            tally.total += 1
            if tally.burst == period:
                tally.since_audit += 1
                return
            tally.burst = period
            unaudited, tally.since_audit = tally.since_audit, 0
        record(session, self.action, actor=actor, objects={"merchant": merchant},
               details={**details, "refused_since_last_entry": unaudited})
        session.commit()

    def end_burst(self, database_url: str, merchant: str) -> None:
        """The merchant is under the limit again: its next refusal starts a new burst."""
        with self._lock:
            tally = self._tallies.get((database_url, merchant))
            if tally is not None:
                tally.burst = None
