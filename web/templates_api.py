"""The JSON API of templates and segments: list and submit templates, a segment job's
summary, and the platform's review of segments (``/api/v1/templates``,
``/api/v1/jobs/<id>/segments``, ``/api/v1/segment-review``,
``/api/v1/jobs/<id>/platform-review``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from jobs import quarantine, segments, service
from jobs.templates.registry import submit_template, templates
from web import idempotency
from web.auth import api_user_required, app_config, current_api_user, db, request_origin
from web.common import MAX_JSON_BYTES, require_acting_merchant
from web.errors import ApiError
from web.extensions import csrf
from web.templates_views import refusal_for, template_json
from yushan.models import Role, User

bp = Blueprint("templates_api", __name__)


def _api_user() -> User:
    """The caller (the views are guarded by api_user_required: there is one)."""
    user = current_api_user()
    if user is None:
        raise ApiError(401)
    return user


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
    """``{merchant, params: {...}, name?}`` -> 201 ``{"id", "state", "template"}``; with an
    ``Idempotency-Key`` a retry answers the same and queues nothing (web.idempotency)."""
    body = api_body()
    merchant, params, job_name = body.get("merchant"), body.get("params") or {}, body.get("name")
    if not isinstance(merchant, str) or not isinstance(params, dict) or not isinstance(job_name, str | None):
        raise ApiError(400, "bad_request", "'merchant' must be a string and 'params' an object.")
    session = db()
    user = _api_user()
    api_call(require_acting_merchant, session, user, merchant)
    attempt, answer = idempotency.begin(session, user, body)
    if answer is not None:
        return answer
    job = api_call(submit_template, session, app_config(), user, merchant, name, params,
                   job_name=job_name, origin=request_origin(),
                   idempotency_key=attempt.key if attempt else None)
    response = jsonify({"id": job.id, "state": job.state, "template": job.template})
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return idempotency.commit(session, attempt, response)


@bp.get("/api/v1/jobs/<int:job_id>/segments")
@api_user_required()
def api_segments(job_id: int):
    """A segment job's summary: ``{"segments": [{"segment", "members"}], "review": {...}}``."""
    session = db()
    user = _api_user()
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
