"""jobs.spark: where the master comes from, the session settings, deterministic writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.testing import assertDataFrameEqual

from jobs.lake import layout
from jobs.spark import (
    FALLBACK_MASTER,
    KEY_HASH,
    arrow_schema,
    get_spark,
    partition_by_key,
    read_parquet,
    resolve_master,
    write_batches,
    write_parquet,
)


def test_master_explicit_then_spark_submit_then_fallback() -> None:
    submitted = {"PYSPARK_GATEWAY_PORT": "41234"}
    assert resolve_master("local[2]", submitted) == "local[2]"
    assert resolve_master(None, submitted) is None  # spark-submit's --master stands
    assert resolve_master(None, {}) == FALLBACK_MASTER == "local[*]"


@pytest.mark.spark
def test_session_is_utc_and_writes_micros(spark: SparkSession) -> None:
    session = get_spark("again", conf={"spark.sql.session.timeZone": "Europe/Paris"})
    assert session is spark  # the running session is reused
    assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    assert session.conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"


@pytest.mark.spark
def test_write_parquet_is_byte_stable_across_partitionings(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    rows = [(u, i, u % 2) for u in range(30) for i in range(4)]
    df = spark.createDataFrame(rows, layout.ddl(layout.PAIRS_SCHEMA))
    write_parquet(df.repartition(5), tmp_path / "a", files=2, key=layout.USER_IDX,
                  sort_by=[layout.USER_IDX, layout.ITEM_IDX])
    write_parquet(df.coalesce(1), tmp_path / "b", files=2, key=layout.USER_IDX,
                  sort_by=[layout.USER_IDX, layout.ITEM_IDX])
    assert sorted(p.name for p in (tmp_path / "a").glob("part-*")) == [
        "part-00000.snappy.parquet", "part-00001.snappy.parquet"]
    assert layout.sha256_dir(tmp_path / "a") == layout.sha256_dir(tmp_path / "b")
    with pytest.raises(ValueError, match="key"):
        write_parquet(df, tmp_path / "c", files=2)


@pytest.mark.spark
def test_partition_by_key_then_aggregate_writes_what_write_parquet_would(
        spark: SparkSession, tmp_path: Path) -> None:
    rows = [(f"u{u}", f"i{i % 5}", i) for u in range(40) for i in range(7)]
    df = spark.createDataFrame(rows, "user_id string, item_id string, n int").repartition(3)

    def collapse(frame, *keys):  # type: ignore[no-untyped-def]
        return frame.groupBy(*keys, "user_id", "item_id").agg(F.sum("n").alias("n"))

    sort_by = ["user_id", "item_id"]
    write_parquet(collapse(df), tmp_path / "plain", files=3, key="user_id", sort_by=sort_by)
    by_user = collapse(partition_by_key(df, 3, "user_id"), KEY_HASH)
    # One shuffle by key: the aggregation groups by the partitioning's key as well.
    plan = by_user._jdf.queryExecution().executedPlan().toString()
    assert plan.count("Exchange hashpartitioning") == 1, plan
    write_parquet(by_user.drop(KEY_HASH), tmp_path / "one-shuffle", files=3, key="user_id",
                  sort_by=sort_by, partitioned=True)
    assert _part_names(tmp_path / "one-shuffle") == _part_names(tmp_path / "plain")
    assert layout.sha256_dir(tmp_path / "one-shuffle") == layout.sha256_dir(tmp_path / "plain")


def _part_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.spark
def test_write_parquet_keeps_the_lake_dtypes_for_spark_and_pyarrow(spark: SparkSession,
                                                                    tmp_path: Path) -> None:
    interactions = spark.createDataFrame(
        [("u1", "i1", datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), 4.5),
         ("u2", "i2", None, 1.0)], layout.ddl(layout.INTERACTIONS_SCHEMA))
    pairs = spark.createDataFrame([(1, 2, 1), (3, 4, 0)], layout.ddl(layout.PAIRS_SCHEMA))
    features = spark.createDataFrame([("i1", "Heat (1995)", ["Action", "Crime"]),
                                      ("i2", None, [])], layout.ddl(layout.ITEM_FEATURES_SCHEMA))
    for name, df, schema in (("interactions", interactions, layout.INTERACTIONS_SCHEMA),
                             ("pairs", pairs, layout.PAIRS_SCHEMA),
                             ("features", features, layout.ITEM_FEATURES_SCHEMA)):
        write_parquet(df, tmp_path / name, files=1, sort_by=[layout.columns(schema)[0]])
        back = read_parquet(spark, tmp_path / name)
        assert [(f.name, f.dataType.simpleString()) for f in back.schema] == list(schema)
        assertDataFrameEqual(back, df)
        table = pq.read_table(tmp_path / name / "part-00000.snappy.parquet")
        expected = layout.arrow_schema(schema)
        assert table.schema.names == expected.names
        for field, want in zip(table.schema, expected, strict=True):
            if pa.types.is_timestamp(want.type):  # UTC instants, as Spark's writer marks them
                assert field.type == pa.timestamp("us", tz="UTC")
            elif pa.types.is_list(want.type):
                assert field.type.value_type == want.type.value_type
            else:
                assert field.type == want.type, field.name
    table = pq.read_table(tmp_path / "interactions")  # the folder: _SUCCESS is skipped
    assert table.column(layout.TS).to_pylist() == [
        datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), None]
    assert table.column(layout.VALUE).to_pylist() == [4.5, 1.0]
    metadata = pq.read_metadata(tmp_path / "pairs" / "part-00000.snappy.parquet")
    assert metadata.row_group(0).column(0).compression == "SNAPPY"


@pytest.mark.spark
def test_write_parquet_keeps_nullability(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.range(4).select(F.col("id").cast("int").alias(layout.USER_IDX),
                               F.lit(None).cast("int").alias(layout.ITEM_IDX))
    assert [f.nullable for f in df.schema] == [False, True]
    write_parquet(df, tmp_path / "n", files=1)
    schema = pq.read_schema(tmp_path / "n" / "part-00000.snappy.parquet")
    assert [schema.field(n).nullable for n in (layout.USER_IDX, layout.ITEM_IDX)] == [
        False, True]


@pytest.mark.spark
def test_write_parquet_empty_frames_give_one_readable_file(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    empty = spark.createDataFrame([], layout.ddl(layout.PAIRS_SCHEMA))
    write_parquet(empty, tmp_path / "none")
    write_parquet(empty.repartition(3), tmp_path / "three", files=3, key=layout.USER_IDX,
                  sort_by=[layout.USER_IDX])
    for name in ("none", "three"):
        assert _part_names(tmp_path / name) == ["_SUCCESS", "part-00000.snappy.parquet"]
        back = read_parquet(spark, tmp_path / name)
        assert back.count() == 0
        assert [(f.name, f.dataType.simpleString()) for f in back.schema] == list(
            layout.PAIRS_SCHEMA)
        assert pq.read_table(tmp_path / name).num_rows == 0
    assert layout.sha256_dir(tmp_path / "none") == layout.sha256_dir(tmp_path / "three")


@pytest.mark.spark
def test_write_parquet_files_by_key_sorted_one_per_non_empty_partition(
        spark: SparkSession, tmp_path: Path) -> None:
    rows = [(u, i, (u + i) % 2) for u in range(40) for i in (5, 1, 3)]
    df = spark.createDataFrame(rows, layout.ddl(layout.PAIRS_SCHEMA))
    write_parquet(df.repartition(7), tmp_path / "by_key", files=3, key=layout.USER_IDX,
                  sort_by=[layout.USER_IDX, layout.ITEM_IDX])
    parts = sorted((tmp_path / "by_key").glob("part-*"))
    assert [p.name for p in parts] == [f"part-0000{n}.snappy.parquet" for n in range(3)]
    file_of_user: dict[int, int] = {}
    total = 0
    for number, part in enumerate(parts):
        got = [tuple(r.values()) for r in pq.read_table(part).to_pylist()]
        assert got == sorted(got), part.name
        total += len(got)
        for user, _item, _label in got:
            assert file_of_user.setdefault(user, number) == number  # a user in one file
    assert total == len(rows) and sorted(file_of_user) == list(range(40))
    # Rows keep their key's file whatever the input's partitioning.
    write_parquet(df.coalesce(1), tmp_path / "again", files=3, key=layout.USER_IDX,
                  sort_by=[layout.USER_IDX, layout.ITEM_IDX])
    assert layout.sha256_dir(tmp_path / "again") == layout.sha256_dir(tmp_path / "by_key")

    # files=None: one file per non-empty partition, numbered in partition order.
    write_parquet(df.where(F.col(layout.USER_IDX) < 10).repartition(4, layout.USER_IDX)
                  .where(F.col(layout.USER_IDX) != 3), tmp_path / "kept", sort_by=[
                      layout.USER_IDX, layout.ITEM_IDX])
    kept = sorted((tmp_path / "kept").glob("part-*"))
    assert 1 <= len(kept) <= 4
    assert all(pq.read_metadata(p).num_rows > 0 for p in kept)
    assert sum(pq.read_metadata(p).num_rows for p in kept) == 27


@pytest.mark.spark
def test_write_parquet_rerun_gives_identical_bytes_and_never_overwrites(
        spark: SparkSession, tmp_path: Path) -> None:
    interactions = spark.createDataFrame(
        [(f"u{u}", f"i{(u * 7 + k) % 13}", datetime(2021, 1, 1, tzinfo=UTC), float(k))
         for u in range(50) for k in range(5)], layout.ddl(layout.INTERACTIONS_SCHEMA))
    for run, parts in enumerate((1, 6, 3)):
        write_parquet(interactions.repartition(parts), tmp_path / f"run{run}", files=2,
                      key=layout.USER_ID, sort_by=layout.columns(layout.INTERACTIONS_SCHEMA))
    digests = {layout.sha256_dir(tmp_path / f"run{run}") for run in range(3)}
    assert len(digests) == 1
    first = {p.name: p.read_bytes() for p in (tmp_path / "run0").iterdir()}
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "run1").iterdir()}
    assert not [p for p in (tmp_path / "run0").iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError):
        write_parquet(interactions, tmp_path / "run0", files=2, key=layout.USER_ID)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run0").iterdir()} == first


@pytest.mark.spark  # StructType.fromDDL parses through the JVM
def test_row_groups_are_cut_by_rows_not_by_arrow_batches(spark: SparkSession,
                                                        tmp_path: Path) -> None:
    """The task side's writer alone: the same rows in batches of any size, the same bytes."""
    schema = arrow_schema(StructType.fromDDL(layout.ddl(layout.PAIRS_SCHEMA)))
    table = pa.table({layout.USER_IDX: pa.array(range(25), pa.int32()),
                      layout.ITEM_IDX: pa.array([n % 7 for n in range(25)], pa.int32()),
                      layout.LABEL: pa.array([n % 2 for n in range(25)], pa.int8())})
    digests = set()
    for batch_rows in (1, 4, 25):
        written = tmp_path / f"{batch_rows}.parquet"
        rows = write_batches(iter(table.to_batches(max_chunksize=batch_rows)), str(written),
                             schema, row_group_rows=10)
        assert rows == 25
        metadata = pq.read_metadata(written)
        assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [
            10, 10, 5]
        assert pq.read_table(written).equals(table.cast(schema))
        digests.add(layout.sha256_file(written))
    assert len(digests) == 1
    assert write_batches(iter([]), str(tmp_path / "none.parquet"), schema) == 0
    assert not (tmp_path / "none.parquet").exists()
