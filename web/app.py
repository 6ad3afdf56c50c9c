"""The Flask application factory: configuration, security, i18n, blueprints."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, g, request
from flask_babel import Babel

from web.extensions import LOCALE_COOKIE, LOCALES, csrf, select_locale
from yushan import metrics
from yushan.config import Config, get_config

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent
# Babel parses "zh_CN" as zh_Hans_CN and looks for that directory name. The compiled
# catalogs (messages.mo) are committed and ship in the package: `make translations`.
TRANSLATIONS_DIR = WEB_DIR / "translations"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# Scripts and styles only from our own origin: no inline script can run, so an injected
# value cannot execute even if an escape were missed.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

def secure_cookies(config: Config) -> bool:
    """Secure-only cookies unless the app is served on loopback over plain HTTP.

    ``YUSHAN_COOKIE_SECURE`` overrides either way (behind a TLS proxy on loopback: set it).
    """
    if config.cookie_secure is not None:
        return config.cookie_secure
    return config.host not in LOOPBACK_HOSTS


def utc_iso(value) -> str:
    """An ISO 8601 time with its offset (stored times without one are UTC), for
    ``<time datetime>`` that the page shows in the reader's zone."""
    from datetime import UTC, datetime

    if not isinstance(value, datetime):
        return str(value or "")
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def create_app(config: Config | None = None) -> Flask:
    """The Yushan web app and JSON API for ``config`` (default: the environment's)."""
    from sandbox.crypto import load_or_create_key
    from web import (
        admin,
        api,
        auditor,
        auth,
        edges,
        limits,
        merchant,
        ops,
        pages,
        platform_datasets,
        provider,
        segment_review,
        templates_api,
        templates_views,
        uploads,
    )
    from web.errors import register_error_handlers

    config = config or get_config()
    config.keys_dir.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        YUSHAN=config,
        SECRET_KEY=load_or_create_key(config.secret_key_path),
        SESSION_COOKIE_NAME="yushan_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies(config),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure_cookies(config),
        PERMANENT_SESSION_LIFETIME=config.token_ttl_seconds,
        WTF_CSRF_TIME_LIMIT=config.token_ttl_seconds,
        WTF_CSRF_SSL_STRICT=secure_cookies(config),
        BABEL_DEFAULT_LOCALE="en",
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS_DIR),
        JSON_SORT_KEYS=False,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
    )
    metrics.setup(config)  # before the first sample (a WSGI server other than yushan serve)
    ops.install(app)  # request ids and per-request metrics, before every other hook
    # Strict JSON, bounded ids and body caps: before any route or extension reads a body.
    edges.install(app, config)
    app.json.sort_keys = False
    Babel(app, locale_selector=select_locale)
    csrf.init_app(app)
    auth.init_login(app)
    register_error_handlers(app)
    app.teardown_appcontext(auth.close_db)

    # The API authenticates with bearer tokens, never cookies: cross-site requests
    # cannot carry a token, so CSRF tokens do not apply there.
    csrf.exempt(api.bp)
    for blueprint in (auth.bp, pages.bp, provider.bp, merchant.bp, auditor.bp, admin.bp, api.bp,
                      ops.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(templates_views.bp)  # template pages, segment summaries
    app.register_blueprint(segment_review.bp)  # the platform's review of segments
    app.register_blueprint(templates_api.bp)  # /api/v1 templates and segments
    app.register_blueprint(uploads.bp)
    # Asynchronous uploads: this process's pool; uploads a stopped process was validating
    # become failed and their files go (onboarding.background).
    from onboarding.background import UploadRunner, sweep_interrupted

    app.extensions["yushan_uploads"] = UploadRunner(config)
    sweep_interrupted(config)
    app.register_blueprint(platform_datasets.bp)  # the admin's platform-dataset API
    csrf.exempt(platform_datasets.bp)  # bearer tokens only
    # Upload API views take bearer tokens (no CSRF); its pages keep CSRF protection.
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(uploads.bp.name + ".") and rule.rule.startswith("/api/"):
            csrf.exempt(app.view_functions[rule.endpoint])
    # Per-user check and submission limits, per-address log-in limits (after every view
    # is registered: the limited views are wrapped in place).
    limits.install(app, config)

    @app.after_request
    def _security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.headers.get("Cache-Control") is None and not request.path.startswith(
            "/static/"
        ):
            # Pages and API answers may show job metadata: never cache them.
            response.headers["Cache-Control"] = "no-store"
        lang = request.args.get("lang")
        if lang in LOCALES:
            response.set_cookie(LOCALE_COOKIE, lang, max_age=365 * 86400, httponly=True,
                                samesite="Lax", secure=secure_cookies(config))
        return response

    from web.labels import label, translated_violations
    from web.messages import check_name, service_text

    app.jinja_env.globals.update(label=label, translated_violations=translated_violations,
                                 service_text=service_text, check_name=check_name)
    app.jinja_env.filters["utc_iso"] = utc_iso

    @app.context_processor
    def _template_globals():
        return {"current_locale": select_locale(), "locales": LOCALES,
                "request_path": request.path, "g": g}

    return app
