"""Trusted job templates in the web app, segment summaries, and the platform's segment review.

Pages: the template menu, a parameter form per template, and a result page with a
Vega-Lite chart beside the table (the spec comes from a JSON endpoint; vega-embed draws it,
no inline script). Admins switch platform review of segments on or off and review segment
outputs. The same capabilities for programs are under ``/api/v1/templates`` and
``/api/v1/segment-review``. Everything goes through ``jobs.templates.registry`` and
``jobs.segments``, which go through ``jobs.service``: same policy, queue and approvals.
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
    api_user_required,
    app_config,
    current_api_user,
    db,
    page_user,
    request_origin,
    roles_required,
)
from web.common import (
    JOB_ROLES,
    MAX_JSON_BYTES,
    Refusal,
    acting_merchants,
    require_acting_merchant,
    service_refusal,
    table_rows,
)
from web.errors import ApiError
from web.extensions import csrf, select_locale
from web.labels import label, translate_chart
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
        spec = template.chart(["segment", "members"], sizes)
    else:
        try:
            table = quarantine.read_result(session, app_config(), user, job, origin=request_origin())
        except Exception as exc:
            refusal = refusal_for(exc)
            session.rollback()
            abort(refusal.status)
        columns, rows = table_rows(table)
        spec = template.chart(columns, rows)
    session.commit()
    return jsonify(translate_chart(spec))


# --- the platform's review of segments (admins) ----------------------------------------------


@bp.get("/admin/segment-review")
@roles_required(Role.ADMIN.value)
def review_queue():
    session = db()
    pending = quarantine.pending_reviews(session)
    items = [{"job": j, "segments": segments.segment_summary(session, app_config(), j)} for j in pending]
    mode = quarantine.review_mode(session)
    session.commit()  # summaries computed now are kept
    return render_template("tmpl_review.html", items=items, mode=mode.value,
                           modes=[m.value for m in quarantine.ReviewMode])


@bp.post("/admin/segment-review/mode")
@roles_required(Role.ADMIN.value)
def set_mode():
    session = db()
    try:
        quarantine.set_review_mode(session, page_user(), request.form.get("mode", ""), origin=request_origin())
    except Exception as exc:
        refusal = refusal_for(exc)
        session.rollback()
        abort(refusal.status)
    session.commit()
    flash(gettext("Setting saved."), "info")
    return redirect(url_for("templates.review_queue"))


@bp.post("/admin/segment-review/<int:job_id>/<decision>")
@roles_required(Role.ADMIN.value)
def review(job_id: int, decision: str):
    session = db()
    job = service.find_job(session, job_id)
    if job is None:
        abort(404)
    try:
        quarantine.platform_review(session, app_config(), page_user(), job, decision, origin=request_origin())
    except Exception as exc:
        refusal = refusal_for(exc)
        session.rollback()
        abort(refusal.status)
    session.commit()
    flash(gettext("Review recorded."), "info")
    return redirect(url_for("templates.review_queue"))


# --- JSON API ---------------------------------------------------------------------------------


def api_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        refusal = refusal_for(exc)
        db().rollback()
        raise ApiError(refusal.status, refusal.code, refusal.message, refusal.headers) from None


def api_body() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", "The body is too large.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    return body


@bp.get("/api/v1/templates")
@api_user_required(Role.MERCHANT, Role.PROVIDER)
def api_templates():
    return jsonify({"templates": [template_json(t) for t in templates().values()]})


@bp.post("/api/v1/templates/<name>/jobs")
@api_user_required(Role.MERCHANT, Role.PROVIDER)
def api_submit(name: str):
    """``{merchant, params: {...}, name?}`` -> 201 ``{"id", "state", "template"}``."""
    body = api_body()
    merchant, params, job_name = body.get("merchant"), body.get("params") or {}, body.get("name")
    if not isinstance(merchant, str) or not isinstance(params, dict) or not isinstance(job_name, str | None):
        raise ApiError(400, "bad_request", "'merchant' must be a string and 'params' an object.")
    session = db()
    user = current_api_user()
    api_call(require_acting_merchant, session, user, merchant)
    job = api_call(submit_template, session, app_config(), user, merchant, name, params,
                   job_name=job_name, origin=request_origin())
    session.commit()
    return jsonify({"id": job.id, "state": job.state, "template": job.template}), 201


@bp.get("/api/v1/jobs/<int:job_id>/segments")
@api_user_required()
def api_segments(job_id: int):
    """A segment job's summary: ``{"segments": [{"segment", "members"}], "review": {...}}``."""
    session = db()
    user = current_api_user()
    job = service.find_job(session, job_id)
    if job is None or not segments.may_see_summary(session, user, job):
        raise ApiError(404)
    sizes = api_call(segments.segment_summary, session, app_config(), job)
    if sizes is None:
        raise ApiError(409, "no_output", "This job has no segment output.")
    review = quarantine.review_status(session, job)
    session.commit()
    return jsonify({"segments": sizes, "review": review})


@bp.put("/api/v1/segment-review")
@api_user_required(Role.ADMIN)
def api_set_mode():
    """``{"mode": "required" | "not_required"}``: platform review of segment outputs."""
    session = db()
    mode = api_call(quarantine.set_review_mode, session, current_api_user(), api_body().get("mode", ""),
                    origin=request_origin())
    session.commit()
    return jsonify({"mode": mode.value})


@bp.post("/api/v1/jobs/<int:job_id>/platform-review")
@api_user_required(Role.ADMIN)
def api_review(job_id: int):
    """``{"decision": "approve" | "reject"}`` by a platform admin."""
    session = db()
    job = service.find_job(session, job_id)
    if job is None:
        raise ApiError(404)
    decision = api_body().get("decision", "")
    api_call(quarantine.platform_review, session, app_config(), current_api_user(), job, decision,
             origin=request_origin())
    session.commit()
    return jsonify(service.job_json(job, current_api_user()))


def _exempt_api_views() -> None:
    """The API views take bearer tokens (no cookies): CSRF tokens do not apply there."""
    for view in (api_templates, api_submit, api_segments, api_set_mode, api_review):
        csrf.exempt(view)


_exempt_api_views()
