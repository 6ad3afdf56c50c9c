"""Pages every role shares: landing, dashboard, datasets, job list and job page.

Job pages serve the provider (its submissions), the merchant (jobs run for it) and the
auditor (all jobs, metadata only); another tenant's job is a 404 like a missing one.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext
from flask_login import current_user

from jobs import quarantine, service
from web.auth import app_config, db, page_user, request_origin, roles_required
from web.common import (
    ACTIVE_STATES,
    JOB_ROLES,
    RESULT_FORMATS,
    Refusal,
    excel_requested,
    may_decide,
    render_result,
    result_filename,
    service_refusal,
    table_rows,
    visible_datasets,
    visible_jobs,
)
from yushan import access
from yushan.models import Job, JobState, Role

bp = Blueprint("pages", __name__)
RESULT_PAGE_ROWS = 200
ALL_ROLES = tuple(r.value for r in Role)


def visible_job_or_404(job_id: int) -> Job:
    job = service.get_visible_job(db(), page_user(), job_id)
    if job is None:
        abort(404)
    return job


def refusal_status(exc: Exception) -> int:
    """The HTTP status for a jobs-service exception; re-raise what is not a refusal."""
    refusal = exc if isinstance(exc, Refusal) else service_refusal(exc)
    if refusal is None:
        raise exc
    db().rollback()
    return refusal.status


@bp.get("/")
def landing():
    if current_user.is_authenticated:
        return redirect(url_for("pages.dashboard"))
    return render_template("landing.html")


@bp.get("/dashboard")
@roles_required(*ALL_ROLES)
def dashboard():
    user = page_user()
    session = db()
    jobs = visible_jobs(session, user, limit=10) if user.role != Role.ADMIN.value else []
    waiting = []
    if user.role == Role.MERCHANT.value:
        waiting = visible_jobs(session, user, states=(JobState.AWAITING_APPROVAL.value,))
    from web.common import acting_merchants

    return render_template(
        "dashboard.html",
        jobs=jobs,
        waiting=waiting,
        merchants=acting_merchants(session, user),
        datasets=visible_datasets(session, app_config(), user),
    )


@bp.get("/datasets")
@roles_required(*ALL_ROLES)
def datasets():
    infos = visible_datasets(db(), app_config(), page_user())
    return render_template("datasets.html", datasets=infos)


@bp.get("/jobs")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def jobs():
    state = request.args.get("state") or None
    listed = visible_jobs(db(), page_user(), states=(state,) if state else None, limit=500)
    return render_template("jobs.html", jobs=listed, state=state,
                           states=[s.value for s in JobState])


def job_document(job: Job) -> dict:
    return service.job_json(job, page_user())


@bp.get("/jobs/<int:job_id>")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def job(job_id: int):
    session = db()
    user = page_user()
    found = visible_job_or_404(job_id)
    columns, rows, shown = [], [], False
    can_view = access.read_results(session, user, found).allowed
    if can_view and found.state == JobState.APPROVED.value:
        try:
            table = quarantine.read_result(session, app_config(), user, found,
                                           origin=request_origin())
        except Exception as exc:
            refusal_status(exc)
        else:
            columns, rows = table_rows(table, RESULT_PAGE_ROWS)
            shown = True
            session.commit()  # the view of the rows is audited
    return render_template(
        "job.html",
        job=found,
        doc=job_document(found),
        columns=columns,
        rows=rows,
        rows_shown=shown,
        can_view=can_view,
        can_decide=may_decide(user, found),
        can_cancel=access.cancel_job(user, found).allowed and found.state in ACTIVE_STATES,
        formats=list(RESULT_FORMATS),
        active=found.state in ACTIVE_STATES,
    )


@bp.get("/jobs/<int:job_id>/status.json")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def job_status(job_id: int):
    """What the job page polls for live state and progress (session auth, read-only)."""
    return jsonify(job_document(visible_job_or_404(job_id)))


@bp.post("/jobs/<int:job_id>/cancel")
@roles_required(*JOB_ROLES)
def cancel(job_id: int):
    session = db()
    found = visible_job_or_404(job_id)
    try:
        service.cancel(session, page_user(), found, origin=request_origin())
    except Exception as exc:
        abort(refusal_status(exc))
    session.commit()
    flash(gettext("Cancellation requested."), "info")
    return redirect(url_for("pages.job", job_id=job_id))


@bp.get("/jobs/<int:job_id>/download")
@roles_required(Role.MERCHANT.value, Role.PROVIDER.value)
def download(job_id: int):
    """The released rows as a file named ``job-<id>-<UTC time>.<format>``."""
    session = db()
    user = page_user()
    fmt = request.args.get("format", "csv")
    if fmt not in RESULT_FORMATS:
        abort(400)
    found = visible_job_or_404(job_id)
    try:
        # read_result refuses (403, 409) and audits the download in this transaction.
        table = quarantine.read_result(session, app_config(), user, found,
                                          origin=request_origin())
    except Exception as exc:
        abort(refusal_status(exc))
    body = render_result(table, fmt, excel=excel_requested())
    session.commit()
    response = Response(body)
    response.headers["Content-Type"] = RESULT_FORMATS[fmt][1]
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{result_filename(found, fmt)}"'
    )
    return response
