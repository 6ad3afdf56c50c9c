"""Messages of the services (onboarding, accounts, job requests) in the reader's language.

The services speak English (the API and the command line keep it). Pages pass what they
show through :func:`service_text`: a message known here comes back translated, with the
names it carries kept; anything else is shown as it came.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask_babel import gettext, lazy_gettext

EXACT: dict[str, Any] = {
    # uploads: the file
    "The file name must be a plain name, without directories.":
        lazy_gettext("The file name must be a plain name, without directories."),
    "Compressed files are not accepted: upload the CSV or Parquet file itself.":
        lazy_gettext("Compressed files are not accepted: upload the CSV or Parquet file itself."),
    "The file is empty.": lazy_gettext("The file is empty."),
    "The file is named as Parquet but is not a Parquet file.":
        lazy_gettext("The file is named as Parquet but is not a Parquet file."),
    "Unknown encoding; use utf-8, gbk, gb18030 or auto.":
        lazy_gettext("Unknown encoding; use utf-8, gbk, gb18030 or auto."),
    "The file is UTF-16; save it as UTF-8 or GBK and upload again.":
        lazy_gettext("The file is UTF-16; save it as UTF-8 or GBK and upload again."),
    "The file starts with a UTF-8 mark but was declared as another encoding.":
        lazy_gettext("The file starts with a UTF-8 mark but was declared as another encoding."),
    "The file is not valid UTF-8 text.": lazy_gettext("The file is not valid UTF-8 text."),
    "The file is not valid GBK/GB18030 text.": lazy_gettext("The file is not valid GBK/GB18030 text."),
    "The file is not valid UTF-8 or GBK/GB18030 text.":
        lazy_gettext("The file is not valid UTF-8 or GBK/GB18030 text."),
    "The first line must be the header naming the columns.":
        lazy_gettext("The first line must be the header naming the columns."),
    "The header line is not well-formed CSV.": lazy_gettext("The header line is not well-formed CSV."),
    "The file holds NUL bytes: it is not a text CSV.":
        lazy_gettext("The file holds NUL bytes: it is not a text CSV."),
    "A quoted field is not closed before the end of the file.":
        lazy_gettext("A quoted field is not closed before the end of the file."),
    "The file has a header but no data rows.": lazy_gettext("The file has a header but no data rows."),
    "The file is not a readable Parquet file.": lazy_gettext("The file is not a readable Parquet file."),
    "The column holds nested values; only flat columns are accepted.":
        lazy_gettext("The column holds nested values; only flat columns are accepted."),
    "Column names may not start with an underscore.":
        lazy_gettext("Column names may not start with an underscore."),
    "The Parquet file is damaged.": lazy_gettext("The Parquet file is damaged."),
    "The file has no rows.": lazy_gettext("The file has no rows."),
    "Send the upload as multipart/form-data with file, name and schema.":
        lazy_gettext("Send the upload as multipart/form-data with file, name and schema."),
    "Send exactly one file per upload.": lazy_gettext("Send exactly one file per upload."),
    "The form has expired: reload the page and try again.":
        lazy_gettext("The form has expired: reload the page and try again."),
    "The 'file' part is missing.": lazy_gettext("Choose a file to upload."),
    "No such dataset.": lazy_gettext("No such dataset."),
    "No such upload.": lazy_gettext("No such upload."),
    "The server restarted while validating; upload the file again.":
        lazy_gettext("The server restarted while validating; upload the file again."),
    "The upload could not be validated because of an internal error; upload the file again.":
        lazy_gettext("The upload could not be validated because of an internal error; "
                     "upload the file again."),
    "Only a merchant's own users may do this.": lazy_gettext("Only a merchant's own users may do this."),
    "Only a merchant's own users may upload or withdraw its data.":
        lazy_gettext("Only a merchant's own users may upload or withdraw its data."),
    # uploads: the schema
    "The 'schema' field is required.": lazy_gettext("Describe the columns: the schema is missing."),
    "The 'schema' field is not valid JSON.": lazy_gettext("The schema is not valid JSON."),
    "The schema must be a JSON object with 'member_key' and 'columns'.":
        lazy_gettext("The schema must be a JSON object with 'member_key' and 'columns'."),
    "The schema needs a non-empty 'columns' list.": lazy_gettext("Declare at least one column."),
    "Each column must be an object with 'name' and 'type'.":
        lazy_gettext("Each column must have a name and a type."),
    "Column names must start with a letter and hold only letters, digits and underscores (at most 128 characters).":
        lazy_gettext("Column names must start with a letter and hold only letters, digits and underscores (at most 128 characters)."),
    "The schema must name its 'member_key' column.": lazy_gettext("Choose the member key column."),
    "Unknown column type; use one of string, int, bigint, double, date, timestamp, boolean or decimal(p,s) with 1 <= p <= 38 and s <= p.":
        lazy_gettext("Unknown column type; use text, integer, large integer, decimal number, date, date and time, yes/no or money."),
    "The dataset name must be a lowercase identifier: a letter, then letters, digits or underscores (at most 63 characters).":
        lazy_gettext("The dataset name must be a lowercase identifier: a letter, then letters, digits or underscores (at most 63 characters)."),
    # uploads: the checks of every row
    "The column appears twice in the file.": lazy_gettext("The column appears twice in the file."),
    "A declared column is missing from the file.": lazy_gettext("A declared column is missing from the file."),
    "The file has a column the schema does not declare.":
        lazy_gettext("The file has a column the schema does not declare."),
    "The member key is missing.": lazy_gettext("The member key is missing."),
    "The member key is not unique.": lazy_gettext("The member key is not unique."),
    "The value is missing.": lazy_gettext("The value is missing."),
    "The value is not unique.": lazy_gettext("The value is not unique."),
    "The value does not match the declared pattern.":
        lazy_gettext("The value does not match the declared pattern."),
    "The value is not one of the declared values.":
        lazy_gettext("The value is not one of the declared values."),
    # job requests and generic refusals
    "The body must be a JSON object.": lazy_gettext("The request is malformed."),
    "The SQL is empty.": lazy_gettext("The SQL is empty."),
    "Only merchants and service providers run jobs.":
        lazy_gettext("Only merchants and service providers run jobs."),
    "No such merchant among those you may act for.":
        lazy_gettext("No such merchant among those you may act for."),
    "The request is malformed.": lazy_gettext("The request is malformed."),
    "Credentials are missing, wrong or expired.": lazy_gettext("Credentials are missing, wrong or expired."),
    "You are not allowed to do this.": lazy_gettext("You are not allowed to do this."),
    "Not found.": lazy_gettext("Not found."),
    "The object is not in a state that allows this.":
        lazy_gettext("The object is not in a state that allows this."),
    "The request is too large.": lazy_gettext("The request is too large."),
    "The request is invalid.": lazy_gettext("The request is invalid."),
    "Too many attempts; try again later.": lazy_gettext("Too many attempts; try again later."),
    "Something went wrong on our side; it has been logged.":
        lazy_gettext("Something went wrong on our side; it has been logged."),
    # accounts
    "The user name must be 3-64 characters: letters, digits, _ . and -.":
        lazy_gettext("The user name must be 3-64 characters: letters, digits, _ . and -."),
    "The tenant's display name must be 1-200 characters.":
        lazy_gettext("The display name must be 1-200 characters."),
    "The tenant's short name must be 2-64 characters: lowercase letters, digits and _, starting with a letter (it names its datasets).":
        lazy_gettext("The short name must be 2-64 characters: lowercase letters, digits and _, starting with a letter (it names its datasets)."),
}

# Messages that carry a name or a number: (pattern, translation with the same fields).
PATTERNS: list[tuple[re.Pattern[str], Callable[..., str]]] = [
    (re.compile(r"^The value is not a valid (?P<type>[\w(),]+)\.$"),
     lambda **f: gettext("The value is not a valid %(type)s.", **f)),
    (re.compile(r"^The value is outside \[(?P<low>[^,\]]*), (?P<high>[^\]]*)\]\.$"),
     lambda **f: gettext("The value is outside [%(low)s, %(high)s].", **f)),
    (re.compile(r"^A dataset named (?P<name>\w+) already exists.*$"),
     lambda **f: gettext("A dataset named %(name)s already exists; withdraw it first or choose another name.", **f)),
    (re.compile(r"^The file is larger than the limit of (?P<bytes>\d+) bytes\.$"),
     lambda **f: gettext("The file is larger than the limit of %(bytes)s bytes.", **f)),
    (re.compile(r"^Upload rejected, nothing was kept \((?P<n>\d+) check\(s\) failed.*$"),
     lambda **f: gettext("Upload rejected, nothing was kept: %(n)s check(s) failed (see below).", **f)),
    (re.compile(r"^The member key (?P<name>\w+) is not one of the declared columns\.$"),
     lambda **f: gettext("The member key %(name)s is not one of the declared columns.", **f)),
    (re.compile(r"^Column (?P<name>\w+) is declared twice\.$"),
     lambda **f: gettext("Column %(name)s is declared twice.", **f)),
    (re.compile(r"^A tenant named (?P<name>\w+) exists already\.$"),
     lambda **f: gettext("An organisation named %(name)s exists already.", **f)),
    (re.compile(r"^A user named (?P<name>[\w.-]+) exists already\.$"),
     lambda **f: gettext("A user named %(name)s exists already.", **f)),
    (re.compile(r"^There is no tenant named (?P<name>\w+)\.$"),
     lambda **f: gettext("There is no organisation named %(name)s.", **f)),
    (re.compile(r"^There is no user named (?P<name>[\w.-]+)\.$"),
     lambda **f: gettext("There is no user named %(name)s.", **f)),
    (re.compile(r"^The password must be at least (?P<n>\d+) characters\.$"),
     lambda **f: gettext("The password must be at least %(n)s characters.", **f)),
    (re.compile(r"^Too many job submissions for this merchant in the last hour \(at most (?P<n>\d+)\); "
                r"try again in (?P<s>\d+) s\.$"),
     lambda **f: gettext("Too many job submissions for this merchant in the last hour (at most "
                         "%(n)s); try again in %(s)s s.", **f)),
    (re.compile(r"^This merchant has (?P<n>\d+) jobs queued or running, the most it may have; "
                r"try again in (?P<s>\d+) s\.$"),
     lambda **f: gettext("This merchant has %(n)s jobs queued or running, the most it may have; "
                         "try again in %(s)s s.", **f)),
    (re.compile(r"^A (?P<role>\w+) account belongs to a (?P<kind>\w+) tenant; (?P<name>\w+) is a (?P<actual>\w+)\.$"),
     lambda **f: gettext("A %(role)s account belongs to a %(kind)s organisation; %(name)s is a %(actual)s.", **f)),
]

# Names of the upload checks in a validation report.
CHECKS: dict[str, Any] = {
    "type": lazy_gettext("type"),
    "member_key_present": lazy_gettext("member key present"),
    "member_key_unique": lazy_gettext("member key unique"),
    "not_null": lazy_gettext("not empty"),
    "unique": lazy_gettext("unique"),
    "between": lazy_gettext("within range"),
    "regex": lazy_gettext("pattern"),
    "in_set": lazy_gettext("allowed values"),
    "header": lazy_gettext("header"),
    "encoding": lazy_gettext("encoding"),
    "not_empty": lazy_gettext("not empty file"),
    "parquet": lazy_gettext("Parquet file"),
}


def service_text(message: str | None) -> str:
    """``message`` in the reader's language when it is a known service message."""
    if not message:
        return ""
    known = EXACT.get(message)
    if known is not None:
        return str(known)
    for pattern, translation in PATTERNS:
        match = pattern.match(message)
        if match:
            from web.labels import label

            fields = {k: (label("role", v) if k in ("role",) else
                          label("tenant_kind", v) if k in ("kind", "actual") else v)
                      for k, v in match.groupdict().items()}
            return translation(**fields)
    return message


def check_name(check: str | None) -> str:
    known = CHECKS.get(check or "")
    return str(known) if known is not None else (check or "")
