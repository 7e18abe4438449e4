"""jobs.readers: every source format on tiny lines in its real shape, every reject reason,
encodings, headers, duplicates; the real files when the shared data folder is there."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, readers
from jobs.formats import FORMATS
from jobs.lake import layout
from jobs.lake.config import FORMATS_WITHOUT_TIMESTAMPS, SOURCE_FORMATS

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]
RATINGS = (f"{layout.USER_ID} string, {layout.ITEM_ID} string, ts_seconds long, "
           f"{layout.VALUE} double")


def _lines(spark: SparkSession, lines: list[str], source: str = "f") -> DataFrame:
    return spark.createDataFrame([(source, line) for line in lines],
                                 f"{layout.SOURCE_FILE} string, {layout.LINE} string")


def _raw(spark: SparkSession, path: Path) -> DataFrame:
    """A file as ingest reads it: one row per line, the string holding the line's bytes."""
    return spark.read.text(str(path)).select(F.lit(path.name).alias(layout.SOURCE_FILE),
                                             F.col("value").alias(layout.LINE))


def _ratings(interactions: DataFrame) -> DataFrame:
    return interactions.select(layout.USER_ID, layout.ITEM_ID,
                               F.unix_seconds(layout.TS).alias("ts_seconds"), layout.VALUE)


def _reasons(rejects: DataFrame) -> list[tuple[str, str]]:
    return sorted((r[layout.LINE], r[layout.REASON]) for r in rejects.collect())


def _parse(spark: SparkSession, fmt: str, lines: list[str], *, role: str = "ratings",
           min_value: float | None = None, max_value: float | None = None,
           ts_before: datetime | None = None) -> tuple[DataFrame, DataFrame]:
    return readers.parse_interactions(_lines(spark, lines), FORMATS[fmt].interactions[role],
                                      min_value=min_value, max_value=max_value,
                                      ts_before=ts_before)


def test_every_config_format_has_a_reader() -> None:
    assert set(FORMATS) == set(SOURCE_FORMATS)
    untimed = {name for name, fmt in FORMATS.items()
               if all(spec.ts is None for spec in fmt.interactions.values())}
    assert untimed == set(FORMATS_WITHOUT_TIMESTAMPS)
    for name, fmt in FORMATS.items():
        assert set(fmt.interactions) <= set(SOURCE_FORMATS[name][0]), name


# --- MovieLens 100K: every reject reason of an interactions line ------------------------

GOOD = [
    # (line, expected (user_id, item_id, unix seconds, value))
    ("196\t242\t3\t881250949", ("196", "242", 881250949, 3.0)),
    ("1\t2\t5\t0\r", ("1", "2", 0, 5.0)),  # Windows line end, the epoch itself
    (" 7 \t 8 \t1.5\t100", ("7", "8", 100, 1.5)),  # fields are trimmed
    ("999999999999999999\t1\t4\t100", ("999999999999999999", "1", 100, 4.0)),  # 18 digits
]
BAD = [
    ("1\t2\t3", layout.REASON_FIELD_COUNT),
    ("1\t2\t3\t4\t5", layout.REASON_FIELD_COUNT),
    ("", layout.REASON_FIELD_COUNT),
    ("1,2,3,881250949", layout.REASON_FIELD_COUNT),
    ("\t2\t3\t881250949", layout.REASON_EMPTY_ID),
    ("1\t \t3\t881250949", layout.REASON_EMPTY_ID),
    ("-3\t2\t3\t881250949", layout.REASON_BAD_ID),
    ("99999999999999999999\t2\t3\t881250949", layout.REASON_BAD_ID),  # 20 digits
    ("1\tx\t3\t881250949", layout.REASON_BAD_ID),
    ("0\t2\t3\t881250949", layout.REASON_BAD_ID),  # MovieLens ids start at 1
    ("1.5\t2\t3\t881250949", layout.REASON_BAD_ID),
    ("007\t2\t3\t881250949", layout.REASON_BAD_ID),  # would be a second user 7
    ("1\t+2\t3\t881250949", layout.REASON_BAD_ID),
    ("abc\t2\tthree\t881250949", layout.REASON_BAD_ID),  # before not_numeric
    ("1\t2\tthree\t881250949", layout.REASON_NOT_NUMERIC),
    ("1\t2\tNaN\t881250949", layout.REASON_NOT_NUMERIC),
    ("1\t2\t\t881250949", layout.REASON_NOT_NUMERIC),
    ("1\t2\t3\tyesterday", layout.REASON_NOT_NUMERIC),
    ("1\t2\t3\t-5", layout.REASON_BAD_TIMESTAMP),
    ("1\t2\t3\t881250949.5", layout.REASON_BAD_TIMESTAMP),
    ("1\t2\t3\t999999999999", layout.REASON_BAD_TIMESTAMP),  # past year 9999
    ("1\t2\t0\t881250949", layout.REASON_OUT_OF_RANGE),
    ("1\t2\t5.5\t881250949", layout.REASON_OUT_OF_RANGE),
]


def test_ml_100k_keeps_good_lines_and_rejects_each_bad_one_with_its_reason(
        spark: SparkSession) -> None:
    interactions, rejects = _parse(spark, "movielens-100k", [line for line, _ in GOOD + BAD],
                                   min_value=1, max_value=5)
    canonical = interactions.select(*layout.columns(layout.INTERACTIONS_SCHEMA))
    schema = StructType.fromDDL(layout.ddl(layout.INTERACTIONS_SCHEMA))
    assert canonical.schema.simpleString() == schema.simpleString()
    assertDataFrameEqual(_ratings(interactions),
                         spark.createDataFrame([row for _, row in GOOD], RATINGS))
    assertDataFrameEqual(rejects, spark.createDataFrame(
        [("f", line, reason) for line, reason in BAD], layout.ddl(layout.REJECTS_SCHEMA)))


def test_formats_number_their_ids_except_last_fm_360k_and_1k() -> None:
    first_ids = {name: {spec.first_id for spec in fmt.interactions.values()}
                 for name, fmt in FORMATS.items()}
    assert first_ids == {"movielens-100k": {1}, "movielens-dat": {1}, "movielens-csv": {1},
                         "lastfm-2k": {1}, "ncf-presplit": {0},
                         "lastfm-360k": {None}, "lastfm-1k": {None}}


@pytest.mark.parametrize(("fmt", "good", "bad"), [
    ("movielens-dat", "1::1193::5::978300760", "1::x::5::978300760"),
    ("movielens-csv", "1,1,4.0,964982703", "-3,1,4.0,964982703"),
    ("lastfm-2k", "2\t51\t13883", "99999999999999999999\t51\t13883"),
    ("ncf-presplit", "0\t0\t5\t100", "-1\t0\t5\t100"),  # the NCF files count from 0
])
def test_numbered_ids_reject_bad_ids(spark: SparkSession, fmt: str, good: str,
                                     bad: str) -> None:
    role = "train" if fmt == "ncf-presplit" else "ratings"
    interactions, rejects = _parse(spark, fmt, [good, bad], role=role)
    assert interactions.count() == 1
    assert _reasons(rejects) == [(bad, layout.REASON_BAD_ID)]


def test_last_fm_text_ids_are_not_numbers(spark: SparkSession) -> None:
    ids = ["-3", "99999999999999999999", "x", "user_000001"]
    interactions, rejects = _parse(spark, "lastfm-1k", [
        f"{user}\t2009-05-04T23:08:57Z\t{item}\tDeep Dish\t\tTrack"
        for user, item in zip(ids, reversed(ids), strict=True)])
    assert rejects.count() == 0
    assert sorted(r[layout.USER_ID] for r in interactions.collect()) == sorted(ids)
    assert sorted(r[layout.ITEM_ID] for r in interactions.collect()) == sorted(ids)


def test_events_from_the_future_are_rejected_at_the_cut(spark: SparkSession) -> None:
    cut = datetime(2026, 11, 24, tzinfo=UTC)  # the end of logical date 2026-11-23
    last_second = int(cut.timestamp()) - 1
    interactions, rejects = _parse(spark, "movielens-100k", [
        f"1\t2\t3\t{last_second}", f"1\t3\t3\t{int(cut.timestamp())}",
        "1\t4\t3\t10000000000",  # 2286-11-20
        "1\t5\t9\t10000000000"], max_value=5, ts_before=cut)  # future before out of range
    assert [r["ts_seconds"] for r in _ratings(interactions).collect()] == [last_second]
    assert [reason for _, reason in _reasons(rejects)] == [layout.REASON_FUTURE_TS] * 3
    interactions, rejects = _parse(spark, "lastfm-1k", [
        "u\t2026-11-23T23:59:59Z\ta\tA\t\tt", "u\t2286-11-20T17:46:40Z\ta\tA\t\tt"],
        ts_before=cut)
    assert interactions.count() == 1
    assert [reason for _, reason in _reasons(rejects)] == [layout.REASON_FUTURE_TS]
    interactions, rejects = _parse(spark, "lastfm-2k", ["2\t51\t3"], ts_before=cut)
    assert (interactions.count(), rejects.count()) == (1, 0)  # no time, nothing to cut
    with pytest.raises(ValueError, match="time zone"):
        _parse(spark, "movielens-100k", ["1\t2\t3\t4"], ts_before=datetime(2026, 11, 24))


def test_no_range_check_without_bounds(spark: SparkSession) -> None:
    interactions, rejects = _parse(spark, "movielens-100k",
                                   ["1\t2\t0\t10", "1\t3\t-7.5\t10", "1\t4\t1e6\t10"])
    assert sorted(r[layout.VALUE] for r in interactions.collect()) == [-7.5, 0.0, 1e6]
    assert rejects.count() == 0


def test_ml_100k_users_and_items(spark: SparkSession) -> None:
    fmt = FORMATS["movielens-100k"]
    users, rejects = readers.parse_user_features(_lines(spark, [
        "1|24|M|technician|85711", "2|17|F|other|94043", "3|56|M|writer|32067",
        "4|old|M|writer|1", "5|0|M|writer|1", "6|24|M|writer"]), fmt.users)  # type: ignore[arg-type]
    assert sorted(map(tuple, users.collect())) == [
        ("1", "18-24", "M", "technician", None), ("2", "<18", "F", "other", None),
        ("3", "56+", "M", "writer", None)]
    assert [reason for _, reason in _reasons(rejects)] == [
        layout.REASON_NOT_NUMERIC, layout.REASON_OUT_OF_RANGE, layout.REASON_FIELD_COUNT]
    flags = ["0"] * 19
    flags[1] = flags[18] = "1"  # Action, Western
    items, rejects = readers.parse_item_features(_lines(spark, [
        "|".join(["543", "Misérables, Les (1995)", "01-Jan-1995", "", "http://x", *flags]),
        "|".join(["267", "unknown", "", "", "", "1", *["0"] * 18]),
        "|".join(["9", "Bad flags", "", "", "", "2", *["0"] * 18])]), fmt.items)  # type: ignore[arg-type]
    assert sorted((r[0], r[1], list(r[2])) for r in items.collect()) == [
        ("267", "unknown", ["unknown"]), ("543", "Misérables, Les (1995)", ["Action", "Western"])]
    assert [reason for _, reason in _reasons(rejects)] == [layout.REASON_NOT_NUMERIC]


# --- encodings and headers ----------------------------------------------------------------

def test_decode_lines_rejects_invalid_utf8_keeping_its_bytes(spark: SparkSession,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    bad = b"2,3,4.0,5\xff\xfe"
    path.write_bytes(b"userId,movieId,rating,timestamp\r\n1,2,3.5,4\r\n" + bad + b"\r\n"
                     + "3,4,5.0,6 na\u00efve\r\n".encode())
    lines, rejects = readers.decode_lines(_raw(spark, path), encoding="utf-8",
                                          header="userId,movieId,rating,timestamp")
    assert sorted(r[layout.LINE] for r in lines.collect()) == ["1,2,3.5,4", "3,4,5.0,6 naïve"]
    (reject,) = rejects.collect()
    assert reject[layout.REASON] == layout.REASON_BAD_ENCODING
    assert reject[layout.LINE].encode("latin-1") == bad  # byte for byte


def test_decode_lines_reads_latin1(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_bytes("1::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1")
                     + b"2::Caf\xe9::(no genres listed)\n")
    lines, rejects = readers.decode_lines(_raw(spark, path), encoding="latin-1", header=None)
    items, item_rejects = readers.parse_item_features(lines, FORMATS["movielens-dat"].items)  # type: ignore[arg-type]
    assert sorted((r[0], r[1], list(r[2])) for r in items.collect()) == [
        ("1", "Misérables, Les (1995)", ["Drama", "Musical"]), ("2", "Café", [])]
    assert rejects.count() == item_rejects.count() == 0


# --- MovieLens 1M / 10M (::), 20M / 25M / latest (csv) -------------------------------------

def test_movielens_dat_ratings_users_and_movies(spark: SparkSession) -> None:
    interactions, rejects = _parse(spark, "movielens-dat", [
        "1::1193::5::978300760", "6040::2019::4.5::956703932", "1::2::3", "1\t2\t3\t4"],
        min_value=0.5, max_value=5)
    assertDataFrameEqual(_ratings(interactions), spark.createDataFrame(
        [("1", "1193", 978300760, 5.0), ("6040", "2019", 956703932, 4.5)], RATINGS))
    assert {reason for _, reason in _reasons(rejects)} == {layout.REASON_FIELD_COUNT}
    users, rejects = readers.parse_user_features(_lines(spark, [
        "1::F::1::10::48067", "2::M::56::16::70072", "3::M::30::16::1", "4::M::25::21::1",
        "5::M::25::x::1"]), FORMATS["movielens-dat"].users)  # type: ignore[arg-type]
    assert sorted(map(tuple, users.collect())) == [
        ("1", "<18", "F", "K-12 student", None), ("2", "56+", "M", "self-employed", None)]
    assert _reasons(rejects) == [("3::M::30::16::1", layout.REASON_OUT_OF_RANGE),
                                 ("4::M::25::21::1", layout.REASON_OUT_OF_RANGE),
                                 ("5::M::25::x::1", layout.REASON_NOT_NUMERIC)]


def test_movielens_csv_quoted_titles(spark: SparkSession) -> None:
    interactions, _ = _parse(spark, "movielens-csv", ["1,1,4.0,964982703", "1,3,0.5,964981247"])
    assert interactions.count() == 2
    items, rejects = readers.parse_item_features(_lines(spark, [
        '11,"American President, The (1995)",Comedy|Drama|Romance',
        '1,Toy Story (1995),Adventure|Animation',
        '2,"Dr. Strangelove, or: ""How I Learned"" (1964)",Comedy|War',
        '3,No genres (2018),(no genres listed)',
        '4,"Unclosed, quote,Drama']), FORMATS["movielens-csv"].items)  # type: ignore[arg-type]
    assert sorted((r[0], r[1], list(r[2])) for r in items.collect()) == [
        ("1", "Toy Story (1995)", ["Adventure", "Animation"]),
        ("11", "American President, The (1995)", ["Comedy", "Drama", "Romance"]),
        ("2", 'Dr. Strangelove, or: "How I Learned" (1964)', ["Comedy", "War"]),
        ("3", "No genres (2018)", [])]
    assert [reason for _, reason in _reasons(rejects)] == [layout.REASON_FIELD_COUNT]


# --- last.fm ------------------------------------------------------------------------------

def test_lastfm_360k_plays_no_time_empty_mbid_falls_back_to_the_name(
        spark: SparkSession) -> None:
    sha = "00000c289a1829a808ac09c00daf10bc3c4e223b"
    interactions, rejects = _parse(spark, "lastfm-360k", [
        f"{sha}\t3bd73256-3905-4f3a-97e2-8b341527f805\tbetty blowtorch\t2137",
        f"{sha}\t\tdie Ärzte\t1099",
        f"{sha}\t\t\t12",
        f"{sha}\tabc\tx\tmany",
        f"{sha}\tabc\tx\t0"], min_value=1)
    assert sorted((r[layout.ITEM_ID], r[layout.TS], r[layout.VALUE], r[layout.TITLE])
                  for r in interactions.collect()) == [
        ("3bd73256-3905-4f3a-97e2-8b341527f805", None, 2137.0, "betty blowtorch"),
        ("name:die Ärzte", None, 1099.0, "die Ärzte")]
    assert [reason for _, reason in _reasons(rejects)] == [
        layout.REASON_EMPTY_ID, layout.REASON_OUT_OF_RANGE, layout.REASON_NOT_NUMERIC]
    titles = readers.item_titles(interactions)
    assert sorted(map(tuple, titles.select(layout.ITEM_ID, layout.TITLE).collect()))[1] == (
        "name:die Ärzte", "die Ärzte")


def test_lastfm_1k_iso_listens_and_profile(spark: SparkSession) -> None:
    user = "user_000001"
    interactions, rejects = _parse(spark, "lastfm-1k", [
        f"{user}\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tFuck Me",
        f"{user}\t2009-05-04T13:54:10Z\t\t坂本龍一\t\tComposition 0919",
        f"{user}\t2009-05-04 13:54\tabc\tx\t\ty",
        f"{user}\t\tabc\tx\t\ty",
        f"{user}\t2009-05-04T13:54:10Z\tabc\tx"])
    assertDataFrameEqual(_ratings(interactions), spark.createDataFrame([
        (user, "f1b1cf71-bd35-4e99-8624-24a6e15f133a",
         int(datetime(2009, 5, 4, 23, 8, 57, tzinfo=UTC).timestamp()), 1.0),
        (user, "name:坂本龍一", int(datetime(2009, 5, 4, 13, 54, 10, tzinfo=UTC).timestamp()),
         1.0)], RATINGS))
    assert [reason for _, reason in _reasons(rejects)] == [
        layout.REASON_BAD_TIMESTAMP, layout.REASON_BAD_TIMESTAMP, layout.REASON_FIELD_COUNT]
    users, rejects = readers.parse_user_features(_lines(spark, [
        "user_000001\tm\t\tJapan\tAug 13, 2006", "user_000003\tf\t22\tUnited States\t",
        "user_000004\t\t-3\t\t", "\tm\t22\tPeru\t"]), FORMATS["lastfm-1k"].users)  # type: ignore[arg-type]
    assert sorted(map(tuple, users.collect())) == [
        ("user_000001", None, "M", None, "Japan"),
        ("user_000003", "18-24", "F", None, "United States")]
    assert [reason for _, reason in _reasons(rejects)] == [
        layout.REASON_EMPTY_ID, layout.REASON_OUT_OF_RANGE]


def test_lastfm_2k_top_tags_become_genres(spark: SparkSession) -> None:
    items, _ = readers.parse_item_features(_lines(spark, [
        "1\tMALICE MIZER\thttp://a\thttp://b", "2\tDiary of Dreams\thttp://c\t"]),
        FORMATS["lastfm-2k"].items)  # type: ignore[arg-type]
    tags, tag_rejects = readers.parse_tags(_lines(spark, ["1\tmetal", "2\tj-rock",
                                                          "3\tgothic", "4\t"]))
    assignments, rejects = readers.parse_tag_assignments(_lines(spark, [
        "2\t1\t2\t1\t4\t2009", "3\t1\t2\t1\t4\t2009", "2\t1\t3\t1\t4\t2009",
        "2\t1\t1\t1\t4\t2009", "2\t1\t1\t40\t4\t2009", "2\t1\t1\tone\t4\t2009"]))
    with_tags = readers.attach_top_tags(items, assignments, tags, n=2)
    assert sorted((r[0], r[1], list(r[2])) for r in with_tags.collect()) == [
        ("1", "MALICE MIZER", ["j-rock", "gothic"]), ("2", "Diary of Dreams", [])]
    assert [reason for _, reason in _reasons(tag_rejects)] == [layout.REASON_EMPTY_ID]
    assert [reason for _, reason in _reasons(rejects)] == [
        layout.REASON_OUT_OF_RANGE, layout.REASON_NOT_NUMERIC]


# --- the NCF paper's pre-split files ------------------------------------------------------

def test_presplit_test_negatives(spark: SparkSession) -> None:
    rows, rejects = readers.parse_test_negatives(_lines(spark, [
        "(0,25)\t1064\t174", "(1,133)\t1072\r", "0,25\t1", "(2,3)", "(3,4)\t5\tx"]))
    assert sorted(map(tuple, rows.collect())) == [
        ("0", "1064", 0), ("0", "174", 0), ("0", "25", 1), ("1", "1072", 0), ("1", "133", 1)]
    assert _reasons(rejects) == [("(2,3)", layout.REASON_FIELD_COUNT),
                                 ("(3,4)\t5\tx", layout.REASON_NOT_NUMERIC),
                                 ("0,25\t1", layout.REASON_NOT_NUMERIC)]


# --- duplicates ---------------------------------------------------------------------------

def test_collapse_duplicates_max_for_ratings_sum_for_plays(spark: SparkSession) -> None:
    ts = datetime(2009, 1, 1, tzinfo=UTC)
    events = spark.createDataFrame(
        [("u", "a", ts, 3.0), ("u", "a", ts, 5.0), ("u", "a", None, 2.0), ("u", "a", None, 4.0),
         ("u", "b", ts, 1.0)], layout.ddl(layout.INTERACTIONS_SCHEMA))
    for combine, expected in (("max", [5.0, 4.0]), ("sum", [8.0, 6.0])):
        got = {(r[layout.ITEM_ID], r[layout.TS] is None): (r[layout.VALUE], r[readers.EVENTS])
               for r in readers.collapse_duplicates(events, combine=combine).collect()}
        assert got == {("a", False): (expected[0], 2), ("a", True): (expected[1], 2),
                       ("b", False): (1.0, 1)}, combine


# --- real files (../shared/data) -----------------------------------------------------------

def _ingest_real(config: Path, shared_data: Path, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    assert ingest.main(["--config", str(config), "--logical-date", "2026-11-23",
                        "--lake-root", str(tmp_path / "lake"), "--raw-dir", str(shared_data),
                        "--cache-dir", str(tmp_path / "cache")]) == 0
    name = config.stem
    base = layout.LakePaths(tmp_path / "lake", name, "2026-11-23").base
    return json.loads((base / layout.MANIFEST).read_text())["ingest"], base


def _figures(spark: SparkSession, name: str, entry: dict[str, Any],
             base: Path) -> tuple[int, int, int, int, int]:
    interactions = spark.read.parquet(str(base / layout.INTERACTIONS))
    n_users = interactions.select(layout.USER_ID).distinct().count()
    n_items = interactions.select(layout.ITEM_ID).distinct().count()
    features = {k: entry[k]["kept"] for k in (layout.USER_FEATURES, layout.ITEM_FEATURES)
                if k in entry}
    print(f"\n{name}: {entry['kept']} kept, {entry['rejected']} rejected, "
          f"{entry['duplicates_collapsed']} duplicates collapsed, {n_users} users, "
          f"{n_items} items; features kept: {features}")
    return entry["kept"], entry["rejected"], entry["duplicates_collapsed"], n_users, n_items


@pytest.mark.slow
def test_real_ml_100k(spark: SparkSession, shared_data: Path, tmp_path: Path) -> None:
    entry, base = _ingest_real(REPO / "configs" / "ml-100k.yaml", shared_data, tmp_path)
    assert _figures(spark, "ml-100k", entry, base) == (100_000, 0, 0, 943, 1682)
    assert entry[layout.USER_FEATURES]["kept"] == 943
    assert entry[layout.ITEM_FEATURES]["kept"] == 1682
    titles = spark.read.parquet(str(base / layout.ITEM_FEATURES)).where("item_id = '543'")
    assert titles.first()[layout.TITLE] == "Misérables, Les (1995)"  # type: ignore[index]


@pytest.mark.slow
def test_real_ml_latest_small(spark: SparkSession, shared_data: Path, tmp_path: Path) -> None:
    entry, base = _ingest_real(REPO / "configs" / "ml-latest-small.yaml", shared_data, tmp_path)
    assert _figures(spark, "ml-latest-small", entry, base) == (100_836, 0, 0, 610, 9724)
    assert entry[layout.ITEM_FEATURES]["kept"] == 9742


@pytest.mark.slow
def test_real_lastfm_2k(spark: SparkSession, shared_data: Path, tmp_path: Path) -> None:
    entry, base = _ingest_real(REPO / "configs" / "lastfm-2k.yaml", shared_data, tmp_path)
    assert _figures(spark, "lastfm-2k", entry, base) == (92_834, 0, 0, 1892, 17_632)
    assert entry["files"]["item_tags"]["input_rows"] == 186_479
    assert entry["files"]["tags"]["input_rows"] == 11_946
    interactions = spark.read.parquet(str(base / layout.INTERACTIONS))
    assert interactions.where(F.col(layout.TS).isNotNull()).count() == 0


@pytest.mark.slow
def test_real_lastfm_1k_sample(spark: SparkSession, shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "lastfm-1k.yaml"
    sample = "lastfm-1k/userid-timestamp-artid-artname-traid-traname.first5000.tsv"
    text = (REPO / "configs" / "lastfm-1k.yaml").read_text()
    text = text.replace("lastfm-1k/userid-timestamp-artid-artname-traid-traname.tsv", sample)
    config.write_text(text.replace("sha256: fill-in-on-first-download",
                                   f"sha256: {layout.sha256_file(shared_data / sample)}"))
    entry, base = _ingest_real(config, shared_data, tmp_path)
    kept, rejected, duplicates, n_users, _ = _figures(spark, "lastfm-1k sample", entry, base)
    assert kept + rejected + duplicates == 5000 and rejected == 0
    assert n_users == 2  # the sample's odd last 3 lines say user_000002
    assert entry[layout.USER_FEATURES]["input_rows"] == 992
