"""P8: whether a function that can still fail at run time may fail for its literal arguments.

With ANSI mode off most runtime errors give NULL, but some functions still fail on some
arguments: a pattern that does not compile, a group index the pattern lacks, an index 0,
an unknown date-format letter or charset, sizes that exhaust memory. Where such a call is
evaluated over consumer rows, a failure would say whether some row reached it (``WHERE``
or ``CASE WHEN <one consumer> ...``): a yes/no answer about a consumer. So there the
arguments that can make it fail must be literals that this module proves harmless; any
other case is denied (closed world: a function without a validator is refused).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from policies.tree import Node

# Functions that can still fail at run time on some values with ANSI mode off (huge or
# invalid sizes, patterns and formats). On consumer data a failure would answer a yes/no
# question about a consumer (P8), so they are denied there.
MAY_FAIL = frozenset({
    "Sequence", "StringRepeat", "ArrayRepeat", "StringSpace", "StringLPad", "StringRPad",
    "ToNumber", "ToBinary", "ElementAt", "FormatString", "AssertNotNull", "Elt",
    "RegExpReplace", "RegExpExtract", "RegExpExtractAll", "RegExpCount", "RegExpSubStr",
    "RegExpInStr", "RLike", "StringSplit", "DateFormatClass", "FromUnixTime",
    "ParseToDate", "ParseToTimestamp", "GetTimestamp", "ToUnixTimestamp", "UnixTimestamp",
    "JsonToStructs", "CsvToStructs", "SchemaOfJson", "Conv", "Factorial", "Decode",
    "StringDecode", "Encode", "MakeInterval", "MakeDTInterval", "MakeYMInterval",
    "ArrayInsert", "Slice", "MapFromArrays", "MapFromEntries", "CreateMap", "MapConcat",
    "StringToMap", "UnBase64", "Luhncheck", "TryToNumber", "Mask", "Overlay",
    # found by attacking our own policy: escapes, indexes, time zones, date overflow,
    # comparators and map keys that fail on some values
    "Like", "ILike", "SplitPart", "FromUTCTimestamp", "ToUTCTimestamp", "ConvertTimezone",
    "TimestampAdd", "AddMonths", "DateAdd", "DateSub", "DateAddInterval", "TimeAdd",
    "ArraySort", "TransformKeys", "MapZipWith", "TruncTimestamp", "TruncDate",
    "MakeTimestamp", "NextDay", "StringLocate",
    "SubstringIndex", "ArrayJoin", "StringReplace",
    "StringTranslate", "Levenshtein", "FormatNumber", "Round", "BRound", "WidthBucket",
    # third attack: timestamps from numbers and interval arithmetic overflow on some values
    "SecondsToTimestamp", "MillisToTimestamp", "MicrosToTimestamp", "SubtractTimestamps",
    "SubtractDates", "MultiplyYMInterval", "MultiplyDTInterval", "DivideYMInterval",
    "DivideDTInterval", "MultiplyInterval", "DivideInterval", "TimestampAddYMInterval",
    "DatetimeSub", "TimestampAddInterval",
})
# ... unless the argument that can make them fail is a literal (the pattern, the format).
LITERAL_SAFE = {
    "RegExpReplace": (1,), "RegExpExtract": (1, 2), "RegExpExtractAll": (1, 2),
    "RegExpCount": (1,), "RegExpSubStr": (1,), "RegExpInStr": (1, 2), "RLike": (1,),
    "StringSplit": (1,), "DateFormatClass": (1,), "FromUnixTime": (1,),
    "ParseToDate": "rest", "ParseToTimestamp": "rest", "GetTimestamp": (1,),
    "ToUnixTimestamp": (1,), "UnixTimestamp": (1,), "ElementAt": (1,), "Decode": (1,),
    "StringDecode": (1,), "Encode": (1,), "Conv": (1, 2), "Slice": (1, 2),
    "Elt": (0,), "Mask": (1, 2, 3, 4),
    "Like": "rest", "ILike": "rest", "SplitPart": (1, 2), "FromUTCTimestamp": (1,),
    "ToUTCTimestamp": (1,), "ConvertTimezone": (0, 1), "TimestampAdd": (0,),
    "AddMonths": (1,), "DateAdd": (1,), "DateSub": (1,), "DateAddInterval": (1,),
    "TimeAdd": (1,), "TimestampAddYMInterval": (1,), "TimestampAddInterval": (1,),
    "DatetimeSub": (1,), "TruncTimestamp": (0,), "TruncDate": (1,), "NextDay": (1,),
    "MakeTimestamp": "rest",
    "SubstringIndex": (1, 2),
    "ArrayJoin": (1, 2),
    "Levenshtein": (2,), "FormatNumber": (1,), "Round": (1,), "BRound": (1,),
    "WidthBucket": (1, 2, 3),
}

# Literal sizes above these are refused: the call would take memory or time that could
# be told apart (an out-of-memory failure, or seconds of run time).
MAX_ELEMENTS = 1_000
MAX_DAYS = 1_000_000

_DATE_LETTERS = set("GyMLdDQqEahHkKmsSnNVzOXxZ")  # Spark's datetime patterns, minus week-based
_CHARSETS = {"utf-8", "utf8", "us-ascii", "iso-8859-1", "utf-16", "utf-16be", "utf-16le",
             "utf-32", "gbk", "gb18030", "gb2312", "big5"}
_OFFSET = re.compile(r"^(UTC|GMT)?[+-]\d{1,2}(:?\d{2})?$|^(UTC|GMT|Z)$")


# Interval values over consumer rows: arithmetic on them, and casts to or from them, fail on
# overflow or on a string that is not an interval, even with ANSI off (and Spark leaves a
# failing constant in a CASE branch to run time).
INTERVAL_MAKERS = frozenset({
    "MakeInterval", "MakeDTInterval", "MakeYMInterval", "SubtractTimestamps", "SubtractDates",
    "MultiplyYMInterval", "MultiplyDTInterval", "DivideYMInterval", "DivideDTInterval",
    "MultiplyInterval", "DivideInterval",
})
INTERVAL_ARITHMETIC = frozenset({"Add", "Subtract", "UnaryMinus", "Abs", "Multiply", "Divide",
                                 "Remainder", "Pmod", "UnaryPositive"})
# Functions whose result grows with their arguments: inside a lambda their sizes multiply
# (sequence(1, 999) per element of sequence(1, 999) ...), whatever each literal says.
SIZED = frozenset({"Sequence", "ArrayRepeat", "StringRepeat", "StringLPad", "StringRPad",
                   "StringSpace"})
MAX_INTERVAL_MICROS = MAX_DAYS * 86_400_000_000
MAX_INTERVAL_MONTHS = MAX_DAYS // 30


def is_interval_type(data_type: object) -> bool:
    return isinstance(data_type, str) and data_type.startswith("interval")


def interval_valued(node: Node) -> bool:
    """Whether ``node`` (as far as its own fields tell) computes an interval."""
    if node.cls in ("Literal", "Cast"):
        return is_interval_type(node.fields.get("dataType"))
    return node.cls in INTERVAL_MAKERS


def small_interval(node: Node) -> bool:
    """An interval literal (possibly negated) of at most MAX_DAYS days (or as many months)."""
    while node.cls in ("UnaryMinus", "UnaryPositive") and len(node.children) == 1:
        node = node.children[0]
    if node.cls != "Literal" or not is_interval_type(node.fields.get("dataType")):
        return False
    value = _int(None if node.fields.get("value") is None else str(node.fields.get("value")))
    if value is None:
        return node.fields.get("value") is None  # NULL: nothing to overflow
    months = any(w in str(node.fields.get("dataType")) for w in ("year", "month"))
    return abs(value) <= (MAX_INTERVAL_MONTHS if months else MAX_INTERVAL_MICROS)


def why_unsafe_shape(node: Node, in_lambda: bool) -> str | None:
    """P8 for what is not one function's arguments: casts and arithmetic on intervals, and
    sized functions inside lambdas. None when ``node`` cannot fail that way."""
    cls = node.cls
    if cls == "Cast" and node.children:
        child = node.children[0]
        if is_interval_type(node.fields.get("dataType")):
            ok, value = literal(child)
            number = _int(value) if ok else None
            if not (ok and number is not None and abs(number) <= MAX_DAYS and child.cls == "Literal"):
                return "it casts a value that is not a small whole-number literal to an interval"
        elif interval_valued(child) and node.fields.get("dataType") != "string":
            return "it casts an interval to a type it may not fit"
    if cls in INTERVAL_ARITHMETIC and any(interval_valued(c) for c in node.children):
        if cls in ("UnaryMinus", "UnaryPositive", "Abs") and small_interval(node.children[0]):
            return None
        return "it computes with intervals, which overflow on some values"
    if cls in SIZED and in_lambda:
        return "it builds a value inside a lambda, where its size multiplies"
    return None


def literal(node: Node) -> tuple[bool, str | None]:
    """``(True, value)`` for a literal (``value`` None for NULL), else ``(False, None)``."""
    while node.cls == "Cast" and node.children:
        node = node.children[0]
    if node.cls != "Literal":
        return False, None
    value = node.fields.get("value")
    return True, None if value is None else str(value)


def _int(value: str | None) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _format_ok(fmt: str | None) -> bool:
    """Spark's datetime pattern letters only (week-based ones fail in Spark 3+)."""
    if fmt is None:
        return True
    quoted = False
    for ch in fmt:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch.isalpha() and ch not in _DATE_LETTERS:
            return False
    return not quoted


def _like_ok(pattern: str | None, escape: str | None = "\\") -> bool:
    """Spark's escapeLikeRegex: the escape character may precede only ``_``, ``%`` or
    itself, and may not end the pattern."""
    if pattern is None:
        return True
    esc = escape if escape else "\\"
    i = 0
    while i < len(pattern):
        if pattern[i] == esc:
            if i + 1 >= len(pattern) or pattern[i + 1] not in ("_", "%", esc):
                return False
            i += 2
            continue
        i += 1
    return True


def _zone_ok(zone: str | None) -> bool:
    if zone is None:
        return True
    if _OFFSET.match(zone.strip()):
        return True
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(zone)
        return True
    except Exception:  # noqa: BLE001 - not a zone name Python knows: refuse
        return False


RegexGroups = Callable[[str], "int | None"]


def python_regex_groups(pattern: str) -> int | None:
    """Groups of ``pattern`` if it compiles (Python's reading; the JVM's is preferred)."""
    try:
        return re.compile(pattern).groups
    except re.error:
        return None


def _regex_ok(pattern: str | None, index: str | None, regex_groups: RegexGroups,
              has_index: bool) -> bool:
    if pattern is None:
        return True
    groups = regex_groups(pattern)
    if groups is None:
        return False
    if not has_index:
        return True
    idx = _int(index) if index is not None else 1
    return idx is not None and 0 <= idx <= groups


def why_unsafe(cls: str, args: list[Node], regex_groups: RegexGroups) -> str | None:
    """None when ``cls(args)`` cannot fail whatever its non-literal inputs hold, given that
    the positions it validates are literals; otherwise a short reason (no data values)."""
    lits = [literal(a) for a in args]

    def lit(i: int) -> tuple[bool, str | None]:
        return lits[i] if i < len(lits) else (True, None)

    def need(*positions: int) -> bool:
        return all(lit(i)[0] for i in positions)

    if cls in ("RegExpReplace", "RLike", "RegExpCount", "RegExpSubStr", "StringSplit"):
        return None if need(1) and _regex_ok(lit(1)[1], None, regex_groups, False) else \
            "its pattern is not a literal regular expression that compiles"
    if cls in ("RegExpExtract", "RegExpExtractAll", "RegExpInStr"):
        has_index = len(args) > 2
        return None if need(1, 2) and _regex_ok(lit(1)[1], lit(2)[1] if has_index else None,
                                                 regex_groups, True) else \
            "its pattern and group index are not literals the pattern has"
    if cls in ("Like", "ILike"):
        escape = lit(2)[1] if len(args) > 2 else "\\"
        return None if need(1) and _like_ok(lit(1)[1], escape) else \
            "its pattern is not a literal with valid escapes"
    if cls in ("DateFormatClass", "FromUnixTime", "GetTimestamp", "ToUnixTimestamp",
               "UnixTimestamp"):
        return None if need(1) and _format_ok(lit(1)[1]) else \
            "its format is not a literal of Spark's datetime pattern letters"
    if cls in ("ParseToDate", "ParseToTimestamp", "MakeTimestamp"):
        rest = range(1, len(args))
        if cls != "MakeTimestamp":
            return None if need(*rest) and all(_format_ok(lit(i)[1]) for i in rest) else \
                "its format is not a literal of Spark's datetime pattern letters"
        return None if need(*rest) else "its arguments are not literals"
    if cls == "ElementAt":
        index = _int(lit(1)[1])
        return None if need(1) and (index is None or index != 0) else "its index is 0"
    if cls == "SplitPart":
        index = _int(lit(2)[1])
        return None if need(1, 2) and index is not None and index != 0 else "its index is 0"
    if cls == "Slice":
        start, length = _int(lit(1)[1]), _int(lit(2)[1])
        return None if need(1, 2) and start not in (None, 0) and length is not None and \
            length >= 0 else "its start is 0 or its length negative"
    if cls in ("Decode", "StringDecode", "Encode"):
        charset = lit(1)[1]
        return None if need(1) and charset is not None and charset.lower() in _CHARSETS else \
            "its charset is not a literal Spark knows"
    if cls in ("FromUTCTimestamp", "ToUTCTimestamp"):
        return None if need(1) and _zone_ok(lit(1)[1]) else "its time zone is not a known literal"
    if cls == "ConvertTimezone":
        return None if need(0, 1) and _zone_ok(lit(0)[1]) and _zone_ok(lit(1)[1]) else \
            "its time zones are not known literals"
    if cls in ("AddMonths", "DateAdd", "DateSub"):
        days = _int(lit(1)[1])
        return None if need(1) and days is not None and abs(days) <= MAX_DAYS else \
            "its amount is not a literal of reasonable size"
    if cls == "Mask":
        chars = [lit(i)[1] for i in range(1, min(len(args), 5))]
        return None if need(*range(1, min(len(args), 5))) and all(
            c is None or len(c) <= 1 for c in chars) else "its replacement characters are not single literals"
    if cls in ("TimeAdd", "TimestampAddYMInterval", "TimestampAddInterval", "DatetimeSub",
               "DateAddInterval"):
        # The interval must be a literal of reasonable size: a huge one overflows the
        # timestamp (an error even with ANSI off).
        return None if len(args) > 1 and small_interval(args[1]) else \
            "its interval is not a literal of reasonable size"
    if cls in ("Conv", "Elt", "TimestampAdd", "TruncTimestamp",
               "TruncDate", "NextDay", "SubstringIndex", "ArrayJoin", "Levenshtein",
               "FormatNumber", "Round", "BRound", "WidthBucket"):
        declared = LITERAL_SAFE.get(cls, ())
        positions: tuple[int, ...] = tuple(range(1, len(args))) if declared == "rest" else \
            tuple(int(i) for i in declared)
        return None if need(*positions) else "its pattern, format or index is not a literal"
    if cls == "CreateMap":
        keys = [lits[i] for i in range(0, len(lits), 2)]
        return None if all(ok and v is not None for ok, v in keys) and \
            len({v for _, v in keys}) == len(keys) else "its keys are not distinct literals"
    # Functions that may fail on any argument: only literal calls of harmless size.
    if not all(ok for ok, _ in lits):
        return "it can fail on the values it is given"
    values = [_int(v) for _, v in lits]
    numbers = [v for v in values if v is not None]
    if cls == "Sequence" and len(values) >= 2 and len(numbers) == len(values):
        start, stop = numbers[0], numbers[1]
        step = numbers[2] if len(numbers) > 2 else (1 if stop >= start else -1)
        if step != 0 and (stop - start) * step >= 0 and abs(stop - start) // abs(step) < MAX_ELEMENTS:
            return None
    last = values[-1] if values else None
    if cls in ("ArrayRepeat", "StringSpace") and last is not None and last <= MAX_ELEMENTS:
        return None
    count = values[1] if len(values) == 2 else None
    if cls == "StringRepeat" and count is not None and \
            count * len(lits[0][1] or "") <= MAX_ELEMENTS * 10:
        return None
    width = values[1] if len(values) >= 2 else None
    if cls in ("StringLPad", "StringRPad") and width is not None and width <= MAX_ELEMENTS * 10:
        return None
    return "it can fail for the literal arguments it is given"
