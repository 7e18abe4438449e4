"""Ingest: a source's raw files -> clean interactions, side features, and rejected lines, with why.

Reads   the raw files of the config's `source` (--raw-dir / $NCF_RAW_DIR, else the
        download cache --cache-dir / $NCF_CACHE_DIR, else their URL), sha256-verified
        (a sha256 the config does not know yet: a warning, and the one found goes to the
        manifest; --strict-checksums or source.strict_checksums: an error);
        or, for format events, the event log's new days (jobs/ingest_events.py; a
        relative location lies under --events-root / $NCF_EVENTS_ROOT, default data/events).
Writes  <lake>/<dataset>/<logical_date>/interactions/   user_id, item_id, ts, value
        <lake>/<dataset>/<logical_date>/rejects/        source_file, line, reason
        and, where the source has them, user_features/, item_features/ (side features
        for hybrid models) and presplit_test/ (the NCF paper's own test split), plus the
        manifest entry "ingest".

Run:
    spark-submit jobs/ingest.py --config configs/ml-100k.yaml --logical-date 2026-11-23

Each format's parsing is in jobs/readers.py. Nothing is lost: a line is kept,
rejected with a reason, or collapsed into an identical (user_id, item_id, ts) event,
and the manifest reconciles input_rows == kept + rejected + duplicates_collapsed
(header lines are not input rows), per output folder; ingest fails when that does
not hold. An empty file, or one of which no line parses (a wrong separator), fails
naming the file and the expected format, and publishes nothing: every folder is
staged and swapped in only when all were written. So does a truncated or corrupt
compressed file (CorruptFileError, one line naming it): .gz/.bz2 files are read to
their end before Spark reads them, and Spark's own read failure is caught as well.

Events from the future, at or after 00:00 UTC of the day after --logical-date, are
rejected (`future_ts`): a clock error upstream must not become a test item downstream.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from jobs import formats, readers
from jobs.ingest_events import ingest_events
from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, load_stage_config, stage_parser
from jobs.lake.config import IngestConfig, SourceConfig
from jobs.lake.eventlog import DEFAULT_EVENTS_ROOT, ENV_EVENTS_ROOT, resolve_location
from jobs.sources import CorruptFileError, check_decompresses, find_raw_files
from jobs.spark import (
    KEY_HASH,
    conform,
    get_spark,
    partition_by_key,
    read_parquet,
    write_parquet,
)

log = logging.getLogger(__name__)

REASONS = (layout.REASON_FIELD_COUNT, layout.REASON_BAD_ENCODING, layout.REASON_EMPTY_ID,
           layout.REASON_BAD_ID, layout.REASON_NOT_NUMERIC, layout.REASON_BAD_TIMESTAMP,
           layout.REASON_FUTURE_TS, layout.REASON_OUT_OF_RANGE)
FAILED_READ = "FAILED_READ_FILE"  # Spark's error class for a file it could not read


class IngestError(RuntimeError):
    """A raw file holds nothing usable, or the counts do not reconcile; the message says which."""


@dataclasses.dataclass
class _Reading:
    """The raw files read so far: their data lines, formats, and every reject frame."""

    spark: SparkSession
    files: Mapping[str, Path]
    source: SourceConfig
    input_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    expected: dict[str, str] = dataclasses.field(default_factory=dict)
    rejects: list[tuple[str, DataFrame]] = dataclasses.field(default_factory=list)  # by role
    kept_lines: dict[str, int] = dataclasses.field(default_factory=dict)  # files without a folder
    # The lines of the interactions files that parsed, counted while their folder is written.
    parsed_lines: dict[str, Observation] = dataclasses.field(default_factory=dict)

    def lines(self, role: str, line_format: formats.LineFormat) -> DataFrame:
        """The decoded data lines of the file of `role` (its bad encodings to rejects)."""
        path = self.files[role]
        raw = self.spark.read.text(str(path)).select(
            F.lit(str(path)).alias(layout.SOURCE_FILE), F.col("value").alias(layout.LINE))
        header = readers.is_header(F.col(layout.LINE), line_format.header).cast("int")
        n_lines, n_headers = raw.agg(F.count(F.lit(1)),
                                     F.coalesce(F.sum(header), F.lit(0))).collect()[0]
        if n_lines == n_headers:
            what = "holds only its header" if n_lines else "is empty"
            raise IngestError(f"{path} ({role}) {what}; expected {line_format.expected}")
        self.input_rows[role] = n_lines - n_headers
        self.expected[role] = line_format.expected
        lines, bad_encoding = readers.decode_lines(
            raw, encoding=self.source.files[role].encoding, header=line_format.header)
        self.rejects.append((role, bad_encoding))
        return lines

    def kept(self, role: str, parsed: tuple[DataFrame, DataFrame], *,
             observe: bool = False) -> DataFrame:
        """The rows of the file of `role`; its rejects are kept for the rejects folder.
        observe: its rows are counted by the first action that reads them (`parsed_lines`).
        """
        rows, rejects = parsed
        self.rejects.append((role, rejects))
        if observe:
            self.parsed_lines[role] = Observation(f"parsed {role}")
            rows = rows.observe(self.parsed_lines[role], F.count(F.lit(1)).alias("n"))
        return rows

    def rejects_to_write(self) -> list[DataFrame]:
        """The reject frames of the files that may have rejects: all but the interactions
        files whose every line parsed (their counted rows are their input rows). Parsing
        the big file a second time only to find no reject is what this saves."""
        clean = {role for role, observed in self.parsed_lines.items()
                 if _observed(observed, "n") == self.input_rows[role]}
        return [frame for role, frame in self.rejects if role not in clean]


def _parse_source(reading: _Reading, cfg: IngestConfig, *,
                  ts_before: datetime) -> dict[str, tuple[DataFrame, tuple[str, ...]]]:
    """The output folders (before writing), each with the file roles its rows come from."""
    fmt = formats.FORMATS[reading.source.format]
    files = reading.files
    events = functools.reduce(DataFrame.unionByName, [
        reading.kept(role, readers.parse_interactions(
            reading.lines(role, spec.line), spec, min_value=cfg.min_value,
            max_value=cfg.max_value, ts_before=ts_before), observe=True)
        for role, spec in fmt.interactions.items()])
    # Placed by user_id where write_outputs writes them, and collapsed there: one shuffle.
    by_user = partition_by_key(events, cfg.output_partitions, layout.USER_ID)
    tables = {layout.INTERACTIONS: (readers.collapse_duplicates(
        by_user, combine=fmt.combine, keys=[KEY_HASH]), tuple(fmt.interactions))}
    if fmt.users is not None and "users" in files:
        users = reading.kept("users", readers.parse_user_features(
            reading.lines("users", fmt.users.line), fmt.users))
        tables[layout.USER_FEATURES] = (readers.collapse_by_id(users, layout.USER_ID), ("users",))
    if fmt.items is not None and "items" in files:
        items = reading.kept("items", readers.parse_item_features(
            reading.lines("items", fmt.items.line), fmt.items))
        if "tags" in files or "item_tags" in files:
            items = readers.attach_top_tags(items, *_tag_frames(reading))
        tables[layout.ITEM_FEATURES] = (readers.collapse_by_id(items, layout.ITEM_ID), ("items",))
    elif any(spec.item_name is not None for spec in fmt.interactions.values()):
        # last.fm: the artist names of the listening lines are the items' titles.
        tables[layout.ITEM_FEATURES] = (readers.collapse_by_id(readers.item_titles(events),
                                                               layout.ITEM_ID), ())
    if "test_negatives" in files:
        presplit = reading.kept("test_negatives", readers.parse_test_negatives(
            reading.lines("test_negatives", formats.TEST_NEGATIVES_LINE)))
        tables[layout.PRESPLIT_TEST] = (presplit.withColumn(
            readers.EVENTS, F.col(layout.LABEL).cast("long")), ("test_negatives",))
    return tables


def _tag_frames(reading: _Reading) -> tuple[DataFrame, DataFrame]:
    if not {"tags", "item_tags"} <= set(reading.files):
        raise IngestError("source.files: the tags of HetRec 2K need both roles 'tags' "
                          "(tags.dat) and 'item_tags' (user_taggedartists.dat)")
    assignments = reading.kept("item_tags", readers.parse_tag_assignments(
        reading.lines("item_tags", formats.TAG_ASSIGNMENTS_LINE)))
    tags = reading.kept("tags", readers.parse_tags(reading.lines("tags", formats.TAGS_LINE)))
    # Their kept lines are no output rows: count them here, for the reconciliation.
    for role, frame in (("item_tags", assignments), ("tags", tags)):
        reading.kept_lines[role] = frame.count()
    return assignments, tags


_SCHEMAS = {layout.INTERACTIONS: layout.INTERACTIONS_SCHEMA,
            layout.USER_FEATURES: layout.USER_FEATURES_SCHEMA,
            layout.ITEM_FEATURES: layout.ITEM_FEATURES_SCHEMA,
            layout.PRESPLIT_TEST: layout.PRESPLIT_TEST_SCHEMA}


def end_of_day(logical_date: str) -> datetime:
    """00:00 UTC of the day after `logical_date`: an event at or after it is from the future."""
    return datetime.combine(date.fromisoformat(logical_date) + timedelta(days=1), time(),
                            tzinfo=UTC)


def write_outputs(spark: SparkSession, files: Mapping[str, Path], source: SourceConfig,
                  paths: layout.LakePaths, cfg: IngestConfig, *,
                  ts_before: datetime) -> dict[str, Any]:
    """Parse every file, write all output folders atomically, return the manifest counts.

    The folders are staged and published together only when at least one line of each
    file was kept and every line is accounted for; otherwise IngestError and nothing moves.
    The output folders are written first: the interactions files' parsed lines are
    counted meanwhile, and a file whose every line parsed is not parsed again for the
    rejects folder. ts_before: events at or after it are rejected (`future_ts`).
    A truncated or corrupt compressed file raises CorruptFileError before anything moves.
    """
    for path in files.values():
        check_decompresses(path)
    try:
        return _write_outputs(spark, files, source, paths, cfg, ts_before=ts_before)
    except Py4JJavaError as exc:
        if FAILED_READ not in str(exc):
            raise
        raise _unreadable(exc, files) from None  # one line, not the JVM's stack trace


def _unreadable(error: Py4JJavaError, files: Mapping[str, Path]) -> CorruptFileError:
    """Spark's FAILED_READ_FILE as one line naming the file (the trace is logged at debug)."""
    message = str(error)
    named = ([str(path) for path in files.values() if str(Path(path).resolve()) in message]
             or [str(path) for path in files.values()])
    causes = re.findall(r"^Caused by: (.*)$", message, flags=re.MULTILINE)
    log.debug("Spark failed reading %s: %s", named, message)
    return CorruptFileError(
        f"{' or '.join(named)}: Spark could not read it to its end "
        f"({causes[-1] if causes else 'no cause given'}); the file is truncated or corrupt: "
        "fetch it again; nothing published")


def _write_outputs(spark: SparkSession, files: Mapping[str, Path], source: SourceConfig,
                   paths: layout.LakePaths, cfg: IngestConfig, *,
                   ts_before: datetime) -> dict[str, Any]:
    reading = _Reading(spark, files, source)
    tables = _parse_source(reading, cfg, ts_before=ts_before)
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(layout.staged_dir(paths.path(name)))
                  for name in (*tables, layout.REJECTS)}
        written: dict[str, tuple[int, int]] = {}  # (raw events, rows kept) per folder
        for name, (parsed, _roles) in tables.items():
            # The raw events are summed while the folder is written, not by a second pass
            # over the table (which would parse, shuffle and collapse it again, or cache it).
            observed = Observation(f"ingest {name}")
            table = parsed.observe(observed, F.coalesce(F.sum(readers.EVENTS), F.lit(0))
                                   .alias(readers.EVENTS))
            id_column = layout.columns(_SCHEMAS[name])[0]
            write_parquet(conform(table, _SCHEMAS[name]), staged[name],
                          files=cfg.output_partitions, key=id_column,
                          sort_by=layout.columns(_SCHEMAS[name])[:3],
                          partitioned=KEY_HASH in table.columns)  # the interactions
            events = _observed(observed, readers.EVENTS)
            if events is None:  # the same sum in a pass of its own
                row = parsed.agg(F.coalesce(F.sum(readers.EVENTS), F.lit(0))).first()
                events = int(row[0]) if row is not None else 0
            written[name] = (events, read_parquet(spark, staged[name]).count())

        rejects = reading.rejects_to_write()
        write_parquet(functools.reduce(DataFrame.unionByName, rejects) if rejects
                      else spark.createDataFrame([], layout.ddl(layout.REJECTS_SCHEMA)),
                      staged[layout.REJECTS], files=cfg.output_partitions, key=layout.LINE,
                      sort_by=[layout.SOURCE_FILE, layout.LINE])
        rejected: dict[str, dict[str, int]] = {str(path): {} for path in files.values()}
        for row in (read_parquet(spark, staged[layout.REJECTS])
                    .groupBy(layout.SOURCE_FILE, layout.REASON).count().collect()):
            rejected[row[layout.SOURCE_FILE]][row[layout.REASON]] = int(row["count"])
        _check_each_file_parses(reading, rejected)
        counts: dict[str, Any] = {
            name: _reconcile(name, reading, roles, rejected, events=written[name][0],
                             kept=written[name][1])
            for name, (_parsed, roles) in tables.items()}
    return {"format": source.format, **counts.pop(layout.INTERACTIONS), **counts,
            "files": {role: {"path": str(path), "sha256": source.files[role].sha256,
                             "input_rows": reading.input_rows[role],
                             "rejected": sum(rejected[str(path)].values())}
                      for role, path in files.items()}}


def _observed(observation: Observation, name: str) -> int | None:
    """The metric `name` of an observation whose first action has run; None when that
    action's final plan no longer held the observing node (adaptive execution replaces a
    stage that came out empty, and with it the node: Spark then has no row to give)."""
    try:
        return int(observation.get[name])
    except Py4JJavaError:
        return None


def _check_each_file_parses(reading: _Reading,
                            rejected: Mapping[str, Mapping[str, int]]) -> None:
    for role, path in reading.files.items():
        by_reason = rejected[str(path)]
        if sum(by_reason.values()) >= reading.input_rows[role]:
            sample = [row[layout.LINE] for row in reading.spark.read.text(str(path))
                      .select(F.col("value").alias(layout.LINE)).limit(3).collect()]
            raise IngestError(
                f"{path} ({role}): none of its {reading.input_rows[role]} lines parses "
                f"(rejects by reason: {dict(by_reason)}); expected "
                f"{reading.expected[role]}; first lines: {sample!r}")
    for role, ok in reading.kept_lines.items():
        n_rejected = sum(rejected[str(reading.files[role])].values())
        if ok + n_rejected != reading.input_rows[role]:
            raise IngestError(f"{reading.files[role]}: {reading.input_rows[role]} lines read "
                              f"but {ok} kept + {n_rejected} rejected; nothing published")


def _reconcile(name: str, reading: _Reading, roles: tuple[str, ...],
               rejected: Mapping[str, Mapping[str, int]], *, events: int,
               kept: int) -> dict[str, Any]:
    """input_rows == kept + rejected + duplicates_collapsed over the files of one folder."""
    if not roles:  # derived from the interactions (last.fm artist names): no file of its own
        return {"kept": kept}
    by_reason = {reason: 0 for reason in REASONS}
    for role in roles:
        for reason, n in rejected[str(reading.files[role])].items():
            by_reason[reason] += n
    input_rows = sum(reading.input_rows[role] for role in roles)
    n_rejected = sum(by_reason.values())
    if name == layout.PRESPLIT_TEST:  # rows are (user, item) pairs; events count the lines
        entry = {"input_rows": input_rows, "kept": events, "rejected": n_rejected, "rows": kept}
        duplicates, kept = 0, events
    else:
        duplicates = events - kept
        entry = {"input_rows": input_rows, "kept": kept, "rejected": n_rejected,
                 "duplicates_collapsed": duplicates}
    if input_rows != kept + n_rejected + duplicates:
        raise IngestError(
            f"{name}: {input_rows} lines read from {[str(reading.files[r]) for r in roles]} "
            f"but {kept} kept + {n_rejected} rejected + {duplicates} duplicates collapsed; "
            "nothing published")
    return {**entry, "rejected_by_reason": by_reason}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help=f"folder holding the raw files at their source paths "
                             f"(default ${layout.ENV_RAW_DIR}, may be unset)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"download cache (default ${layout.ENV_CACHE_DIR} "
                             f"or {layout.DEFAULT_CACHE_DIR})")
    parser.add_argument("--strict-checksums", action="store_true", default=None,
                        help="fail on a raw file whose sha256 the config does not know yet "
                             "(default: source.strict_checksums, else warn and record it)")
    parser.add_argument("--events-root", default=None,
                        help=f"folder or URI of relative event-log locations (default "
                             f"${ENV_EVENTS_ROOT} or {DEFAULT_EVENTS_ROOT})")
    args = parser.parse_args(argv)
    if args.events_root is None:
        args.events_root = os.environ.get(ENV_EVENTS_ROOT) or DEFAULT_EVENTS_ROOT
    if "://" not in args.events_root and not args.events_root.startswith("file:"):
        args.events_root = str(Path(args.events_root).resolve())
    args.lake_root = lake_root(args.lake_root)
    if args.raw_dir is None and os.environ.get(layout.ENV_RAW_DIR):
        args.raw_dir = Path(os.environ[layout.ENV_RAW_DIR])
    if args.cache_dir is None:
        args.cache_dir = Path(os.environ.get(layout.ENV_CACHE_DIR, layout.DEFAULT_CACHE_DIR))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    paths = layout.LakePaths(args.lake_root, cfg.dataset, args.logical_date)
    if cfg.source.events is not None:
        location = resolve_location(cfg.source.events.location, args.events_root)
        counts = ingest_events(get_spark(f"ingest-{cfg.dataset}"), cfg.source, cfg.ingest,
                               paths, location=location,
                               ts_before=end_of_day(args.logical_date))
    else:
        found = find_raw_files(cfg.source, raw_dir=args.raw_dir, cache_dir=args.cache_dir,
                               strict_checksums=args.strict_checksums)
        spark = get_spark(f"ingest-{cfg.dataset}")
        counts = write_outputs(spark, {role: f.path for role, f in found.items()}, cfg.source,
                               paths, cfg.ingest, ts_before=end_of_day(args.logical_date))
        for role, entry in counts["files"].items():  # the sha256 found, vouched for or not
            entry |= {"sha256": found[role].sha256, "sha256_verified": found[role].verified}
    layout.update_manifest(paths, "ingest", {**counts, "params": dataclasses.asdict(cfg.ingest)})
    log.info("ingest %s %s: %s rows read, %s kept, %s rejected, %s duplicates collapsed -> %s",
             cfg.dataset, args.logical_date, counts["input_rows"], counts["kept"],
             counts["rejected"], counts["duplicates_collapsed"], paths.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
