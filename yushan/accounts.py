"""Tenants, users and authorisations: creation and password checks (one place for both).
Who may act for whom is :mod:`yushan.access`'s answer.

Passwords are hashed with argon2id at OWASP's minimum for it (Password Storage Cheat Sheet:
m = 19 MiB, t = 2, p = 1): about 30-60 ms of one core, so that 20 people logging in at
once on two cores still get in within a second, while each guess costs an attacker
19 MiB of memory as well as the time. Hashes of older parameters or algorithms
(werkzeug's scrypt, N = 2^15, before) still verify, and are replaced with today's on the
next successful log-in (:func:`upgrade_hash`). docs/operations.md says why these values.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from yushan.access import active_authorization
from yushan.models import Authorization, Role, Tenant, TenantKind, User

PLATFORM = "platform"

# argon2id, OWASP's first configuration: 19 MiB, 2 passes, 1 lane; 16-byte salt, 32-byte tag.
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1,
                                 hash_len=32, salt_len=16, type=Type.ID)
_ARGON2 = "$argon2"

# A valid hash of a random password: verifying against it costs the same as a real check,
# so that a missing user cannot be told from a wrong password by timing.
_DUMMY_HASH = PASSWORD_HASHER.hash("yushan-no-such-user")


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)


def _matches(stored: str, password: str) -> bool:
    if stored.startswith(_ARGON2):
        try:
            return PASSWORD_HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    # Hashes from before argon2id (werkzeug's "scrypt:..." and "pbkdf2:..." formats).
    return check_password_hash(stored, password)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` is of another algorithm or other parameters than
    :func:`hash_password` writes today (reading the hash's header: no hashing)."""
    if not stored.startswith(_ARGON2):
        return True
    try:
        return PASSWORD_HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def verify_password(user: User | None, password: str, demo_mode: bool) -> bool:
    """True when ``password`` is the user's and the user may log in at all.

    Demo accounts are refused unless demo mode is on.
    """
    if user is None:
        _matches(_DUMMY_HASH, password)
        return False
    ok = _matches(user.password_hash, password)
    if not user.active:
        return False
    if user.is_demo and not demo_mode:
        return False
    return ok


def upgrade_hash(user: User, password: str) -> bool:
    """After ``password`` was verified: store it again with today's parameters when the
    stored hash is older (True when it did). The caller's transaction keeps it; the
    person's page sessions elsewhere end with it, as after a password change."""
    if not needs_rehash(user.password_hash):
        return False
    user.password_hash = hash_password(password)
    return True


SLUG = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
MIN_PASSWORD = 12
# Which tenant each role belongs to: merchants' and providers' people to their
# organisation, admins and auditors to the platform.
ROLE_TENANT_KIND = {
    Role.ADMIN: TenantKind.PLATFORM,
    Role.AUDITOR: TenantKind.PLATFORM,
    Role.MERCHANT: TenantKind.MERCHANT,
    Role.PROVIDER: TenantKind.PROVIDER,
}


class AccountError(ValueError):
    """A tenant or user cannot be created as asked; the message says what to change."""


def create_tenant(session: Session, slug: str, name: str, kind: TenantKind) -> Tenant:
    """A new merchant or provider organisation (the platform tenant exists from init)."""
    if kind is TenantKind.PLATFORM:
        raise AccountError("There is one platform tenant, created by `yushan init`.")
    if not SLUG.match(slug):
        raise AccountError("The tenant's short name must be 2-64 characters: lowercase letters, "
                           "digits and _, starting with a letter (it names its datasets).")
    if not name.strip() or len(name) > 200:
        raise AccountError("The tenant's display name must be 1-200 characters.")
    if get_tenant(session, slug) is not None:
        raise AccountError(f"A tenant named {slug} exists already.")
    tenant = Tenant(slug=slug, name=name.strip(), kind=kind.value)
    session.add(tenant)
    session.flush()
    return tenant


def create_user(session: Session, username: str, password: str, role: Role, tenant_slug: str,
                display_name: str = "") -> User:
    """A new person's account, in the tenant its role belongs to."""
    if not USERNAME.match(username):
        raise AccountError("The user name must be 3-64 characters: letters, digits, _ . and -.")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"The password must be at least {MIN_PASSWORD} characters.")
    tenant = get_tenant(session, tenant_slug)
    if tenant is None:
        raise AccountError(f"There is no tenant named {tenant_slug}.")
    expected = ROLE_TENANT_KIND[role]
    if tenant.kind != expected.value:
        raise AccountError(f"A {role.value} account belongs to a {expected.value} tenant; "
                           f"{tenant_slug} is a {tenant.kind}.")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"A user named {username} exists already.")
    user = User(username=username, display_name=(display_name or username)[:200],
                password_hash=hash_password(password), role=role.value, tenant_id=tenant.id)
    session.add(user)
    session.flush()
    return user


def set_active(session: Session, username: str, active: bool) -> User:
    """Disable (or re-enable) a person's account; their tokens stop working with it."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"There is no user named {username}.")
    user.active = active
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Give a person a new password (an admin's reset); the old one stops working."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"There is no user named {username}.")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"The password must be at least {MIN_PASSWORD} characters.")
    user.password_hash = hash_password(password)
    session.flush()
    return user


def get_tenant(session: Session, slug: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.slug == slug))


def ensure_tenant(
    session: Session, slug: str, name: str, kind: TenantKind, created: list | None = None
) -> Tenant:
    """Return the tenant, creating it if needed (then appended to ``created``)."""
    tenant = get_tenant(session, slug)
    if tenant is None:
        tenant = Tenant(slug=slug, name=name, kind=kind.value)
        session.add(tenant)
        session.flush()
        if created is not None:
            created.append(tenant)
    return tenant


def ensure_platform(session: Session, created: list | None = None) -> Tenant:
    return ensure_tenant(session, PLATFORM, "Yushan platform", TenantKind.PLATFORM, created)


def ensure_user(
    session: Session,
    username: str,
    password: str,
    role: Role,
    tenant: Tenant,
    *,
    display_name: str = "",
    is_demo: bool = False,
) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(
            username=username,
            display_name=display_name or username,
            password_hash=hash_password(password),
            role=role.value,
            tenant_id=tenant.id,
            is_demo=is_demo,
        )
        session.add(user)
        session.flush()
    return user


def grant(
    session: Session, merchant: Tenant, provider: Tenant, *, view_results: bool, by: User | None
) -> Authorization:
    auth = active_authorization(session, merchant.id, provider.id)
    if auth is None:
        auth = Authorization(
            merchant_id=merchant.id,
            provider_id=provider.id,
            view_results=view_results,
            granted_by=by.id if by else None,
        )
        session.add(auth)
    else:
        auth.view_results = view_results
    session.flush()
    return auth
