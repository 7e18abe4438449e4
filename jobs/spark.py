"""Spark plumbing shared by the jobs: one way to get a session, one way to write a dataset.

`get_spark` is the only place a SparkSession is built. Under `spark-submit` the master
(standalone, YARN, Kubernetes, or `local[*]`) is whatever spark-submit was given; a
plain `python -m jobs.<stage>` falls back to `local[*]`.

`write_parquet` writes a DataFrame into a folder (normally the temporary path yielded
by `layout.staged_dir`) so that the same rows give the same bytes under the same file
names, whatever the parallelism, the partitioning or the JVM: that is what lets a
stage's output checksum (`layout.sha256_dir`) stand for its content in the manifest.
Spark partitions, sorts and writes; pyarrow re-encodes each file.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from jobs.lake.layout import Schema
from jobs.lake.protocol import SPARK_SESSION_CONF

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

FALLBACK_MASTER = "local[*]"

# Settings every job runs with; a caller's `conf` may override them.
_DEFAULT_CONF = {
    # Parquet's INT96 timestamps are deprecated and read back as nanoseconds by Arrow;
    # the lake contract says timestamp[us].
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # A join on (user_idx, item_idx) of two sides already hash-partitioned by user_idx
    # alike needs no shuffle: jobs.negatives draws ~100M candidates inside the demand's
    # partitions and meets the touched pairs there. (Spark's default shuffles both sides
    # again on both keys, for fear of skew on a subset of the keys.) Under it, Spark 4.2's
    # adaptive execution fails an *inner* join on several keys whose sides sit in
    # different numbers of partitions: the jobs' multi-key joins are anti and semi joins.
    "spark.sql.requireAllClusterKeysForCoPartition": "false",
}
# Settings no caller may change (UTC timestamps, no progress bars in the task logs).
_FORCED_CONF = SPARK_SESSION_CONF


def _launched_by_spark_submit(environ: Mapping[str, str]) -> bool:
    """spark-submit starts the JVM first and hands the Python driver its gateway port.

    That JVM already holds spark.master (from --master, spark-defaults.conf or
    spark-submit's own default), so the session must not override it.
    """
    return "PYSPARK_GATEWAY_PORT" in environ


def resolve_master(master: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The master to set on the builder: the caller's, none under spark-submit, else local[*]."""
    environ = os.environ if environ is None else environ
    if master is not None:
        return master
    if _launched_by_spark_submit(environ):
        return None
    return FALLBACK_MASTER


def get_spark(
    app_name: str,
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """Get (or create) the SparkSession: session time zone UTC, log level WARN.

    `master` wins when given (tests pass `local[2]`); otherwise spark-submit's master is
    kept, and `local[*]` is the fallback for a plain `python` run. If a session already
    exists in this process it is returned with the runtime settings of `conf` applied.
    """
    builder = SparkSession.builder.appName(app_name)
    chosen = resolve_master(master)
    if chosen is not None:
        builder = builder.master(chosen)
    for key, value in {**_DEFAULT_CONF, **(conf or {}), **_FORCED_CONF}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("Spark session %s on %s", app_name, session.sparkContext.master)
    return session


def cached(df: DataFrame, cache: list[DataFrame] | None) -> DataFrame:
    """`df`, persisted and appended to `cache` when one is given (the caller unpersists
    what the list holds once the frames that read it are written); else `df` as it is."""
    if cache is None:
        return df
    cache.append(df.persist())
    return df


def conform(df: DataFrame, schema: Schema) -> DataFrame:
    """Select exactly the columns of a lake schema, in order, cast to its dtypes."""
    return df.select(*[F.col(name).cast(dtype).alias(name) for name, dtype in schema])


# Rows per Parquet row group: pyarrow's default. Row groups are cut at exact multiples
# of it whatever the batches read, so the cut (and with it every byte) depends only on
# the rows.
ROW_GROUP_ROWS = 1 << 20
COMPRESSION = "snappy"
PART_NAME = "part-{:05d}." + COMPRESSION + ".parquet"
SUCCESS_MARKER = "_SUCCESS"
_SPARK_OUTPUT = ".spark-output"  # Spark's own files, inside the folder until re-encoded
_REENCODE_THREADS = 4  # pyarrow releases the GIL: files are re-encoded side by side


KEY_HASH = "_key_hash"  # partition_by_key's column


def partition_by_key(df: DataFrame, files: int, key: str) -> DataFrame:
    """`df` in `files` partitions, each row where `write_parquet(files=files, key=key)`
    puts it, plus the hash it is placed by as column KEY_HASH.

    An aggregation that also groups by KEY_HASH then stays inside the partitions (its
    keys include the partitioning's), and `write_parquet(..., partitioned=True)` writes
    the partitions as they are: one shuffle where a group-by then a write take two.
    """
    return df.withColumn(KEY_HASH, F.xxhash64(F.col(key))).repartition(files, KEY_HASH)


def write_parquet(
    df: DataFrame,
    path: Path,
    *,
    files: int | None = None,
    key: str | None = None,
    sort_by: Sequence[str | Column] = (),
    partitioned: bool = False,
) -> None:
    """Write `df` as Parquet into `path` (which must not exist yet), deterministically.

    files=None keeps Spark's partitioning (one file per non-empty partition). Otherwise
    the rows go to `files` files by a hash of `key` (required when files > 1, since a
    round-robin split depends on the input's partitioning): a given key always lands in
    the same file. Each file is sorted by `sort_by`; with one file the sort is global.
    Files are named `part-00000.snappy.parquet`, ... in partition order (no job ids),
    then `_SUCCESS`; a DataFrame without rows gives one file with the schema and no rows.

    Spark partitions, sorts and writes; pyarrow then re-encodes each file, rows in the
    same order, so the bytes are a function of the rows, their order and the schema
    alone. Spark's own files are not: parquet-mr lists a column chunk's encodings in
    HashSet order, which follows identity hash codes and so changes from one JVM to the
    next. Re-encoding costs the driver one read and one write of the data (~2 s for
    40M rows of pairs); it needs the folder on a file system the driver sees, as the
    lake is (a local disk, or the cluster's shared volume).

    partitioned=True: `df` comes from `partition_by_key(..., files, key)` through
    partition-preserving steps only (an aggregation that groups by KEY_HASH too, a
    select); its partitions are written as they are.
    """
    if files is not None and not partitioned:
        if files > 1 and key is None:
            raise ValueError(f"writing {path}: files={files} needs a key column to hash on")
        # On a hash of the key, not the key itself: Spark drops a repartition(n, key) when
        # the rows already sit in n partitions by key, and adaptive execution may then merge
        # those into fewer files, depending on spark.sql.shuffle.partitions.
        df = (df.repartition(files, F.xxhash64(F.col(key))) if key is not None
              else df.repartition(1))
    if sort_by:
        df = df.sortWithinPartitions(*sort_by)
    folder = Path(path)
    if folder.exists():  # as Spark's writer: never into an old folder
        raise FileExistsError(f"{folder} exists already: write_parquet writes a new folder")
    spark_output = folder / _SPARK_OUTPUT
    df.write.parquet(str(spark_output))
    # Spark names a task's files part-<partition>-<job uuid>-c<n>: name order is
    # partition order. It writes no file for an empty partition, one if all are empty.
    parts = sorted(p for p in spark_output.glob("part-*.parquet"))
    schema = arrow_schema(df.schema)
    targets = [str(folder / PART_NAME.format(number)) for number in range(len(parts))]
    with ThreadPoolExecutor(_REENCODE_THREADS) as pool:
        rows = list(pool.map(functools.partial(_reencode, schema=schema), parts, targets))
    shutil.rmtree(spark_output)
    if not any(rows):  # one file, so that the schema can be read back
        for target in targets:
            Path(target).unlink(missing_ok=True)
        write_table(schema.empty_table(), str(folder / PART_NAME.format(0)))
    (folder / SUCCESS_MARKER).touch()
    log.info("wrote %s: %d rows in %d files", folder, sum(rows), max(len(parts), 1))


def arrow_schema(schema: StructType) -> pa.Schema:
    """The Arrow schema a Spark schema is written with: the same types and nullability,
    int32 as int32 and tinyint as int8, timestamps as UTC microseconds."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone=_FORCED_CONF["spark.sql.session.timeZone"])


def _reencode(part: Path, target: str, *, schema: pa.Schema) -> int:
    """One file of Spark's, its rows in order, written again by pyarrow; the row count."""
    import pyarrow.parquet as pq

    return write_batches(pq.ParquetFile(part).iter_batches(batch_size=1 << 16), target,
                         schema)


def write_table(table: pa.Table, where: str) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(where, table.schema, compression=COMPRESSION) as writer:
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


def write_batches(batches: Iterable[pa.RecordBatch], where: str, schema: pa.Schema, *,
                  row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Write Arrow batches, in order, as one Parquet file; return the number of rows.

    Row groups hold exactly `row_group_rows` rows (the last one the rest), whatever the
    batches' sizes, and each is written as one contiguous chunk, so the bytes depend on
    the rows alone. Nothing is written when there are no rows. The batches are cast to
    `schema` (a file of Spark's may say INT96 or large_string where the lake says
    otherwise).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = rows = 0

    def flush(table: pa.Table) -> None:
        nonlocal writer, rows
        if writer is None:
            writer = pq.ParquetWriter(where, schema, compression=COMPRESSION)
        writer.write_table(table.cast(schema).combine_chunks(), row_group_size=row_group_rows)
        rows += table.num_rows

    try:
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= row_group_rows:
                table = pa.Table.from_batches(pending)
                flush(table.slice(0, row_group_rows))
                pending = table.slice(row_group_rows).to_batches()
                pending_rows -= row_group_rows
        if pending_rows:
            flush(pa.Table.from_batches(pending))
    finally:
        if writer is not None:
            writer.close()
    return rows


def read_parquet(spark: SparkSession, folder: Path) -> DataFrame:
    """Read a dataset folder written by `write_parquet`, staged (hidden) or published.

    The part files are listed explicitly: Spark skips a folder whose name starts with
    '.', as the temporary folders of `layout.staged_dir` do.
    """
    parts = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{folder} holds no Parquet files")
    return spark.read.parquet(*parts)
