"""Admin pages: how executors are protected, tenants and users (created and reset here,
audited), merchants' privacy budgets, and platform datasets with column classes, entity and k."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from jobs import budget
from jobs.errors import InvalidRequest
from onboarding.errors import OnboardingError
from onboarding.platform_datasets import NUMERIC_TYPE, set_release_policy, update_platform_dataset
from sandbox.protection import BY_KEY, PROTECTIONS, Recorded
from web.auth import actor_for, app_config, audit_record, db, page_user, roles_required
from web.messages import service_text
from yushan.accounts import (
    PLATFORM,
    ROLE_TENANT_KIND,
    AccountError,
    create_tenant,
    create_user,
    get_tenant,
    set_password,
)
from yushan.models import ColumnClass, Dataset, Role, Setting, Tenant, TenantKind, User

bp = Blueprint("admin", __name__, url_prefix="/admin")


def sandbox_protections(session) -> list[Recorded]:
    """Network isolation and memory limit of executors, as the workers last recorded them."""
    rows = {s.key: s for s in session.scalars(select(Setting).where(Setting.key.in_(BY_KEY)))}
    return [
        Recorded.of(p, rows[p.key].value, rows[p.key].updated_at) if p.key in rows
        else Recorded(p, None)
        for p in PROTECTIONS
    ]


@bp.get("/")
@roles_required(Role.ADMIN.value)
def overview():
    session = db()
    tenants = list(session.scalars(select(Tenant).order_by(Tenant.kind, Tenant.slug)))
    users = list(session.scalars(
        select(User).options(selectinload(User.tenant)).order_by(User.username)
    ))
    datasets = list(session.scalars(
        select(Dataset)
        .join(Tenant, Dataset.tenant_id == Tenant.id)
        .where(Tenant.slug == PLATFORM, Dataset.withdrawn_at.is_(None))
        .options(selectinload(Dataset.columns))
        .order_by(Dataset.full_name)
    ))
    budgets = [budget.budget_json(session, app_config(), t) for t in tenants
               if t.kind == TenantKind.MERCHANT.value]
    return render_template("admin.html", tenants=tenants, users=users, datasets=datasets,
                           classes=[c.value for c in ColumnClass],
                           numeric=lambda data_type: bool(NUMERIC_TYPE.match(data_type.lower())),
                           sandbox=sandbox_protections(session), budgets=budgets,
                           roles=[r.value for r in Role],
                           tenant_kinds=[TenantKind.MERCHANT.value, TenantKind.PROVIDER.value],
                           role_kinds={r.value: k.value for r, k in ROLE_TENANT_KIND.items()})


@bp.post("/budgets/<merchant>")
@roles_required(Role.ADMIN.value)
def set_budget(merchant: str):
    """Raise or lower a merchant's privacy budget for the current period (audited)."""
    session = db()
    tenant = get_tenant(session, merchant)
    if tenant is None or tenant.kind != TenantKind.MERCHANT.value:
        abort(404)
    try:
        epsilon, delta = float(request.form.get("epsilon", "")), float(request.form.get("delta", ""))
        budget.set_budget(session, app_config(), tenant, epsilon, delta, actor_for(page_user()))
    except ValueError:
        session.rollback()
        flash(gettext("Epsilon and delta must be numbers."), "error")
        return redirect(url_for("admin.overview") + "#budgets"), 303
    except InvalidRequest:
        session.rollback()
        flash(gettext("Epsilon must be a positive number, and delta a positive number below 1."), "error")
        return redirect(url_for("admin.overview") + "#budgets"), 303
    session.commit()
    flash(gettext("Budget saved."), "info")
    return redirect(url_for("admin.overview") + "#budgets")


def _account_change(change, success: str):
    """Run ``change(session)`` (which returns the audit action, objects and details),
    audit it in the same transaction, and report the outcome on the admin page."""
    session = db()
    try:
        action, objects, details = change(session)
    except AccountError as exc:
        session.rollback()
        # The service's message says what to change (names the admin typed, no data).
        flash(gettext("Nothing was changed: %(reason)s", reason=service_text(str(exc))), "error")
        return redirect(url_for("admin.overview") + "#accounts")
    audit_record(session, action, actor_for(page_user()), objects=objects, details=details)
    session.commit()
    flash(success, "info")
    return redirect(url_for("admin.overview") + "#accounts")


@bp.post("/tenants")
@roles_required(Role.ADMIN.value)
def add_tenant():
    """A new merchant or service provider organisation."""
    slug = request.form.get("slug", "").strip()
    name = request.form.get("name", "").strip()
    kind = request.form.get("kind", "")
    if kind not in (TenantKind.MERCHANT.value, TenantKind.PROVIDER.value):
        abort(422)

    def change(session):
        tenant = create_tenant(session, slug, name, TenantKind(kind))
        return "admin.tenant_create", {"tenant": tenant.slug}, {"kind": tenant.kind}

    return _account_change(change, gettext("Organisation %(slug)s created.", slug=slug))


@bp.post("/users")
@roles_required(Role.ADMIN.value)
def add_user():
    """A new person's account in the tenant its role belongs to."""
    username = request.form.get("username", "").strip()
    role = request.form.get("role", "")
    if role not in {r.value for r in Role}:
        abort(422)
    tenant = request.form.get("tenant", "").strip()

    def change(session):
        user = create_user(session, username, request.form.get("password", ""), Role(role),
                           tenant, request.form.get("display_name", "").strip())
        return "admin.user_create", {"user": user.username, "tenant": tenant}, {"role": user.role}

    return _account_change(change, gettext("User %(name)s created.", name=username))


@bp.post("/users/<username>/password")
@roles_required(Role.ADMIN.value)
def reset_password(username: str):
    """Set a new password for a person (who then logs in with it)."""

    def change(session):
        user = set_password(session, username, request.form.get("password", ""))
        return "admin.password_reset", {"user": user.username}, {}

    return _account_change(change, gettext("Password of %(name)s reset.", name=username))


@bp.post("/datasets/<int:dataset_id>")
@roles_required(Role.ADMIN.value)
def update_dataset(dataset_id: int):
    """Change a platform dataset's k, entity column and column classes, and for consumer
    data its release mode, per-unit limits and bounds (audited, one transaction)."""
    session = db()
    user = page_user()
    form = request.form
    classes = {key.removeprefix("class_"): value for key, value in form.items() if key.startswith("class_")}
    try:
        update_platform_dataset(session, user, dataset_id, k=form.get("k"),
                                entity_column=form.get("entity_column"), classes=classes,
                                actor=actor_for(user))
        dataset = session.get(Dataset, dataset_id)
        if dataset.is_consumer_data and "release" in form:
            set_release_policy(session, user, dataset.name, release=form.get("release"),
                               max_groups=form.get("max_groups") or None,
                               max_rows=form.get("max_rows") or None,
                               bounds=_bounds(form, dataset), actor=actor_for(user))
    except OnboardingError as exc:
        session.rollback()
        abort(exc.status)
    session.commit()
    flash(gettext("Dataset saved."), "info")
    return redirect(url_for("admin.overview"))


def _bounds(form, dataset: Dataset) -> dict[str, tuple[str, str] | None]:
    """The bounds fields of the form: both empty clears a column's bounds."""
    bounds: dict[str, tuple[str, str] | None] = {}
    for column in dataset.columns:
        if f"lo_{column.name}" not in form and f"hi_{column.name}" not in form:
            continue
        lo, hi = form.get(f"lo_{column.name}", "").strip(), form.get(f"hi_{column.name}", "").strip()
        bounds[column.name] = (lo, hi) if lo or hi else None
    return bounds
