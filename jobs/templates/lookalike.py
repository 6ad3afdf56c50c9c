"""Lookalike audience: platform consumers most like the merchant's best members (segment).

Two steps, both inside the sandbox (rendered here, run by :mod:`sandbox.prepare`):

1. The preparation trains a Spark MLlib logistic regression on quasi attributes of platform
   consumers (gender, birth year, VIP level, tenure, major cities): label 1 for consumers
   matched (by ``phone_hash``) to the merchant's members of the seed tier, 0 for all others.
   It then finds the score of the ``audience_size``-th best consumer who is not a member.
2. The released query is plain SQL: a linear score over quasi columns with the learned
   coefficients, thresholded, members excluded, delivered as ``segment_token(user_id)``.
   It is checked by ``policies.check`` like any segment job.

The SQL submitted (and checked at submission) has the same shape with zero weights and a
threshold no one reaches: if it ever ran without its preparation it would release nothing.
The learned coefficients stay in the sandbox and the audit trail; the submitter never sees
them.
"""

from __future__ import annotations

from typing import Any

from jobs.templates.base import (
    Param,
    ParamType,
    Template,
    sql_string,
    table_prefix,
)
from sandbox.prepare import SCORE, THRESHOLD, score_sql, sql_number
from yushan.models import JobKind

TIERS = ("gold", "silver", "bronze")
CITIES = ("Hangzhou", "Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Chengdu")
# (feature name, SQL over platform.consumers aliased c). Quasi columns only.
FEATURES: tuple[tuple[str, str], ...] = (
    ("female", "CASE WHEN c.gender = 'F' THEN 1.0 ELSE 0.0 END"),
    ("birth_decade", "(c.birth_year - 1980) / 10.0"),
    ("vip_level", "CAST(c.vip_level AS DOUBLE)"),
    ("tenure_5y", "(2026 - year(c.registered_at)) / 5.0"),
    *((f"city_{name.lower()}", f"CASE WHEN c.city = '{name}' THEN 1.0 ELSE 0.0 END") for name in CITIES),
)
MIN_SEEDS = 5
LABEL = "lookalike"


def final_sql(merchant: str, score: str, threshold: str) -> str:
    schema = table_prefix(merchant)
    return f"""
SELECT '{LABEL}' AS segment, segment_token(c.user_id) AS member
FROM platform.consumers c
LEFT ANTI JOIN (
  SELECT k.user_id FROM {schema}.members m JOIN platform.consumers k ON k.phone_hash = m.phone_hash
) known ON known.user_id = c.user_id
WHERE ({score}) >= {threshold}
""".strip()


def build(p: dict[str, Any], merchant: str) -> str:
    """The placeholder checked at submission: same shape, nobody reaches the threshold."""
    sql_string(p["seed_tier"], TIERS)  # validated here too: it is used by the preparation
    return final_sql(merchant, score_sql(0.0, {}, list(FEATURES)), sql_number(1.0))


def training_sql(merchant: str, seed_tier: str) -> str:
    """Features and label of every platform consumer (run inside the sandbox only)."""
    schema = table_prefix(merchant)
    features = ",\n  ".join(f"{expr} AS {name}" for name, expr in FEATURES)
    return f"""
SELECT c.user_id,
  {features},
  CASE WHEN seeds.phone_hash IS NOT NULL THEN 1.0 ELSE 0.0 END AS label,
  CASE WHEN members.phone_hash IS NOT NULL THEN 1 ELSE 0 END AS is_member
FROM platform.consumers c
LEFT JOIN (SELECT DISTINCT phone_hash FROM {schema}.members
           WHERE tier = {sql_string(seed_tier, TIERS)}) seeds ON seeds.phone_hash = c.phone_hash
LEFT JOIN (SELECT DISTINCT phone_hash FROM {schema}.members) members
       ON members.phone_hash = c.phone_hash
"""


def preparation(p: dict[str, Any], merchant: str) -> dict[str, Any]:
    """What the sandbox's lookalike step (:func:`sandbox.prepare.lookalike`) needs: all
    rendered here, from validated parameters, before the job reaches the sandbox."""
    return {
        "step": "lookalike",
        "training_sql": training_sql(merchant, p["seed_tier"]),
        "features": [list(f) for f in FEATURES],
        "min_seeds": MIN_SEEDS,
        "audience_size": int(p["audience_size"]),
        "final_sql": final_sql(merchant, SCORE, THRESHOLD),
    }


TEMPLATE = Template(
    name="lookalike",
    title={"en": "Lookalike audience", "zh": "相似人群扩展"},
    description={
        "en": "Platform consumers who are not yet your members and most resemble your best "
              "members (a logistic regression on quasi attributes), delivered as segment tokens.",
        "zh": "用逻辑回归在准标识属性上找出与您最优质会员最相似、但尚未成为会员的平台消费者，以人群令牌交付。",
    },
    kind=JobKind.SEGMENT,
    params=(
        Param("seed_tier", ParamType.CHOICE, {"en": "Best members (seed tier)", "zh": "种子会员等级"},
              "gold", choices=TIERS),
        Param("audience_size", ParamType.INT, {"en": "Audience size", "zh": "人群规模"}, 1000,
              minimum=50, maximum=1_000_000),
    ),
    build=build,
    needs=("members",),
    preparation=preparation,
)
