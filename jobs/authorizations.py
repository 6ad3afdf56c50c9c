"""A merchant's authorisations of service providers: granted, changed and revoked here,
each audited in the same transaction. An authorisation lets the provider's users run jobs
for the merchant, and with ``view_results`` read the released rows (:mod:`yushan.access`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from audit import Actor, record
from jobs.errors import NotFound, require
from yushan import access
from yushan.accounts import get_tenant, grant
from yushan.models import Authorization, Tenant, TenantKind, User, utcnow


def _provider(session: Session, slug: str | None) -> Tenant:
    tenant = get_tenant(session, slug or "")
    if tenant is None or tenant.kind != TenantKind.PROVIDER.value:
        raise NotFound("no such service provider")
    return tenant


def _objects(user: User, provider: Tenant, auth: Authorization) -> dict[str, object]:
    return {"merchant": user.tenant.slug, "provider": provider.slug, "authorization": auth.id}


def grant_authorization(session: Session, user: User, provider_slug: str | None, *,
                        view_results: bool, origin: str | None = None) -> Authorization:
    """Authorise a provider for the user's merchant, or change its ``view_results``."""
    require(access.manage_authorizations(user))
    provider = _provider(session, provider_slug)
    auth = grant(session, user.tenant, provider, view_results=view_results, by=user)
    record(session, "authorization.grant", actor=Actor.for_user(user, origin or ""),
           objects=_objects(user, provider, auth), details={"view_results": view_results})
    return auth


def revoke_authorization(session: Session, user: User, provider_slug: str | None, *,
                         origin: str | None = None) -> Authorization:
    """End a provider's active authorisation by the user's merchant."""
    require(access.manage_authorizations(user))
    provider = _provider(session, provider_slug)
    auth = access.active_authorization(session, user.tenant_id, provider.id)
    if auth is None:
        raise NotFound("no such authorisation")
    auth.revoked_at = utcnow()
    record(session, "authorization.revoke", actor=Actor.for_user(user, origin or ""),
           objects=_objects(user, provider, auth))
    return auth
