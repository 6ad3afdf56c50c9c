"""Preparation steps a trusted template runs inside the sandbox before its final query.

A template (``jobs/templates``) renders everything before the job reaches the sandbox: its
placeholder SQL (checked at submission) and, when it has a preparation step, a plain
description of it (``{"step": ..., ...}``, carried in the job's request). Here the step runs
on the job's catalog, with merchant data decrypted in the workspace, and yields the final
query, which the executor checks again like any query. Nothing here imports
the templates: the sandbox knows its steps, not who asks for them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

# Placeholders of a final query that the lookalike step fills in.
SCORE = "/*yushan:score*/"
THRESHOLD = "/*yushan:threshold*/"


class TemplateError(Exception):
    """The template cannot run on this merchant's data (fixed message, no values)."""


def sql_number(value: float) -> str:
    """A number as a SQL literal: repr of a float is exact, never quotes or identifiers."""
    return repr(float(value))


def score_sql(intercept: float, weights: dict[str, float], features: list[tuple[str, str]]) -> str:
    """``intercept + w1 * (expr1) + ...`` over the features' SQL expressions."""
    terms = [sql_number(intercept)]
    terms += [f"{sql_number(weights.get(name, 0.0))} * ({expr})" for name, expr in features]
    return " + ".join(terms)


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


def lookalike(spark, spec: dict[str, Any]) -> str:
    """Train a logistic regression (label 1: seed members), find the score of the
    ``audience_size``-th best non-member, and fill both into the final query.

    ``spec``: ``training_sql`` (features, ``label``, ``is_member``), ``features``
    (``[[name, sql expression]]``), ``min_seeds``, ``audience_size``, ``final_sql`` with
    :data:`SCORE` and :data:`THRESHOLD` in it.
    """
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    from policies.sparkplan import parse_query

    features = [(str(name), str(expr)) for name, expr in spec["features"]]
    names = [name for name, _ in features]
    parse_query(spark, spec["training_sql"])  # the template's own text passes the one gate too
    frame = spark.sql(spec["training_sql"]).cache()
    try:
        if frame.filter("label = 1.0").count() < int(spec["min_seeds"]):
            raise TemplateError(f"fewer than {spec['min_seeds']} seed members were found on the platform")
        assembled = VectorAssembler(inputCols=names, outputCol="features").transform(frame)
        with mllib_label_checks(spark):
            model = LogisticRegression(maxIter=100, regParam=0.01, featuresCol="features",
                                       labelCol="label").fit(assembled)
        weights = dict(zip(names, (float(w) for w in model.coefficients), strict=True))
        intercept = float(model.intercept)
        score = F.lit(intercept)
        for name in names:
            score = score + F.lit(weights[name]) * F.col(name)
        best = (frame.filter("is_member = 0").select(score.alias("score"))
                .orderBy(F.desc("score")).limit(int(spec["audience_size"])))
        threshold = best.agg(F.min("score")).first()[0]
    finally:
        frame.unpersist()
    if threshold is None:
        raise TemplateError("no platform consumer is left to score")
    return (spec["final_sql"].replace(SCORE, score_sql(intercept, weights, features))
            .replace(THRESHOLD, sql_number(float(threshold))))


STEPS: dict[str, Callable[[Any, dict[str, Any]], str]] = {"lookalike": lookalike}


def prepared_sql(spark, spec: dict[str, Any]) -> str:
    """The final query of a template job with a preparation step (inside the sandbox)."""
    step = STEPS.get(str(spec.get("step")))
    if step is None:
        raise TemplateError("unknown preparation step")
    return step(spark, spec)
