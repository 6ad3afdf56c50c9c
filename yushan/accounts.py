"""Tenants, users and authorisations: creation and password checks (one place for both)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from yushan.models import Authorization, Role, Tenant, TenantKind, User

PLATFORM = "platform"

# A valid hash of a random password: verifying against it costs the same as a real check,
# so that a missing user cannot be told from a wrong password by timing.
_DUMMY_HASH = generate_password_hash("yushan-no-such-user", method="scrypt")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def verify_password(user: User | None, password: str, demo_mode: bool) -> bool:
    """True when ``password`` is the user's and the user may log in at all.

    Demo accounts are refused unless demo mode is on.
    """
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return False
    ok = check_password_hash(user.password_hash, password)
    if not user.active:
        return False
    if user.is_demo and not demo_mode:
        return False
    return ok


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


def active_authorization(session: Session, merchant_id: int, provider_id: int) -> Authorization | None:
    return session.scalar(
        select(Authorization).where(
            Authorization.merchant_id == merchant_id,
            Authorization.provider_id == provider_id,
            Authorization.revoked_at.is_(None),
        )
    )


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


def can_act_for(session: Session, user: User, merchant_slug: str) -> Tenant | None:
    """The merchant tenant when ``user`` may submit jobs for it, else None.

    A merchant's own users act for it; a service provider's users act for the merchants
    that have an active authorisation for their provider organisation.
    """
    merchant = get_tenant(session, merchant_slug)
    if merchant is None or merchant.kind != TenantKind.MERCHANT.value:
        return None
    if user.role == Role.MERCHANT.value and user.tenant_id == merchant.id:
        return merchant
    if user.role == Role.PROVIDER.value and active_authorization(
        session, merchant.id, user.tenant_id
    ):
        return merchant
    return None
