"""Export policy: lineage over Spark's analyzed plan, rules P1-P9, explanations.

``check(spark, sql, kind, merchant, datasets)`` decides; ``decision.execute(spark)`` runs
the job with the k-threshold enforced inside Spark. See docs/policy.md.
"""

from policies.engine import DEFAULT_K, KINDS, MAX_SEGMENT_LABELS, Decision, check
from policies.model import Source, Violation

__all__ = ["DEFAULT_K", "KINDS", "MAX_SEGMENT_LABELS", "Decision", "Source", "Violation", "check"]
