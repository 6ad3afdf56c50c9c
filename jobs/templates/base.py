"""What a trusted job template is made of: its parameters, and the only SQL literals a
parameter may become. The template modules build on this; :mod:`jobs.templates.registry`
lists them and turns them into jobs."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from jobs.errors import InvalidRequest, NotFound
from yushan.models import JobKind

SLUG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ParamType(enum.StrEnum):
    INT = "int"
    NUMBER = "number"
    DATE = "date"
    CHOICE = "choice"


@dataclass(frozen=True)
class Param:
    """One form field of a template. ``label`` maps a locale (``en``, ``zh``) to its text."""

    name: str
    type: ParamType
    label: Mapping[str, str]
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: Any) -> Any:
        """The value as its type, or InvalidRequest naming the field (never echoing it)."""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raw = self.default() if callable(self.default) else self.default
        try:
            if self.type is ParamType.INT:
                value: Any = int(str(raw).strip())
            elif self.type is ParamType.NUMBER:
                value = float(str(raw).strip())
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.type is ParamType.DATE:
                value = raw if isinstance(raw, date) else date.fromisoformat(str(raw).strip())
            else:
                value = str(raw).strip()
                if value not in self.choices:
                    raise ValueError
        except (TypeError, ValueError):
            raise InvalidRequest(f"'{self.name}' is not a valid {self.type.value}") from None
        if self.type in (ParamType.INT, ParamType.NUMBER):
            if self.minimum is not None and value < self.minimum:
                raise InvalidRequest(f"'{self.name}' must be at least {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise InvalidRequest(f"'{self.name}' must be at most {self.maximum:g}")
        return value

    def to_json(self, value: Any) -> Any:
        return value.isoformat() if isinstance(value, date) else value

    def default_value(self) -> Any:
        return self.to_json(self.default() if callable(self.default) else self.default)


# A preparation: (validated params, merchant slug) -> the plain description of a step that
# the sandbox runs before the final query (sandbox/prepare.py), e.g. training a model.
Preparation = Callable[[dict[str, Any], str], dict[str, Any]]


# The reporting period most templates take: the span of the demo world's orders.
PERIOD_PARAMS: tuple[Param, ...] = (
    Param("since", ParamType.DATE, {"en": "From", "zh": "开始日期"}, date(2025, 1, 1)),
    Param("until", ParamType.DATE, {"en": "Until (inclusive)", "zh": "结束日期（含）"},
          date(2026, 10, 31)),
)


@dataclass(frozen=True)
class Template:
    """A trusted job: its form and the SQL it renders (its chart is drawn by the web app:
    web/template_charts.py)."""

    name: str
    title: Mapping[str, str]
    description: Mapping[str, str]
    kind: JobKind
    params: tuple[Param, ...]
    # (validated params, merchant slug) -> Spark SQL; the merchant slug is checked first.
    build: Callable[[dict[str, Any], str], str]
    # The merchant datasets it reads (short names), e.g. ("members",).
    needs: tuple[str, ...] = ()
    preparation: Preparation | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def parse_params(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validated parameters (typed); unknown fields are refused, missing ones defaulted."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {p.name for p in self.params})
        if unknown:
            raise InvalidRequest("unknown parameter: " + ", ".join(unknown[:5]))
        return {p.name: p.parse(raw.get(p.name)) for p in self.params}

    def params_json(self, params: dict[str, Any]) -> dict[str, Any]:
        by_name = {p.name: p for p in self.params}
        return {k: by_name[k].to_json(v) for k, v in params.items()}

    def render(self, params: dict[str, Any], merchant: str) -> str:
        table_prefix(merchant)  # refuses anything but a plain slug
        return self.build(params, merchant)

    def localized(self, mapping: Mapping[str, str], locale: str) -> str:
        return mapping.get("zh" if locale.startswith("zh") else "en") or mapping["en"]


# --- SQL literals: the only way a parameter reaches the SQL text -------------------------------


def table_prefix(merchant: str) -> str:
    """The merchant's schema as a quoted identifier (slugs are [a-z0-9_] only)."""
    if not SLUG.match(merchant or ""):
        raise NotFound("no such merchant")
    return f"`{merchant}`"


def sql_date(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


def sql_int(value: int) -> str:
    return str(int(value))


def sql_number(value: float) -> str:
    # repr of a float is exact and never contains quotes or identifiers.
    return repr(float(value))


def sql_string(value: str, allowed: tuple[str, ...]) -> str:
    """A string literal from a closed list of values (never free text)."""
    if value not in allowed:
        raise InvalidRequest("value is not one of the allowed choices")
    return "'" + value + "'"
