"""The platform's review of segment outputs (admins): the queue, the on/off setting, and
approve or reject per job. The API for the same is in :mod:`web.templates_api`."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext

from jobs import quarantine, segments, service
from web.auth import app_config, db, page_user, request_origin, roles_required
from web.templates_views import refusal_for
from yushan.models import Role

bp = Blueprint("segment_review", __name__)


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
    return redirect(url_for("segment_review.review_queue"))


@bp.post("/admin/segment-review/<int:job_id>/<decision>")
@roles_required(Role.ADMIN.value)
def review(job_id: int, decision: str):
    session = db()
    job = service.find_job(session, job_id)
    if job is None:
        abort(404)
    user = page_user()
    if user is None:
        abort(401)
    try:
        quarantine.platform_review(session, app_config(), user, job, decision, origin=request_origin())
    except Exception as exc:
        refusal = refusal_for(exc)
        session.rollback()
        abort(refusal.status)
    session.commit()
    flash(gettext("Review recorded."), "info")
    return redirect(url_for("segment_review.review_queue"))
