"""Trusted job templates' pages: the menu, a parameter form per template, and a result page
with a Vega-Lite chart beside the table (the spec comes from a JSON endpoint; vega-embed
draws it, no inline script), plus the segment summary shown in other pages.

The platform's review of segments is in :mod:`web.segment_review`; the same capabilities
for programs in :mod:`web.templates_api`. Everything goes through
``jobs.templates.registry`` and ``jobs.segments``, which go through ``jobs.service``: same
policy, queue and approvals.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from jobs import quarantine, segments, service
from jobs.errors import InvalidRequest, JobError
from jobs.templates.base import Template
from jobs.templates.registry import get_template, submit_template, templates
from web.auth import (
    app_config,
    db,
    page_user,
    request_origin,
    roles_required,
)
from web.common import (
    JOB_ROLES,
    Refusal,
    acting_merchants,
    may_resubmit,
    require_acting_merchant,
    service_refusal,
    table_rows,
)
from web.extensions import select_locale
from web.labels import label, translate_chart
from web.template_charts import template_chart
from yushan import access
from yushan.models import Job, JobKind, JobState, Role

bp = Blueprint("templates", __name__)
RESULT_ROWS = 200


def locale() -> str:
    return select_locale()


def template_or_404(name: str) -> Template:
    try:
        return get_template(name)
    except JobError:
        abort(404)


def refusal_for(exc: Exception) -> Refusal:
    """The refusal for a service or template error; parameter errors keep their own fixed
    text (it names the field, never its value)."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, InvalidRequest):
        return Refusal(422, "invalid_params", str(exc))
    refusal = service_refusal(exc)
    if refusal is None:
        raise exc
    return refusal


# --- segment summary in other pages (approvals queue, job page) ------------------------------


@bp.app_context_processor
def _segment_helpers() -> dict[str, Any]:
    def segment_box(job: Job) -> dict[str, Any] | None:
        """Sizes of a segment job's segments, and its platform review, for the viewer."""
        user = page_user()
        if job is None or user is None or job.kind != JobKind.SEGMENT.value:
            return None
        session = db()
        if not segments.may_see_summary(session, user, job):
            return None
        return {"segments": segments.segment_summary(session, app_config(), job),
                "review": quarantine.review_status(session, job)}

    return {"segment_box": segment_box}


# --- the template pages ----------------------------------------------------------------------


def template_json(template: Template, loc: str = "en") -> dict[str, Any]:
    return {
        "name": template.name,
        "title": template.localized(template.title, loc),
        "description": template.localized(template.description, loc),
        "kind": template.kind.value,
        "params": [
            {"name": p.name, "type": p.type.value, "label": template.localized(p.label, loc),
             "default": p.default_value(), "min": p.minimum, "max": p.maximum,
             "choices": list(p.choices)}
            for p in template.params
        ],
    }


@bp.get("/templates")
@roles_required(*JOB_ROLES)
def menu():
    loc = locale()
    return render_template("tmpl_list.html", templates=[template_json(t, loc) for t in templates().values()])


def form_page(template: Template, values: dict[str, str], error: str = "", status: int = 200,
              headers: dict[str, str] | None = None):
    merchants = acting_merchants(db(), page_user())
    return render_template("tmpl_form.html", template=template_json(template, locale()),
                           merchants=merchants, values=values, error=error), status, headers or {}


@bp.get("/templates/<name>")
@roles_required(*JOB_ROLES)
def form(name: str):
    template = template_or_404(name)
    merchants = acting_merchants(db(), page_user())
    values = {p.name: str(p.default_value()) for p in template.params}
    values["merchant"] = request.args.get("merchant") or (merchants[0].slug if merchants else "")
    source = request.args.get("from", "")
    if source.isdigit():  # run a template job again: its merchant, parameters and name
        job = service.get_visible_job(db(), page_user(), int(source))
        if job is None or job.template != template.name or not may_resubmit(db(), page_user(), job):
            abort(404)
        values.update({k: str(v) for k, v in (job.params or {}).items() if k in values})
        values.update(merchant=job.merchant.slug, name=job.name or "")
    return form_page(template, values)


@bp.post("/templates/<name>")
@roles_required(*JOB_ROLES)
def submit(name: str):
    template = template_or_404(name)
    session = db()
    user = page_user()
    values = {p.name: request.form.get(p.name, "") for p in template.params}
    values["merchant"] = request.form.get("merchant", "")
    values["name"] = request.form.get("name", "")[:200]
    try:
        require_acting_merchant(session, user, values["merchant"])
        job = submit_template(session, app_config(), user, values["merchant"], template.name,
                              {p.name: values[p.name] for p in template.params},
                              job_name=values["name"].strip() or None, origin=request_origin())
    except Exception as exc:
        refusal = refusal_for(exc)
        session.rollback()
        return form_page(template, values, refusal.message, refusal.status,
                         refusal.headers)
    session.commit()
    if job.state == JobState.BLOCKED.value:
        flash(gettext("The policy blocked this job; see the explanations below."), "error")
    else:
        flash(gettext("Job submitted."), "info")
    return redirect(url_for("templates.result", job_id=job.id))


def template_job_or_404(job_id: int) -> tuple[Job, Template]:
    job = service.get_visible_job(db(), page_user(), job_id)
    if job is None or not job.template:
        abort(404)
    return job, template_or_404(job.template)


@bp.get("/templates/jobs/<int:job_id>")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def result(job_id: int):
    session = db()
    user = page_user()
    job, template = template_job_or_404(job_id)
    columns, rows, shown, status = [], [], False, 200
    can_view = access.read_results(session, user, job).allowed
    if can_view and job.state == JobState.APPROVED.value:
        try:
            table = quarantine.read_result(session, app_config(), user, job, origin=request_origin())
        except Exception as exc:
            refusal_for(exc)  # e.g. awaiting the platform's review: no rows yet
            session.rollback()
        else:
            columns, rows = table_rows(table, RESULT_ROWS)
            shown = True
    doc = service.job_json(job, user)
    box = _segment_helpers()["segment_box"](job)
    chart = shown or bool(box and box["segments"])
    session.commit()  # the view of the rows is audited
    return render_template("tmpl_result.html", job=job, doc=doc, template=template_json(template, locale()),
                           columns=columns, rows=rows, rows_shown=shown, can_view=can_view,
                           segment=box, chart=chart,
                           state_labels={s.value: label("state", s.value) for s in JobState}), status


@bp.get("/templates/jobs/<int:job_id>/chart.json")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def chart(job_id: int):
    """The Vega-Lite spec of a template job's result: rows the viewer may see, or the
    segment sizes of a segment job (counts only)."""
    session = db()
    user = page_user()
    job, template = template_job_or_404(job_id)
    if template.kind is JobKind.SEGMENT:
        if not segments.may_see_summary(session, user, job):
            abort(404)
        sizes = segments.segment_summary(session, app_config(), job)
        if sizes is None:
            abort(409)
        spec = template_chart(template, ["segment", "members"], sizes)
    else:
        try:
            table = quarantine.read_result(session, app_config(), user, job, origin=request_origin())
        except Exception as exc:
            refusal = refusal_for(exc)
            session.rollback()
            abort(refusal.status)
        columns, rows = table_rows(table)
        spec = template_chart(template, columns, rows)
    session.commit()
    return jsonify(translate_chart(spec))
