"""Cross-store overlap: how many members of one store also bought at another (aggregate).

From the merchant's own ``store_sales`` (no platform data). For each ordered pair of
stores (a, b): members who bought at both in the period, store a's members, and the share
of a's members also seen at b. The diagonal is each store's own member count.
"""

from __future__ import annotations

from typing import Any

from jobs.templates.base import PERIOD_PARAMS, Template, sql_date, table_prefix
from yushan.models import JobKind


def build(p: dict[str, Any], merchant: str) -> str:
    schema = table_prefix(merchant)
    return f"""
WITH visits AS (
  SELECT DISTINCT member_id, store_id
  FROM {schema}.store_sales
  WHERE sold_at >= CAST({sql_date(p["since"])} AS TIMESTAMP)
    AND sold_at < CAST(date_add({sql_date(p["until"])}, 1) AS TIMESTAMP)
), store_members AS (
  SELECT store_id, count(*) AS members FROM visits GROUP BY store_id
)
SELECT a.store_id AS store_a, b.store_id AS store_b,
  count(*) AS shared_members,
  max(s.members) AS members_a,
  round(count(*) / max(s.members), 4) AS share_of_a
FROM visits a
JOIN visits b ON b.member_id = a.member_id
JOIN store_members s ON s.store_id = a.store_id
GROUP BY a.store_id, b.store_id
ORDER BY store_a, store_b
""".strip()



TEMPLATE = Template(
    name="store_overlap",
    title={"en": "Cross-store overlap", "zh": "跨门店重叠"},
    description={
        "en": "Which of your stores share customers: members who bought at both stores of "
              "each pair in the period.",
        "zh": "各门店之间的共同顾客：期间内在两家门店都有消费的会员数及占比。",
    },
    kind=JobKind.AGGREGATE,
    params=PERIOD_PARAMS,
    build=build,
    needs=("store_sales",),
)
