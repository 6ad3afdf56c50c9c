"""``segment_token(entity)``: the one platform function a job may call.

A keyed pseudonym per merchant: HMAC-SHA256(key, str(entity)) as lowercase hex, with the
merchant's key from ``KeyStore.segment_token_key(merchant)``. Stable for one merchant,
different across merchants, not reversible without the key (which never leaves the
platform). It is built from Spark built-ins (sha2/unhex/concat over precomputed inner and
outer pads) so it runs inside the JVM at full speed, and registered as a temporary SQL
function. The policy recognises it in the analyzed plan by its outer pad, which only the
platform knows; any other function, user-defined or not, is denied.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import weakref

from pyspark.sql import SparkSession

from policies.jvm import jvm_constant
from policies.tree import Node

FUNCTION_NAME = "segment_token"
_BLOCK = 64  # SHA-256 block size

_lock = threading.Lock()
# SparkSession -> (merchant, outer-pad hex) of the function currently registered in it.
_registered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pads(key: bytes) -> tuple[str, str]:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = bytes(b ^ 0x36 for b in key).hex()
    outer = bytes(b ^ 0x5C for b in key).hex()
    return inner, outer


def token_sql(key: bytes, argument: str) -> str:
    """The SQL expression computing HMAC-SHA256(key, string(argument)) as hex."""
    inner, outer = _pads(key)
    message = f"CAST(CAST({argument} AS STRING) AS BINARY)"
    return (
        f"sha2(concat(unhex('{outer}'), unhex(sha2(concat(unhex('{inner}'), {message}), 256))), 256)"
    )


def segment_token_py(key: bytes, entity: object) -> str:
    """The same pseudonym computed in Python (tests, support tooling)."""
    return hmac.new(key, str(entity).encode(), hashlib.sha256).hexdigest()


def register_segment_token(spark: SparkSession, key: bytes, merchant: str | None = None) -> None:
    """Register ``segment_token(x)`` in ``spark`` with ``key`` (one merchant's key).

    Call it (under the catalog lock) before checking and running a job for ``merchant``.
    """
    _, outer = _pads(key)
    with _lock:
        if _registered.get(spark) == (merchant, outer) and _still_registered(spark):
            return  # already this merchant's function (jobs cannot change functions)
        # The DDL is ours, never the submitter's: the key goes in as a literal.
        spark.sql(
            f"CREATE OR REPLACE TEMPORARY FUNCTION {FUNCTION_NAME}(x STRING) RETURNS STRING "
            f"RETURN {token_sql(key, 'x')}"
        )
        _registered[spark] = (merchant, outer)


def _still_registered(spark: SparkSession) -> bool:
    """Whether the session still has a temporary ``segment_token`` (one JVM call)."""
    ident = jvm_constant(spark, "FunctionIdentifier:" + FUNCTION_NAME, lambda jvm:
                         jvm.org.apache.spark.sql.catalyst.FunctionIdentifier.apply(FUNCTION_NAME))
    return bool(spark._jsparkSession.sessionState().catalog().isTemporaryFunction(ident))


def unregister_segment_token(spark: SparkSession) -> None:
    with _lock:
        spark.sql(f"DROP TEMPORARY FUNCTION IF EXISTS {FUNCTION_NAME}")
        _registered.pop(spark, None)


def platform_token_matcher(spark: SparkSession, merchant: str):
    """A predicate telling the platform's segment_token (for ``merchant``) from anything else."""
    with _lock:
        merchant_and_pad = _registered.get(spark)
    if merchant_and_pad is None:
        return lambda node: False
    registered_for, outer = merchant_and_pad
    if registered_for is not None and registered_for != merchant:
        return lambda node: False

    def is_platform_token(node: Node) -> bool:
        inputs = node.exprs.get("inputs", [])
        if len(inputs) != 1 or not node.children:
            return False
        literals = {n.fields.get("value") for n in node.children[0].walk() if n.cls == "Literal"}
        return outer in literals

    return is_platform_token
