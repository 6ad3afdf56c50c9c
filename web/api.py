"""The JSON API (``/api/v1``) of ``../shared/spec/api.md``: bearer tokens, no cookies.

Every view resolves objects through the caller's visibility (another tenant's job answers
404 exactly like a missing one), maps refusals to the statuses of the spec, and audits
what it does in the same transaction.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from jobs import budget, quarantine, service
from jobs.errors import InvalidRequest
from web import idempotency, paging
from web.auth import (
    LoginRefused,
    actor_for,
    api_user_required,
    app_config,
    audit_record,
    authenticate,
    current_api_user,
    db,
    issue_token,
    request_origin,
    utcnow,
)
from web.common import (
    JOB_ROLES,
    MAX_JSON_BYTES,
    RESULT_FORMATS,
    Refusal,
    dataset_json,
    download_response,
    may_decide,
    parse_job_request,
    require_acting_merchant,
    result_filename,
    service_refusal,
    visible_datasets,
    visible_jobs,
)
from web.edges import BadJSON, strict_json_loads
from web.errors import ApiError
from yushan.models import Job, JobState, Role

bp = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
JOB_STATES = tuple(s.value for s in JobState)


def refuse(refusal: Refusal) -> ApiError:
    return ApiError(refusal.status, refusal.code, refusal.message, refusal.headers)


def json_body() -> Any:
    """The request's JSON body: 413 when too large, 400 when it is not JSON."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", f"The body is larger than {MAX_JSON_BYTES // 1024} KB.")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", f"The body is larger than {MAX_JSON_BYTES // 1024} KB.")
    if not raw.strip():
        return {}
    try:
        return strict_json_loads(raw)
    except BadJSON as exc:  # the message is ours: depth, encoding or syntax, no values
        raise ApiError(400, "bad_json", str(exc)) from None


def visible_job(job_id: int) -> Job:
    """The job when the caller may see it; 404 when missing or not theirs.

    The answer is the API's generic 404, the same as for a path no route matches (a
    malformed id such as ``abc`` or ``-5``): no id is told apart from another."""
    job = service.get_visible_job(db(), current_api_user(), job_id)
    if job is None:
        raise ApiError(404)
    return job


def call_service(fn, *args, **kwargs):
    """Call the jobs service, mapping its refusals to statuses (never its texts)."""
    try:
        return fn(*args, **kwargs)
    except Refusal as refusal:
        raise refuse(refusal) from None
    except Exception as exc:
        refusal = service_refusal(exc)
        if refusal is None:
            raise
        db().rollback()
        raise refuse(refusal) from None


# ---------------------------------------------------------------- tokens


@bp.post("/token")
def token():
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "bad_request", "'username' and 'password' must be strings.")
    session = db()
    try:
        user = authenticate(session, username, password, channel="api")
    except LoginRefused as refused:
        if refused.status == 429:
            raise ApiError(429, "too_many_requests", "Too many failed log-ins; try again later.",
                           {"Retry-After": str(refused.retry_after)}) from None
        raise ApiError(401, "unauthorized", "Wrong user name or password.") from None
    value, expires_at = issue_token(session, user)
    audit_record(session, "auth.token", actor_for(user), objects={"user": user.username},
                 details={"expires_at": expires_at.isoformat()})
    session.commit()
    return jsonify({"token": value, "expires_at": expires_at.isoformat(),
                    "user": {"username": user.username, "role": user.role,
                             "tenant": user.tenant.slug}})


@bp.delete("/token")
@api_user_required()
def revoke_token():
    session = db()
    record = g.api_token
    record.revoked_at = utcnow()
    audit_record(session, "auth.logout", actor_for(record.user),
                 objects={"user": record.user.username}, details={"channel": "api"})
    session.commit()
    return Response(status=204)


@bp.get("/me")
@api_user_required()
def me():
    user = current_api_user()
    return jsonify({"username": user.username, "role": user.role, "tenant": user.tenant.slug,
                    "merchants": [m.slug for m in _acting(user)]})


def _acting(user):
    from web.common import acting_merchants

    return acting_merchants(db(), user)


# ---------------------------------------------------------------- datasets


@bp.get("/datasets")
@api_user_required()
def datasets():
    """A page of the datasets the caller may use, by name (``limit``, ``cursor``)."""
    limit = paging.limit_arg(paging.DATASETS_LIMIT)
    after = paging.decode_cursor("datasets", str)
    infos = visible_datasets(db(), app_config(), current_api_user())
    if after is not None:
        infos = [info for info in infos if info.full_name.lower() > after[0]]
    page = infos[:limit]
    next_cursor = (paging.encode_cursor("datasets", page[-1].full_name.lower())
                   if len(infos) > limit else None)
    return jsonify({"datasets": [dataset_json(info) for info in page], "next_cursor": next_cursor})


# ---------------------------------------------------------------- jobs


@bp.post("/jobs/check")
@api_user_required(*JOB_ROLES)
def check_job():
    user = current_api_user()
    session = db()
    try:
        spec = parse_job_request(json_body(), with_name=False)
        require_acting_merchant(session, user, spec.merchant)
    except Refusal as refusal:
        raise refuse(refusal) from None
    decision = call_service(service.check, session, app_config(), user, spec.merchant,
                            spec.kind, spec.sql, origin=request_origin())
    session.commit()
    return jsonify(decision)


@bp.post("/jobs")
@api_user_required(*JOB_ROLES)
def submit_job():
    """Queue a job: 201 ``{"id", "state": "queued", ...}``. With an ``Idempotency-Key`` a
    retry answers the same (web.idempotency) and queues nothing."""
    user = current_api_user()
    session = db()
    body = json_body()
    try:
        spec = parse_job_request(body, with_name=True)
        require_acting_merchant(session, user, spec.merchant)
    except Refusal as refusal:
        raise refuse(refusal) from None
    attempt, answer = idempotency.begin(session, user, body)
    if answer is not None:
        return answer
    job = call_service(service.submit, session, app_config(), user, spec.merchant,
                       spec.kind, spec.sql, name=spec.name or None, origin=request_origin(),
                       idempotency_key=attempt.key if attempt else None)
    response = jsonify(service.job_json(job, user))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return idempotency.commit(session, attempt, response)


@bp.get("/jobs")
@api_user_required(*JOB_ROLES, Role.AUDITOR)
def list_jobs():
    """A page of the jobs the caller may see, newest first (``state``, ``merchant``,
    ``limit``, ``cursor``)."""
    user = current_api_user()
    state = request.args.get("state")
    if state and state not in JOB_STATES:
        shown = state[:40].encode("ascii", "replace").decode()  # the caller's own input
        raise ApiError(400, "bad_request", f"'state' is {shown!r}; it must be one of: "
                       + ", ".join(JOB_STATES) + ".")
    merchant = (request.args.get("merchant") or "").strip() or None
    limit = paging.limit_arg(paging.JOBS_LIMIT)
    after = paging.decode_cursor("jobs", str, int)
    position = (paging.parse_cursor_time(after[0]), after[1]) if after else None
    # One more than asked: whether there is a next page, without counting.
    jobs = visible_jobs(db(), user, states=(state,) if state else None, merchant=merchant,
                        after=position, limit=limit + 1)
    page = jobs[:limit]
    next_cursor = (paging.encode_cursor("jobs", paging.cursor_time(page[-1].created_at), page[-1].id)
                   if len(jobs) > limit else None)
    return jsonify({"jobs": [service.job_json(job, user) for job in page],
                    "next_cursor": next_cursor})


@bp.get("/jobs/<int:job_id>")
@api_user_required()
def get_job(job_id: int):
    job = visible_job(job_id)
    return jsonify(service.job_json(job, current_api_user()))


@bp.post("/jobs/<int:job_id>/cancel")
@api_user_required(*JOB_ROLES)
def cancel_job(job_id: int):
    return _transition(job_id, "cancel")


@bp.post("/jobs/<int:job_id>/approve")
@api_user_required()
def approve_job(job_id: int):
    return _transition(job_id, "approve")


@bp.post("/jobs/<int:job_id>/reject")
@api_user_required()
def reject_job(job_id: int):
    return _transition(job_id, "reject")


TRANSITIONS = {"cancel": service.cancel, "approve": quarantine.approve, "reject": quarantine.reject}


def _transition(job_id: int, action: str):
    user = current_api_user()
    session = db()
    job = visible_job(job_id)
    if action in ("approve", "reject") and not may_decide(user, job):
        raise ApiError(403, "forbidden", "Only the job's merchant approves or rejects it.")
    extra = {"reason": _reject_reason()} if action == "reject" else {}
    call_service(TRANSITIONS[action], session, user, job, origin=request_origin(), **extra)
    session.commit()
    return jsonify(service.job_json(job, user))


def _reject_reason() -> str | None:
    """A rejection's optional ``{"reason": "..."}`` (the merchant's words for the submitter)."""
    body = json_body()
    if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str | None):
        raise ApiError(400, "bad_request", "The body must be {\"reason\": string} or empty.")
    return body.get("reason") or None


@bp.get("/jobs/<int:job_id>/result")
@api_user_required()
def job_result(job_id: int):
    user = current_api_user()
    session = db()
    fmt = request.args.get("format", "json")
    if fmt not in RESULT_FORMATS:
        raise ApiError(422, "invalid_format", "'format' must be one of: json, csv, parquet.")
    job = visible_job(job_id)
    # open_result refuses (403, 409) and audits the download in this transaction.
    output = call_service(quarantine.open_result, session, app_config(), user, job,
                          origin=request_origin())
    session.commit()
    return download_response(output, fmt, f'attachment; filename="{result_filename(job, fmt)}"')


# ---------------------------------------------------------------- audit


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An ISO-8601 date or time (UTC when no zone is given)."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_request", f"'{name}' must be an ISO-8601 date or time.") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def audit_filters() -> dict[str, Any]:
    """Filters of ``GET /audit`` as keyword arguments of ``audit.query``."""
    return {
        "actor": request.args.get("actor") or None,
        "action": request.args.get("action") or None,
        "tenant": request.args.get("tenant") or None,
        "job": paging.int_arg("job", 0, 0, 2**62) or None,
        "since": parse_time(request.args.get("since"), "since"),
        "until": parse_time(request.args.get("until"), "until"),
    }


@bp.get("/audit")
@api_user_required(Role.AUDITOR)
def audit_entries():
    """A page of entries, newest first: ``limit`` and ``cursor`` (or the older ``offset``)."""
    import audit

    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(422, "invalid_format", "'format' must be json or csv.")
    filters = audit_filters()
    limit = paging.limit_arg(paging.AUDIT_LIMIT)
    offset = paging.int_arg("offset", 0, 0, 2**62)
    after = paging.decode_cursor("audit", int)
    if after is not None and offset:
        raise ApiError(400, "bad_request", "Give 'cursor' or 'offset', not both.")
    entries = audit.query(db(), **filters, limit=limit + 1, offset=offset,
                          before_seq=after[0] if after else None)
    page = entries[:limit]
    next_cursor = paging.encode_cursor("audit", page[-1]["seq"]) if len(entries) > limit else None
    if fmt == "csv":
        body = audit_csv(page)
        response = Response(body, mimetype="text/csv")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        response.headers["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
        if next_cursor:
            response.headers["X-Next-Cursor"] = next_cursor
        return response
    return jsonify({"entries": page, "limit": limit, "offset": offset, "next_cursor": next_cursor})


def audit_csv(entries: list[dict[str, Any]]) -> str:
    """Entries as CSV (the audit package's format), in the order given."""
    from audit.review import csv_lines

    return "".join(csv_lines(entries))


@bp.get("/audit/verify")
@api_user_required(Role.AUDITOR)
def audit_verify():
    import audit

    result = audit.verify(app_config())
    return jsonify({"ok": bool(result.ok), "entries": int(result.entries),
                    "first_bad": result.first_bad, "reason": result.reason or "",
                    "key_ids": list(result.key_ids)})


# ---------------------------------------------------------------- OpenAPI


# ---------------------------------------------------------------- privacy budgets


@bp.get("/budgets/<merchant>")
@api_user_required()
def get_budget(merchant: str):
    """The merchant's budget this period: the admin, its own users, its authorised providers."""
    session = db()
    found = call_service(budget.budget_merchant, session, current_api_user(), merchant)
    return jsonify(budget.budget_json(session, app_config(), found))


@bp.put("/budgets/<merchant>")
@api_user_required(Role.ADMIN)
def put_budget(merchant: str):
    """``{"epsilon", "delta"}``: raise or lower the current period (audited)."""
    session = db()
    body = json_body()
    if not isinstance(body, dict) or set(body) - {"epsilon", "delta"} or not {"epsilon", "delta"} <= set(body):
        raise ApiError(400, "bad_request", "The body must be {\"epsilon\": number, \"delta\": number}.")
    found = call_service(budget.budget_merchant, session, current_api_user(), merchant)
    try:
        doc = budget.set_budget(session, app_config(), found, body["epsilon"], body["delta"],
                                actor_for(current_api_user()))
    except InvalidRequest as exc:  # our own fixed texts, naming the field
        session.rollback()
        raise ApiError(400, "bad_request", str(exc)) from None
    session.commit()
    return jsonify(doc)


@bp.get("/openapi.json")
def openapi():
    document = current_app.extensions.get("yushan_openapi")
    if document is None:
        document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
        current_app.extensions["yushan_openapi"] = document
    return jsonify(document)
