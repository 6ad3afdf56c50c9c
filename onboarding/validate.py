"""Validation on Spark with Great Expectations 1.x.

The uploaded file is parsed once into a *staging* Parquet (private workspace) holding the
typed columns, the line number ``_line`` and one flag column per problem Spark can see while
parsing (``_ragged``: wrong number of fields; ``_bad_<i>``: value of column *i* does not
parse as its declared type; 1 when the row has the problem, null otherwise). Every check is
then a Great Expectations expectation run on that staging data, so that one engine decides
and one report format describes the outcome. Failed checks are run a second time with
GX's ``unexpected_index_column_names`` to name their first rows; the values GX returns
alongside are dropped on the spot.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onboarding.csv_reader import MAX_LINE_BYTES, CsvFile
from onboarding.parquet_reader import LINE_COLUMN, ParquetUpload
from onboarding.report import FIRST_ROWS, CheckResult, FileRejected, ValidationReport
from onboarding.schema import HEX64_COLUMNS, HEX64_REGEX, ColumnSpec, UploadSchema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# No usage statistics leave the platform (GX would otherwise report to its vendor).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

RAGGED = "_ragged"
CORRUPT = "_corrupt"


def bad_flag(index: int) -> str:
    return f"_bad_{index}"


# ------------------------------------------------------------------ header


def match_columns(found: list[str], schema: UploadSchema) -> list[ColumnSpec]:
    """The declared columns in the file's order; every mismatch is a rejection."""
    lowered = [f.lower() for f in found]
    for index, name in enumerate(lowered):
        if name in lowered[:index]:
            raise FileRejected("header", "The column appears twice in the file.",
                               column=found[index], first_rows=(1,))
    for spec in schema.columns:
        if spec.name.lower() not in lowered:
            raise FileRejected("header", "A declared column is missing from the file.",
                               column=spec.name, first_rows=(1,))
    for name in found:
        if schema.column(name) is None:
            raise FileRejected("header", "The file has a column the schema does not declare.",
                               column=name if _printable(name) else None, first_rows=(1,))
    return [schema.column(name) for name in found]  # type: ignore[misc]


def _printable(name: str) -> bool:
    # A header cell that is not a plausible column name may be a data row: do not echo it.
    from onboarding.schema import COLUMN_NAME

    return bool(COLUMN_NAME.match(name))


# ------------------------------------------------------------------ staging


def _typed(raw_col, spec: ColumnSpec, is_key: bool):
    from pyspark.sql import functions as F

    if is_key:
        # An empty or blank member key is a missing one.
        raw_col = F.nullif(F.trim(raw_col.cast("string")), F.lit(""))
    if spec.type == "string":
        return raw_col.cast("string")
    return raw_col.try_cast(spec.type)


def _staging_columns(df: DataFrame, raws: list[tuple[ColumnSpec, str]], schema: UploadSchema,
                     ragged) -> list:
    from pyspark.sql import functions as F

    out = [F.col(LINE_COLUMN), ragged.alias(RAGGED)]
    for index, (spec, raw_name) in enumerate(raws):
        raw = F.col(f"`{raw_name}`")
        typed = _typed(raw, spec, spec.name == schema.member_key)
        out.append(typed.alias(spec.name))
        if spec.type != "string":
            failed = raw.isNotNull() & typed.isNull() & ragged.isNull()
            if spec.name == schema.member_key:
                failed = failed & (F.trim(raw.cast("string")) != F.lit(""))
            out.append(F.when(failed, F.lit(1)).alias(bad_flag(index)))
    return out


def stage_csv(spark: SparkSession, upload: CsvFile, schema: UploadSchema, staging: Path) -> list[ColumnSpec]:
    """Parse the numbered CSV once into the staging Parquet; return columns in file order."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    specs = match_columns(upload.header, schema)
    raw_names = [f"_raw_{i}" for i in range(len(specs))]
    read_schema = StructType(
        [StructField(LINE_COLUMN, LongType())]
        + [StructField(name, StringType()) for name in raw_names]
        + [StructField(CORRUPT, StringType())]
    )
    df = (
        spark.read.schema(read_schema)
        .option("header", "false")
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("encoding", "UTF-8")
        .option("escape", '"')
        # Multi-line mode reads a file in one piece: only when a quoted field needs it.
        .option("multiLine", "true" if upload.multiline else "false")
        # Records end with "\n" in the numbered file; a "\r\n" inside a quoted field must
        # not make Spark take that for the separator.
        .option("lineSep", "\n")
        .option("maxColumns", str(max(20480, len(specs) + 16)))
        .option("maxCharsPerColumn", str(MAX_LINE_BYTES))
        .csv(str(upload.path))
    )
    # A row with too few or too many fields is malformed: Spark keeps its text in _corrupt,
    # which is reduced to a flag here and never stored.
    ragged = F.when(F.col(CORRUPT).isNotNull(), F.lit(1))
    df.select(*_staging_columns(df, list(zip(specs, raw_names, strict=True)), schema, ragged)) \
        .write.mode("error").parquet(str(staging))
    return specs


def stage_parquet(spark: SparkSession, upload: ParquetUpload, schema: UploadSchema,
                  staging: Path) -> list[ColumnSpec]:
    """Cast the numbered Parquet's columns to their declared types into the staging Parquet."""
    from pyspark.sql import functions as F

    specs = match_columns(upload.columns, schema)
    df = spark.read.parquet(str(upload.path))
    ragged = F.lit(None).cast("int")
    df.select(*_staging_columns(df, list(zip(specs, upload.columns, strict=True)), schema, ragged)) \
        .write.mode("error").parquet(str(staging))
    return specs


# ------------------------------------------------------------------ expectations


@dataclass(frozen=True)
class PlannedCheck:
    """A check of the report and the Great Expectations expectation that decides it."""

    check: str
    column: str | None
    message: str
    expectation: Any


def plan_checks(schema: UploadSchema, file_columns: list[ColumnSpec], file_format: str) -> list[PlannedCheck]:
    """The checks an upload must pass, as data (order = order in the report)."""
    import great_expectations as gx

    E = gx.expectations
    plan: list[PlannedCheck] = []
    if file_format == "csv":
        plan.append(PlannedCheck("well_formed", None, "The row does not have the declared "
                                 "number of fields (or its quoting is broken).",
                                 E.ExpectColumnValuesToBeNull(column=RAGGED)))
    for index, spec in enumerate(file_columns):
        if spec.type != "string":
            plan.append(PlannedCheck("type", spec.name, f"The value is not a valid {spec.type}.",
                                     E.ExpectColumnValuesToBeNull(column=bad_flag(index))))
    key = schema.member_key
    plan.append(PlannedCheck("member_key_present", key, "The member key is missing.",
                             E.ExpectColumnValuesToNotBeNull(column=key)))
    plan.append(PlannedCheck("member_key_unique", key, "The member key is not unique.",
                             E.ExpectColumnValuesToBeUnique(column=key)))
    for spec in schema.columns:
        if spec.name.lower() in HEX64_COLUMNS:
            plan.append(PlannedCheck("hex64", spec.name, "The value is not 64 lowercase hex digits "
                                     "(a SHA-256 digest).",
                                     E.ExpectColumnValuesToMatchRegex(column=spec.name,
                                                                      regex=HEX64_REGEX)))
            # A column that links members to consumers: two members linked to one consumer
            # would let a segment job count that consumer several times (policy, "Segment
            # jobs"), e.g. 50 copies of one phone_hash passing k alone.
            plan.append(PlannedCheck("consumer_link_unique", spec.name,
                                     "Two or more rows link to the same consumer; each row must "
                                     "link to a different one.",
                                     E.ExpectColumnValuesToBeUnique(column=spec.name)))
        plan.extend(_optional_checks(spec, E))
    return plan


def _optional_checks(spec: ColumnSpec, E) -> Iterable[PlannedCheck]:
    expect = spec.expect
    if expect.get("not_null"):
        yield PlannedCheck("not_null", spec.name, "The value is missing.",
                           E.ExpectColumnValuesToNotBeNull(column=spec.name))
    if expect.get("unique"):
        yield PlannedCheck("unique", spec.name, "The value is not unique.",
                           E.ExpectColumnValuesToBeUnique(column=spec.name))
    if "between" in expect:
        low, high = expect["between"]
        yield PlannedCheck("between", spec.name, f"The value is outside [{low}, {high}].",
                           E.ExpectColumnValuesToBeBetween(column=spec.name, min_value=low,
                                                           max_value=high))
    if "regex" in expect:
        yield PlannedCheck("regex", spec.name, "The value does not match the declared pattern.",
                           E.ExpectColumnValuesToMatchRegex(column=spec.name, regex=expect["regex"]))
    if "in_set" in expect:
        yield PlannedCheck("in_set", spec.name, "The value is not one of the declared values.",
                           E.ExpectColumnValuesToBeInSet(column=spec.name,
                                                         value_set=expect["in_set"]))


class _GxRunner:
    """One ephemeral GX context per process; validations run one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch_definition = None

    def _definition(self):
        if self._batch_definition is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            # Progress bars would go to the server's stderr for every upload.
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            source = context.data_sources.add_spark(name="yushan_onboarding")
            asset = source.add_dataframe_asset(name="staging")
            self._batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        return self._batch_definition

    def validate(self, df: DataFrame, expectations: list[Any], *, with_rows: bool,
                 index_column: str | None = LINE_COLUMN):
        import great_expectations as gx

        with self._lock:
            batch = self._definition().get_batch(batch_parameters={"dataframe": df})
            # Fresh copies: a suite takes ownership of (and ids) the expectations it holds.
            suite = gx.ExpectationSuite(name="upload", expectations=[e.copy() for e in expectations])
            result_format: dict[str, Any] = {"result_format": "BASIC"}
            if with_rows and index_column:
                result_format = {"result_format": "SUMMARY",
                                 "unexpected_index_column_names": [index_column],
                                 "partial_unexpected_count": FIRST_ROWS,
                                 "return_unexpected_index_query": False}
            return batch.validate(suite, result_format=result_format)


_runner = _GxRunner()


def _row_numbers(result: dict[str, Any]) -> tuple[int, ...]:
    # Entries look like {"_line": 7, "<column>": <value>}: keep the number, drop the value.
    numbers = []
    for entry in result.get("partial_unexpected_index_list") or []:
        if isinstance(entry, dict) and isinstance(entry.get(LINE_COLUMN), int):
            numbers.append(entry[LINE_COLUMN])
    return tuple(sorted(set(numbers))[:FIRST_ROWS])


def run_checks(spark: SparkSession, staging: Path, plan: list[PlannedCheck], rows: int,
               file_format: str, encoding: str | None) -> ValidationReport:
    """Run every planned check with Great Expectations; return the value-free report."""
    from pyspark import StorageLevel

    # Every expectation is a separate Spark pass over the staging data: cache it once
    # (blocks spilled to disk are encrypted, see sandbox.spark) and release it afterwards.
    df = spark.read.parquet(str(staging)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        results = _runner.validate(df, [p.expectation for p in plan], with_rows=False)
        outcome = _by_check(plan, results)
        failed = [p for p in plan if not outcome[id(p)]["success"]]
        rows_of: dict[int, tuple[int, ...]] = {}
        if failed:
            detailed = _by_check(failed, _runner.validate(df, [p.expectation for p in failed],
                                                          with_rows=True))
            rows_of = {key: _row_numbers(value["result"]) for key, value in detailed.items()}
    finally:
        df.unpersist(blocking=True)
    report = ValidationReport(rows=rows, file_format=file_format, encoding=encoding)
    for planned in plan:
        found = outcome[id(planned)]
        count = found["result"].get("unexpected_count")
        report.checks.append(CheckResult(
            check=planned.check, column=planned.column, passed=bool(found["success"]),
            message="passed" if found["success"] else planned.message,
            expectation=planned.expectation.expectation_type,
            failed_rows=int(count) if count is not None else None,
            first_rows=rows_of.get(id(planned), ()),
        ))
    return report


def _by_check(plan: list[PlannedCheck], results) -> dict[int, dict[str, Any]]:
    """Pair each planned check with its GX result (matched on type and keyword arguments)."""
    remaining = list(results.results)
    paired: dict[int, dict[str, Any]] = {}
    for planned in plan:
        config = planned.expectation.configuration
        match = next(
            (r for r in remaining
             if r.expectation_config.type == config.type
             and r.expectation_config.kwargs.get("column") == config.kwargs.get("column")),
            None,
        )
        if match is None:
            raise RuntimeError(f"Great Expectations returned no result for {config.type}")
        remaining.remove(match)
        if match.exception_info and match.exception_info.get("raised_exception"):
            # The message may quote values: log the class of the failure only.
            log.error("expectation %s on %s raised", config.type, planned.column)
            raise RuntimeError("a validation check could not run")
        paired[id(planned)] = {"success": bool(match.success), "result": dict(match.result or {})}
    return paired
