"""Merchant data onboarding over HTTP: upload, withdrawal and download of one's own data.

API (bearer tokens): ``POST /api/v1/datasets`` (multipart: file, name, schema[, encoding];
validated before it answers, or with ``Prefer: respond-async`` received, answered 202 and
validated in the background), ``GET /api/v1/uploads/<id>`` (an asynchronous upload's
state), ``DELETE /api/v1/datasets/<name>``,
``GET /api/v1/datasets/<name>/download?format=csv|parquet``.
Pages (session log-in, CSRF-checked here): ``/datasets/upload`` (its script uploads
asynchronously and polls ``/datasets/uploads/<id>/status``; without script the form is
answered synchronously), ``/datasets/uploads/<id>``, ``/datasets/<name>/withdraw``,
``/datasets/<name>/download``.

The multipart body is parsed here, not by Flask's default parser, so that the file streams
straight into the upload's private workspace under ``YUSHAN_HOME/work`` (with the size
limit enforced while it streams) instead of a spooled temporary file elsewhere.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy import select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from onboarding import errors
from onboarding.background import (
    FAILED_MESSAGE,
    RETRY_AFTER_SECONDS,
    RUNNER,
    UploadRunner,
    mark_failed,
    new_workspace,
    relative_workspace,
    runner_gone,
    status_document,
    sweep_interrupted,
)
from onboarding.csv_reader import LimitedWriter
from onboarding.errors import OnboardingError
from onboarding.ingest import ingest_file, precheck, upload_workspace
from onboarding.schema import SIMPLE_TYPES
from onboarding.withdraw import export_own_dataset, find_own_dataset, withdraw
from web import idempotency
from web.auth import (
    actor_for,
    api_user_required,
    app_config,
    current_api_user,
    db,
    page_user,
    roles_required,
)
from web.extensions import csrf
from yushan.access import see_upload
from yushan.models import Job, Role, Upload, UploadState, User

bp = Blueprint("uploads", __name__)

FORM_FIELDS_BYTES = 1024 * 1024  # name, schema, encoding, csrf_token together
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _receive(workspace: Path, limit: int) -> tuple[MultiDict, FileStorage | None]:
    """Parse the multipart body, streaming its one file into ``workspace/upload.bin``."""
    if request.mimetype != "multipart/form-data":
        raise errors.bad_request("Send the upload as multipart/form-data with file, name and schema.")
    if request.content_length is not None and request.content_length > limit + FORM_FIELDS_BYTES:
        raise errors.too_large(limit)
    opened: list[LimitedWriter] = []

    def stream_factory(total_content_length, content_type, filename, content_length=None):
        if opened:
            raise errors.bad_request("Send exactly one file per upload.")
        opened.append(LimitedWriter(workspace / "upload.bin", limit))
        return opened[0]

    parser = FormDataParser(stream_factory=stream_factory,
                            max_form_memory_size=FORM_FIELDS_BYTES,
                            max_content_length=limit + FORM_FIELDS_BYTES)
    try:
        _stream, form, files = parser.parse(request.stream, request.mimetype,
                                            request.content_length, request.mimetype_params)
    except RequestEntityTooLarge:
        raise errors.too_large(limit) from None
    finally:
        for writer in opened:
            writer.close()
    return form, files.get("file")


def _upload(user: User, check_csrf: bool, keep: dict[str, str] | None = None, *,
            idempotent: bool = False) -> dict[str, Any] | Response:
    """Receive and ingest one upload for ``user``; raises OnboardingError on refusal.

    ``keep`` receives the form's text fields (name, schema, encoding) as soon as they are
    parsed, so that a page can show them again after a refusal. ``idempotent`` (the API):
    an ``Idempotency-Key`` retry of an upload already taken answers the kept response
    (web.idempotency) before anything is validated again.
    """
    config = app_config()
    session = db()
    actor = actor_for(user)
    with upload_workspace(config) as workspace:
        form, file = _received(workspace, config.max_upload_bytes, check_csrf, keep)
        attempt = None
        if idempotent:
            attempt, answer = idempotency.begin(session, user, _upload_identity(form, file, workspace))
            if answer is not None:
                return answer

        def keep_answer(result) -> None:
            response = jsonify(result.to_dict())
            response.status_code = 201
            idempotency.remember(session, attempt, response)

        result = ingest_file(session, config, user, name=form.get("name"),
                             schema=form.get("schema"), raw=workspace / "upload.bin",
                             workspace=workspace, filename=file.filename, actor=actor,
                             encoding=form.get("encoding") or None,
                             idempotency_key=attempt.key if attempt else None,
                             before_commit=keep_answer if attempt else None)
        return result.to_dict()


def _received(workspace: Path, limit: int, check_csrf: bool,
              keep: dict[str, str] | None) -> tuple[MultiDict, FileStorage]:
    """Receive the body into ``workspace`` and check what every upload needs before its
    file is looked at (the page's CSRF token, a file part)."""
    form, file = _receive(workspace, limit)
    if keep is not None:
        keep.update({k: str(form.get(k) or "")[:FORM_FIELDS_BYTES]
                     for k in ("name", "schema", "encoding")})
    if check_csrf:
        from flask_wtf.csrf import ValidationError, validate_csrf

        try:
            validate_csrf(form.get("csrf_token"))
        except ValidationError:
            raise errors.bad_request("The form has expired: reload the page and try again.") from None
    if file is None or not (workspace / "upload.bin").exists():
        raise errors.bad_request("The 'file' part is missing.")
    return form, file


def wants_async() -> bool:
    """``Prefer: respond-async`` (RFC 7240) among the request's preferences."""
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            if preference.split(";", 1)[0].strip().lower() == "respond-async":
                return True
    return False


def _runner() -> UploadRunner:
    return current_app.extensions["yushan_uploads"]


def _upload_async(user: User, status_url: Callable[[str], str], *, check_csrf: bool,
                  keep: dict[str, str] | None = None,
                  idempotent: bool = False) -> Response | None:
    """Receive one upload for ``user`` and answer 202 while the pool validates it with the
    synchronous path's own function (onboarding.background). None (before anything is
    read) when the pool is full: the caller serves the request synchronously. Refusals
    that need no file content raise OnboardingError at once, audited, like a synchronous
    upload's."""
    runner = _runner()
    if not runner.reserve():
        return None
    config = app_config()
    session = db()
    actor = actor_for(user)
    workspace = new_workspace(config)
    handed = False
    try:
        form, file = _received(workspace, config.max_upload_bytes, check_csrf, keep)
        attempt = None
        if idempotent:
            attempt, answer = idempotency.begin(session, user, _upload_identity(form, file, workspace))
            if answer is not None:
                return answer
        encoding = form.get("encoding") or None
        merchant = precheck(session, user, name=form.get("name"), schema=form.get("schema"),
                            filename=file.filename, actor=actor, encoding=encoding)
        row = Upload(tenant_id=merchant.id, created_by=user.id,
                     name=str(form.get("name") or "")[:200],
                     schema_text=str(form.get("schema") or ""), encoding=encoding,
                     filename=(file.filename or "")[:255],
                     workspace=relative_workspace(config, workspace), runner=RUNNER,
                     idempotency_key=attempt.key if attempt else None)
        session.add(row)
        session.flush()
        url = status_url(row.id)
        response = jsonify({"id": row.id, "state": UploadState.VALIDATING.value,
                            "status_url": url})
        response.status_code = 202
        response.headers["Location"] = url
        answer = idempotency.commit(session, attempt, response)
        if answer is not response:
            return answer  # a concurrent request with this key won: its upload goes on
        try:
            runner.submit(row.id, actor)
        except Exception:
            mark_failed(session, row.id, FAILED_MESSAGE)  # never left validating
            raise
        handed = True
        response.headers["Preference-Applied"] = "respond-async"
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    finally:
        if not handed:
            runner.release()
            shutil.rmtree(workspace, ignore_errors=True)


def _visible_upload(user: User, upload_id: str) -> Upload:
    """The upload if ``user`` may see it; 404 (like a missing one) otherwise. An upload
    whose process is gone is marked failed on the way (onboarding.background)."""
    session = db()
    row = session.get(Upload, upload_id) if len(upload_id) <= 32 else None
    if row is None or not see_upload(user, row):
        # One answer for "missing" and "another merchant's" (the project's tenant rule).
        raise OnboardingError(404, "not_found", "No such upload.")
    if row.state == UploadState.VALIDATING.value and runner_gone(row.runner, row.heartbeat_at):
        sweep_interrupted(app_config(), session, row.id)
        session.refresh(row)
    return row


def _status_response(row: Upload, url: str) -> Response:
    response = jsonify({**status_document(row), "status_url": url})
    if row.state == UploadState.VALIDATING.value:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _upload_identity(form: MultiDict, file: FileStorage, workspace: Path) -> dict[str, Any]:
    """What makes two uploads the same request: the text fields, the file's name and a
    sha256 of its bytes (read back in chunks from the workspace)."""
    import hashlib

    digest = hashlib.sha256()
    with open(workspace / "upload.bin", "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return {**{k: form.get(k) for k in ("name", "schema", "encoding")},
            "filename": file.filename, "file_sha256": digest.hexdigest()}


def _json_error(exc: OnboardingError) -> Response:
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    return response


# ---------------------------------------------------------------- API


def _api_status_url(upload_id: str) -> str:
    return url_for("uploads.api_upload_status", upload_id=upload_id)


@bp.post("/api/v1/datasets")
@api_user_required()
def api_upload():
    user = current_api_user()
    try:
        if wants_async():
            accepted = _upload_async(user, _api_status_url, check_csrf=False, idempotent=True)
            if accepted is not None:
                return accepted
        answer = _upload(user, check_csrf=False, idempotent=True)
    except OnboardingError as exc:
        return _json_error(exc)
    return answer if isinstance(answer, Response) else (jsonify(answer), 201)


@bp.get("/api/v1/uploads/<upload_id>")
@api_user_required()
def api_upload_status(upload_id: str):
    try:
        row = _visible_upload(current_api_user(), upload_id)
    except OnboardingError as exc:
        return _json_error(exc)
    return _status_response(row, _api_status_url(row.id))


@bp.delete("/api/v1/datasets/<path:name>")
@api_user_required()
def api_withdraw(name: str):
    user = current_api_user()
    try:
        return jsonify(withdraw(db(), app_config(), user, name, actor_for(user)))
    except OnboardingError as exc:
        return _json_error(exc)


@bp.get("/api/v1/datasets/<path:name>/download")
@api_user_required()
def api_download(name: str):
    user = current_api_user()
    try:
        return _download(user, name)
    except OnboardingError as exc:
        return _json_error(exc)


def _download(user: User, name: str) -> Response:
    fmt = request.args.get("format", "csv")
    filename, chunks = export_own_dataset(db(), app_config(), user, name, fmt, actor_for(user))
    response = Response(stream_with_context(chunks), mimetype=MEDIA_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# ---------------------------------------------------------------- pages


def _page(view: Callable[..., Any]) -> Callable[..., Any]:
    # The body is parsed by _receive (which checks the CSRF token itself): the global
    # check would parse it first, spooling the file outside the private workspace.
    return csrf.exempt(view)


TEMPLATE_CSV = (
    "member_id,phone_hash,tier,points,joined_at\r\n"
    "M0001,0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef,gold,1200,2024-05-01\r\n"
    "M0002,,silver,80,2025-01-15\r\n"
)


def _upload_page(result=None, error=None, values: dict[str, str] | None = None,
                 status: int = 200, pending: dict[str, Any] | None = None):
    return render_template("uploads/upload.html", result=result, error=error, pending=pending,
                           values=values or {}, types=SIMPLE_TYPES), status


@bp.get("/datasets/upload")
@roles_required(Role.MERCHANT.value)
def upload_page():
    return _upload_page()


@bp.get("/datasets/upload/template.csv")
@roles_required(Role.MERCHANT.value)
def template_csv():
    """A small example file with the columns a member list usually has (UTF-8, BOM)."""
    response = Response(("\ufeff" + TEMPLATE_CSV).encode("utf-8"), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="yushan-members-template.csv"'
    return response


def _page_status_url(upload_id: str) -> str:
    return url_for("uploads.upload_status", upload_id=upload_id)


@bp.post("/datasets/upload")
@roles_required(Role.MERCHANT.value)
def upload_submit():
    """The form without JavaScript: validated in this request (the contract's synchronous
    answer). The page's script sends ``Prefer: respond-async`` and polls the status."""
    values: dict[str, str] = {}
    user = page_user()
    try:
        if wants_async():
            accepted = _upload_async(user, _page_status_url, check_csrf=True, keep=values)
            if accepted is not None:
                doc = accepted.get_json()
                doc["page_url"] = url_for("uploads.upload_outcome", upload_id=doc["id"])
                accepted.set_data(json.dumps(doc))
                return accepted
        result = _upload(user, check_csrf=True, keep=values)
    except OnboardingError as exc:
        return _upload_page(error=exc, values=values, status=exc.status)
    return _upload_page(result=result, status=201)


upload_submit = _page(upload_submit)


@bp.get("/datasets/uploads/<upload_id>/status")
@roles_required(Role.MERCHANT.value)
def upload_status(upload_id: str):
    """The page's view of ``GET /api/v1/uploads/<id>`` (log-in session, JSON)."""
    try:
        row = _visible_upload(page_user(), upload_id)
    except OnboardingError as exc:
        return _json_error(exc)
    return _status_response(row, _page_status_url(row.id))


@bp.get("/datasets/uploads/<upload_id>")
@roles_required(Role.MERCHANT.value)
def upload_outcome(upload_id: str):
    """An asynchronous upload as the synchronous form's answer shows it: the accepted
    dataset (201), the refusal with its report and the entries kept (4xx), or its progress."""
    try:
        row = _visible_upload(page_user(), upload_id)
    except OnboardingError as exc:
        return _upload_page(error=exc, status=exc.status)
    values = {"name": row.name, "schema": row.schema_text, "encoding": row.encoding or ""}
    if row.state == UploadState.ACCEPTED.value:
        return _upload_page(result=row.result, status=201)
    if row.error is not None:
        error = OnboardingError(row.status or 500, row.error.get("code", "failed"),
                                row.error.get("message", ""), row.error.get("report"))
        return _upload_page(error=error, values=values, status=row.status or 500)
    return _upload_page(pending=status_document(row), values=values, status=200)


def _jobs_that_read(session, user: User, full_name: str, limit: int = 50) -> list[Job]:
    """The merchant's jobs whose policy decision says they read ``full_name`` (newest first)."""
    found: list[Job] = []
    wanted = full_name.lower()
    stmt = (select(Job).where(Job.merchant_id == user.tenant_id, Job.decision.is_not(None))
            .order_by(Job.id.desc()).limit(2000))
    for job in session.scalars(stmt):
        read = (job.decision or {}).get("datasets_read") or []
        if any(isinstance(name, str) and name.lower() == wanted for name in read):
            found.append(job)
            if len(found) >= limit:
                break
    return found


@bp.get("/datasets/<path:name>/withdraw")
@roles_required(Role.MERCHANT.value)
def withdraw_confirm(name: str):
    """What withdrawing destroys, and which jobs read the dataset, before the merchant confirms."""
    user = page_user()
    session = db()
    dataset = find_own_dataset(session, user, name)
    if dataset is None:
        return _upload_page(error=errors.not_found(), status=404)
    return render_template("uploads/withdraw.html", dataset=dataset,
                           jobs=_jobs_that_read(session, user, dataset.full_name))


@bp.post("/datasets/<path:name>/withdraw")
@roles_required(Role.MERCHANT.value)
def withdraw_submit(name: str):
    # A small form (no file): Flask's parser and the global CSRF check are fine here.
    user = page_user()
    try:
        outcome = withdraw(db(), app_config(), user, name, actor_for(user))
    except OnboardingError as exc:
        return _upload_page(error=exc, status=exc.status)
    return render_template("uploads/withdrawn.html", outcome=outcome)


@bp.get("/datasets/<path:name>/download")
@roles_required(Role.MERCHANT.value)
def download_page(name: str):
    try:
        return _download(page_user(), name)
    except OnboardingError as exc:
        return _upload_page(error=exc, status=exc.status)
