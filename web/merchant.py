"""Merchant pages: authorisations of service providers, and the approvals queue."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from jobs import authorizations as authorization_service
from jobs import quarantine, service
from jobs.errors import JobError
from web.auth import (
    app_config,
    db,
    page_user,
    request_origin,
    roles_required,
)
from web.common import Refusal, service_refusal, table_rows, visible_jobs
from yushan.models import Authorization, JobState, Role, Tenant, TenantKind

bp = Blueprint("merchant", __name__)
PREVIEW_ROWS = 10
DECISIONS = {"approve": quarantine.approve, "reject": quarantine.reject}


@bp.get("/authorizations")
@roles_required(Role.MERCHANT.value)
def authorizations():
    session = db()
    user = page_user()
    active = list(session.scalars(
        select(Authorization)
        .options(selectinload(Authorization.provider))
        .where(Authorization.merchant_id == user.tenant_id, Authorization.revoked_at.is_(None))
        .order_by(Authorization.granted_at)
    ))
    providers = list(session.scalars(
        select(Tenant).where(Tenant.kind == TenantKind.PROVIDER.value).order_by(Tenant.slug)
    ))
    return render_template("authorizations.html", authorizations=active, providers=providers)


@bp.post("/authorizations")
@roles_required(Role.MERCHANT.value)
def grant_authorization():
    """Grant (or change ``view_results`` of) a provider's authorisation."""
    session = db()
    try:
        authorization_service.grant_authorization(
            session, page_user(), request.form.get("provider", ""),
            view_results=request.form.get("view_results") in ("1", "on", "true"), origin=request_origin())
    except JobError as exc:
        session.rollback()
        abort(exc.status)
    session.commit()
    flash(gettext("Authorisation saved."), "info")
    return redirect(url_for("merchant.authorizations"))


@bp.post("/authorizations/<provider_slug>/revoke")
@roles_required(Role.MERCHANT.value)
def revoke_authorization(provider_slug: str):
    session = db()
    try:
        authorization_service.revoke_authorization(session, page_user(), provider_slug, origin=request_origin())
    except JobError as exc:
        session.rollback()
        abort(exc.status)
    session.commit()
    flash(gettext("Authorisation revoked."), "info")
    return redirect(url_for("merchant.authorizations"))


def preview(job) -> tuple[list[str], list[dict]] | None:
    """The first rows of a quarantined output for its merchant (None when refused)."""
    try:
        table = quarantine.preview_result(db(), app_config(), page_user(), job, limit=PREVIEW_ROWS)
    except Exception as exc:
        if service_refusal(exc) is None:
            raise
        db().rollback()
        return None
    return table_rows(table, PREVIEW_ROWS)


@bp.get("/approvals")
@roles_required(Role.MERCHANT.value)
def approvals():
    session = db()
    # Summaries come from the policy decisions: opening the queue reads no output and
    # so writes no audit entry per job; the preview is on each job's page.
    waiting = visible_jobs(session, page_user(), states=(JobState.AWAITING_APPROVAL.value,))
    items = [{"job": job, "doc": service.job_json(job, page_user())} for job in waiting]
    return render_template("approvals.html", items=items)


@bp.post("/jobs/<int:job_id>/approve")
@roles_required(Role.MERCHANT.value)
def approve(job_id: int):
    return _decide(job_id, "approve")


@bp.post("/jobs/<int:job_id>/reject")
@roles_required(Role.MERCHANT.value)
def reject(job_id: int):
    return _decide(job_id, "reject")


def _decide(job_id: int, action: str):
    session = db()
    user = page_user()
    job = service.get_visible_job(session, user, job_id)
    if job is None:
        abort(404)
    try:  # the service refuses (403) anyone but the job's merchant
        if action == "reject":
            quarantine.reject(session, user, job, origin=request_origin(),
                              reason=request.form.get("reason", ""))
        else:
            quarantine.approve(session, user, job, origin=request_origin())
    except Exception as exc:
        refusal = exc if isinstance(exc, Refusal) else service_refusal(exc)
        if refusal is None:
            raise
        session.rollback()
        abort(refusal.status)
    session.commit()
    flash(gettext("Output approved.") if action == "approve" else gettext("Output rejected."),
          "info")
    target = request.form.get("next")
    if target == "job":
        return redirect(url_for("pages.job", job_id=job_id))
    return redirect(url_for("merchant.approvals"))
