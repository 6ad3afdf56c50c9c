"""The privacy budget ledger (policy D5): per merchant and calendar month, an allowance of
(ε, δ) and what the merchant's ``dp`` jobs have spent of it. Callers own the transaction.

- A period opens only as an audited action (``budget.open``): when a job is charged or the
  admin sets the budget in a month that has no period yet. It opens with the allowance of
  the merchant's latest period, or the platform default (``Config.dp_default_epsilon``,
  ``dp_default_delta``) for a merchant that has none. Nothing refreshes silently: reading a
  budget never writes, it shows what the period would open with.
- A ``dp`` job is charged when it starts, once per (job, attempt): a unique constraint on
  the charge, in the same transaction as its ``budget.charge`` entry. The charge is a
  conditional update of the period's spent amounts, so that two jobs starting at once can
  never spend more than is left together.
- The admin raises or lowers the current period's allowance (``budget.set``); the next
  period opens with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from audit import Actor, record
from jobs.errors import InvalidRequest, NotFound
from policies.model import Violation
from yushan import access, jsondoc, metrics
from yushan.accounts import get_tenant
from yushan.config import Config
from yushan.models import (
    BudgetCharge,
    BudgetPeriod,
    Job,
    Role,
    Tenant,
    TenantKind,
    User,
    budget_period,
)

# Spent amounts are sums of floats: a cost equal to what is left must not fail on rounding.
_SLACK = 1e-9


class OverBudget(Exception):
    """The job's cost exceeds what is left of its merchant's budget in this period."""

    def __init__(self, epsilon_left: float, delta_left: float, period_end: datetime):
        super().__init__("the job's privacy cost exceeds the budget left")
        self.epsilon_left, self.delta_left, self.period_end = epsilon_left, delta_left, period_end

    def violation(self) -> dict[str, Any]:
        """The D5 explanation of a blocked job (P9): what is left, and until when."""
        end = _iso(self.period_end)
        message = (f"This job's privacy cost exceeds the merchant's budget left for this period "
                   f"(epsilon {self.epsilon_left:.6g}, delta {self.delta_left:.3g} until {end}).")
        suggestion = ("Wait for the next period, make the job cheaper (fewer noisy columns or a "
                      "smaller epsilon), or ask the platform admin to raise the budget.")
        return Violation(
            rule="D5", column="(query)", sources=(), message=message, suggestion=suggestion,
            message_template=("This job's privacy cost exceeds the merchant's budget left for this "
                              "period (epsilon {epsilon_left}, delta {delta_left} until {period_end})."),
            suggestion_template=suggestion,
            params={"epsilon_left": f"{self.epsilon_left:.6g}", "delta_left": f"{self.delta_left:.3g}",
                    "period_end": end},
        ).to_dict()


@dataclass(frozen=True)
class Allowance:
    epsilon: float
    delta: float


def validate_allowance(epsilon: Any, delta: Any) -> Allowance:
    """A budget as the admin gives it: positive finite numbers, δ < 1."""
    values = {}
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"'{name}' must be a number")
        number = float(value)
        if not math.isfinite(number) or number <= 0:
            raise InvalidRequest(f"'{name}' must be a positive finite number")
        values[name] = number
    if values["delta"] >= 1:
        raise InvalidRequest("'delta' must be below 1")
    return Allowance(values["epsilon"], values["delta"])


def budget_merchant(session: Session, user: User, merchant_slug: str) -> Tenant:
    """The merchant whose budget ``user`` may see: the admin any; the merchant's own users
    and its authorised providers theirs. Anything else is NotFound, like a missing one."""
    if user.role == Role.ADMIN.value:
        merchant = get_tenant(session, merchant_slug)
        if merchant is not None and merchant.kind == TenantKind.MERCHANT.value:
            return merchant
    else:
        permission = access.act_for(session, user, merchant_slug)
        if permission.allowed:
            return permission.target
    raise NotFound("no such merchant")


def _period(session: Session, merchant_id: int, start: datetime) -> BudgetPeriod | None:
    return session.scalar(select(BudgetPeriod).where(BudgetPeriod.merchant_id == merchant_id,
                                                     BudgetPeriod.period_start == start))


def _allowance_for_new_period(session: Session, config: Config, merchant_id: int) -> Allowance:
    latest = session.scalar(select(BudgetPeriod).where(BudgetPeriod.merchant_id == merchant_id)
                            .order_by(BudgetPeriod.period_start.desc()).limit(1))
    if latest is None:
        return Allowance(config.dp_default_epsilon, config.dp_default_delta)
    return Allowance(latest.epsilon, latest.delta)


def open_period(session: Session, config: Config, merchant: Tenant, actor: Actor,
                at: datetime | None = None, allowance: Allowance | None = None) -> BudgetPeriod:
    """The merchant's period holding ``at`` (now), opened (audited ``budget.open``) if it
    has none yet, with ``allowance`` or what a new period gets."""
    start, end = budget_period(at)
    period = _period(session, merchant.id, start)
    if period is not None:
        return period
    allowance = allowance or _allowance_for_new_period(session, config, merchant.id)
    try:
        with session.begin_nested():  # another process may open it at the same moment
            period = BudgetPeriod(merchant_id=merchant.id, period_start=start, period_end=end,
                                  epsilon=allowance.epsilon, delta=allowance.delta,
                                  epsilon_spent=0.0, delta_spent=0.0)
            session.add(period)
            session.flush()
            record(session, "budget.open", actor=actor, objects={"merchant": merchant.slug},
                   details={"period_start": _iso(start), "period_end": _iso(end),
                            "epsilon": allowance.epsilon, "delta": allowance.delta})
    except IntegrityError:
        period = _period(session, merchant.id, start)
        if period is None:
            raise
    return period


def budget_json(session: Session, config: Config, merchant: Tenant,
                at: datetime | None = None) -> dict[str, Any]:
    """The API's budget document for the current period. Reads only: a period not opened
    yet shows the allowance it would open with, nothing spent."""
    start, end = budget_period(at)
    period = _period(session, merchant.id, start)
    if period is None:
        allowance = _allowance_for_new_period(session, config, merchant.id)
        epsilon, delta, epsilon_spent, delta_spent = allowance.epsilon, allowance.delta, 0.0, 0.0
    else:
        epsilon, delta = period.epsilon, period.delta
        epsilon_spent, delta_spent = period.epsilon_spent, period.delta_spent
    return {"merchant": merchant.slug, "period_start": _iso(start), "period_end": _iso(end),
            "epsilon": epsilon, "delta": delta,
            "epsilon_spent": epsilon_spent, "delta_spent": delta_spent}


def budget_left(session: Session, config: Config, merchant: Tenant,
                at: datetime | None = None) -> dict[str, Any]:
    """What the check shows: ``{"epsilon_left", "delta_left", "period_end"}``."""
    doc = budget_json(session, config, merchant, at)
    return {"epsilon_left": max(0.0, doc["epsilon"] - doc["epsilon_spent"]),
            "delta_left": max(0.0, doc["delta"] - doc["delta_spent"]),
            "period_end": doc["period_end"]}


def set_budget(session: Session, config: Config, merchant: Tenant, epsilon: Any, delta: Any,
               actor: Actor) -> dict[str, Any]:
    """Raise or lower the merchant's current period (the admin; audited ``budget.set``).
    Later periods open with the new allowance."""
    allowance = validate_allowance(epsilon, delta)
    period = open_period(session, config, merchant, actor)
    before = {"epsilon": period.epsilon, "delta": period.delta}
    period.epsilon, period.delta = allowance.epsilon, allowance.delta
    session.flush()
    record(session, "budget.set", actor=actor, objects={"merchant": merchant.slug},
           details={"period_start": _iso(period.period_start), "before": before,
                    "after": {"epsilon": allowance.epsilon, "delta": allowance.delta},
                    "epsilon_spent": period.epsilon_spent, "delta_spent": period.delta_spent})
    return budget_json(session, config, merchant)


def charge(session: Session, config: Config, job_id: int, attempt: int, epsilon: float,
           delta: float, actor: Actor, at: datetime | None = None) -> BudgetCharge:
    """Charge one run of a dp job to its merchant's current period (audited
    ``budget.charge``), once per (job, attempt): charging the same attempt again returns
    the first charge. Raises :class:`OverBudget` (nothing charged) when the cost exceeds
    what is left."""
    epsilon, delta = float(epsilon), float(delta)
    if not (math.isfinite(epsilon) and math.isfinite(delta)) or epsilon < 0 or delta < 0:
        raise ValueError("a privacy cost is a non-negative finite (epsilon, delta)")
    existing = session.scalar(select(BudgetCharge).where(BudgetCharge.job_id == job_id,
                                                         BudgetCharge.attempt == attempt))
    if existing is not None:
        return existing
    job = session.get(Job, job_id)
    if job is None:
        raise ValueError(f"no job {job_id}")
    period = open_period(session, config, job.merchant, actor, at)
    try:
        with session.begin_nested():
            spent = session.execute(
                update(BudgetPeriod)
                .where(BudgetPeriod.id == period.id,
                       BudgetPeriod.epsilon_spent + epsilon <= BudgetPeriod.epsilon + _SLACK,
                       BudgetPeriod.delta_spent + delta <= BudgetPeriod.delta + _SLACK)
                .values(epsilon_spent=BudgetPeriod.epsilon_spent + epsilon,
                        delta_spent=BudgetPeriod.delta_spent + delta)
                .execution_options(synchronize_session=False)
            )
            if spent.rowcount != 1:
                session.refresh(period)
                raise OverBudget(max(0.0, period.epsilon - period.epsilon_spent),
                                 max(0.0, period.delta - period.delta_spent), period.period_end)
            row = BudgetCharge(period_id=period.id, job_id=job_id, attempt=attempt,
                               epsilon=epsilon, delta=delta)
            session.add(row)
            session.flush()
    except IntegrityError:  # the same attempt charged meanwhile by another process
        existing = session.scalar(select(BudgetCharge).where(BudgetCharge.job_id == job_id,
                                                             BudgetCharge.attempt == attempt))
        if existing is None:
            raise
        return existing
    session.refresh(period)
    job.release, job.epsilon, job.delta = "dp", epsilon, delta
    metrics.on_commit(session, metrics.budget_spent, job.merchant.slug, epsilon)
    record(session, "budget.charge", actor=actor,
           objects={"job": job_id, "merchant": job.merchant.slug},
           details={"attempt": attempt, "epsilon": epsilon, "delta": delta,
                    "period_start": _iso(period.period_start),
                    "epsilon_left": max(0.0, period.epsilon - period.epsilon_spent),
                    "delta_left": max(0.0, period.delta - period.delta_spent)})
    return row


def _iso(value: datetime) -> str:
    return jsondoc.iso_time(value) or ""
