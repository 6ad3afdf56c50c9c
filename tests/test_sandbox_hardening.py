"""Each hardened setting of the one SparkSession factory, proven by the attack it stops.

Spark itself is the last line: these attacks are tried on the session directly, without
the policy engine in front (which denies them too, under P7)."""

from __future__ import annotations

import pytest

from sandbox.guard import ForbiddenQuery, assert_single_query
from sandbox.spark import session_conf
from yushan.spark_settings import HARDENED_CONF

pytestmark = pytest.mark.spark


def _fails(spark, sql: str) -> str:
    """Run ``sql``; return the error condition it fails with (the test fails if it runs)."""
    with pytest.raises(Exception) as info:  # noqa: B017 - any refusal will do; we check which
        spark.sql(sql).collect()
    exc = info.value
    getter = getattr(exc, "getCondition", None)
    return (getter() if callable(getter) else None) or type(exc).__name__


def test_sql_on_files_cannot_read_the_host(spark, tmp_path):
    secret = tmp_path / "secret"
    spark.range(3).write.parquet(str(secret))
    assert _fails(spark, f"SELECT * FROM parquet.`{secret}`") in (
        "UNSUPPORTED_DATASOURCE_FOR_DIRECT_QUERY", "TABLE_OR_VIEW_NOT_FOUND", "AnalysisException",
    )
    assert _fails(spark, "SELECT * FROM text.`/etc/hostname`")


@pytest.mark.parametrize("call", [
    "reflect('java.lang.System', 'getProperty', 'user.name')",
    "java_method('java.lang.System', 'getenv', 'HOME')",
    "try_reflect('java.lang.Runtime', 'getRuntime')",
    "input_file_name()",
    "raise_error('x')",
])
def test_functions_that_reach_outside_the_query_do_not_exist(spark, call):
    assert _fails(spark, f"SELECT {call}") == "UNRESOLVED_ROUTINE"


def test_read_files_table_function_does_not_exist(spark):
    assert _fails(spark, "SELECT * FROM read_files('/etc/hostname', format => 'text')") in (
        "UNRESOLVABLE_TABLE_VALUED_FUNCTION", "UNRESOLVED_ROUTINE",
    )


def test_settings_cannot_be_read_through_variable_substitution(spark):
    row = spark.sql("SELECT '${spark.driver.host}' AS v").collect()[0]
    assert row.v == "${spark.driver.host}"


def test_sql_scripts_with_several_statements_do_not_run(spark):
    assert _fails(spark, "BEGIN SELECT 1; SELECT 2; END")


def test_no_caller_can_turn_a_hardened_setting_off(spark_config):
    conf = session_conf(spark_config, "x", extra={
        "spark.sql.runSQLOnFiles": "true", "spark.eventLog.enabled": "true",
        "spark.sql.variable.substitute": "true", "spark.jars": "/tmp/evil.jar",
    })
    for key, value in HARDENED_CONF.items():
        assert conf[key] == value


def test_the_running_session_has_no_ui_event_log_or_hive(spark):
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.eventLog.enabled") == "false"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get("spark.sql.catalogImplementation") == "in-memory"


@pytest.mark.parametrize("sql", [
    "SELECT TRANSFORM(id) USING 'cat /etc/passwd' AS (x) FROM range(1)",
    "SELECT * FROM range(3) WHERE id IN (SELECT TRANSFORM(id) USING 'id' AS (x) FROM range(1))",
    "SET spark.sql.runSQLOnFiles=true",
    "ADD JAR /tmp/evil.jar",
    "CREATE TEMPORARY FUNCTION evil AS 'com.example.Evil'",
    "CREATE TEMPORARY VIEW v AS SELECT 1",
    "CREATE TABLE t (x INT) USING parquet LOCATION '/tmp/x'",
    "INSERT INTO platform.consumers SELECT * FROM platform.consumers",
    "DROP DATABASE platform CASCADE",
    "CACHE TABLE platform.consumers",
    "EXPLAIN SELECT 1",
    "SHOW TABLES",
    "DECLARE VARIABLE v INT DEFAULT 1",
])
def test_the_executor_guard_refuses_commands_and_scripts(spark, sql):
    with pytest.raises(ForbiddenQuery):
        assert_single_query(spark, sql)


def test_script_transform_is_refused_although_spark_would_run_it(spark):
    # Spark 4 runs TRANSFORM without Hive: only the guard stands between a job and a shell.
    sql = "SELECT TRANSFORM(id) USING 'cat' AS (x) FROM range(1)"
    with pytest.raises(ForbiddenQuery, match="ScriptTransformation"):
        assert_single_query(spark, sql)


def test_several_statements_do_not_parse(spark):
    with pytest.raises(Exception, match="PARSE_SYNTAX_ERROR|ParseException"):
        assert_single_query(spark, "SELECT 1; DROP DATABASE platform")


@pytest.mark.parametrize("sql", [
    "SELECT 1 AS x",
    "WITH a AS (SELECT id FROM range(10)) SELECT count(*) AS n FROM a",
    "(SELECT 1 AS x) UNION ALL (SELECT 2)",
    "SELECT * FROM VALUES (1), (2) AS t(x) ORDER BY x LIMIT 1",
    "SELECT id FROM range(5) WHERE id IN (SELECT id FROM range(2))",
])
def test_plain_queries_pass_the_guard(spark, sql):
    assert_single_query(spark, sql)
