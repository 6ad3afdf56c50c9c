"""The policy's vocabulary: sources, lineage modes, violations. Plain data, no Spark."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Column classes of platform consumer data (see the contract), plus two of our own:
# OWN for the job's merchant's own datasets (free for that merchant), and the classes
# of platform datasets that are not consumer data are taken as they are registered.
IDENTIFIER = "identifier"
PRIVATE = "private"
QUASI = "quasi"
PUBLIC = "public"
OWN = "own"

SENSITIVE = frozenset({IDENTIFIER, PRIVATE})


class Mode(StrEnum):
    """How a source column's value reaches an expression."""

    RAW = "raw"  # the value itself or any scalar function of it (row level)
    KEY = "key"  # a GROUP BY key of the final aggregation
    AGG = "agg"  # inside an allowed value aggregate of the final aggregation
    COUNT = "count"  # only counted (count, count distinct, approx_count_distinct)
    TOKEN = "token"  # noqa: S105 - a lineage mode's name, not a secret: inside segment_token()


@dataclass(frozen=True)
class Source:
    """One column of one dataset, with its class."""

    dataset: str
    column: str
    column_class: str
    consumer: bool  # the dataset is platform consumer data

    def to_dict(self) -> dict[str, str]:
        return {"dataset": self.dataset, "column": self.column, "class": self.column_class}


# What an expression depends on: each source with the way it flows in.
Lineage = frozenset[tuple[Source, Mode]]
EMPTY: Lineage = frozenset()


def sources_in(lineage: Lineage, *modes: Mode) -> set[Source]:
    return {s for s, m in lineage if not modes or m in modes}


def with_mode(lineage: Lineage, mode: Mode, only: tuple[Mode, ...] = (Mode.RAW,)) -> Lineage:
    """Re-tag the flows in ``only`` modes as ``mode`` (e.g. raw -> counted)."""
    return frozenset((s, mode if m in only else m) for s, m in lineage)


@dataclass(frozen=True)
class Violation:
    """One reason for a denial (P9): rule, where, from what, why, and how to fix it."""

    rule: str
    column: str
    sources: tuple[Source, ...]
    message: str
    suggestion: str
    # For translation (P9, the user's language): the English templates the message and
    # suggestion were formatted from, and their parameters (names, never data values).
    # The web layer looks the templates up in its catalog and formats them with params.
    message_template: str = ""
    suggestion_template: str = ""
    params: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "column": self.column,
            "sources": [s.to_dict() for s in self.sources],
            "message": self.message,
            "suggestion": self.suggestion,
            # for translation: the English templates and their parameters (names only)
            "message_template": self.message_template,
            "suggestion_template": self.suggestion_template,
            "params": dict(self.params),
        }


def sorted_sources(sources: set[Source] | frozenset[Source]) -> tuple[Source, ...]:
    return tuple(sorted(sources, key=lambda s: (s.dataset, s.column)))
