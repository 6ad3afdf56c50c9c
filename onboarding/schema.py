"""The schema a merchant declares with an upload (api.md) and the dataset name rules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from onboarding.errors import bad_request

DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Leading letter: names starting with "_" are reserved for the validator's own columns.
COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
SIMPLE_TYPES = ("string", "int", "bigint", "double", "date", "timestamp", "boolean")
DECIMAL = re.compile(r"^decimal\(\s*(\d{1,2})\s*,\s*(\d{1,2})\s*\)$")
MAX_COLUMNS = 500
# Columns that, whatever the merchant says, must hold a lowercase hex SHA-256.
HEX64_COLUMNS = ("phone_hash",)
HEX64_REGEX = r"^[0-9a-f]{64}$"
OPTIONAL_EXPECTATIONS = ("not_null", "unique", "between", "regex", "in_set")


@dataclass(frozen=True)
class ColumnSpec:
    """One declared column: name, Spark SQL type and optional extra expectations."""

    name: str
    type: str
    expect: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class UploadSchema:
    member_key: str
    columns: tuple[ColumnSpec, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec | None:
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)

    def describe(self) -> list[dict[str, str]]:
        """Names and types only (what the audit trail may hold)."""
        return [{"name": c.name, "type": c.type} for c in self.columns]


def normalise_type(raw: Any) -> str:
    """The canonical spelling of a declared type, or a 400 naming the allowed ones."""
    text = str(raw or "").strip().lower()
    if text in ("integer",):
        text = "int"
    if text in ("long",):
        text = "bigint"
    if text in SIMPLE_TYPES:
        return text
    match = DECIMAL.match(text)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if 1 <= precision <= 38 and scale <= precision:
            return f"decimal({precision},{scale})"
    raise bad_request(
        "Unknown column type; use one of " + ", ".join(SIMPLE_TYPES) + " or decimal(p,s) "
        "with 1 <= p <= 38 and s <= p."
    )


def _parse_expect(column: str, raw: Any) -> dict[str, Any]:
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise bad_request(f"'expect' of column {column} must be an object.")
    unknown = sorted(set(raw) - set(OPTIONAL_EXPECTATIONS))
    if unknown:
        raise bad_request(
            f"Unknown expectation {unknown[0]!r} on column {column}; allowed: "
            + ", ".join(OPTIONAL_EXPECTATIONS) + "."
        )
    expect: dict[str, Any] = {}
    for key in ("not_null", "unique"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise bad_request(f"'{key}' of column {column} must be true or false.")
            if raw[key]:
                expect[key] = True
    if "between" in raw:
        bounds = raw["between"]
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(b is None or isinstance(b, int | float) for b in bounds)
                or bounds == [None, None]):
            raise bad_request(f"'between' of column {column} must be [min, max] (numbers or null).")
        expect["between"] = bounds
    if "regex" in raw:
        pattern = raw["regex"]
        try:
            re.compile(pattern)
        except (TypeError, re.error):
            raise bad_request(f"'regex' of column {column} is not a regular expression.") from None
        expect["regex"] = pattern
    if "in_set" in raw:
        values = raw["in_set"]
        if not isinstance(values, list) or not values or len(values) > 1000:
            raise bad_request(f"'in_set' of column {column} must be a list of 1 to 1000 values.")
        expect["in_set"] = values
    return expect


def parse_schema(raw: str | bytes | dict[str, Any] | None) -> UploadSchema:
    """Parse and check the declared schema; any problem is a 400 naming what to fix."""
    if raw is None or raw == "" or raw == b"":
        raise bad_request("The 'schema' field is required.")
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("The 'schema' field is not valid JSON.") from None
    if not isinstance(raw, dict):
        raise bad_request("The schema must be a JSON object with 'member_key' and 'columns'.")
    columns_raw = raw.get("columns")
    if not isinstance(columns_raw, list) or not columns_raw:
        raise bad_request("The schema needs a non-empty 'columns' list.")
    if len(columns_raw) > MAX_COLUMNS:
        raise bad_request(f"At most {MAX_COLUMNS} columns are accepted.")
    columns: list[ColumnSpec] = []
    seen: set[str] = set()
    for entry in columns_raw:
        if not isinstance(entry, dict):
            raise bad_request("Each column must be an object with 'name' and 'type'.")
        name = entry.get("name")
        if not isinstance(name, str) or not COLUMN_NAME.match(name):
            raise bad_request(
                "Column names must start with a letter and hold only letters, digits and "
                "underscores (at most 128 characters)."
            )
        if name.lower() in seen:
            raise bad_request(f"Column {name} is declared twice.")
        seen.add(name.lower())
        columns.append(ColumnSpec(name, normalise_type(entry.get("type")),
                                  _parse_expect(name, entry.get("expect"))))
    schema_member_key = raw.get("member_key")
    if not isinstance(schema_member_key, str):
        raise bad_request("The schema must name its 'member_key' column.")
    schema = UploadSchema(schema_member_key, tuple(columns))
    key = schema.column(schema_member_key)
    if key is None:
        raise bad_request(f"The member key {schema_member_key} is not one of the declared columns.")
    for col in columns:
        if col.name.lower() in HEX64_COLUMNS and col.type != "string":
            raise bad_request(f"Column {col.name} holds a hex digest; declare it as string.")
        if "between" in col.expect and not (
            col.type in ("int", "bigint", "double") or col.type.startswith("decimal")
        ):
            raise bad_request(f"'between' needs a numeric column; {col.name} is {col.type}.")
        if "regex" in col.expect and col.type != "string":
            raise bad_request(f"'regex' needs a string column; {col.name} is {col.type}.")
    return UploadSchema(key.name, tuple(columns))


def check_dataset_name(name: Any) -> str:
    """The dataset's short name, or a 400: a lowercase identifier."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise bad_request(
            "The dataset name must be a lowercase identifier: a letter, then letters, digits "
            "or underscores (at most 63 characters)."
        )
    return name
