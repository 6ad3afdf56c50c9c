"""RFM tiers of the merchant's members, from their orders on the platform (segment job).

Each member is matched to a platform consumer by ``phone_hash``; recency, frequency and
monetary value come from that consumer's orders at this merchant in the look-back window.
Labels: ``champions`` (recent, frequent and high spend), ``loyal`` (frequent or high
spend), ``promising`` (recent), ``at_risk`` (bought, not recently), ``inactive`` (no order
in the window, including members not found on the platform). Members are the merchant's
own member keys; segments below k members are suppressed by the policy engine.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from jobs.templates.base import (
    Param,
    ParamType,
    Template,
    sql_date,
    sql_int,
    sql_number,
    table_prefix,
)
from yushan.models import JobKind

LABELS = ("champions", "loyal", "promising", "at_risk", "inactive")


def build(p: dict[str, Any], merchant: str) -> str:
    as_of = sql_date(p["as_of"])
    schema, merchant_id = table_prefix(merchant), f"'{merchant}'"  # a checked slug
    return f"""
WITH member_orders AS (
  SELECT m.member_id, o.amount, o.ordered_at
  FROM {schema}.members m
  LEFT JOIN platform.consumers c ON c.phone_hash = m.phone_hash
  LEFT JOIN platform.orders o
    ON o.user_id = c.user_id AND o.merchant_id = {merchant_id}
   AND o.ordered_at >= CAST(date_sub({as_of}, {sql_int(p["lookback_days"])}) AS TIMESTAMP)
   AND o.ordered_at < CAST({as_of} AS TIMESTAMP)
), rfm AS (
  SELECT member_id,
         datediff({as_of}, to_date(max(ordered_at))) AS recency_days,
         count(amount) AS frequency,
         coalesce(sum(amount), 0) AS monetary
  FROM member_orders
  GROUP BY member_id
)
SELECT CASE
         WHEN frequency = 0 THEN 'inactive'
         WHEN recency_days <= {sql_int(p["recent_days"])} AND frequency >= {sql_int(p["frequent_orders"])}
              AND monetary >= {sql_number(p["high_spend"])} THEN 'champions'
         WHEN frequency >= {sql_int(p["frequent_orders"])} OR monetary >= {sql_number(p["high_spend"])} THEN 'loyal'
         WHEN recency_days <= {sql_int(p["recent_days"])} THEN 'promising'
         ELSE 'at_risk'
       END AS segment,
       member_id AS member
FROM rfm
""".strip()


TEMPLATE = Template(
    name="rfm",
    title={"en": "RFM tiers of members", "zh": "会员 RFM 分层"},
    description={
        "en": "Layer your members by recency, frequency and spend of their platform orders "
              "at your shop; deliver the tiers as segments.",
        "zh": "按会员在平台上本店订单的最近一次购买、频次和金额分层，并作为人群包交付。",
    },
    kind=JobKind.SEGMENT,
    params=(
        Param("as_of", ParamType.DATE, {"en": "As of", "zh": "截止日期"}, date(2026, 11, 1)),
        Param("lookback_days", ParamType.INT, {"en": "Look-back window (days)", "zh": "回溯天数"},
              730, minimum=7, maximum=3650),
        Param("recent_days", ParamType.INT, {"en": "Recent if last order within (days)",
                                             "zh": "最近购买天数阈值"}, 90, minimum=1, maximum=3650),
        Param("frequent_orders", ParamType.INT, {"en": "Frequent from (orders)", "zh": "高频订单数"},
              3, minimum=1, maximum=10_000),
        Param("high_spend", ParamType.NUMBER, {"en": "High spend from (amount)", "zh": "高消费金额"},
              3000.0, minimum=0, maximum=1e12),
    ),
    build=build,
    needs=("members",),
)
