"""P8: a runtime error reaches the submitter as its class and a generic sentence; the
full text, with the data value in it, is kept for the audit trail only."""

from __future__ import annotations

import pytest

from sandbox.redact import redact

pytestmark = pytest.mark.spark

SECRET = "13800138000-secret"


def _error(spark, sql: str) -> BaseException:
    try:
        spark.sql(sql).collect()
    except Exception as exc:  # noqa: BLE001
        return exc
    pytest.fail("the query was expected to fail")


@pytest.mark.parametrize("sql, expected", [
    (f"SELECT CAST(phone AS INT) FROM VALUES ('{SECRET}') AS t(phone)", "CAST_INVALID_INPUT"),
    ("SELECT 1 / (x - 7) FROM VALUES (7) AS t(x)", "DIVIDE_BY_ZERO"),
    ("SELECT CAST(x AS TINYINT) + CAST(100 AS TINYINT) FROM VALUES (127) AS t(x)", "ARITHMETIC_OVERFLOW"),
])
def test_runtime_errors_are_reduced_to_class_and_generic_message(spark, sql, expected):
    err = redact(_error(spark, sql))
    public = err.public()
    assert expected in public["class"]
    assert public["message"] != "the job failed while running; the details are in the audit trail"
    assert set(public) == {"class", "message"}
    assert SECRET not in public["message"] and "127" not in public["message"]
    assert "7" not in public["message"]


def test_the_full_text_keeps_the_value_for_the_audit_trail(spark):
    err = redact(_error(spark, f"SELECT CAST(p AS INT) FROM VALUES ('{SECRET}') AS t(p)"))
    assert SECRET in err.full_text
    assert SECRET not in str(err.public())


def test_python_errors_show_their_type_only():
    err = redact(ValueError(f"bad value {SECRET}"))
    assert err.public()["class"] == "ValueError"
    assert SECRET not in err.public()["message"]
