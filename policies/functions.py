"""The closed world: every plan node and expression class the engine knows, by role.

Anything not listed here is denied with an explanation naming it. Names are Spark's
Catalyst class names as they appear in the analyzed plan (Spark 4.x).
"""

from __future__ import annotations

# Plan nodes whose output is a function of their children's rows.
PLAN_NODES = frozenset({
    "Project", "Filter", "Aggregate", "Join", "SubqueryAlias", "LogicalRelation", "Sort",
    "GlobalLimit", "LocalLimit", "Offset", "Tail", "Union", "Distinct", "Deduplicate",
    "Window", "Generate", "WithCTE", "CTERelationDef", "CTERelationRef", "OneRowRelation",
    "LocalRelation", "Intersect", "Except", "Expand", "View", "RepartitionByExpression",
    "Repartition", "ResolvedHint", "Range",
    # Only ever added by the platform (no SQL produces it): the enforced plan's counter.
    "CollectMetrics",
})

# Nodes that only pass rows through (or drop some), keeping the child's attributes.
PASS_THROUGH = frozenset({
    "Filter", "SubqueryAlias", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail", "View",
    "RepartitionByExpression", "Repartition", "ResolvedHint", "CollectMetrics",
})

# Nodes allowed above the final aggregation: they only shape the released rows.
POST_PROCESSING = frozenset({
    "Project", "Filter", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail", "Window",
    "SubqueryAlias", "Distinct", "View", "RepartitionByExpression", "Repartition", "ResolvedHint",
    "CollectMetrics",
})

# Allowed aggregates: result reveals no individual's value (the contract's allow-list).
COUNT_AGGREGATES = frozenset({"Count", "HyperLogLogPlusPlus", "CountIf"})
VALUE_AGGREGATES = frozenset({
    "Sum", "Average", "StddevSamp", "StddevPop", "VarianceSamp", "VariancePop", "TrySum",
    "TryAverage",
})
ALLOWED_AGGREGATES = COUNT_AGGREGATES | VALUE_AGGREGATES

# Aggregates that never leave through an output (their values are individual values), and
# aggregates that only touch non-consumer data are fine; this list is only for naming.
OTHER_KNOWN_AGGREGATES = frozenset({
    "Min", "Max", "First", "Last", "AnyValue", "Mode", "Median", "Percentile",
    "ApproximatePercentile", "PercentileCont", "PercentileDisc", "MaxBy", "MinBy",
    "CollectList", "CollectSet", "ListAgg", "HistogramNumeric", "BitAndAgg", "BitOrAgg",
    "BitXorAgg", "BoolAnd", "BoolOr", "Corr", "CovPopulation", "CovSample", "Skewness",
    "Kurtosis", "RegrCount", "RegrAvgX", "RegrAvgY", "RegrSXX", "RegrSYY", "RegrSXY",
    "RegrSlope", "RegrIntercept", "RegrR2",
})

# Window-only functions (ranking, offsets). Their lineage is their inputs plus the window.
WINDOW_FUNCTIONS = frozenset({
    "RowNumber", "Rank", "DenseRank", "PercentRank", "CumeDist", "NTile", "Lag", "Lead",
    "NthValue",
})

# Structural expression parts.
STRUCTURAL = frozenset({
    "AttributeReference", "Alias", "Literal", "SortOrder", "WindowExpression",
    "WindowSpecDefinition", "SpecifiedWindowFrame", "UnspecifiedFrame$", "UnboundedPreceding$",
    "UnboundedFollowing$", "CurrentRow$", "AggregateExpression", "OuterReference",
    "ScalarSubquery", "Exists", "ListQuery", "InSubquery", "LateralSubquery",
    "LambdaFunction", "NamedLambdaVariable", "UnresolvedNamedLambdaVariable",
    "KnownNotNull", "KnownNullable", "With", "CommonExpressionDef", "CommonExpressionRef",
})

# Comparisons: an identifier/private value may not meet a literal here (P6).
COMPARISONS = frozenset({
    "EqualTo", "EqualNullSafe", "LessThan", "LessThanOrEqual", "GreaterThan",
    "GreaterThanOrEqual", "In", "InSet", "Like", "ILike", "RLike", "LikeAll", "NotLikeAll",
    "LikeAny", "NotLikeAny", "StartsWith", "EndsWith", "Contains", "ArrayContains",
    "FindInSet", "StringInstr", "StringLocate", "InSubquery", "ArraysOverlap", "Levenshtein",
})

# Generators (LATERAL VIEW / explode in SELECT).
GENERATORS = frozenset({
    "Explode", "PosExplode", "Inline", "Stack", "JsonTuple", "ExplodeOuter",
})

# Higher-order functions: their lambda variables range over the other arguments.
HIGHER_ORDER = frozenset({
    "ArrayTransform", "ArrayFilter", "ArrayExists", "ArrayForAll", "ArrayAggregate",
    "ZipWith", "MapFilter", "TransformKeys", "TransformValues", "MapZipWith", "ArraySort",
    "ArrayReduce",
})

# Scalar functions: the result depends on all of the arguments, nothing else.
SCALAR = frozenset({
    # casts, arithmetic, math
    "Cast", "TryCast", "Add", "Subtract", "Multiply", "Divide", "Remainder", "Pmod",
    "IntegralDivide", "UnaryMinus", "UnaryPositive", "Abs", "Round", "BRound", "Floor",
    "Ceil", "RoundCeil", "RoundFloor", "Sqrt", "Cbrt", "Exp", "Expm1", "Log", "Log10",
    "Log2", "Log1p", "Logarithm", "Pow", "Greatest", "Least", "Signum", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Atan2", "Sinh", "Cosh", "Tanh", "Hypot", "Rint", "ToDegrees",
    "ToRadians", "Bin", "Conv", "Factorial", "ShiftLeft", "ShiftRight", "ShiftRightUnsigned",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitwiseCount", "TryAdd",
    "TrySubtract", "TryMultiply", "TryDivide", "TryMod", "WidthBucket", "CheckOverflow",
    "PromotePrecision", "MakeDecimal", "UnscaledValue", "FormatNumber", "Pi", "EulerNumber",
    "NullIf", "Nvl", "Nvl2", "IfNull", "ZeroIfNull", "NullIfZero", "Empty2Null",
    # logic and conditionals
    "And", "Or", "Not", "If", "CaseWhen", "Coalesce", "IsNull", "IsNotNull", "IsNaN",
    "NaNvl", "AtLeastNNonNulls", "EqualTo", "EqualNullSafe", "LessThan", "LessThanOrEqual",
    "GreaterThan", "GreaterThanOrEqual", "In", "InSet", "Between", "AssertNotNull",
    # strings
    "Upper", "Lower", "Substring", "Left", "Right", "Concat", "ConcatWs", "StringTrim",
    "StringTrimLeft", "StringTrimRight", "StringTrimBoth", "Length", "OctetLength",
    "BitLength", "Like", "ILike", "RLike", "LikeAll", "NotLikeAll", "LikeAny", "NotLikeAny",
    "RegExpReplace", "RegExpExtract", "RegExpExtractAll", "RegExpCount", "RegExpSubStr",
    "RegExpInStr", "StringReplace", "StringSplit", "SplitPart", "StringLPad", "StringRPad",
    "StringReverse", "Reverse", "InitCap", "StringRepeat", "StringSpace", "StringTranslate",
    "StringInstr", "StringLocate", "SubstringIndex", "FindInSet", "StartsWith", "EndsWith",
    "Contains", "Md5", "Sha1", "Sha2", "Crc32", "Murmur3Hash", "XxHash64", "Hex", "Unhex",
    "Base64", "UnBase64", "Encode", "Decode", "StringDecode", "Ascii", "Chr", "FormatString",
    "Overlay", "SoundEx", "Levenshtein", "Elt", "Collate", "Collation", "Luhncheck",
    "ToBinary", "ToCharacter", "ToNumber", "TryToNumber", "Mask", "BitmapCount",
    # dates and times
    "Year", "Quarter", "Month", "DayOfMonth", "DayOfWeek", "WeekDay", "DayOfYear",
    "WeekOfYear", "Hour", "Minute", "Second", "DateFormatClass", "TruncDate",
    "TruncTimestamp", "DateAdd", "DateSub", "DateDiff", "AddMonths", "MonthsBetween",
    "LastDay", "NextDay", "ToDate", "ParseToDate", "ParseToTimestamp", "GetTimestamp",
    "ToUnixTimestamp", "UnixTimestamp", "FromUnixTime", "MakeDate", "MakeTimestamp",
    "DatePart", "Extract", "TimestampAdd", "TimestampDiff", "DateFromUnixDate",
    "UnixDate", "UnixSeconds", "UnixMillis", "UnixMicros", "SecondsToTimestamp",
    "MillisToTimestamp", "MicrosToTimestamp", "TimeAdd", "TimeSub", "DatetimeSub",
    "SubtractDates", "SubtractTimestamps", "ConvertTimezone", "FromUTCTimestamp",
    "ToUTCTimestamp", "CurrentDate", "CurrentTimestamp", "Now", "CurrentTimeZone",
    "LocalTimestamp", "MakeInterval", "MakeDTInterval", "MakeYMInterval", "DateAddInterval",
    "TryToTimestamp", "YearOfWeek",
    # complex types and JSON
    "CreateArray", "CreateNamedStruct", "CreateMap", "MapFromArrays", "MapFromEntries",
    "GetStructField", "GetArrayItem", "GetMapValue", "ElementAt", "TryElementAt",
    "GetArrayStructFields", "Size", "ArrayContains", "ArrayJoin", "ArrayDistinct",
    "ArrayUnion", "ArrayIntersect", "ArrayExcept", "ArrayPosition", "ArrayRemove",
    "ArrayRepeat", "ArrayMin", "ArrayMax", "ArraysZip", "ArraysOverlap", "Slice",
    "SortArray", "Flatten", "Sequence", "MapKeys", "MapValues", "MapEntries",
    "MapConcat", "MapContainsKey", "StructsToJson", "JsonToStructs", "GetJsonObject",
    "SchemaOfJson", "LengthOfJsonArray", "JsonObjectKeys", "ArrayAppend", "ArrayPrepend",
    "ArrayInsert", "ArrayCompact", "UpdateFields", "WithField", "CreateStruct", "ToJson",
    "StructsToCsv", "CsvToStructs", "Get",
    # misc deterministic
    "TypeOf", "Version",
})

# Built-in functions removed from every Yushan session (sandbox.spark) and refused by name
# in the parsed query (policies.sparkplan): each reaches outside the query (Java
# reflection, file names) or turns data into an error message (P7, P8).
FORBIDDEN_FUNCTION_NAMES: dict[str, str] = {
    "reflect": "reflect", "java_method": "java_method", "try_reflect": "try_reflect",
    "input_file_name": "input_file_name", "input_file_block_start": "input_file_block_start",
    "input_file_block_length": "input_file_block_length", "raise_error": "raise_error",
    "assert_true": "assert_true",
}
# Table-valued functions that read files.
FORBIDDEN_TABLE_FUNCTION_NAMES: tuple[str, ...] = ("read_files",)

# Forbidden whatever they touch (P7); anything else unknown is denied as unknown.
FORBIDDEN = {
    "CallMethodViaReflection": "reflect/java_method",
    "TryReflect": "try_reflect",
    "RaiseError": "raise_error",
    "AssertTrue": "assert_true",
    "InputFileName": "input_file_name",
    "InputFileBlockStart": "input_file_block_start",
    "InputFileBlockLength": "input_file_block_length",
    "PythonUDF": "a user-defined function",
    "PythonUDAF": "a user-defined function",
    "PythonUDTF": "a user-defined function",
    "ScalaUDF": "a user-defined function",
    "ScalaUDAF": "a user-defined function",
    "ScalaAggregator": "a user-defined function",
    "SQLScalarFunction": "a user-defined function",
    "SQLTableFunction": "a user-defined function",
    "HiveSimpleUDF": "a user-defined function",
    "HiveGenericUDF": "a user-defined function",
    "HiveUDAFFunction": "a user-defined function",
    "ScriptTransformation": "TRANSFORM ... USING",
    "Rand": "rand",
    "Randn": "randn",
    "Uuid": "uuid",
    "Shuffle": "shuffle",
    "MonotonicallyIncreasingID": "monotonically_increasing_id",
    "SparkPartitionID": "spark_partition_id",
    "CurrentUser": "current_user",
}
