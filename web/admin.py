"""Admin pages: how executors are protected, tenants, users, and platform datasets with
column classes, entity and k."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from onboarding.errors import OnboardingError
from onboarding.platform_datasets import NUMERIC_TYPE, set_release_policy, update_platform_dataset
from sandbox.protection import BY_KEY, PROTECTIONS, Recorded
from web.auth import actor_for, db, page_user, roles_required
from yushan.accounts import PLATFORM
from yushan.models import ColumnClass, Dataset, Role, Setting, Tenant, User

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
    return render_template("admin.html", tenants=tenants, users=users, datasets=datasets,
                           classes=[c.value for c in ColumnClass],
                           numeric=lambda data_type: bool(NUMERIC_TYPE.match(data_type.lower())),
                           sandbox=sandbox_protections(session))


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
