"""Each hardened setting of the one SparkSession factory, proven by the attack it stops.

Spark itself is the last line: these attacks are tried on the session directly, without
the policy engine in front (which denies them too, under P7)."""

from __future__ import annotations

import pytest

from policies.sparkplan import PlanRefused, QueryError, parse_query
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
    "SELECT TRANSFORM(x) USING 'cat /etc/passwd' AS (y) FROM VALUES (1) AS t(x)",
    "SELECT * FROM VALUES (1) AS t(x) WHERE x IN (SELECT TRANSFORM(x) USING 'id' AS (y) FROM VALUES (1) AS u(x))",
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
    "BEGIN SELECT 1; END",
    "SELECT 1; DROP DATABASE platform",
    "SELECT 1;\n-- the next one\nDROP DATABASE platform",
    "SELECT * FROM range(3)",
    "SELECT * FROM read_files('/etc/passwd')",
    "SELECT * FROM parquet.`/etc/passwd`",
    "SELECT * FROM `csv`.`file:///etc/passwd`",
    "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
    "SELECT `JAVA_METHOD`('java.lang.System', 'getenv', 'HOME')",
    "SELECT system.builtin.raise_error('x')",
    "SELECT x FROM VALUES (1) AS t(x) WHERE input_file_name() = ''",
])
def test_the_one_gate_refuses_everything_but_a_plain_query(spark, sql):
    """policies.sparkplan.parse_query is the only way a job's text reaches Spark."""
    with pytest.raises(PlanRefused) as refused:
        parse_query(spark, sql)
    assert refused.value.violation.rule == "P7"
    assert refused.value.violation.suggestion


def test_script_transform_is_refused_although_spark_would_run_it(spark):
    # Spark 4 runs TRANSFORM without Hive: only the gate stands between a job and a shell.
    sql = "SELECT TRANSFORM(x) USING 'cat' AS (y) FROM VALUES (1) AS t(x)"
    with pytest.raises(PlanRefused, match="TRANSFORM"):
        parse_query(spark, sql)


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT ';' a b c", "SELECT (1"])
def test_a_syntax_error_is_reported_as_such_not_as_a_second_statement(spark, sql):
    with pytest.raises(QueryError) as error:
        parse_query(spark, sql)
    assert error.value.error_class == "PARSE_SYNTAX_ERROR"
    assert error.value.position


@pytest.mark.parametrize("sql", [
    "SELECT 1 AS x",
    "SELECT 1 AS x;",
    "WITH a AS (SELECT x FROM VALUES (1), (2) AS t(x)) SELECT count(*) AS n FROM a",
    "(SELECT 1 AS x) UNION ALL (SELECT 2)",
    "SELECT * FROM VALUES (1), (2) AS t(x) ORDER BY x LIMIT 1",
    "SELECT 'reflect(' AS x, '/etc/passwd' AS y",
    "SELECT x FROM VALUES (1) AS t(x) WHERE x IN (SELECT 1)",
])
def test_plain_queries_pass_the_gate(spark, sql):
    parse_query(spark, sql)


def test_queries_are_parsed_with_this_sessions_settings_whatever_the_thread_holds(spark):
    """P8: Spark's parser reads the JVM thread's active session; with another one there
    (ANSI on, Spark's default), ``1 / 0`` would fail on a value instead of giving NULL."""
    from policies.sparkplan import analyze

    jvm_session = spark._jvm.org.apache.spark.sql.SparkSession
    other = spark._jsparkSession.newSession()
    other.conf().set("spark.sql.ansi.enabled", "true")
    jvm_session.setActiveSession(other)
    try:
        query = analyze(spark, "SELECT 1 / (x - x) AS d FROM VALUES (1) AS t(x)")
        rows = spark._jvm.org.apache.spark.sql.classic.Dataset.ofRows(
            spark._jsparkSession, query.jplan).collectAsList()
        assert rows.size() == 1 and rows.get(0).isNullAt(0)
    finally:
        jvm_session.setActiveSession(spark._jsparkSession)
