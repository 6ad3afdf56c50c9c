"""Who is calling: Flask-Login sessions for pages, bearer tokens for the API.

Also the log-in and log-out pages, token issue and revocation, throttling of failed
log-ins (per user in the database, per client address in memory) and the audit actor of
a request. Every log-in, failed log-in and token issue is audited in the same
transaction as its effect.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from web.errors import ApiError
from yushan.accounts import upgrade_hash, verify_password
from yushan.config import Config
from yushan.db import end_transaction
from yushan.models import ApiToken, Role, User

bp = Blueprint("auth", __name__)

# Failed log-ins: after USER_LOCK_AFTER in a row a user is locked for a while, doubling
# each further failure up to USER_LOCK_MAX; a client address gets IP_MAX_FAILURES per
# IP_WINDOW_SECONDS.
USER_LOCK_AFTER = 5
USER_LOCK_BASE = timedelta(minutes=1)
USER_LOCK_MAX = timedelta(minutes=30)
IP_MAX_FAILURES = 30
IP_WINDOW_SECONDS = 300.0
TOKEN_BYTES = 32
_TOKEN_USE_WRITE_EVERY = timedelta(seconds=60)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# ---------------------------------------------------------------- per-request database


def db() -> Session:
    """The request's database session (closed when the request ends)."""
    if "db" not in g:
        from yushan.db import session_factory

        g.db = session_factory(app_config())()
    return g.db


def app_config() -> Config:
    return current_app.config["YUSHAN"]


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


# ---------------------------------------------------------------- audit actor


_UNSAFE = re.compile(r"[^\x20-\x7e]")


def client_ip() -> str:
    # Behind YUSHAN_TRUSTED_PROXY waitress has set it from X-Forwarded-For (yushan serve);
    # from anyone else that header is dropped, never believed.
    return request.remote_addr or "-"


def request_origin() -> str:
    """``ip=... ua=...`` with control and non-ASCII characters replaced."""
    from audit import Actor

    return Actor.web_origin(client_ip(), _UNSAFE.sub("?", request.headers.get("User-Agent", "-")))


def actor_for(user: User | None, username: str | None = None):
    """The audit actor for ``user`` (or an anonymous caller naming ``username``)."""
    from audit import Actor

    if user is None:
        return Actor(username=_UNSAFE.sub("?", username or "-")[:64], role="anonymous",
                     tenant="-", origin=request_origin())
    return Actor.for_user(user, request_origin())


def actor_for_request():
    """The audit actor of the calling user (API token or page session)."""
    return actor_for(request_user())


def audit_record(session: Session, action: str, actor, objects: dict[str, Any] | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """Add an audit entry to ``session``'s transaction (it commits with the action)."""
    from audit import record

    record(session, action, actor=actor, objects=objects or {}, details=details or {})


# ---------------------------------------------------------------- throttling


class FailureWindow:
    """Failed log-ins per client address in a sliding window (this process only)."""

    def __init__(self, limit: int, window_seconds: float):
        self.limit = limit
        self.window = window_seconds
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def retry_after(self, key: str) -> int:
        """Seconds to wait before ``key`` may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            events = self._trim(key, now)
            if len(events) < self.limit:
                return 0
            return max(1, int(events[0] + self.window - now) + 1)

    def add(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._trim(key, now).append(now)


def user_retry_after(user: User | None) -> int:
    locked_until = aware(user.locked_until) if user is not None else None
    if locked_until is None:
        return 0
    return max(0, int((locked_until - utcnow()).total_seconds()) + 1)


def _note_failure(user: User | None) -> None:
    current_app.extensions["yushan_ip_failures"].add(client_ip())
    if user is None:
        return
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= USER_LOCK_AFTER:
        extra = user.failed_logins - USER_LOCK_AFTER
        lock = min(USER_LOCK_BASE * (2 ** min(extra, 10)), USER_LOCK_MAX)
        user.locked_until = utcnow() + lock


class LoginRefused(Exception):
    """Log-in refused; ``status`` is 401 (bad credentials) or 429 (throttled)."""

    def __init__(self, status: int, retry_after: int = 0):
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


def authenticate(session: Session, username: str, password: str, *, channel: str) -> User:
    """Check credentials with throttling; audit the outcome; commit. Raise LoginRefused.

    ``channel`` ("web" or "api") goes into the audit details. A password stored with older
    hashing parameters is stored again with today's (audited ``auth.password_rehash``) in
    the caller's transaction, which commits it with the log-in.
    """
    username = (username or "").strip()
    user = session.scalar(
        select(User).options(joinedload(User.tenant)).where(User.username == username)
    )
    wait = max(current_app.extensions["yushan_ip_failures"].retry_after(client_ip()),
               user_retry_after(user))
    if wait:
        audit_record(session, "auth.login_failed", actor_for(user, username),
                     objects={"user": username[:64]},
                     details={"channel": channel, "reason": "throttled"})
        session.commit()
        raise LoginRefused(429, wait)
    # Hashing takes tens of milliseconds and reads nothing: outside the transaction, which
    # on SQLite holds the write lock from its start (log-ins would hash one at a time).
    end_transaction(session)
    verified = verify_password(user, password or "", app_config().demo_mode)
    if user is not None:
        session.refresh(user)  # the counters as they are now, in the new transaction
    if not verified:
        _note_failure(user)
        audit_record(session, "auth.login_failed", actor_for(user, username),
                     objects={"user": username[:64]},
                     details={"channel": channel, "reason": "bad_credentials"})
        session.commit()
        raise LoginRefused(401)
    user.failed_logins = 0
    user.locked_until = None
    if upgrade_hash(user, password):  # stored with older parameters: today's from now on
        audit_record(session, "auth.password_rehash", actor_for(user), objects={"user": user.username},
                     details={"channel": channel, "algorithm": "argon2id"})
    return user


# ---------------------------------------------------------------- bearer tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, user: User) -> tuple[str, datetime]:
    """A new random bearer token for ``user``; only its SHA-256 is stored."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = utcnow() + timedelta(seconds=app_config().token_ttl_seconds)
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
    session.flush()
    return token, expires_at


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_record(session: Session, token: str) -> ApiToken | None:
    """The live (unexpired, unrevoked, active user) token record, else None."""
    if len(token) > 200:
        return None
    record = session.scalar(
        select(ApiToken)
        .options(joinedload(ApiToken.user).joinedload(User.tenant))
        .where(ApiToken.token_hash == hash_token(token))
    )
    if record is None or record.revoked_at is not None:
        return None
    if aware(record.expires_at) <= utcnow() or not record.user.active:
        return None
    if record.user.is_demo and not app_config().demo_mode:
        return None
    return record


def current_api_user() -> User | None:
    """The user behind the request's bearer token (cached per request), else None."""
    if "api_user" in g:
        return g.api_user
    user = None
    token = bearer_token()
    if token:
        record = token_record(db(), token)
        if record is not None:
            user = record.user
            g.api_token = record
    g.api_user = user
    return user


def api_user_required(*roles: Role | str) -> Callable:
    """Decorator for API views: 401 without a live token, 403 when the role is not listed.

    Use as ``@api_user_required()`` (any role) or ``@api_user_required(Role.MERCHANT)``.
    """
    allowed = {str(r) for r in roles}

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_api_user()
            if user is None:
                raise ApiError(401, "unauthorized", "A valid bearer token is required.",
                               {"WWW-Authenticate": 'Bearer realm="yushan"'})
            if allowed and user.role not in allowed:
                raise ApiError(403, "forbidden", "Your role does not allow this.")
            return view(*args, **kwargs)

        return wrapper

    return decorate


def request_user() -> User | None:
    """The caller: the API token's user, or the logged-in page user."""
    if request.path.startswith("/api/"):
        return current_api_user()
    return page_user()


def roles_required(*roles: Role | str) -> Callable:
    """Decorator for pages: log-in page when anonymous, 403 when the role is not listed."""
    allowed = {str(r) for r in roles}

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        @login_required
        def wrapper(*args, **kwargs):
            if allowed and current_user.role not in allowed:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorate


# ---------------------------------------------------------------- Flask-Login


def init_login(app: Flask) -> None:
    manager = LoginManager()
    manager.login_view = "auth.login"
    manager.login_message = None  # the log-in page says enough
    manager.session_protection = "strong"
    manager.init_app(app)
    app.extensions["yushan_ip_failures"] = FailureWindow(IP_MAX_FAILURES, IP_WINDOW_SECONDS)

    @manager.user_loader
    def _load(user_id: str) -> User | None:
        # The session id is "<user id>:<password hash prefix>" so that a password change
        # ends every session.
        raw_id, _, marker = user_id.partition(":")
        if not raw_id.isdigit():
            return None
        user = db().scalar(
            select(User).options(joinedload(User.tenant)).where(User.id == int(raw_id))
        )
        if user is None or not user.active or _session_marker(user) != marker:
            return None
        if user.is_demo and not app_config().demo_mode:
            return None
        return SessionUser(user)


def _session_marker(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


class SessionUser(UserMixin):
    """The logged-in page user as Flask-Login sees it; attributes pass through to User."""

    def __init__(self, user: User):
        self.user = user

    def get_id(self) -> str:
        return f"{self.user.id}:{_session_marker(self.user)}"

    @property
    def is_active(self) -> bool:
        return bool(self.user.active)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.user, name)


def page_user() -> User | None:
    """The logged-in page user's User row, else None."""
    if current_user.is_authenticated:
        return current_user.user
    return None


# ---------------------------------------------------------------- pages


class LoginForm(FlaskForm):
    username = StringField("username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("password", validators=[DataRequired(), Length(max=256)])


def _safe_next(target: str | None) -> str | None:
    """Only same-site relative paths: no open redirect."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        session = db()
        try:
            user = authenticate(session, form.username.data, form.password.data, channel="web")
        except LoginRefused as refused:
            status = refused.status
            if refused.status == 429:
                flash(gettext("Too many failed log-ins; wait a few minutes and try again."),
                      "error")
            else:
                flash(gettext("Wrong user name or password."), "error")
        else:
            audit_record(session, "auth.login", actor_for(user),
                         objects={"user": user.username}, details={"channel": "web"})
            session.commit()
            login_user(SessionUser(user))
            return redirect(_safe_next(request.args.get("next")) or url_for("pages.dashboard"))
    elif request.method == "POST":
        status = 400
    return render_template("login.html", form=form), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    session = db()
    user = page_user()
    audit_record(session, "auth.logout", actor_for(user), objects={"user": user.username},
                 details={"channel": "web"})
    session.commit()
    logout_user()
    flash(gettext("You are logged out."), "info")
    return redirect(url_for("pages.landing"))
