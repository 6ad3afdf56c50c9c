"""Platform datasets over the API (platform admins; :mod:`yushan.access` decides):

- ``GET /api/v1/platform-datasets``: every platform dataset with its policy and versions;
- ``GET /api/v1/platform-datasets/<name>``: one of them;
- ``POST /api/v1/platform-datasets``: register (201) or, when the name exists, refresh it
  into a new version (201), from a server path under ``YUSHAN_HOME/import/`` (JSON body
  ``{"name", "path", ...}``) or an upload (multipart: ``file`` and the same fields, with
  ``classes`` and ``bounds`` as JSON text);
- ``PATCH /api/v1/platform-datasets/<name>``: release mode, k, max_groups, max_rows, bounds.

Everything is audited by the services in the transaction that changes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from onboarding import errors
from onboarding.errors import OnboardingError
from onboarding.ingest import upload_workspace
from onboarding.platform_datasets import (
    DEFAULT_K,
    list_platform_datasets,
    platform_dataset,
    platform_dataset_json,
    refresh_platform_dataset,
    register_platform_dataset,
    server_source,
    set_release_policy,
)
from web.auth import actor_for, api_user_required, app_config, current_api_user, db
from web.uploads import _receive
from yushan import access

bp = Blueprint("platform_datasets", __name__, url_prefix="/api/v1/platform-datasets")

POLICY_FIELDS = ("release", "k", "max_groups", "max_rows", "bounds")


def _error(exc: OnboardingError) -> Response:
    db().rollback()
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    return response


def _admin():
    user = current_api_user()
    permission = access.manage_platform_datasets(user)
    if not permission:
        raise errors.forbidden(permission.reason)
    return user


def _json_object() -> dict[str, Any]:
    try:
        body = request.get_json(force=True, silent=False)
    except Exception:  # noqa: BLE001 - any parse failure is the caller's bad JSON
        raise errors.bad_request("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The body must be a JSON object.")
    return body


def _form_fields(form) -> dict[str, Any]:
    """Multipart fields as the JSON body's: ``classes`` and ``bounds`` hold JSON text."""
    body: dict[str, Any] = {key: form.get(key) for key in form if key != "file"}
    for key in ("classes", "bounds"):
        if body.get(key):
            try:
                body[key] = json.loads(body[key])
            except ValueError:
                raise errors.bad_request(f"The {key} field must be JSON.") from None
    for key in ("shared", "one_row_per_unit"):
        if key in body:
            body[key] = str(body[key]).lower() in ("1", "true", "yes", "on")
    return body


@bp.get("")
@api_user_required()
def list_datasets():
    try:
        session = db()
        return jsonify({"datasets": [platform_dataset_json(session, ds)
                                     for ds in list_platform_datasets(session, _admin())]})
    except OnboardingError as exc:
        return _error(exc)


@bp.get("/<name>")
@api_user_required()
def show_dataset(name: str):
    try:
        _admin()
        session = db()
        dataset = platform_dataset(session, name)
        if dataset is None:
            raise errors.not_found()
        return jsonify(platform_dataset_json(session, dataset))
    except OnboardingError as exc:
        return _error(exc)


@bp.post("")
@api_user_required()
def register_or_refresh():
    try:
        user = _admin()
        config = app_config()
        if request.mimetype == "multipart/form-data":
            with upload_workspace(config) as workspace:
                form, file = _receive(workspace, config.max_upload_bytes)
                if file is None or not (workspace / "upload.bin").exists():
                    raise errors.bad_request("The 'file' part is missing.")
                return _register_or_refresh(user, _form_fields(form), workspace / "upload.bin",
                                            file.filename or "upload")
        body = _json_object()
        if not isinstance(body.get("path"), str) or not body["path"]:
            raise errors.bad_request("Give 'path' (a file or directory under YUSHAN_HOME/import/) "
                                     "or upload the file as multipart/form-data.")
        return _register_or_refresh(user, body, server_source(config, body["path"]), None)
    except OnboardingError as exc:
        return _error(exc)


def _register_or_refresh(user, body: dict[str, Any], source: Path, filename: str | None):
    session, config, actor = db(), app_config(), actor_for(user)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise errors.bad_request("'name' is required.")
    existing = platform_dataset(session, name)
    if existing is None:
        dataset = register_platform_dataset(
            session, config, user, name=name, source=source, classes=body.get("classes") or {},
            entity_column=body.get("entity_column"), k=body.get("k", DEFAULT_K),
            shared=bool(body.get("shared", True)), description=str(body.get("description") or ""),
            actor=actor, release=body.get("release"), max_groups=body.get("max_groups"),
            max_rows=body.get("max_rows"), bounds=body.get("bounds"),
            one_row_per_unit=bool(body.get("one_row_per_unit", False)), filename=filename)
        return jsonify(platform_dataset_json(session, dataset)), 201
    classes = body.get("classes")
    if classes and classes != {c.name: c.column_class for c in existing.columns}:
        raise errors.invalid("A refresh keeps the dataset's columns and classes; change classes "
                             "on the admin page.")
    dataset = refresh_platform_dataset(session, config, user, name, source=source, actor=actor,
                                       filename=filename)
    policy = {key: body[key] for key in POLICY_FIELDS if body.get(key) is not None}
    if policy:
        set_release_policy(session, user, name, actor=actor, **policy)
        session.commit()
    return jsonify(platform_dataset_json(session, dataset)), 201


@bp.patch("/<name>")
@api_user_required()
def set_policy(name: str):
    try:
        user = _admin()
        body = _json_object()
        unknown = sorted(set(body) - set(POLICY_FIELDS))
        if unknown:
            raise errors.bad_request(f"Unknown field {unknown[0]}; use " + ", ".join(POLICY_FIELDS) + ".")
        session = db()
        dataset = set_release_policy(session, user, name, actor=actor_for(user), **body)
        session.commit()
        return jsonify(platform_dataset_json(session, dataset))
    except OnboardingError as exc:
        return _error(exc)
