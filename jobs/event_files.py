"""The files of an event log: its days, its files, their fingerprints, and which days a
run for a logical date reads.

Listing goes through Hadoop's FileSystem (the JVM Spark runs in), so a local folder,
s3a://, hdfs:// or gs:// are listed alike (given the connector on Spark's classpath).
Files and folders whose name starts with `_` or `.` (_SUCCESS, _temporary/, .crc) are
no data. The sha256 of each file read is computed by Spark (binaryFile: each file is
read whole into one row, so a file must stay under 2 GiB); a Parquet file is
fingerprinted by its row count instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.events import EventFile, EventsError
from jobs.lake.eventlog import PARTITION_KEY

_DAY_FOLDER = re.compile(rf"^{PARTITION_KEY}=([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})$")


class MissingPartitionError(EventsError):
    """A day the run needs has no dt= folder (yet): retry later, or allow missing days."""


def _filesystem(spark: SparkSession, location: str) -> tuple[Any, Any]:
    """(Hadoop FileSystem of `location`, its qualified Path)."""
    jvm = spark.sparkContext._jvm
    if jvm is None:  # a Spark Connect session has no JVM here
        raise EventsError("listing an event log needs a classic Spark session (a JVM)")
    path = jvm.org.apache.hadoop.fs.Path(location)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not filesystem.exists(path):
        raise EventsError(f"{location}: the event log's folder does not exist (source.events"
                          ".location, under $NCF_EVENTS_ROOT when relative)")
    return filesystem, filesystem.makeQualified(path)


def list_days(spark: SparkSession, location: str) -> dict[str, str]:
    """The log's day folders: day (YYYY-MM-DD) -> folder, from `dt=YYYY-MM-DD` names."""
    filesystem, root = _filesystem(spark, location)
    days = {}
    for status in filesystem.listStatus(root):
        matched = _DAY_FOLDER.match(status.getPath().getName())
        if status.isDirectory() and matched and _is_day(matched.group(1)):
            days[matched.group(1)] = status.getPath().toString()
    return days


def _is_day(text: str) -> bool:
    try:
        return date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def list_files(spark: SparkSession, folder: str, *, day: str | None) -> list[EventFile]:
    """The data files under `folder` (recursively), in path order."""
    filesystem, root = _filesystem(spark, folder)
    prefix = root.toString().rstrip("/") + "/"
    hadoop_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path  # type: ignore[union-attr]
    found = []
    listing = filesystem.listFiles(root, True)
    while listing.hasNext():
        status = listing.next()
        path = status.getPath().toString()
        if any(part.startswith(("_", ".")) for part in path.removeprefix(prefix).split("/")):
            continue
        # Spark names a file by its path string parsed again (file:/x, not file:///x).
        found.append(EventFile(path=path, uri=hadoop_path(path).toUri().toString(), day=day,
                               size=int(status.getLen()),
                               mtime_ms=int(status.getModificationTime())))
    return sorted(found, key=lambda f: f.path)


def fingerprints(spark: SparkSession, files: Sequence[EventFile], *, file_type: str,
                 input_rows: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """The manifest's lineage of each file read, by uri: partition, size, modification
    time, and sha256 (Parquet: the row count, `parquet_rows`)."""
    entries = {f.uri: {"partition": f.day, "size": f.size, "mtime": datetime.fromtimestamp(
        f.mtime_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")} for f in files}
    if file_type == "parquet":
        for uri, entry in entries.items():
            entry["parquet_rows"] = input_rows[uri]
        return entries
    if files:
        uri_of = {f.path: f.uri for f in files}
        hashed = spark.read.format("binaryFile").load([f.path for f in files]).select(
            "path", F.sha2(F.col("content"), 256)).collect()
        for path, sha256 in hashed:
            entries[uri_of[path]]["sha256"] = sha256
    return entries


@dataclasses.dataclass(frozen=True)
class DayPlan:
    """The days a run reads, and the days its output holds."""

    read: tuple[str, ...]
    days: tuple[str, ...]  # every day in the output: those ingested before, and `read`
    missing: tuple[str, ...]  # expected days without a folder (allow_missing_days only)


def plan_days(found: Iterable[str], *, logical_date: str, ingested: Sequence[str] | None,
              allow_missing: bool, location: str) -> DayPlan:
    """Which days the run for `logical_date` reads: every day up to it not in `ingested`
    (the days of the previous date's output; None: rebuild from every day).

    Every day from the first one of the log (or the day after the last one ingested)
    up to `logical_date` must have its folder, else MissingPartitionError naming the
    first missing day; allow_missing counts such days as empty.
    """
    found_days = set(found)
    upto = sorted(day for day in found_days if day <= logical_date)
    done = set(ingested or ())
    if done:
        start = (date.fromisoformat(max(done)) + timedelta(days=1)).isoformat()
    elif upto:
        start = upto[0]
    else:
        raise MissingPartitionError(
            f"{location}: no partition {PARTITION_KEY}=YYYY-MM-DD on or before {logical_date} "
            f"(days found: {_span(found_days)}); retry once the log's first day has landed")
    expected = _days_between(start, logical_date)
    missing = tuple(day for day in expected if day not in found_days)
    if missing and not allow_missing:
        more = f" (and {len(missing) - 1} more day(s) to {missing[-1]})" if len(missing) > 1 else ""
        raise MissingPartitionError(
            f"{location}: partition {PARTITION_KEY}={missing[0]} is missing{more}; the run for "
            f"{logical_date} needs every day from {start}. Not landed yet: retry later; a day "
            "without events: write its folder empty, or set source.events.allow_missing_days")
    read = tuple(day for day in upto if day not in done)
    return DayPlan(read=read, days=tuple(sorted(done | set(read))), missing=missing)


def _days_between(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _span(days: set[str]) -> str:
    return f"{min(days)} to {max(days)}" if days else "none"
