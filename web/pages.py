"""Pages every role shares: landing, dashboard, datasets, job list and job page.

Job pages serve the provider (its submissions), the merchant (jobs run for it) and the
auditor (all jobs, metadata only); another tenant's job is a 404 like a missing one.
"""

from __future__ import annotations

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
from flask_login import current_user

from jobs import budget, quarantine, service
from web.auth import app_config, db, page_user, request_origin, roles_required
from web.common import (
    ACTIVE_STATES,
    JOB_ROLES,
    RESULT_FORMATS,
    Refusal,
    attachment_header,
    download_response,
    may_decide,
    may_resubmit,
    named_result_filename,
    service_refusal,
    table_rows,
    visible_datasets,
    visible_jobs,
)
from web.labels import label
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

    merchants = acting_merchants(session, user)
    return render_template(
        "dashboard.html",
        jobs=jobs,
        waiting=waiting,
        merchants=merchants,
        budgets=[budget.budget_json(session, app_config(), m) for m in merchants],
        datasets=visible_datasets(session, app_config(), user),
    )


@bp.get("/datasets")
@roles_required(*ALL_ROLES)
def datasets():
    """Datasets the user may use; a merchant also sees, for each of its own uploads, rows,
    upload time and encoding, with download and withdraw."""
    from sqlalchemy import select

    from yushan.models import Dataset

    session = db()
    user = page_user()
    infos = visible_datasets(session, app_config(), user)
    own = {}
    if user.role == Role.MERCHANT.value:
        own = {d.full_name: d for d in session.scalars(
            select(Dataset).where(Dataset.tenant_id == user.tenant_id,
                                  Dataset.withdrawn_at.is_(None)))}
    return render_template("datasets.html", datasets=infos, own=own)


@bp.get("/jobs")
@roles_required(*JOB_ROLES, Role.AUDITOR.value)
def jobs():
    state = request.args.get("state") or None
    listed = visible_jobs(db(), page_user(), states=(state,) if state else None, limit=500)
    return render_template("jobs.html", jobs=listed, state=state,
                           states=[s.value for s in JobState])


def job_document(job: Job) -> dict:
    return service.job_json(job, page_user())


CHART_ITEMS_READ = 12  # bars named one by one in a chart's text alternative


def chart_views(columns: list[str], rows: list[dict], accuracy: dict | None = None) -> list[dict]:
    """Bar charts of a plain result (:func:`web.charts.result_charts`), each with
    a caption and a text alternative in the reader's language that reads out the bars."""
    from web.charts import result_charts

    def number(value: float) -> str:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"

    views = []
    for chart in result_charts(columns, rows, accuracy):
        ci = chart["ci95"]
        points = chart["points"]
        items = "; ".join(f"{name}: {number(value)}" + (f" ± {ci:,.2f}" if ci is not None else "")
                          for name, value in points[:CHART_ITEMS_READ])
        if len(points) > CHART_ITEMS_READ:
            items += "; " + gettext("and %(n)s more", n=len(points) - CHART_ITEMS_READ)
        description = gettext("Bar chart of %(column)s by %(label)s, %(n)s bars. %(items)s.",
                              column=chart["column"], label=chart["label"], n=len(points), items=items)
        caption = gettext("%(column)s by %(label)s", column=chart["column"], label=chart["label"])
        if ci is not None:
            caption += " · " + gettext("the lines show each value's 95%% noise range (± %(ci)s)",
                                       ci=f"{ci:,.2f}")
        if len(rows) > len(points):
            caption += " · " + gettext("the first %(n)s rows", n=len(points))
        # Vega gives the drawing itself this description as its accessible name too.
        spec = {**chart["spec"], "description": description}
        views.append({**chart, "spec": spec, "description": description, "caption": caption})
    return views


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
    can_decide = may_decide(user, found)
    preview = None
    if can_decide and found.state == JobState.AWAITING_APPROVAL.value:
        from web.merchant import preview as merchant_preview

        preview = merchant_preview(found)  # the merchant opened this job: one audited view
        session.commit()
    accuracy = found.accuracy or (found.decision or {}).get("accuracy")
    plain = not found.template and found.kind == "aggregate"
    return render_template(
        "job.html",
        charts=chart_views(columns, rows, accuracy) if shown and plain else [],
        preview_charts=chart_views(*preview, accuracy) if preview and plain else [],
        accuracy=accuracy,
        job=found,
        doc=job_document(found),
        columns=columns,
        rows=rows,
        rows_shown=shown,
        can_view=can_view,
        can_decide=may_decide(user, found),
        can_cancel=access.cancel_job(user, found).allowed and found.state in ACTIVE_STATES,
        can_clone=may_resubmit(session, user, found),
        preview=preview,
        formats=list(RESULT_FORMATS),
        active=found.state in ACTIVE_STATES,
        state_labels={s.value: label("state", s.value) for s in JobState},
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
    """The released rows as a file named after the job (``<name>-job-<id>-<UTC time>``);
    ``excel=1`` with CSV adds the byte-order mark and CRLF that Excel needs."""
    session = db()
    user = page_user()
    fmt = request.args.get("format", "csv")
    if fmt not in RESULT_FORMATS:
        abort(400)
    found = visible_job_or_404(job_id)
    try:
        # open_result refuses (403, 409) and audits the download in this transaction.
        output = quarantine.open_result(session, app_config(), user, found,
                                        origin=request_origin())
    except Exception as exc:
        abort(refusal_status(exc))
    session.commit()
    return download_response(output, fmt, attachment_header(named_result_filename(found, fmt)))
