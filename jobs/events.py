"""Events: the files of an event log (format `events`) -> classified events.

`read_events` reads the listed files (csv, tsv, jsonl, parquet) and gives one row per
input row (a data line, or a Parquet row) with its outcome: kept (OUTCOME null), left
out by the event-type filter (FILTERED), or rejected with the first layout.REASON_* that
applies, in the order: wrong field count (a line that does not split into the header's
fields, a JSON line that is no object), [event type not wanted: FILTERED], empty id,
bad id (integer_ids only: not a whole number from 0, written plainly), not numeric
(value, or a numeric time that is no number), bad timestamp, future timestamp, out of
range. Lines that are not UTF-8 are `bad_encoding` (readers.decode_lines).

csv and tsv files need a header line; every file of the log must have the same one (a
file whose lines hold no such header fails the run: its columns could be in another
order). Header lines are no input rows, wherever they appear.

Times: `seconds` (whole or up to 6 decimals) and `milliseconds` (whole) since the Unix
epoch, or `iso8601` with a zone (`2026-11-23T10:00:00Z`, `...T10:00:00.5+02:00`); a
Parquet timestamp column is taken as it is. An event is from the future when it is at
or after the end of its file's day (`dt=` partition), or of the run's logical date in a
flat log: a day's partition never gains events later, so a day's rows are the same
whichever run reads them (what makes incremental ingest equal a full rebuild).

The files are Spark's to read: a local path or any URI Spark reads (s3a://, hdfs://,
gs://). `source_file` is the file's URI as Spark names it (`EventFile.uri`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampNTZType, TimestampType

from jobs import readers
from jobs.formats import LineFormat
from jobs.lake import layout
from jobs.lake.eventlog import PARTITION_KEY, EventLogConfig
from jobs.lake.source import SourceConfig

OUTCOME = "_outcome"  # null: kept; FILTERED; else the reject reason
FILTERED = "filtered_event_type"  # the event-type filter left it out (no reject: not bad)
_CUT = "_cut"  # working column: the row's future cut (the end of its file's day)
_USER, _ITEM, _TS, _VALUE, _TYPE = "_user", "_item", "_ts", "_value", "_type"
_SECONDS, _TIME = "_seconds", "_time"
_MALFORMED = "_malformed"
_CORRUPT = "_ncf_corrupt_record"  # from_json's column for a line that is no JSON object
SEPARATORS = {"csv": ",", "tsv": "\t"}
# ISO-8601 date and time with seconds and a zone (Z or an offset); Spark's cast reads it.
_ISO = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
        r"(Z|[+-][0-9]{2}:?[0-9]{2})$")
MAX_ID = readers.MAX_ID


class EventsError(RuntimeError):
    """The event log cannot be read as configured; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class EventFile:
    """One file of the log, as listed: `path` is what Spark is given to read, `uri` what
    Spark names it by (URL-encoded, e.g. a space as %20): rejects' source_file."""

    path: str
    uri: str
    day: str | None  # the dt= partition, None in a flat log
    size: int
    mtime_ms: int


def read_events(spark: SparkSession, files: Sequence[EventFile], source: SourceConfig, *,
                min_value: float | None, max_value: float | None,
                ts_before: datetime) -> tuple[DataFrame, dict[str, int]]:
    """(classified rows, input rows by file uri).

    The rows: layout.INTERACTIONS_SCHEMA, source_file, line, reason (a reject's) and
    OUTCOME. ts_before: the future cut of a flat log (a daily log cuts at each file's day).
    """
    events = source.events
    if events is None:
        raise EventsError(f"format {source.format} is no event log")
    if not any(f.size for f in files):  # no file (allowed empty days) or only empty ones
        return spark.createDataFrame([], _CLASSIFIED_DDL), {f.uri: 0 for f in files}
    if events.file_type == "parquet":
        rows, counts = _parquet_rows(spark, files, events)
    else:
        rows, counts = _text_rows(spark, files, events)
    if events.daily:
        day = F.regexp_extract(F.col(layout.SOURCE_FILE), rf".*/{PARTITION_KEY}=([0-9-]{{10}})/", 1)
        cut = F.to_timestamp(F.date_add(F.to_date(day), 1))
    else:
        cut = F.lit(ts_before)
    unknown = sorted(set(counts) - {f.uri for f in files})
    if unknown:  # the lineage and the counts would miss it: never silently
        raise EventsError(f"Spark read {unknown[0]}, which the listing named otherwise "
                          f"({[f.uri for f in files][:3]}); report this as a bug")
    counts = {f.uri: counts.get(f.uri, 0) for f in files}
    return classify(rows.withColumn(_CUT, cut), events, min_value=min_value,
                    max_value=max_value), counts


_CLASSIFIED_DDL = (f"{layout.ddl(layout.INTERACTIONS_SCHEMA)}, {layout.SOURCE_FILE} string, "
                   f"{layout.LINE} string, {layout.REASON} string, {OUTCOME} string")


def _input_counts(raw: DataFrame, header: str | None) -> dict[str, tuple[int, int]]:
    """(rows, header lines) by source_file: one pass over the files."""
    headers = readers.is_header(F.col(layout.LINE), header).cast("int")
    return {row[0]: (int(row[1]), int(row[2])) for row in raw.groupBy(layout.SOURCE_FILE).agg(
        F.count(F.lit(1)), F.coalesce(F.sum(headers), F.lit(0))).collect()}


def _text_rows(spark: SparkSession, files: Sequence[EventFile],
               events: EventLogConfig) -> tuple[DataFrame, dict[str, int]]:
    raw = spark.read.text([f.path for f in files]).select(
        F.col("_metadata.file_path").alias(layout.SOURCE_FILE), F.col("value").alias(layout.LINE))
    header: str | None = None
    names: list[str] = []
    if events.file_type in SEPARATORS:
        header, names = _header(spark, files, events)
    counts = _input_counts(raw, header)
    if header is not None:
        headless = sorted(uri for uri, (n, headers) in counts.items() if n and not headers)
        if headless:
            raise EventsError(
                f"{headless[0]}: no line is the header {header!r} of {files[0].uri}; every "
                f"{events.file_type} file of the log needs that same header line first")
    lines, bad_encoding = readers.decode_lines(raw, encoding="utf-8", header=header)
    fields = (_json_fields(lines, events) if header is None
              else _split_fields(lines, events, header, names))
    parsed = fields.withColumn(layout.REASON, F.lit(None).cast("string"))
    bad = bad_encoding.select(  # no fields: the reason is bad_encoding
        layout.SOURCE_FILE, layout.LINE, F.lit(True).alias(_MALFORMED),
        *[F.lit(None).cast("string").alias(c) for c in (_USER, _ITEM, _TS, _VALUE, _TYPE)],
        layout.REASON)
    return parsed.unionByName(bad), {uri: n - h for uri, (n, h) in counts.items()}


def _header(spark: SparkSession, files: Sequence[EventFile],
            events: EventLogConfig) -> tuple[str, list[str]]:
    """The header line of the first file that has a line, and its column names."""
    first = next(f for f in files if f.size > 0)
    row = spark.read.text(first.path).limit(1).collect()
    text = row[0][0].rstrip("\r") if row else ""
    sep = SEPARATORS[events.file_type]
    names = [name.strip().strip('"') if events.file_type == "csv" else name.strip()
             for name in text.split(sep)]
    wanted = [name for name in dataclasses.astuple(events.columns) if name is not None]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise EventsError(f"{first.uri}: its header {text!r} has no column {missing[0]!r} "
                          f"(source.events.columns); columns: {names}")
    return text, names


def _split_fields(lines: DataFrame, events: EventLogConfig, header: str,
                  names: list[str]) -> DataFrame:
    line_format = LineFormat(SEPARATORS[events.file_type], len(names), f"the header {header!r}",
                             header=header, quoted=events.file_type == "csv")
    split = readers.split_fields(lines, line_format)

    def field(name: str | None) -> Column:
        if name is None:
            return F.lit(None).cast("string")
        return F.trim(F.try_element_at(F.col(readers.FIELDS), F.lit(names.index(name) + 1)))

    return split.select(layout.SOURCE_FILE, layout.LINE,
                        (F.size(F.col(readers.FIELDS)) != len(names)).alias(_MALFORMED),
                        *_mapped(field, events))


def _mapped(field: Callable[[str | None], Column], events: EventLogConfig) -> list[Column]:
    """The mapped columns' texts as the working columns, by a `field(name)` accessor."""
    columns = events.columns
    return [field(columns.user).alias(_USER), field(columns.item).alias(_ITEM),
            field(columns.timestamp).alias(_TS), field(columns.value).alias(_VALUE),
            field(columns.event_type).alias(_TYPE)]


def _json_fields(lines: DataFrame, events: EventLogConfig) -> DataFrame:
    names = [name for name in dataclasses.astuple(events.columns) if name is not None]
    schema = StructType([StructField(name, StringType()) for name in names]
                        + [StructField(_CORRUPT, StringType())])
    parsed = lines.select(layout.SOURCE_FILE, layout.LINE, F.from_json(
        F.col(layout.LINE), schema, {"columnNameOfCorruptRecord": _CORRUPT}).alias("_json"))

    def field(name: str | None) -> Column:
        return (F.lit(None).cast("string") if name is None
                else F.trim(F.col("_json").getField(name)))

    malformed = F.col("_json").isNull() | F.col("_json").getField(_CORRUPT).isNotNull()
    return parsed.select(layout.SOURCE_FILE, layout.LINE, malformed.alias(_MALFORMED),
                         *_mapped(field, events))


def _parquet_rows(spark: SparkSession, files: Sequence[EventFile],
                  events: EventLogConfig) -> tuple[DataFrame, dict[str, int]]:
    frame = spark.read.parquet(*[f.path for f in files])
    wanted = [name for name in dataclasses.astuple(events.columns) if name is not None]
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise EventsError(f"{files[0].uri} and the other Parquet files: no column "
                          f"{missing[0]!r} (source.events.columns); columns: {frame.columns}")
    native_ts = isinstance(frame.schema[events.columns.timestamp].dataType,
                           TimestampType | TimestampNTZType)
    rows = frame.select(F.col("_metadata.file_path").alias(layout.SOURCE_FILE),
                        F.to_json(F.struct(*[F.col(c) for c in frame.columns])).alias(layout.LINE),
                        *[F.col(c) for c in wanted])

    def field(name: str | None) -> Column:
        if name is None:
            return F.lit(None).cast("string")
        if name == events.columns.timestamp and native_ts:
            return F.col(name).cast("timestamp")
        return F.trim(F.col(name).cast("string"))

    counts = {row[0]: int(row[1]) for row in
              rows.groupBy(layout.SOURCE_FILE).count().collect()}
    return rows.select(layout.SOURCE_FILE, layout.LINE, F.lit(False).alias(_MALFORMED),
                       *_mapped(field, events),
                       F.lit(None).cast("string").alias(layout.REASON)), counts


def _blank(text: Column) -> Column:
    return F.coalesce(text == "", F.lit(True))


def _time(events: EventLogConfig, ts_type: str) -> tuple[dict[str, Column], Column,
                                                         list[tuple[Column, str]]]:
    """(working columns, the ts column, the not_numeric/bad_timestamp checks)."""
    text = F.col(_TS)
    if ts_type == "timestamp":  # a Parquet timestamp column
        return {}, text, [(text.isNull(), layout.REASON_BAD_TIMESTAMP)]
    if events.ts_unit == "iso8601":
        time = F.col(_TIME)
        return ({_TIME: F.when(text.rlike(_ISO), text.try_cast("timestamp"))}, time,
                [(time.isNull(), layout.REASON_BAD_TIMESTAMP)])
    pattern, scale = ((r"^[0-9]{1,12}(\.[0-9]{1,6})?$", 1_000_000)
                      if events.ts_unit == "seconds" else (r"^[0-9]{1,15}$", 1_000))
    micros = F.col(_SECONDS)
    working = {_SECONDS: F.when(text.rlike(pattern),
                                (text.try_cast("decimal(21,6)") * scale).try_cast("bigint"))}
    number = text.try_cast("double")
    return working, F.timestamp_micros(micros), [
        (micros.isNull() & ~readers.is_finite(number), layout.REASON_NOT_NUMERIC),
        (micros.isNull() | (micros > (readers.MAX_UNIX_SECONDS + 1) * 1_000_000 - 1),
         layout.REASON_BAD_TIMESTAMP)]


def _not_an_id(text: Column) -> Column:
    """Not a whole number from 0, written plainly (as readers' ids: "007", "+7" are not)."""
    number = text.try_cast("bigint")
    return number.isNull() | (number.cast("string") != text) | ~number.between(0, MAX_ID)


def classify(rows: DataFrame, events: EventLogConfig, *, min_value: float | None,
             max_value: float | None) -> DataFrame:
    """The outcome of each row of working columns (see `read_events`); `_cut` holds the
    row's future cut."""
    ts_type = dict(rows.dtypes)[_TS]
    working, ts, time_checks = _time(events, ts_type)
    value = (F.lit(1.0) if events.columns.value is None
             else F.col(_VALUE).try_cast("double"))
    outcome = F.when(F.col(layout.REASON).isNotNull(), F.col(layout.REASON)).when(
        F.col(_MALFORMED), F.lit(layout.REASON_FIELD_COUNT))
    if events.event_types:
        outcome = outcome.when(~F.coalesce(F.col(_TYPE).isin(*events.event_types),
                                           F.lit(False)), F.lit(FILTERED))
    user, item = F.col(_USER), F.col(_ITEM)
    checks = [(_blank(user) | _blank(item), layout.REASON_EMPTY_ID)]
    if events.integer_ids:
        checks.append((_not_an_id(user) | _not_an_id(item), layout.REASON_BAD_ID))
    if events.columns.value is not None:
        checks.append((~readers.is_finite(value), layout.REASON_NOT_NUMERIC))
    checks += time_checks
    checks.append((ts >= F.col(_CUT), layout.REASON_FUTURE_TS))
    below = F.lit(False) if min_value is None else value < F.lit(float(min_value))
    above = F.lit(False) if max_value is None else value > F.lit(float(max_value))
    checks.append((below | above, layout.REASON_OUT_OF_RANGE))
    for failed, why in checks:
        outcome = outcome.when(failed, F.lit(why))
    classified = rows.withColumns(working).select(
        user.alias(layout.USER_ID), item.alias(layout.ITEM_ID), ts.alias(layout.TS),
        value.alias(layout.VALUE), layout.SOURCE_FILE, layout.LINE, outcome.alias(OUTCOME))
    return classified.withColumn(layout.REASON, F.when(
        F.col(OUTCOME) != FILTERED, F.col(OUTCOME)))


def kept(classified: DataFrame) -> DataFrame:
    """The kept events, layout.INTERACTIONS_SCHEMA."""
    return classified.where(F.col(OUTCOME).isNull()).select(
        *layout.columns(layout.INTERACTIONS_SCHEMA))


def rejects(classified: DataFrame) -> DataFrame:
    """The rejected rows, layout.REJECTS_SCHEMA."""
    return classified.where(F.col(layout.REASON).isNotNull()).select(
        *layout.columns(layout.REJECTS_SCHEMA))


def outcomes(classified: DataFrame) -> dict[str, dict[str | None, int]]:
    """Rows by source_file, then outcome (None: kept)."""
    counted: dict[str, dict[str | None, int]] = {}
    for row in classified.groupBy(layout.SOURCE_FILE, OUTCOME).count().collect():
        counted.setdefault(row[0], {})[row[1]] = int(row[2])
    return counted

