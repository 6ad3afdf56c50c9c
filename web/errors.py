"""Errors: JSON for the API (``{"error": {"code", "message"}}``), HTML pages for people.

Messages are fixed texts chosen here or by the caller: never an exception's text, which
may quote data values (P8), and never anything about whether another tenant's object
exists.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# The API's error code for each HTTP status it answers with (api.md).
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

GENERIC_MESSAGES: dict[int, str] = {
    400: "The request is malformed.",
    401: "Credentials are missing, wrong or expired.",
    403: "You are not allowed to do this.",
    404: "Not found.",
    405: "This method is not allowed here.",
    409: "The object is not in a state that allows this.",
    413: "The request is too large.",
    415: "Unsupported media type.",
    422: "The request is invalid.",
    429: "Too many attempts; try again later.",
    500: "Something went wrong on our side; it has been logged.",
    503: "The service is unavailable.",
}


class EdgeRefusal:
    """Marks an HTTP exception whose description is ours, fixed and value-free (it is
    shown to API callers as the message)."""


class ApiError(Exception):
    """Raised inside API views; answered as a JSON error with the given status."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or GENERIC_MESSAGES.get(status, ""))
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message or GENERIC_MESSAGES.get(status, "Error.")
        self.headers = headers or {}


def api_error(status: int, code: str | None = None, message: str | None = None,
              headers: dict[str, str] | None = None) -> Response:
    """The API's JSON error response: ``{"error": {"code": ..., "message": ...}}``."""
    body = {
        "error": {
            "code": code or STATUS_CODES.get(status, "error"),
            "message": message or GENERIC_MESSAGES.get(status, "Error."),
        }
    }
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def wants_json() -> bool:
    """True for API paths (and health), whose errors are JSON."""
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return api_error(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        # What the exception's own response would say in its headers (405: Allow).
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type",)}
        if wants_json():
            code = STATUS_CODES.get(status, "error")
            # CSRF failures and the like carry their own fixed descriptions; keep ours,
            # except where a check of ours wrote a value-free message naming the problem.
            message = exc.description if isinstance(exc, EdgeRefusal) else None
            return api_error(status, code, message or GENERIC_MESSAGES.get(status), headers)
        return render_error_page(status), status, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # Log the class only: exception text may quote data values.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method,
                  request.url_rule.rule if request.url_rule else "?")
        if wants_json():
            return api_error(500)
        return render_error_page(500), 500


def render_error_page(status: int) -> str:
    from flask_babel import gettext

    titles = {
        400: gettext("Bad request"),
        401: gettext("Please log in"),
        403: gettext("Not allowed"),
        404: gettext("Not found"),
        405: gettext("Method not allowed"),
        409: gettext("Wrong state"),
        413: gettext("Too large"),
        429: gettext("Too many attempts"),
        500: gettext("Something went wrong"),
    }
    texts = {
        400: gettext("The request could not be understood (a form may have expired: reload the page and try again)."),
        401: gettext("You need to log in to see this page."),
        403: gettext("Your role does not allow this."),
        404: gettext("There is nothing here, or it is not yours."),
        405: gettext("This page does not accept that method."),
        409: gettext("The object is not in a state that allows this."),
        413: gettext("The request is too large."),
        429: gettext("Too many attempts; wait a few minutes and try again."),
        500: gettext("The error has been logged; no details are shown here."),
    }
    return render_template(
        "error.html",
        status=status,
        title=titles.get(status, gettext("Error")),
        text=texts.get(status, ""),
    )
