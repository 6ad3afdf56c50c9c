"""Merchant data onboarding over HTTP: upload, withdrawal and download of one's own data.

API (bearer tokens): ``POST /api/v1/datasets`` (multipart: file, name, schema[, encoding]),
``DELETE /api/v1/datasets/<name>``, ``GET /api/v1/datasets/<name>/download?format=csv|parquet``.
Pages (session log-in, CSRF-checked here): ``/datasets/upload``,
``/datasets/<name>/withdraw``, ``/datasets/<name>/download``.

The multipart body is parsed here, not by Flask's default parser, so that the file streams
straight into the upload's private workspace under ``YUSHAN_HOME/work`` (with the size
limit enforced while it streams) instead of a spooled temporary file elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request, stream_with_context
from sqlalchemy import select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from onboarding import errors
from onboarding.csv_reader import LimitedWriter
from onboarding.errors import OnboardingError
from onboarding.ingest import ingest_file, upload_workspace
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
from yushan.models import Job, Role, User

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
        form, file = _receive(workspace, config.max_upload_bytes)
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


@bp.post("/api/v1/datasets")
@api_user_required()
def api_upload():
    try:
        answer = _upload(current_api_user(), check_csrf=False, idempotent=True)
    except OnboardingError as exc:
        return _json_error(exc)
    return answer if isinstance(answer, Response) else (jsonify(answer), 201)


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
                 status: int = 200):
    return render_template("uploads/upload.html", result=result, error=error,
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


@bp.post("/datasets/upload")
@roles_required(Role.MERCHANT.value)
def upload_submit():
    values: dict[str, str] = {}
    try:
        result = _upload(page_user(), check_csrf=True, keep=values)
    except OnboardingError as exc:
        return _upload_page(error=exc, values=values, status=exc.status)
    return _upload_page(result=result, status=201)


upload_submit = _page(upload_submit)


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
