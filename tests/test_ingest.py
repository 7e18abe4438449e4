"""jobs.ingest: every reject reason, reconciliation, and main() into a tmp lake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual

from jobs import layout
from jobs.ingest import IngestError, main, parse_movielens_100k
from tests.tiny_data import write_tiny_config, write_tiny_u_data

pytestmark = pytest.mark.spark

GOOD = [
    # (line, expected (user_id, item_id, unix seconds, value))
    ("196\t242\t3\t881250949", ("196", "242", 881250949, 3.0)),
    ("1\t2\t5\t0\r", ("1", "2", 0, 5.0)),  # Windows line end, the epoch itself
    (" 7 \t 8 \t1.5\t100", ("7", "8", 100, 1.5)),  # fields are trimmed
]
BAD = [
    ("1\t2\t3", layout.REASON_FIELD_COUNT),
    ("1\t2\t3\t4\t5", layout.REASON_FIELD_COUNT),
    ("", layout.REASON_FIELD_COUNT),
    ("1,2,3,881250949", layout.REASON_FIELD_COUNT),
    ("\t2\t3\t881250949", layout.REASON_EMPTY_ID),
    ("1\t \t3\t881250949", layout.REASON_EMPTY_ID),
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


def _lines(spark: SparkSession, lines: list[str]) -> DataFrame:
    return spark.createDataFrame([("u.data", line) for line in lines],
                                 f"{layout.SOURCE_FILE} string, {layout.LINE} string")


def _fields(df: DataFrame) -> list[tuple[str, str]]:
    return [(field.name, field.dataType.simpleString()) for field in df.schema.fields]


def _seconds(interactions: DataFrame) -> DataFrame:
    return interactions.withColumn(layout.TS, F.unix_seconds(layout.TS))


def test_parse_keeps_good_lines_and_rejects_each_bad_one_with_its_reason(
        spark: SparkSession) -> None:
    lines = _lines(spark, [line for line, _ in GOOD] + [line for line, _ in BAD])
    interactions, rejects = parse_movielens_100k(lines, min_value=1, max_value=5)

    schema = StructType.fromDDL(layout.ddl(layout.INTERACTIONS_SCHEMA))
    assert _fields(interactions) == [(f.name, f.dataType.simpleString()) for f in schema]
    assert _fields(rejects) == [(name, dtype) for name, dtype in layout.REJECTS_SCHEMA]
    assertDataFrameEqual(
        _seconds(interactions),
        spark.createDataFrame([row for _, row in GOOD],
                              "user_id string, item_id string, ts long, value double"))
    assertDataFrameEqual(
        rejects, spark.createDataFrame([("u.data", line, reason) for line, reason in BAD],
                                       layout.ddl(layout.REJECTS_SCHEMA)))
    assert {reason for _, reason in BAD} == {
        layout.REASON_FIELD_COUNT, layout.REASON_EMPTY_ID, layout.REASON_NOT_NUMERIC,
        layout.REASON_BAD_TIMESTAMP, layout.REASON_OUT_OF_RANGE}
    assert interactions.count() + rejects.count() == lines.count()


def test_no_range_check_without_bounds(spark: SparkSession) -> None:
    lines = _lines(spark, ["1\t2\t0\t10", "1\t3\t-7.5\t10", "1\t4\t1e6\t10"])
    interactions, rejects = parse_movielens_100k(lines, min_value=None, max_value=None)
    assert sorted(r[layout.VALUE] for r in interactions.collect()) == [-7.5, 0.0, 1e6]
    assert rejects.count() == 0


def _run(config: Path, lake: Path, raw_dir: Path, tmp_path: Path) -> int:
    return main(["--config", str(config), "--logical-date", "2026-11-23",
                 "--lake-root", str(lake), "--raw-dir", str(raw_dir),
                 "--cache-dir", str(tmp_path / "cache")])


def test_main_writes_interactions_rejects_and_manifest(spark: SparkSession,
                                                       tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file, n_users=6,
                             bad_lines=("1\t2\tthree\t880000000", "garbage", "1\t2\t9\t5"))
    config = write_tiny_config(tmp_path / "configs", raw_file)
    lake = tmp_path / "lake"

    assert _run(config, lake, raw_dir, tmp_path) == 0

    paths = layout.LakePaths(lake, "tiny", "2026-11-23")
    interactions = spark.read.parquet(str(paths.path(layout.INTERACTIONS)))
    assertDataFrameEqual(
        _seconds(interactions),
        spark.createDataFrame([(u, i, t, float(r)) for u, i, r, t in rows],
                              "user_id string, item_id string, ts long, value double"))
    rejects = spark.read.parquet(str(paths.path(layout.REJECTS)))
    assert sorted(r[layout.REASON] for r in rejects.collect()) == [
        layout.REASON_NOT_NUMERIC, layout.REASON_OUT_OF_RANGE, layout.REASON_FIELD_COUNT]
    assert {r[layout.SOURCE_FILE] for r in rejects.collect()} == {str(raw_file)}

    entry = json.loads(paths.manifest.read_text())["ingest"]
    assert entry["input_rows"] == len(rows) + 3
    assert entry["kept"] == len(rows)
    assert entry["rejected"] == 3
    assert entry["input_rows"] == entry["kept"] + entry["rejected"]
    assert entry["rejected_by_reason"] == {
        layout.REASON_FIELD_COUNT: 1, layout.REASON_EMPTY_ID: 0, layout.REASON_NOT_NUMERIC: 1,
        layout.REASON_BAD_TIMESTAMP: 0, layout.REASON_OUT_OF_RANGE: 1}
    assert entry["source_file"] == str(raw_file)
    assert entry["sha256"] == layout.sha256_file(raw_file)
    assert entry["params"] == {"min_value": 1.0, "max_value": 5.0}
    # Part files are named without a job id, so re-runs give the same checksum.
    assert [p.name for p in paths.path(layout.INTERACTIONS).glob("part-*")] == [
        "part-00000.snappy.parquet"]


def test_unusable_file_raises_and_publishes_nothing(spark: SparkSession,
                                                    tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    write_tiny_u_data(raw_file, n_users=4)
    lake = tmp_path / "lake"
    assert _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path) == 0
    base = layout.LakePaths(lake, "tiny", "2026-11-23").base
    before = {name: layout.sha256_dir(base / name)
              for name in (layout.INTERACTIONS, layout.REJECTS)}

    raw_file.write_text("")
    with pytest.raises(IngestError, match="empty") as error:
        _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path)
    assert str(raw_file) in str(error.value) and "tab-separated" in str(error.value)

    raw_file.write_text("1,10,4,881250949\n2,20,3,891717742\n")  # wrong separator
    with pytest.raises(IngestError, match="none of its 2 lines parses") as error:
        _run(write_tiny_config(tmp_path / "configs", raw_file), lake, raw_dir, tmp_path)
    assert str(raw_file) in str(error.value) and "tab-separated" in str(error.value)

    after = {name: layout.sha256_dir(base / name) for name in before}
    assert after == before
    assert sorted(p.name for p in base.iterdir()) == [
        layout.MANIFEST, layout.INTERACTIONS, layout.REJECTS]  # no staged leftovers


def test_logical_date_must_be_yyyy_mm_dd(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "c.yaml"), "--logical-date", "2026-11-3"])
    assert exit_info.value.code == 2
