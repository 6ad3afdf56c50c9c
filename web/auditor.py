"""Auditor pages: the audit log with filters, export and chain verification."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, render_template, request

from web.auth import app_config, db, roles_required
from yushan.models import Role

bp = Blueprint("auditor", __name__)
PAGE_SIZE = 200


def _filters() -> dict:
    from web.api import audit_filters
    from web.errors import ApiError

    try:
        return audit_filters()
    except ApiError:
        abort(400)


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
    return render_template(
        "audit.html",
        entries=entries[:PAGE_SIZE],
        more=len(entries) > PAGE_SIZE,
        page=page,
        args={k: request.args.get(k, "") for k in ("actor", "action", "tenant", "job", "since", "until")},
        verify=None,
    )


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
    return render_template(
        "audit.html",
        entries=entries[:PAGE_SIZE],
        more=len(entries) > PAGE_SIZE,
        page=0,
        args={},
        verify={"ok": bool(result.ok), "entries": result.entries, "first_bad": result.first_bad,
                "reason": result.reason or ""},
    )
