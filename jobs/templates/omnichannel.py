"""Omnichannel: online (platform orders) vs offline (store sales) spend by member tier.

Members are matched to platform consumers by ``phone_hash``; only matched members count,
so that both channels describe the same people. Reads platform consumer data: every
released tier, and every value in it, draws on at least k distinct consumers (P3).
"""

from __future__ import annotations

from typing import Any

from jobs.templates.base import PERIOD_PARAMS, Template, sql_date, table_prefix
from yushan.models import JobKind

# One member's offline spend in the period counts up to this much. Which members matched a
# consumer is consumer data, so in dp mode every summed value needs per-consumer bounds
# (policy D2); the query declares them with least/greatest.
OFFLINE_SPEND_CAP = 100000


def build(p: dict[str, Any], merchant: str) -> str:
    schema = table_prefix(merchant)
    since = f"CAST({sql_date(p['since'])} AS TIMESTAMP)"
    until = f"CAST(date_add({sql_date(p['until'])}, 1) AS TIMESTAMP)"
    return f"""
WITH matched AS (
  SELECT m.member_id, m.tier, c.user_id
  FROM {schema}.members m
  JOIN platform.consumers c ON c.phone_hash = m.phone_hash
), online AS (
  SELECT user_id, sum(amount) AS spend
  FROM platform.orders
  WHERE merchant_id = '{merchant}' AND ordered_at >= {since} AND ordered_at < {until}
  GROUP BY user_id
), offline AS (
  SELECT member_id, sum(amount) AS spend
  FROM {schema}.store_sales
  WHERE sold_at >= {since} AND sold_at < {until}
  GROUP BY member_id
)
SELECT x.tier,
  count(DISTINCT x.user_id) AS members,
  count(online.spend) AS online_buyers,
  sum(online.spend) AS online_spend,
  count(offline.member_id) AS offline_buyers,
  sum(least(greatest(offline.spend, 0), {OFFLINE_SPEND_CAP})) AS offline_spend
FROM matched x
LEFT JOIN online ON online.user_id = x.user_id
LEFT JOIN offline ON offline.member_id = x.member_id
GROUP BY x.tier
ORDER BY x.tier
""".strip()



TEMPLATE = Template(
    name="omnichannel",
    title={"en": "Omnichannel spend by tier", "zh": "全渠道消费（按会员等级）"},
    description={
        "en": "Online spend (platform orders at your shop) against offline spend (your store "
              "sales) of the same members, by tier.",
        "zh": "同一批会员按等级的线上（平台本店订单）与线下（门店销售）消费对比。",
    },
    kind=JobKind.AGGREGATE,
    params=PERIOD_PARAMS,
    build=build,
    needs=("members", "store_sales"),
)
