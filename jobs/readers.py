"""Readers: the raw lines of each source format -> the lake's canonical frames.

Pure transforms (no session, no I/O). A parser takes a frame of raw lines, columns
`source_file` and `line`, and returns (rows, rejects): every line lands in exactly
one of the two, a reject as layout.REJECTS_SCHEMA with the first layout.REASON_*
that applies, in the order: wrong field count, empty id, bad id (not a number, where
formats.py gives a `first_id`), not numeric, bad timestamp, future timestamp, out of
range. `decode_lines` comes first: it drops the header line and sends lines that are
not valid UTF-8 to rejects (`bad_encoding`).

The formats themselves (which fields mean what, per file role) are jobs/formats.py.

last.fm's artist MBIDs may be empty: the item is then `name:<artist name>` (a name is
no MBID, so the two cannot collide). Identical (user_id, item_id, ts) events collapse
into one row (`collapse_duplicates`): ratings keep the highest value, last.fm play
counts and listens are summed (null ts counts as one time, so 360K/2K pairs sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.formats import (
    MAX_ID_DIGITS,
    TAG_ASSIGNMENTS_LINE,
    TAGS_LINE,
    TEST_NEGATIVES_LINE,
    InteractionsFormat,
    ItemsFormat,
    LineFormat,
    UsersFormat,
)
from jobs.lake import layout
from jobs.spark import conform

# The largest timestamp Spark can hold is in year 294247; keep to four-digit years.
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
ISO_SECONDS = "yyyy-MM-dd'T'HH:mm:ssX"  # last.fm 1K: 2009-05-04T23:08:57Z
MAX_ID = 10**MAX_ID_DIGITS - 1
MIN_AGE, MAX_AGE = 1, 120
TOP_TAGS = 10  # HetRec 2K: an artist's most assigned tags become its genres
NAME_PREFIX = "name:"  # item id of a last.fm artist without an MBID
EVENTS = "_events"  # working column: raw events collapsed into a row

# u.item's 19 genre flags, in u.genre's order.
ML_100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                  "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                  "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
NO_GENRES = "(no genres listed)"
# users.dat occupation codes of MovieLens 1M (its README).
ML_1M_OCCUPATIONS = ("other", "academic/educator", "artist", "clerical/admin",
                     "college/grad student", "customer service", "doctor/health care",
                     "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
                     "programmer", "retired", "sales/marketing", "scientist", "self-employed",
                     "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
# users.dat age codes of MovieLens 1M -> layout.AGE_BUCKETS.
ML_1M_AGE_CODES = dict(zip(("1", "18", "25", "35", "45", "50", "56"), layout.AGE_BUCKETS,
                           strict=True))
FIELDS = "_fields"
# parse_interactions' working columns (see `_parse`): a field's text, then what it parses to.
_USER, _ITEM, _VALUE, _TITLE = "_user", "_item", "_value", "_title"
_TS, _SECONDS = "_ts", "_seconds"
_USER_NUMBER, _ITEM_NUMBER = "_user_number", "_item_number"


# --- lines -----------------------------------------------------------------------------

def is_header(line: Column, header: str | None) -> Column:
    """True on the header line (a trailing carriage return ignored)."""
    if header is None:
        return F.lit(False)
    return line.isin(header, header + "\r")  # no regex per line: most lines are data


def decode_lines(raw: DataFrame, *, encoding: str,
                 header: str | None) -> tuple[DataFrame, DataFrame]:
    """(lines, rejects) from the lines of `spark.read.text`, whose strings hold the file's bytes.

    latin-1 files are decoded byte by byte (every byte is a character). In a utf-8 file
    a line that is not valid UTF-8 is rejected as `bad_encoding`; its `line` is then the
    bytes read as latin-1, so `line.encode("latin-1")` gives the exact bytes back.
    """
    line = F.col(layout.LINE)
    as_latin1 = F.decode(line.cast("binary"), "ISO-8859-1")
    body = raw.where(~is_header(line, header))
    if encoding == "latin-1":
        return (body.select(layout.SOURCE_FILE, as_latin1.alias(layout.LINE)),
                _no_rejects(raw))
    valid = F.is_valid_utf8(line)
    rejects = body.where(~valid).select(layout.SOURCE_FILE, as_latin1.alias(layout.LINE),
                                        F.lit(layout.REASON_BAD_ENCODING).alias(layout.REASON))
    return body.where(valid), rejects


def _no_rejects(like: DataFrame) -> DataFrame:
    return like.sparkSession.createDataFrame([], layout.ddl(layout.REJECTS_SCHEMA))


_REGEX_META = set(".$|()[]{}^?*+\\")


def split_fields(lines: DataFrame, fmt: LineFormat) -> DataFrame:
    """Adds `_fields`: the line (carriage return dropped) split on the separator."""
    line = F.col(layout.LINE)
    line = F.when(line.endswith("\r"), F.expr(f"substring({layout.LINE}, 1, "
                                               f"length({layout.LINE}) - 1)")).otherwise(line)
    # A single plain character is split on without the regex engine (Spark's fast path).
    sep = fmt.sep if len(fmt.sep) == 1 and fmt.sep not in _REGEX_META else (
        "\\Q" + fmt.sep + "\\E")
    fields = F.split(line, sep, -1)
    if fmt.quoted:
        # Split only on separators outside quotes, then unquote ("" is an escaped quote).
        quoted = F.transform(
            F.split(line, sep + '(?=(?:[^"]*"[^"]*")*[^"]*$)', -1),
            lambda f: F.regexp_replace(F.regexp_replace(F.trim(f), '^"(.*)"$', "$1"),
                                       '""', '"'))
        # An odd number of quotes (an unclosed field) splits into nothing: wrong field count.
        n_quotes = F.length(line) - F.length(F.regexp_replace(line, '"', ""))
        fields = (F.when(~line.contains('"'), fields)
                  .when(n_quotes % 2 == 0, quoted).otherwise(F.array().cast("array<string>")))
    return lines.select(layout.SOURCE_FILE, layout.LINE, fields.alias(FIELDS))


def _field(number: int) -> Column:
    """The n-th field (0-based), trimmed; null when the line has fewer fields."""
    return F.trim(F.try_element_at(F.col(FIELDS), F.lit(number + 1)))


def _wrong_count(fmt: LineFormat) -> Column:
    n = F.size(F.col(FIELDS))
    return n < fmt.n_fields if fmt.at_least else n != fmt.n_fields


def _parse(lines: DataFrame, fmt: LineFormat, checks: Sequence[tuple[Column, str]],
           columns: dict[str, Column], *,
           working: Sequence[dict[str, Column]] = ()) -> tuple[DataFrame, DataFrame]:
    """Split lines, reject by the first failing check, keep `columns` of the rest.

    working: steps of named working columns, each step computed from the split line and
    the steps before it; checks and columns read them as F.col(name). Spark does not
    share a subexpression between the branches of a CASE WHEN, so a check chain that
    repeats `try_cast(trim(field) as double)` would parse the text once per mention; a
    working column is computed once per line.
    The rows and the rejects are two plans over the same lines, each parsing them: with
    the parse that cheap, parsing twice costs less CPU than caching the parsed lines.
    """
    reason = F.when(_wrong_count(fmt), F.lit(layout.REASON_FIELD_COUNT))
    for failed, why in checks:
        reason = reason.when(failed, F.lit(why))
    split = split_fields(lines, fmt)
    for step in working:
        split = split.withColumns(step)
    parsed = split.select(
        layout.SOURCE_FILE, layout.LINE, reason.alias(layout.REASON),
        *[column.alias(name) for name, column in columns.items()])
    kept = parsed.where(F.col(layout.REASON).isNull()).select(*columns)
    rejects = conform(parsed.where(F.col(layout.REASON).isNotNull()), layout.REJECTS_SCHEMA)
    return kept, rejects


def is_finite(value: Column) -> Column:
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))


def _blank(text: Column) -> Column:
    return F.coalesce(text == "", F.lit(True))


def _or_null(text: Column) -> Column:
    return F.when(text != "", text)


# --- interactions ----------------------------------------------------------------------

def parse_interactions(
    lines: DataFrame,
    fmt: InteractionsFormat,
    *,
    min_value: float | None,
    max_value: float | None,
    ts_before: datetime | None,
) -> tuple[DataFrame, DataFrame]:
    """(interactions, rejects): layout.INTERACTIONS_SCHEMA plus `title` (the artist name
    of last.fm lines, else null), and the rejected lines with their reason. An event at
    or after `ts_before` (aware; ingest's: the end of the logical date) is `future_ts`."""
    if ts_before is not None and ts_before.tzinfo is None:  # Spark would read it as local
        raise ValueError(f"ts_before={ts_before!r}: give a time zone (UTC)")
    # Each field is trimmed once, and each text parsed once: working columns (see `_parse`).
    text = {_USER: _field(fmt.user), _ITEM: _field(fmt.item),
            _VALUE: F.lit("1") if fmt.value is None else _field(fmt.value)}
    typed = {_VALUE: F.col(_VALUE).try_cast("double")}  # never raises, ANSI mode or not
    user_id, item_id, value = F.col(_USER), F.col(_ITEM), F.col(_VALUE)
    title = F.lit(None).cast("string")
    if fmt.item_name is not None:
        text[_TITLE] = _or_null(_field(fmt.item_name))
        title = F.col(_TITLE)
        typed[_ITEM] = F.when(item_id != "", item_id).otherwise(
            F.when(title.isNotNull(), F.concat(F.lit(NAME_PREFIX), title)).otherwise(F.lit("")))
    checks = [(_blank(user_id) | _blank(item_id), layout.REASON_EMPTY_ID)]
    if fmt.first_id is not None:
        typed |= {_USER_NUMBER: user_id.try_cast("bigint"),
                  _ITEM_NUMBER: item_id.try_cast("bigint")}
        checks.append((_not_an_id(user_id, F.col(_USER_NUMBER), fmt.first_id)
                       | _not_an_id(item_id, F.col(_ITEM_NUMBER), fmt.first_id),
                       layout.REASON_BAD_ID))
    ts, time_checks = _time(fmt, value, text, typed)
    checks += time_checks
    if fmt.ts is not None and ts_before is not None:
        checks.append((ts >= F.lit(ts_before), layout.REASON_FUTURE_TS))
    below = F.lit(False) if min_value is None else value < F.lit(float(min_value))
    above = F.lit(False) if max_value is None else value > F.lit(float(max_value))
    checks.append((below | above, layout.REASON_OUT_OF_RANGE))
    return _parse(lines, fmt.line, checks, {
        layout.USER_ID: user_id, layout.ITEM_ID: item_id, layout.TS: ts,
        layout.VALUE: value, layout.TITLE: title}, working=[text, typed])


def _not_an_id(text: Column, number: Column, first_id: int) -> Column:
    """True unless `text` is a whole number from first_id up, of at most MAX_ID_DIGITS
    digits, written plainly: read as a bigint and back, the same text ("1.5", "+7",
    "007" and "99999999999999999999", a null bigint, are not)."""
    return number.isNull() | (number.cast("string") != text) | ~number.between(first_id, MAX_ID)


def _time(fmt: InteractionsFormat, value: Column, text: dict[str, Column],
          typed: dict[str, Column]) -> tuple[Column, list[tuple[Column, str]]]:
    """The ts column, and the not_numeric and bad_timestamp checks of a line; adds the
    working columns they read to `text` and `typed`."""
    if fmt.ts is None:
        return F.lit(None).cast("timestamp"), [(~is_finite(value), layout.REASON_NOT_NUMERIC)]
    text[_TS] = _field(fmt.ts)
    if fmt.iso_ts:
        typed[_TS] = F.try_to_timestamp(F.col(_TS), F.lit(ISO_SECONDS))
        ts = F.col(_TS)
        return ts, [(~is_finite(value), layout.REASON_NOT_NUMERIC),
                    (ts.isNull(), layout.REASON_BAD_TIMESTAMP)]
    ts_text = F.col(_TS)
    typed[_SECONDS] = F.when(ts_text.rlike(r"^[0-9]{1,12}$"), ts_text.try_cast("bigint"))
    seconds = F.col(_SECONDS)
    # Whole seconds are finite numbers: only other texts are parsed as doubles.
    return F.timestamp_seconds(seconds), [
        (~is_finite(value) | (seconds.isNull() & ~is_finite(ts_text.try_cast("double"))),
         layout.REASON_NOT_NUMERIC),
        (seconds.isNull() | (seconds > MAX_UNIX_SECONDS), layout.REASON_BAD_TIMESTAMP)]


def collapse_duplicates(interactions: DataFrame, *, combine: str,
                        keys: Sequence[str] = ()) -> DataFrame:
    """One row per (user_id, item_id, ts): value max (ratings) or sum (plays, listens),
    plus `_events`, the number of raw events in the row. `keys`: more columns to group
    by and keep, functions of user_id (jobs.spark.partition_by_key's hash)."""
    combined = F.sum if combine == "sum" else F.max
    return interactions.groupBy(*keys, layout.USER_ID, layout.ITEM_ID, layout.TS).agg(
        combined(layout.VALUE).alias(layout.VALUE), F.count(F.lit(1)).alias(EVENTS))


def collapse_by_id(features: DataFrame, id_column: str) -> DataFrame:
    """One row per id (the largest value of each column), plus `_events` rows collapsed."""
    others = [c for c in features.columns if c != id_column]
    return features.groupBy(id_column).agg(*[F.max(c).alias(c) for c in others],
                                           F.count(F.lit(1)).alias(EVENTS))


def item_titles(interactions: DataFrame) -> DataFrame:
    """layout.ITEM_FEATURES_SCHEMA from the artist names of last.fm lines (no genres)."""
    return conform(
        interactions.where(F.col(layout.TITLE).isNotNull()).groupBy(layout.ITEM_ID)
        .agg(F.min(layout.TITLE).alias(layout.TITLE))
        .withColumn(layout.GENRES, F.array().cast("array<string>")),
        layout.ITEM_FEATURES_SCHEMA)


# --- side features ---------------------------------------------------------------------

def _age_bucket(years: Column) -> Column:
    bounds = (18, 25, 35, 45, 50, 56)
    bucket = F.when(years < bounds[0], F.lit(layout.AGE_BUCKETS[0]))
    for bound, name in zip(bounds[1:], layout.AGE_BUCKETS[1:], strict=False):
        bucket = bucket.when(years < bound, F.lit(name))
    return F.when(years.isNotNull(), bucket.otherwise(F.lit(layout.AGE_BUCKETS[-1])))


def _lookup(code: Column, table: dict[str, str]) -> Column:
    pairs = [F.lit(part) for item in table.items() for part in item]
    return F.try_element_at(F.create_map(*pairs), code)


def parse_user_features(lines: DataFrame, fmt: UsersFormat) -> tuple[DataFrame, DataFrame]:
    """(user_features, rejects) in layout.USER_FEATURES_SCHEMA; absent columns are null,
    empty fields too. Raw ages are bucketed into layout.AGE_BUCKETS."""
    def optional(number: int | None) -> Column:
        return F.lit(None).cast("string") if number is None else _or_null(_field(number))

    user_id = _field(fmt.user)
    checks = [(_blank(user_id), layout.REASON_EMPTY_ID)]
    age_text, age_bucket = optional(fmt.age), F.lit(None).cast("string")
    if fmt.age is not None and fmt.age_coded:
        age_bucket = _lookup(age_text, ML_1M_AGE_CODES)
        checks.append((age_text.isNotNull() & age_bucket.isNull(), layout.REASON_OUT_OF_RANGE))
    elif fmt.age is not None:
        years = age_text.try_cast("double")
        age_bucket = _age_bucket(years)
        checks += [(age_text.isNotNull() & ~is_finite(years), layout.REASON_NOT_NUMERIC),
                   ((years < MIN_AGE) | (years > MAX_AGE), layout.REASON_OUT_OF_RANGE)]
    occupation = optional(fmt.occupation)
    if fmt.occupation is not None and fmt.occupation_coded:
        code = occupation.try_cast("int")
        occupation = F.try_element_at(F.array(*map(F.lit, ML_1M_OCCUPATIONS)), code + 1)
        checks += [(optional(fmt.occupation).isNotNull() & code.isNull(),
                    layout.REASON_NOT_NUMERIC),
                   (code.isNotNull() & ~code.between(0, len(ML_1M_OCCUPATIONS) - 1),
                    layout.REASON_OUT_OF_RANGE)]
    return _parse(lines, fmt.line, checks, {
        layout.USER_ID: user_id, layout.AGE_BUCKET: age_bucket,
        layout.GENDER: F.upper(optional(fmt.gender)), layout.OCCUPATION: occupation,
        layout.COUNTRY: optional(fmt.country)})


def parse_item_features(lines: DataFrame, fmt: ItemsFormat) -> tuple[DataFrame, DataFrame]:
    """(item_features, rejects) in layout.ITEM_FEATURES_SCHEMA (genres empty when none)."""
    item_id = _field(fmt.item)
    checks = [(_blank(item_id), layout.REASON_EMPTY_ID)]
    genres = F.array().cast("array<string>")
    if fmt.genres is not None:
        listed = _field(fmt.genres)
        genres = F.when(_blank(listed) | (listed == NO_GENRES), genres).otherwise(
            F.split(listed, "\\|", -1))
    elif fmt.genre_flags is not None:
        flags = [_field(fmt.genre_flags + n) for n in range(len(ML_100K_GENRES))]
        genres = F.filter(F.array(*[F.when(flag == "1", F.lit(name))
                                    for flag, name in zip(flags, ML_100K_GENRES, strict=True)]),
                          lambda genre: genre.isNotNull())
        checks.append((~F.forall(F.array(*flags), lambda flag: flag.isin("0", "1")),
                       layout.REASON_NOT_NUMERIC))
    return _parse(lines, fmt.line, checks, {
        layout.ITEM_ID: item_id, layout.TITLE: _or_null(_field(fmt.title)),
        layout.GENRES: genres})


def parse_tags(lines: DataFrame) -> tuple[DataFrame, DataFrame]:
    """HetRec tags.dat -> (tag_id, tag), rejects."""
    tag_id, tag = _field(0), _field(1)
    return _parse(lines, TAGS_LINE, [(_blank(tag_id) | _blank(tag), layout.REASON_EMPTY_ID)],
                  {"tag_id": tag_id, "tag": tag})


def parse_tag_assignments(lines: DataFrame) -> tuple[DataFrame, DataFrame]:
    """HetRec user_taggedartists.dat -> (item_id, tag_id), rejects."""
    ids = [_field(n) for n in range(3)]
    day, month, year = (_field(n).try_cast("int") for n in range(3, 6))
    return _parse(lines, TAG_ASSIGNMENTS_LINE, [
        (_blank(ids[0]) | _blank(ids[1]) | _blank(ids[2]), layout.REASON_EMPTY_ID),
        (day.isNull() | month.isNull() | year.isNull(), layout.REASON_NOT_NUMERIC),
        (~day.between(1, 31) | ~month.between(1, 12), layout.REASON_OUT_OF_RANGE),
    ], {layout.ITEM_ID: ids[1], "tag_id": ids[2]})


def attach_top_tags(items: DataFrame, assignments: DataFrame, tags: DataFrame, *,
                    n: int = TOP_TAGS) -> DataFrame:
    """Items' genres := their n most assigned tags (ties by tag text), most used first."""
    counted = (assignments.join(tags, "tag_id").groupBy(layout.ITEM_ID, "tag")
               .agg(F.count(F.lit(1)).alias("_n")))
    most_used = Window.partitionBy(layout.ITEM_ID).orderBy(F.col("_n").desc(), F.col("tag"))
    top = (counted.withColumn("_rank", F.row_number().over(most_used))
           .where(F.col("_rank") <= n)
           .groupBy(layout.ITEM_ID)
           .agg(F.sort_array(F.collect_list(F.struct("_rank", "tag"))).alias("_top")))
    with_tags = items.drop(layout.GENRES).join(top, layout.ITEM_ID, "left").withColumn(
        layout.GENRES, F.coalesce(F.transform("_top", lambda t: t["tag"]),
                                  F.array().cast("array<string>")))
    return conform(with_tags, layout.ITEM_FEATURES_SCHEMA)


def parse_test_negatives(lines: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The NCF paper's .test.negative -> (layout.PRESPLIT_TEST_SCHEMA rows, rejects).

    A line `(user,item) \\t neg1 \\t ...` gives the positive (label 1) and one row per
    negative (label 0); ids must be whole numbers, as in the paper's files.
    """
    pair = r"^\((\d+),(\d+)\)$"
    # Not F.trim itself: transform() would pass a two-argument function the index too.
    negatives = F.transform(F.slice(F.col(FIELDS), 2, 1 << 30),
                            lambda item: F.trim(item))  # noqa: PLW0108
    checks = [
        (~_field(0).rlike(pair), layout.REASON_NOT_NUMERIC),
        (F.exists(negatives, lambda item: item == ""), layout.REASON_EMPTY_ID),
        (~F.forall(negatives, lambda item: item.rlike(r"^\d+$")), layout.REASON_NOT_NUMERIC),
    ]
    kept, rejects = _parse(lines, TEST_NEGATIVES_LINE, checks, {
        layout.USER_ID: F.regexp_extract(_field(0), pair, 1),
        layout.ITEM_ID: F.regexp_extract(_field(0), pair, 2),
        "_negatives": negatives})
    positives = kept.select(layout.USER_ID, layout.ITEM_ID, F.lit(1).alias(layout.LABEL))
    negative_rows = kept.select(layout.USER_ID, F.explode("_negatives").alias(layout.ITEM_ID),
                                F.lit(0).alias(layout.LABEL))
    return conform(positives.unionByName(negative_rows), layout.PRESPLIT_TEST_SCHEMA), rejects
