"""The registry of trusted job templates: what each asks for, and how it becomes a job.

A template renders parameterised Spark SQL from validated parameters and is submitted
through :func:`jobs.service.submit` like hand-written SQL, so the same policy check, queue,
sandbox, quarantine and approval apply. Parameters are never pasted into SQL unchecked:
each is parsed to its declared type, range-checked, and rendered by a literal function of
this module (numbers as numbers, dates as ``DATE 'yyyy-mm-dd'``, choices from a closed
list). A template with a preparation (lookalike) computes part of its final query inside
the sandbox: it renders a description of the step here, the worker hands it to the
executor, and :mod:`sandbox.prepare` runs it; the query that runs is checked again there.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from audit import record
from jobs.errors import InvalidRequest, NotFound
from sandbox.prepare import prepared_sql
from yushan.config import Config
from yushan.models import Job, JobKind, User

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
    """A trusted job: its form, the SQL it renders and the chart of its result."""

    name: str
    title: Mapping[str, str]
    description: Mapping[str, str]
    kind: JobKind
    params: tuple[Param, ...]
    # (validated params, merchant slug) -> Spark SQL; the merchant slug is checked first.
    build: Callable[[dict[str, Any], str], str]
    # (column names, rows as dicts) -> a Vega-Lite spec (dict) for the result page. For
    # segment templates the rows are the segment summary: {"segment", "members"}.
    chart: Callable[[list[str], list[dict[str, Any]]], dict[str, Any]]
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


# --- the registry ----------------------------------------------------------------------------


def _load() -> dict[str, Template]:
    from jobs.templates import lookalike, membership_health, omnichannel, rfm, store_overlap

    found = [rfm.TEMPLATE, membership_health.TEMPLATE, store_overlap.TEMPLATE,
             omnichannel.TEMPLATE, lookalike.TEMPLATE]
    return {t.name: t for t in found}


_TEMPLATES: dict[str, Template] | None = None


def templates() -> dict[str, Template]:
    """All templates by name, in menu order."""
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _load()
    return _TEMPLATES


def get_template(name: str | None) -> Template:
    template = templates().get(name or "")
    if template is None:
        raise NotFound("no such template")
    return template


def submit_template(session: Session, config: Config, user: User, merchant_slug: str, name: str,
                    raw_params: Mapping[str, Any] | None, job_name: str | None = None,
                    *, origin: str | None = None) -> Job:
    """Render a template and submit it as a job (policy-checked, queued or blocked).

    The job records which template and parameters produced its SQL (Job.template,
    Job.params) from the start, with its ``job.submit`` entry; ``job.template`` follows.
    """
    from jobs import service

    template = get_template(name)
    params = template.parse_params(raw_params)
    sql = template.render(params, merchant_slug)
    title = job_name or template.title["en"]
    # The template and its parameters are part of the queued job: the executor needs them.
    job = service.submit(session, config, user, merchant_slug, template.kind.value, sql,
                         name=title, origin=origin, template=template.name,
                         params=template.params_json(params))
    record(session, "job.template", actor=service.actor_for(user, origin),
           objects={"job": job.id, "merchant": job.merchant.slug},
           details={"template": template.name, "params": job.params, "state": job.state})
    return job


def check_template(session: Session, config: Config, user: User, merchant_slug: str, name: str,
                   raw_params: Mapping[str, Any] | None, *, origin: str | None = None) -> dict[str, Any]:
    """Dry run of a template: the policy decision on the SQL it renders."""
    from jobs import service

    template = get_template(name)
    sql = template.render(template.parse_params(raw_params), merchant_slug)
    return service.check(session, config, user, merchant_slug, template.kind.value, sql, origin=origin)


def preparation_of(template_name: str | None, params: dict[str, Any] | None, merchant: str) -> dict[str, Any] | None:
    """The sandbox step of a template job (rendered from its stored parameters), or None."""
    if not template_name:
        return None
    template = get_template(template_name)
    if template.preparation is None:
        return None
    return template.preparation(template.parse_params(params), merchant)


def prepare_sql(spark, template_name: str, params: dict[str, Any] | None, merchant: str, sql: str) -> str:
    """The query a template job runs: ``sql`` itself, or what its preparation makes of it
    (on a session with the job's catalog installed, as inside the sandbox)."""
    spec = preparation_of(template_name, params, merchant)
    return sql if spec is None else prepared_sql(spark, spec)
