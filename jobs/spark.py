"""Spark plumbing shared by the jobs: one way to get a session, one way to write a dataset.

`get_spark` is the only place a SparkSession is built. Under `spark-submit` the master
(standalone, YARN, Kubernetes, or `local[*]`) is whatever spark-submit was given; a
plain `python -m jobs.<stage>` falls back to `local[*]`.

`write_parquet` writes a DataFrame into a folder (normally the temporary path yielded
by `layout.staged_dir`) so that the same rows give the same bytes under the same file
names, whatever the parallelism: that is what lets a stage's output checksum
(`layout.sha256_dir`) stand for its content in the manifest.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.layout import Schema

log = logging.getLogger(__name__)

FALLBACK_MASTER = "local[*]"

# Settings every job runs with; a caller's `conf` may override them.
_DEFAULT_CONF = {
    # Parquet's INT96 timestamps are deprecated and read back as nanoseconds by Arrow;
    # the lake contract says timestamp[us].
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Progress bars garble the task logs that Airflow keeps.
    "spark.ui.showConsoleProgress": "false",
}
# Settings no caller may change: timestamps in the lake are UTC instants.
_FORCED_CONF = {"spark.sql.session.timeZone": "UTC"}


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


def conform(df: DataFrame, schema: Schema) -> DataFrame:
    """Select exactly the columns of a lake schema, in order, cast to its dtypes."""
    return df.select(*[F.col(name).cast(dtype).alias(name) for name, dtype in schema])


_PART_FILE = re.compile(r"^part-(\d+)-.*?(\.[a-z0-9]+)?\.parquet$")


def write_parquet(
    df: DataFrame,
    path: Path,
    *,
    files: int | None = None,
    key: str | None = None,
    sort_by: Sequence[str | Column] = (),
) -> None:
    """Write `df` as Parquet into `path` (which must not exist yet), deterministically.

    files=None keeps Spark's partitioning (one file per non-empty partition). Otherwise
    the rows go to `files` files by a hash of `key` (required when files > 1, since a
    round-robin split depends on the input's partitioning): a given key always lands in
    the same file. Each file is sorted by `sort_by`; with one file the sort is global.
    Part files are renamed `part-00000.parquet`, ... so names carry no job id.
    """
    if files is not None:
        if files > 1 and key is None:
            raise ValueError(f"writing {path}: files={files} needs a key column to hash on")
        # On a hash of the key, not the key itself: Spark drops a repartition(n, key) when
        # the rows already sit in n partitions by key, and adaptive execution may then merge
        # those into fewer files, depending on spark.sql.shuffle.partitions.
        df = (df.repartition(files, F.xxhash64(F.col(key))) if key is not None
              else df.repartition(1))
    if sort_by:
        df = df.sortWithinPartitions(*sort_by)
    df.write.parquet(str(path))
    _rename_part_files(Path(path))


def read_parquet(spark: SparkSession, folder: Path) -> DataFrame:
    """Read a dataset folder written by `write_parquet`, staged (hidden) or published.

    The part files are listed explicitly: Spark skips a folder whose name starts with
    '.', as the temporary folders of `layout.staged_dir` do.
    """
    parts = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{folder} holds no Parquet files")
    return spark.read.parquet(*parts)


def _rename_part_files(folder: Path) -> None:
    for crc in folder.glob(".*.crc"):
        crc.unlink()
    parts = sorted((p for p in folder.iterdir() if _PART_FILE.match(p.name)),
                   key=lambda p: p.name)
    for number, part in enumerate(parts):
        match = _PART_FILE.match(part.name)
        codec = match.group(2) if match and match.group(2) else ""
        part.rename(folder / f"part-{number:05d}{codec}.parquet")
