"""Lookalike audience: platform consumers most like the merchant's best members (segment).

Two steps, both inside the sandbox:

1. ``prepare`` trains a Spark MLlib logistic regression on quasi attributes of platform
   consumers (gender, birth year, VIP level, tenure, major cities): label 1 for consumers
   matched (by ``phone_hash``) to the merchant's members of the seed tier, 0 for all others.
   It then finds the score of the ``audience_size``-th best consumer who is not a member.
2. The released query is plain SQL: a linear score over quasi columns with the learned
   coefficients, thresholded, members excluded, delivered as ``segment_token(user_id)``.
   It is checked by ``policies.check`` like any segment job.

The SQL submitted (and checked at submission) has the same shape with zero weights and a
threshold no one reaches: if it ever ran without its prepare step it would release nothing.
The learned coefficients stay in the sandbox and the audit trail; the submitter never sees
them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from jobs.templates import charts
from jobs.templates.registry import (
    Param,
    ParamType,
    Template,
    sql_number,
    sql_string,
    table_prefix,
)
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


class TemplateError(Exception):
    """The template cannot run on this merchant's data (fixed message, no values)."""


def score_sql(intercept: float, weights: dict[str, float]) -> str:
    terms = [sql_number(intercept)]
    terms += [f"{sql_number(weights.get(name, 0.0))} * ({expr})" for name, expr in FEATURES]
    return " + ".join(terms)


def final_sql(merchant: str, intercept: float, weights: dict[str, float], threshold: float) -> str:
    schema = table_prefix(merchant)
    return f"""
SELECT '{LABEL}' AS segment, segment_token(c.user_id) AS member
FROM platform.consumers c
LEFT ANTI JOIN (
  SELECT k.user_id FROM {schema}.members m JOIN platform.consumers k ON k.phone_hash = m.phone_hash
) known ON known.user_id = c.user_id
WHERE ({score_sql(intercept, weights)}) >= {sql_number(threshold)}
""".strip()


def build(p: dict[str, Any], merchant: str) -> str:
    """The placeholder checked at submission: same shape, nobody reaches the threshold."""
    sql_string(p["seed_tier"], TIERS)  # validated here too: it is used by prepare
    return final_sql(merchant, 0.0, {}, 1.0)


@contextmanager
def mllib_label_checks(spark):
    """Lend ``raise_error`` to MLlib while a model trains, then remove it again.

    MLlib's estimators validate labels with ``raise_error``, which the hardened session
    removes so that job SQL cannot turn data into error text (sandbox/spark.py). Only this
    trusted step runs meanwhile: the executor runs one job at a time, under the catalog
    lock, and the job's own SQL is checked and run after the function is gone again.
    """
    jvm = spark._jvm
    ident = jvm.org.apache.spark.sql.catalyst.FunctionIdentifier(
        "raise_error", jvm.scala.Some("builtin"), jvm.scala.Some("system"))
    builtin = jvm.org.apache.spark.sql.catalyst.analysis.FunctionRegistry.builtin()
    registry = spark._jsparkSession.sessionState().functionRegistry()
    registry.registerFunction(ident, builtin.lookupFunction(ident).get(),
                              builtin.lookupFunctionBuilder(ident).get())
    try:
        yield
    finally:
        registry.dropFunction(ident)


def training_frame(spark, merchant: str, seed_tier: str):
    """Features and label of every platform consumer (inside the sandbox only)."""
    schema = table_prefix(merchant)
    features = ",\n  ".join(f"{expr} AS {name}" for name, expr in FEATURES)
    return spark.sql(f"""
SELECT c.user_id,
  {features},
  CASE WHEN seeds.phone_hash IS NOT NULL THEN 1.0 ELSE 0.0 END AS label,
  CASE WHEN members.phone_hash IS NOT NULL THEN 1 ELSE 0 END AS is_member
FROM platform.consumers c
LEFT JOIN (SELECT DISTINCT phone_hash FROM {schema}.members
           WHERE tier = {sql_string(seed_tier, TIERS)}) seeds ON seeds.phone_hash = c.phone_hash
LEFT JOIN (SELECT DISTINCT phone_hash FROM {schema}.members) members
       ON members.phone_hash = c.phone_hash
""")


def train(spark, merchant: str, seed_tier: str) -> tuple[float, dict[str, float], Any]:
    """(intercept, weights by feature, the training frame) of the lookalike model."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    frame = training_frame(spark, merchant, seed_tier).cache()
    seeds = frame.filter("label = 1.0").count()
    if seeds < MIN_SEEDS:
        raise TemplateError(f"fewer than {MIN_SEEDS} seed members were found on the platform")
    names = [name for name, _ in FEATURES]
    assembled = VectorAssembler(inputCols=names, outputCol="features").transform(frame)
    with mllib_label_checks(spark):
        model = LogisticRegression(maxIter=100, regParam=0.01, featuresCol="features",
                                   labelCol="label").fit(assembled)
    weights = dict(zip(names, (float(w) for w in model.coefficients), strict=True))
    return float(model.intercept), weights, frame


def prepare(spark, p: dict[str, Any], merchant: str, sql: str) -> str:
    """Train, pick the threshold that yields ``audience_size`` non-members, render SQL."""
    from pyspark.sql import functions as F

    intercept, weights, frame = train(spark, merchant, p["seed_tier"])
    try:
        score = F.lit(intercept)
        for name, _ in FEATURES:
            score = score + F.lit(weights[name]) * F.col(name)
        best = (frame.filter("is_member = 0").select(score.alias("score"))
                .orderBy(F.desc("score")).limit(int(p["audience_size"])))
        threshold = best.agg(F.min("score")).first()[0]
    finally:
        frame.unpersist()
    if threshold is None:
        raise TemplateError("no platform consumer is left to score")
    return final_sql(merchant, intercept, weights, float(threshold))


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
    chart=lambda columns, rows: charts.segment_sizes(rows),
    needs=("members",),
    prepare=prepare,
)
