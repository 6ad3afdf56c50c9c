"""Who may do what to which object: every such question of Yushan, answered in one place.

Each answer is a :class:`Permission`: allowed or not, with the reason (fixed text, never a
data value), and whether a refusal must *hide* the object. An object of another tenant is
hidden: it answers exactly like a missing one (the API's 404, the services' ``NotFound``),
so nobody learns that it exists. A visible object that the caller may not act on is
refused openly (403, ``NotAllowed``) with the reason.

Used by the API, the pages, the CLI and the services; nothing else decides access. The
rules, in short:

- jobs: the submitter, the users of the job's merchant and auditors (metadata only) see a
  job; anyone else, admins included, does not. Submitter or merchant cancel it; only the
  merchant previews, approves or rejects its output; the merchant, and a provider whose
  active authorisation grants ``view_results``, read its released rows.
- merchants: a merchant's own users act for it (run and check jobs); a provider's users act
  for the merchants that have an active authorisation for their organisation.
- segment sizes: admins, the job's merchant, and after approval whoever reads the rows.
- a merchant's own datasets (upload, withdraw, export) and its authorisations: its users.
- platform settings, reviews and platform datasets: platform admins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from yushan.models import Authorization, Job, JobState, Role, Tenant, TenantKind, Upload, User

JOB_ROLES = (Role.PROVIDER.value, Role.MERCHANT.value)


@dataclass(frozen=True)
class Permission:
    """An answer: ``allowed``, its ``reason``, and for a refusal whether the object must
    look missing (``hidden``). ``target`` carries what was looked up (e.g. the merchant)."""

    allowed: bool
    reason: str
    hidden: bool = False
    target: Any = None

    def __bool__(self) -> bool:
        return self.allowed


def allow(reason: str, target: Any = None) -> Permission:
    return Permission(True, reason, target=target)


def deny(reason: str) -> Permission:
    return Permission(False, reason)


def hide(reason: str) -> Permission:
    """A refusal that must answer like a missing object."""
    return Permission(False, reason, hidden=True)


# --- merchants --------------------------------------------------------------------------------


def active_authorization(session: Session, merchant_id: int, provider_id: int) -> Authorization | None:
    """The provider's current (unrevoked) authorisation by the merchant, if any."""
    return session.scalar(
        select(Authorization).where(
            Authorization.merchant_id == merchant_id,
            Authorization.provider_id == provider_id,
            Authorization.revoked_at.is_(None),
        )
    )


def act_for(session: Session, user: User, merchant_slug: str) -> Permission:
    """May ``user`` run and check jobs for the merchant ``merchant_slug``? The merchant
    tenant is the answer's ``target``. Not-your-merchant is hidden like a missing one."""
    if user.role not in JOB_ROLES:
        return deny("only merchants and service providers run jobs")
    merchant = session.scalar(select(Tenant).where(Tenant.slug == merchant_slug))
    if merchant is None or merchant.kind != TenantKind.MERCHANT.value:
        return hide("no such merchant")
    if user.role == Role.MERCHANT.value and user.tenant_id == merchant.id:
        return allow("its own merchant", merchant)
    if user.role == Role.PROVIDER.value and active_authorization(session, merchant.id, user.tenant_id):
        return allow("authorised by the merchant", merchant)
    return hide("no such merchant")


def acting_merchants(session: Session, user: User) -> list[Tenant]:
    """Merchants ``user`` may act for (:func:`act_for` for each), by slug."""
    if user.role == Role.MERCHANT.value:
        return [user.tenant]
    if user.role != Role.PROVIDER.value:
        return []
    return list(session.scalars(
        select(Tenant)
        .join(Authorization, Authorization.merchant_id == Tenant.id)
        .where(Authorization.provider_id == user.tenant_id, Authorization.revoked_at.is_(None),
               Tenant.kind == TenantKind.MERCHANT.value)
        .order_by(Tenant.slug)
    ))


# --- jobs -------------------------------------------------------------------------------------


def _is_jobs_merchant(user: User, job: Job) -> bool:
    return user.role == Role.MERCHANT.value and user.tenant_id == job.merchant_id


def see_job(user: User, job: Job | None) -> Permission:
    """May ``user`` see the job's metadata? Everyone else finds no such job."""
    if job is None:
        return hide("no such job")
    if job.submitted_by == user.id:
        return allow("its submitter")
    if _is_jobs_merchant(user, job):
        return allow("its merchant")
    if user.role == Role.AUDITOR.value:
        return allow("auditors see every job's metadata")
    return hide("no such job")


def job_scope(user: User) -> ColumnElement[bool] | None:
    """The jobs :func:`see_job` allows, as a filter for listings (None: no job at all).

    Listings are narrower than single lookups for a provider: its own submissions only."""
    if user.role == Role.PROVIDER.value:
        return Job.submitted_by == user.id
    if user.role == Role.MERCHANT.value:
        return Job.merchant_id == user.tenant_id
    if user.role == Role.AUDITOR.value:
        return true()
    return None


def _visible(user: User, job: Job | None, then: Permission) -> Permission:
    seen = see_job(user, job)
    return then if seen else seen


def cancel_job(user: User, job: Job) -> Permission:
    if job.submitted_by == user.id or _is_jobs_merchant(user, job):
        return allow("its submitter or merchant")
    return _visible(user, job, deny("only the submitter or the merchant may cancel this job"))


def decide_job(user: User, job: Job, verb: str = "approve") -> Permission:
    """Preview, approve or reject the job's output: its merchant only."""
    if _is_jobs_merchant(user, job):
        return allow("its merchant")
    return _visible(user, job, deny(f"only the job's merchant may {verb} its output"))


def read_results(session: Session, user: User, job: Job) -> Permission:
    """Read the job's released rows (once approved): its merchant, or a provider whose
    active authorisation by that merchant grants ``view_results``."""
    if _is_jobs_merchant(user, job):
        return allow("its merchant")
    if user.role == Role.PROVIDER.value:
        auth = active_authorization(session, job.merchant_id, user.tenant_id)
        if auth is not None and auth.view_results:
            return allow("the merchant's authorisation grants view_results")
    return _visible(user, job, deny("you may see this job's state and summary, not its rows"))


def see_segment_summary(session: Session, user: User, job: Job) -> Permission:
    """Segment sizes are part of the release (policy P8): platform admins (they review
    segments), the job's merchant (it decides on them, as on a preview), and, once the
    merchant approved, those who may read the rows."""
    if user.role == Role.ADMIN.value:
        return allow("platform admins review segments")
    if _is_jobs_merchant(user, job):
        return allow("its merchant")
    if job.state == JobState.APPROVED.value and read_results(session, user, job):
        return allow("released to those who may read the rows")
    return _visible(user, job, deny("segment sizes are released with the rows"))


def manage_own_data(user: User) -> Permission:
    """Upload, withdraw and export a merchant's own datasets: its own users only."""
    if user.role == Role.MERCHANT.value:
        return allow("a merchant's user")
    return deny("Only a merchant's own users may upload or withdraw its data.")


def see_upload(user: User, upload: Upload | None) -> Permission:
    """An asynchronous upload's status: its merchant's own users; anyone else finds none."""
    if upload is None:
        return hide("no such upload")
    if user.role == Role.MERCHANT.value and user.tenant_id == upload.tenant_id:
        return allow("its merchant's user")
    return hide("no such upload")


def manage_authorizations(user: User) -> Permission:
    """Grant, change or revoke providers' authorisations: a merchant's own users, for it."""
    if user.role == Role.MERCHANT.value:
        return allow("a merchant's user")
    return deny("only a merchant's users authorise service providers")


# --- the platform -----------------------------------------------------------------------------


def administer(user: User) -> Permission:
    """Platform settings, reviews, column classes and accounts: platform admins."""
    if user.role == Role.ADMIN.value:
        return allow("a platform admin")
    return deny("only a platform admin may do this")


def manage_platform_datasets(user: User) -> Permission:
    """Register, refresh and set the release policy of platform datasets: platform admins."""
    if user.role == Role.ADMIN.value:
        return allow("a platform admin")
    return deny("only a platform admin may register or change platform datasets")
