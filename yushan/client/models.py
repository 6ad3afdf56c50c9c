"""Typed views of the API's JSON documents (``/work/shared/spec/api.md``, ``openapi.json``).

Each keeps the document it was made from in ``raw``: fields the server adds later are
there before this module names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Job states after which nothing changes by itself (approval and rejection are people's).
FINAL_STATES = frozenset({"blocked", "failed", "cancelled", "approved", "rejected", "expired"})
#: States in which the worker has not finished with the job.
ACTIVE_STATES = frozenset({"queued", "running"})


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Source:
    """Where a violating column comes from: a dataset's column and its class."""

    dataset: str
    column: str
    column_class: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Source:
        return cls(dataset=doc.get("dataset", ""), column=doc.get("column", ""),
                   column_class=doc.get("class", ""))


@dataclass(frozen=True)
class Violation:
    """A policy rule a query breaks, with an explanation and a suggestion (no data values)."""

    rule: str
    column: str | None
    message: str
    suggestion: str
    sources: tuple[Source, ...] = ()

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Violation:
        return cls(rule=doc.get("rule", ""), column=doc.get("column"), message=doc.get("message", ""),
                   suggestion=doc.get("suggestion", ""),
                   sources=tuple(Source.from_json(s) for s in doc.get("sources") or ()))


@dataclass(frozen=True)
class Decision:
    """The answer of ``check``: ``decision`` is ``allow``, ``deny`` (with ``violations``) or
    ``error`` (syntax or name errors: ``error`` = ``{"class", "message", "position"}``).
    For dp jobs ``epsilon`` is the cost, ``budget`` what is left, ``accuracy`` per column."""

    decision: str
    violations: tuple[Violation, ...]
    release: str | None
    error: dict[str, Any] | None
    epsilon: float | None
    budget: dict[str, Any] | None
    accuracy: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Decision:
        return cls(decision=doc.get("decision", ""),
                   violations=tuple(Violation.from_json(v) for v in doc.get("violations") or ()),
                   release=doc.get("release"), error=doc.get("error"), epsilon=doc.get("epsilon"),
                   budget=doc.get("budget"), accuracy=doc.get("accuracy") or {}, raw=doc)


@dataclass(frozen=True)
class Job:
    """A job as its caller may see it. ``summary`` (released and suppressed rows) is None
    until the merchant approves, and for anyone who may not see the rows."""

    id: int
    state: str
    progress: float
    name: str
    kind: str
    merchant: str
    submitted_by: str | None
    sql: str
    decision: str | None
    violations: tuple[Violation, ...]
    release: str | None
    error: dict[str, Any] | None
    summary: dict[str, Any] | None
    epsilon: float | None
    accuracy: dict[str, Any]
    reject_reason: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def active(self) -> bool:
        """Queued or running: the worker has not finished with it."""
        return self.state in ACTIVE_STATES

    @property
    def final(self) -> bool:
        """Nothing will change it any more (awaiting_approval waits for the merchant)."""
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        return cls(
            id=int(doc["id"]), state=doc.get("state", ""), progress=float(doc.get("progress") or 0.0),
            name=doc.get("name") or "", kind=doc.get("kind") or "", merchant=doc.get("merchant") or "",
            submitted_by=doc.get("submitted_by"), sql=doc.get("sql") or "",
            decision=doc.get("decision"),
            violations=tuple(Violation.from_json(v) for v in doc.get("violations") or ()),
            release=doc.get("release"), error=doc.get("error"), summary=doc.get("summary"),
            epsilon=doc.get("epsilon"), accuracy=doc.get("accuracy") or {},
            reject_reason=doc.get("reject_reason"), created_at=_time(doc.get("created_at")),
            started_at=_time(doc.get("started_at")), finished_at=_time(doc.get("finished_at")),
            raw=doc,
        )


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    column_class: str


@dataclass(frozen=True)
class Dataset:
    """A dataset the caller may use: its columns with their classes (identifier, private,
    quasi, public), the entity column and k for consumer data."""

    name: str
    owner: str
    consumer_data: bool
    entity_column: str | None
    k: int | None
    member_key: str | None
    columns: tuple[Column, ...]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Dataset:
        return cls(name=doc["name"], owner=doc.get("owner", ""), consumer_data=bool(doc.get("consumer_data")),
                   entity_column=doc.get("entity_column"), k=doc.get("k"), member_key=doc.get("member_key"),
                   columns=tuple(Column(c["name"], c.get("type", ""), c.get("class", ""))
                                 for c in doc.get("columns") or ()),
                   raw=doc)


@dataclass(frozen=True)
class Budget:
    """A merchant's differential privacy budget this period, and what is spent of it."""

    merchant: str
    period_start: datetime | None
    period_end: datetime | None
    epsilon: float
    delta: float
    epsilon_spent: float
    delta_spent: float
    raw: dict[str, Any] = field(repr=False)

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.epsilon - self.epsilon_spent)

    @property
    def delta_left(self) -> float:
        return max(0.0, self.delta - self.delta_spent)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Budget:
        return cls(merchant=doc["merchant"], period_start=_time(doc.get("period_start")),
                   period_end=_time(doc.get("period_end")), epsilon=float(doc["epsilon"]),
                   delta=float(doc["delta"]), epsilon_spent=float(doc.get("epsilon_spent") or 0.0),
                   delta_spent=float(doc.get("delta_spent") or 0.0), raw=doc)


@dataclass(frozen=True)
class Me:
    """Who the token belongs to, and the merchants it may run jobs for."""

    username: str
    role: str
    tenant: str
    merchants: tuple[str, ...]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Me:
        return cls(username=doc["username"], role=doc["role"], tenant=doc["tenant"],
                   merchants=tuple(doc.get("merchants") or ()))


@dataclass(frozen=True)
class Template:
    """A trusted template: its parameters (name, type, label, default, bounds, choices)."""

    name: str
    title: str
    description: str
    kind: str
    params: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Template:
        return cls(name=doc["name"], title=doc.get("title", ""), description=doc.get("description", ""),
                   kind=doc.get("kind", ""), params=tuple(doc.get("params") or ()), raw=doc)
