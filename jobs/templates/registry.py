"""The registry of trusted job templates: what each asks for, and how it becomes a job.

A template renders parameterised Spark SQL from validated parameters and is submitted
through :func:`jobs.service.submit` like hand-written SQL, so the same policy check, queue,
sandbox, quarantine and approval apply. Parameters are never pasted into SQL unchecked:
each is parsed to its declared type, range-checked, and rendered by a literal function of
jobs/templates/base.py (numbers as numbers, dates as ``DATE 'yyyy-mm-dd'``, choices from a closed
list). A template with a preparation (lookalike) computes part of its final query inside
the sandbox: it renders a description of the step here, the worker hands it to the
executor, and :mod:`sandbox.prepare` runs it; the query that runs is checked again there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from audit import record
from jobs import service
from jobs.errors import NotFound
from jobs.templates import lookalike, membership_health, omnichannel, rfm, store_overlap
from jobs.templates.base import Template
from sandbox.prepare import prepared_sql
from yushan.config import Config
from yushan.models import Job, User

# --- the registry ----------------------------------------------------------------------------


_TEMPLATES: dict[str, Template] = {t.name: t for t in (
    rfm.TEMPLATE, membership_health.TEMPLATE, store_overlap.TEMPLATE, omnichannel.TEMPLATE,
    lookalike.TEMPLATE)}


def templates() -> dict[str, Template]:
    """All templates by name, in menu order."""
    return _TEMPLATES


def get_template(name: str | None) -> Template:
    template = templates().get(name or "")
    if template is None:
        raise NotFound("no such template")
    return template


def submit_template(session: Session, config: Config, user: User, merchant_slug: str, name: str,
                    raw_params: Mapping[str, Any] | None, job_name: str | None = None,
                    *, origin: str | None = None, idempotency_key: str | None = None) -> Job:
    """Render a template and submit it as a job (policy-checked, queued or blocked).

    The job records which template and parameters produced its SQL (Job.template,
    Job.params) from the start, with its ``job.submit`` entry; ``job.template`` follows.
    """
    template = get_template(name)
    params = template.parse_params(raw_params)
    sql = template.render(params, merchant_slug)
    title = job_name or template.title["en"]
    # The template and its parameters are part of the queued job: the executor needs them.
    job = service.submit(session, config, user, merchant_slug, template.kind.value, sql,
                         name=title, origin=origin, template=template.name,
                         params=template.params_json(params), idempotency_key=idempotency_key)
    record(session, "job.template", actor=service.actor_for(user, origin),
           objects={"job": job.id, "merchant": job.merchant.slug},
           details={"template": template.name, "params": job.params, "state": job.state})
    return job


def check_template(session: Session, config: Config, user: User, merchant_slug: str, name: str,
                   raw_params: Mapping[str, Any] | None, *, origin: str | None = None) -> dict[str, Any]:
    """Dry run of a template: the policy decision on the SQL it renders."""
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
