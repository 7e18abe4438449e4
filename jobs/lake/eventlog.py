"""The `events` source: a folder or URI of event files that grows every day.

Config (`source.events`, read by jobs/events.py and jobs/ingest_events.py), standard
library only so that the DAG files and jobs/replay.py can read it without Spark:

    source:
      format: events
      events:
        location: ml-100k        # relative: under $NCF_EVENTS_ROOT (default data/events);
                                 # absolute path or URI (s3a://, hdfs://, gs://): as is
        file_type: csv           # csv (header, RFC 4180 quotes) | tsv (header) | jsonl | parquet
        partitioning: daily      # daily: <location>/dt=YYYY-MM-DD/...; flat: every file
        columns: {user: user_id, item: item_id, timestamp: ts, value: rating, event_type: kind}
        event_types: [rate]      # keep only these (needs columns.event_type); empty: all
        ts_unit: seconds         # seconds | milliseconds | iso8601 (with a zone: Z, +02:00)
        integer_ids: false       # true: ids are whole numbers (0 up), else text
        combine: max             # identical (user, item, ts) events: max (ratings) | sum
        allow_missing_days: false  # true: a day without its dt= folder counts as empty

`value` absent: each event is worth 1. No checksum is configured: the manifest records
what each run read (path, size, mtime, sha256 or the Parquet row count).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath

from jobs.lake.loader import check_field

EVENTS_FORMAT = "events"
FILE_TYPES = ("csv", "tsv", "jsonl", "parquet")
PARTITIONINGS = ("daily", "flat")
TS_UNITS = ("seconds", "milliseconds", "iso8601")
COMBINE = ("max", "sum")
# A day's folder of a daily log: dt=YYYY-MM-DD (Hive-style, as Spark writes partitionBy).
PARTITION_KEY = "dt"
ENV_EVENTS_ROOT = "NCF_EVENTS_ROOT"
DEFAULT_EVENTS_ROOT = "data/events"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3a://, hdfs://, gs://, file:/


@dataclasses.dataclass(frozen=True)
class EventColumns:
    """Which column (csv/tsv header name, JSON key, Parquet column) holds what."""

    user: str
    item: str
    timestamp: str
    value: str | None = None
    event_type: str | None = None

    def __post_init__(self) -> None:
        named = [name for name in dataclasses.astuple(self) if name is not None]
        check_field(all(named), "user", "every column name must be non-empty")
        check_field(len(set(named)) == len(named), "user",
                    f"each role needs its own column; got {named}")


@dataclasses.dataclass(frozen=True)
class EventLogConfig:
    """Where the event log lies, how its files are written, and what its columns mean."""

    location: str
    columns: EventColumns
    file_type: str = "csv"
    partitioning: str = "daily"
    event_types: tuple[str, ...] = ()
    ts_unit: str = "seconds"
    integer_ids: bool = False
    combine: str = "max"
    allow_missing_days: bool = False

    def __post_init__(self) -> None:
        check_field(bool(self.location.strip()), "location", "must name a folder or a URI")
        check_field(self.file_type in FILE_TYPES, "file_type",
                    f"{self.file_type!r} is not one of {list(FILE_TYPES)}")
        check_field(self.partitioning in PARTITIONINGS, "partitioning",
                    f"{self.partitioning!r} is not one of {list(PARTITIONINGS)}")
        check_field(self.ts_unit in TS_UNITS, "ts_unit",
                    f"{self.ts_unit!r} is not one of {list(TS_UNITS)}")
        check_field(self.combine in COMBINE, "combine",
                    f"{self.combine!r} is not one of {list(COMBINE)}")
        check_field(not self.event_types or self.columns.event_type is not None, "event_types",
                    "a filter on event types needs columns.event_type")
        check_field(not self.allow_missing_days or self.daily, "allow_missing_days",
                    "applies to partitioning: daily only")

    @property
    def daily(self) -> bool:
        return self.partitioning == "daily"


def check_events_source(source_format: str, events: EventLogConfig | None, *,
                        files_named: bool) -> bool:
    """SourceConfig's check of its `events` section; True for format events (whose
    other checks, of named files, do not apply)."""
    if source_format != EVENTS_FORMAT:
        check_field(events is None, "events", f"only for format {EVENTS_FORMAT}, "
                    f"not {source_format}")
        return False
    check_field(events is not None, "events", "format events needs an events: section "
                "(location, file_type, columns, ...)")
    check_field(not files_named, "events", "format events reads events.location: give no "
                "files, path, sha256 or url")
    return True


def resolve_location(location: str, events_root: str) -> str:
    """The log's folder as Spark reads it: a URI or an absolute path as it is, a relative
    path under `events_root` (the deployment's $NCF_EVENTS_ROOT, resolved by the caller)."""
    if _URI.match(location) or PurePosixPath(location).is_absolute():
        return location.rstrip("/") or "/"
    return f"{events_root.rstrip('/')}/{location.strip('/')}"


def partition_name(day: str) -> str:
    """`dt=2026-11-23`: the folder of one day of a daily log."""
    return f"{PARTITION_KEY}={day}"
