"""Request rate limits (Flask-Limiter): dry-run checks and submissions per user, log-in
attempts per client address.

- **Checks** (``POST /api/v1/jobs/check`` and the editor's ``POST /jobs/check``) and
  **submissions** (``POST /api/v1/jobs``, the job form, template forms and
  ``POST /api/v1/templates/<name>/jobs``) count per user: the API token's user or the
  logged-in person, so that one user's tokens and page share one allowance and a second
  token buys nothing. A caller that is neither counts under its client address (the
  request is refused with 401 anyway, but a flood of them still counts).
- **Log-ins** (``POST /login``, ``POST /api/v1/token``) count per client address, which
  under ``yushan serve`` behind ``YUSHAN_TRUSTED_PROXY`` is the forwarded client's
  (``web.auth.client_ip``). Failed log-ins also lock the user and the address out for a
  while (``web.auth``); this limit bounds every attempt, right or wrong.

The limits are settings (``YUSHAN_RATE_LIMIT_CHECK``, ``..._SUBMIT``, ``..._LOGIN``, in
Flask-Limiter's notation, e.g. ``60/minute`` or ``10/second;300/hour``; ``off`` for none)
over a moving window. Counts live in ``YUSHAN_RATE_LIMIT_STORAGE``: ``memory://`` is
shared by every thread of one process (waitress's); several web processes need a shared
store (``redis://...``), or each counts alone and a user gets the allowance once per
process. Should a shared store stop answering, counting falls back to memory.

Answers of limited routes carry ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (a
Unix time). A refusal is 429 with ``Retry-After`` (whole seconds, at least 1) and, on the API and the editor's check, the
contract's error shape ``{"error": {"code": "too_many_requests", "message"}}``; pages get
the error page. Refusals are not audited (a client hammering would flood the trail); the
per-merchant submission limit and queue quota, which are, live in ``jobs``.
"""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from web.auth import client_ip, request_user
from web.errors import api_error, render_error_page, wants_json
from yushan.config import Config

# (setting, scope, endpoints): endpoints of one scope share each user's allowance.
CHECK_ENDPOINTS = ("api.check_job", "provider.check")
SUBMIT_ENDPOINTS = ("api.submit_job", "provider.submit_job", "templates.submit", "templates_api.api_submit")
LOGIN_ENDPOINTS = ("api.token", "auth.login")
# Answered in JSON although not under /api/: the editor's Check button reads JSON.
JSON_ENDPOINTS = frozenset({"provider.check"})
EXTENSION = "yushan_limiter"


def user_key() -> str:
    """Whose allowance a check or submission uses: the calling user's."""
    user = request_user()
    return f"user:{user.id}" if user is not None else f"addr:{client_ip()}"


def address_key() -> str:
    """Whose allowance a log-in uses: the client address's (a trusted proxy's client)."""
    return f"addr:{client_ip()}"


def install(app: Flask, config: Config) -> Limiter:
    """Limit the app's check, submit and log-in routes as ``config`` says (call after the
    blueprints are registered: the views are wrapped where they are)."""
    limiter = Limiter(
        key_func=user_key,
        app=app,
        storage_uri=config.rate_limit_storage,
        strategy="moving-window",
        # Our own headers (below): Flask-Limiter's would put a Retry-After on every
        # limited answer, refused or not, rounded down (to 0 in the last second).
        headers_enabled=False,
        key_prefix="yushan",
        in_memory_fallback_enabled=config.rate_limit_storage != "memory://",
    )
    groups = (
        (config.rate_limit_check, "check", CHECK_ENDPOINTS, user_key),
        (config.rate_limit_submit, "submit", SUBMIT_ENDPOINTS, user_key),
        (config.rate_limit_login, "login", LOGIN_ENDPOINTS, address_key),
    )
    for limit, scope, endpoints, key in groups:
        if not limit:
            continue
        shared = limiter.shared_limit(limit, scope, key_func=key, methods=["POST"])
        for endpoint in endpoints:
            app.view_functions[endpoint] = shared(app.view_functions[endpoint])  # type: ignore[assignment]
    app.extensions[EXTENSION] = limiter
    app.register_error_handler(RateLimitExceeded, _refused)
    app.after_request(_allowance_headers)
    return limiter


def _allowance_headers(response):
    """``X-RateLimit-Limit``/``-Remaining``/``-Reset`` on the answers of limited routes."""
    limiter: Limiter | None = current_app.extensions.get(EXTENSION)
    current = limiter.current_limit if limiter is not None else None
    if current is not None:
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["X-RateLimit-Reset"] = str(current.reset_at)
    return response


def retry_after() -> int:
    """Whole seconds until the breached limit lets the caller in again (at least 1)."""
    limiter: Limiter = current_app.extensions[EXTENSION]
    current = limiter.current_limit
    if current is None:
        return 1
    reset = current.window[0]  # when the oldest counted request leaves the window
    return max(1, math.ceil(reset - time.time()))


def _refused(exc: RateLimitExceeded):
    wait = retry_after()
    headers = {"Retry-After": str(wait)}
    if wants_json() or request.endpoint in JSON_ENDPOINTS:
        return api_error(429, "too_many_requests",
                         f"Too many requests ({exc.limit.limit}); try again in {wait} s.", headers)
    return render_error_page(429), 429, headers
