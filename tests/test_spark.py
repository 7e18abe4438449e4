"""jobs.spark: where the master comes from, the session settings, deterministic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from jobs import layout
from jobs.spark import FALLBACK_MASTER, get_spark, resolve_master, write_parquet


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
