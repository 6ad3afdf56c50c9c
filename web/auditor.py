"""Auditor pages: the audit log with filters, export and chain verification."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, abort, render_template, request

from web.auth import app_config, db, roles_required
from yushan.models import Role

bp = Blueprint("auditor", __name__)
PAGE_SIZE = 50


DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _filters() -> dict:
    """The API's audit filters; a bare ``until`` date (the page's date picker) includes
    that whole day."""
    from web.api import audit_filters
    from web.errors import ApiError

    try:
        filters = audit_filters()
    except ApiError:
        abort(400)
    if filters.get("until") is not None and DAY.match(request.args.get("until", "").strip()):
        filters["until"] = filters["until"] + timedelta(days=1) - timedelta(microseconds=1)
    return filters


def action_facets(session) -> list[tuple[str, int]]:
    """Every action in the log with its number of entries (the filter's choices)."""
    from sqlalchemy import func, select

    from yushan.models import AuditEntry

    rows = session.execute(select(AuditEntry.action, func.count())
                           .group_by(AuditEntry.action).order_by(AuditEntry.action))
    return [(action, count) for action, count in rows]


def _page(entries: list[dict], page: int, args: dict, verify: dict | None):
    return render_template(
        "audit.html",
        entries=entries[:PAGE_SIZE],
        more=len(entries) > PAGE_SIZE,
        page=page,
        args=args,
        verify=verify,
        actions=action_facets(db()),
        page_size=PAGE_SIZE,
    )


@bp.get("/audit")
@roles_required(Role.AUDITOR.value)
def log():
    import audit

    filters = _filters()
    try:
        page = max(0, int(request.args.get("page", "0")))
    except ValueError:
        abort(400)
    entries = audit.query(db(), **filters, limit=PAGE_SIZE + 1, offset=page * PAGE_SIZE)
    args = {k: request.args.get(k, "") for k in ("actor", "action", "tenant", "job", "since", "until")}
    return _page(entries, page, {k: v for k, v in args.items() if v}, None)


@bp.get("/audit/export")
@roles_required(Role.AUDITOR.value)
def export():
    """The filtered log (oldest first) as CSV or JSON Lines with chain hashes, named with
    the time of export."""
    import audit

    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        abort(400)
    out = io.StringIO()
    exporter = audit.export_csv if fmt == "csv" else audit.export_jsonl
    exporter(db(), out, **{k: v for k, v in _filters().items() if v is not None})
    body = out.getvalue()
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response


@bp.post("/audit/verify")
@roles_required(Role.AUDITOR.value)
def verify():
    import audit

    result = audit.verify(app_config())
    entries = audit.query(db(), limit=PAGE_SIZE + 1, offset=0)
    return _page(entries, 0, {}, {"ok": bool(result.ok), "entries": result.entries,
                                  "first_bad": result.first_bad, "reason": result.reason or ""})
