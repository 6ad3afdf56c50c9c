"""The job form: merchant, kind, SQL editor with a dataset browser, inline policy check.

Used by service providers (for the merchants that authorised them) and by merchants (for
themselves). The Check button posts to ``/jobs/check`` (session + CSRF header) and shows
the decision and its explanations before anything is submitted.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext

from jobs import service
from jobs.history import recent_queries
from web.auth import app_config, db, page_user, request_origin, roles_required
from web.common import (
    JOB_KINDS,
    JOB_ROLES,
    MAX_JSON_BYTES,
    Refusal,
    acting_merchants,
    dataset_json,
    may_resubmit,
    parse_job_request,
    require_acting_merchant,
    service_refusal,
)
from web.labels import label, translated_violations
from web.messages import service_text
from yushan.catalog import readable_datasets

bp = Blueprint("provider", __name__)


def form_context(values: dict[str, str], decision: dict | None = None, status_error: str = ""):
    """The editor's page: the merchants the user acts for, each with its datasets and the
    user's recent queries for it (loaded back into the editor with one click)."""
    session = db()
    user = page_user()
    merchants = acting_merchants(session, user)
    browser = {
        m.slug: [dataset_json(info) for info in readable_datasets(session, app_config(), m.slug).values()]
        for m in merchants
    }
    past = {m.slug: recent_queries(session, user, m.slug) for m in merchants}
    return dict(merchants=merchants, kinds=JOB_KINDS, values=values, browser=browser,
                history=past, decision=decision, status_error=status_error)


@bp.get("/jobs/new")
@roles_required(*JOB_ROLES)
def new_job():
    """The job form; ``?from=<job id>`` starts from a copy of a job the user may see and
    may submit for (edit and resubmit); a template job opens its template's form."""
    merchants = acting_merchants(db(), page_user())
    values = {
        "merchant": request.args.get("merchant") or (merchants[0].slug if merchants else ""),
        "kind": request.args.get("kind") if request.args.get("kind") in JOB_KINDS else "aggregate",
        "sql": "",
        "name": "",
    }
    source = request.args.get("from", "")
    if source.isdigit():
        found = service.get_visible_job(db(), page_user(), int(source))
        if found is None or not may_resubmit(db(), page_user(), found):
            abort(404)
        if found.template:
            return redirect(url_for("templates.form", name=found.template, **{"from": found.id}))
        values.update(merchant=found.merchant.slug, kind=found.kind, sql=found.sql,
                      name=found.name or "")
    return render_template("job_form.html", **form_context(values))


@bp.post("/jobs/new")
@roles_required(*JOB_ROLES)
def submit_job():
    session = db()
    user = page_user()
    values = {k: request.form.get(k, "") for k in ("merchant", "kind", "sql", "name")}
    try:
        spec = parse_job_request(values, with_name=True)
        require_acting_merchant(session, user, spec.merchant)
        job = service.submit(session, app_config(), user, spec.merchant, spec.kind,
                                   spec.sql, name=spec.name or None, origin=request_origin())
    except Exception as exc:
        refusal = exc if isinstance(exc, Refusal) else service_refusal(exc)
        if refusal is None:
            raise
        session.rollback()
        return (render_template("job_form.html",
                                **form_context(values, status_error=service_text(refusal.message))),
                refusal.status, refusal.headers)
    session.commit()
    flash(gettext("Job submitted. This page follows it until it ends."), "info")  # queued
    return redirect(url_for("pages.job", job_id=job.id))


@bp.post("/jobs/check")
@roles_required(*JOB_ROLES)
def check():
    """The dry run behind the Check button: JSON in, the policy decision out."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        abort(413)
    body = request.get_json(silent=True)
    session = db()
    user = page_user()
    try:
        spec = parse_job_request(body, with_name=False)
        require_acting_merchant(session, user, spec.merchant)
        decision = service.check(session, app_config(), user, spec.merchant, spec.kind,
                                       spec.sql, origin=request_origin())
    except Exception as exc:
        refusal = exc if isinstance(exc, Refusal) else service_refusal(exc)
        if refusal is None:
            raise
        session.rollback()
        return jsonify({"error": {"code": refusal.code, "message": refusal.message}}), refusal.status
    if decision.get("decision") == "deny":
        # Mechanical fixes the policy accepts, offered as "apply suggestion" (page only).
        decision = {**decision, "fixes": [
            {**fix, "label": label("fix", fix["code"])}
            for fix in service.fixes(session, app_config(), user, spec.merchant, spec.kind,
                                     spec.sql, decision)]}
    session.commit()
    if decision.get("violations"):
        # The page shows explanations in the reader's language (the API keeps English).
        decision = {**decision, "violations": translated_violations(decision["violations"])}
    return jsonify(decision)
