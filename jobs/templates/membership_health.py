"""Membership health: members, points balance and points expiring soon, by tier and store.

Reads only the merchant's own ``members`` (no platform consumer data), so every group is
released as is. Expiring points are cumulative: ``expiring_30d`` is within 30 days of the
reference date, ``expiring_60d`` within 60 (including the first 30), and so on.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from jobs.templates.base import Param, ParamType, Template, sql_date, table_prefix
from yushan.models import JobKind

HORIZONS = (30, 60, 90)


def build(p: dict[str, Any], merchant: str) -> str:
    as_of = sql_date(p["as_of"])
    expiring = ",\n  ".join(
        f"sum(CASE WHEN points_expire_at >= {as_of} AND points_expire_at < date_add({as_of}, {days}) "
        f"THEN points ELSE 0 END) AS expiring_{days}d"
        for days in HORIZONS
    )
    return f"""
SELECT tier, home_store AS store,
  count(*) AS members,
  sum(points) AS points_balance,
  {expiring}
FROM {table_prefix(merchant)}.members
GROUP BY tier, home_store
ORDER BY tier, store
""".strip()



TEMPLATE = Template(
    name="membership_health",
    title={"en": "Membership health", "zh": "会员健康度"},
    description={
        "en": "Members, points balance and points expiring in the next 30/60/90 days, by tier "
              "and home store.",
        "zh": "按会员等级和所属门店统计会员数、积分余额以及未来 30/60/90 天将过期的积分。",
    },
    kind=JobKind.AGGREGATE,
    params=(
        Param("as_of", ParamType.DATE, {"en": "Reference date", "zh": "参考日期"}, date.today),
    ),
    build=build,
    needs=("members",),
)
