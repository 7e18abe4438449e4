"""Ingest of an event log (source.format: events), full or incremental.

Called by jobs/ingest.py for format events. Reads the files of the log (jobs/events.py),
writes interactions/ and rejects/ as ingest does for the other formats, and returns the
manifest entry.

Incremental (a daily log): the run for date D builds on the newest earlier output it can
use (D-1 on a nightly schedule; after a gap, the last night that ran, whatever the gap):
it reads only the days up to D that output does not hold yet, and adds their events to its
interactions/ (and their rejects to its rejects/). Without a usable earlier output (none,
another source config, another format) it rebuilds from every day up to D. Both give the same rows,
collapsed and written the same way, so the same bytes: a day's rows do not depend on
the run that reads them (an event's future cut is the end of its own day), collapsing
(max, or a sum of whole numbers) is the same in one step or two, and jobs.spark's
writer orders each file by the full key. A flat log is read whole every run.

The manifest entry: `incremental`, `previous` (the date built on, when incremental),
`partitions` (the days the output holds) and `partitions_read`, then the reconciliation
over the files read this run,
input_rows == kept + rejected + duplicates_collapsed + filtered_event_type, where kept
counts the rows these files added; `rows` is interactions/' total, and `files` the
lineage of each file read (path, size, mtime, sha256 or Parquet row count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

from jobs import event_files, events, readers
from jobs.lake import layout
from jobs.lake.config import IngestConfig
from jobs.lake.eventlog import EVENTS_FORMAT, EventLogConfig
from jobs.lake.source import SourceConfig
from jobs.spark import KEY_HASH, conform, partition_by_key, read_parquet, write_parquet

log = logging.getLogger(__name__)

FAILED_READ = "FAILED_READ_FILE"  # Spark's error class for a file it could not read

REASONS = (layout.REASON_FIELD_COUNT, layout.REASON_BAD_ENCODING, layout.REASON_EMPTY_ID,
           layout.REASON_BAD_ID, layout.REASON_NOT_NUMERIC, layout.REASON_BAD_TIMESTAMP,
           layout.REASON_FUTURE_TS, layout.REASON_OUT_OF_RANGE)


class EventIngestError(events.EventsError):
    """A file of the log holds nothing usable, or the counts do not reconcile."""


@dataclasses.dataclass(frozen=True)
class _Previous:
    """An earlier night's output that this run can add to."""

    paths: layout.LakePaths
    days: tuple[str, ...]
    rows: int
    rejects: int


def settings_sha256(source: SourceConfig, cfg: IngestConfig, location: str) -> str:
    """What must not change for a run to add to an earlier night's output."""
    settings = {"source": dataclasses.asdict(source), "ingest": dataclasses.asdict(cfg),
                "location": location}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _usable(before: layout.LakePaths, settings: str) -> tuple[_Previous | None, str | None]:
    """`before`'s ingest output if a later run can add to it, else None and why not
    (None: it has no ingest output at all)."""
    day = before.logical_date
    entry = layout.read_manifest(before).get("ingest")
    folders = [before.path(layout.INTERACTIONS), before.path(layout.REJECTS)]
    if entry is None or not all(folder.is_dir() for folder in folders):
        return None, None
    if entry.get("format") != EVENTS_FORMAT or entry.get("partitions") is None:
        return None, f"{day} was not ingested from a daily event log"
    if entry.get("settings_sha256") != settings or "rejects_rows" not in entry:
        return None, f"{day} was ingested with other source/ingest settings"
    return _Previous(before, tuple(entry["partitions"]), int(entry["rows"]),
                     int(entry["rejects_rows"])), None


def _previous(paths: layout.LakePaths, settings: str) -> tuple[_Previous | None, str]:
    """The newest earlier output this run can add to (D-1 on a nightly schedule; after a
    gap, the last night that ran), else None and why the newest one cannot serve."""
    why_not = None
    for day in reversed(layout.lake_dates(paths.root, paths.dataset)):
        if day >= paths.logical_date:
            continue
        previous, reason = _usable(layout.LakePaths(paths.root, paths.dataset, day), settings)
        if previous is not None:
            return previous, ""
        why_not = why_not or reason  # the newest output there is, and why it does not serve
    return None, why_not or f"no ingest output before {paths.logical_date}"


def ingest_events(spark: SparkSession, source: SourceConfig, cfg: IngestConfig,
                  paths: layout.LakePaths, *, location: str,
                  ts_before: datetime) -> dict[str, Any]:
    """Read the log at `location` (resolved), write interactions/ and rejects/ of `paths`
    atomically, and return the manifest entry. ts_before: a flat log's future cut."""
    log_cfg = source.events
    if log_cfg is None:
        raise EventIngestError(f"format {source.format} is no event log")
    settings = settings_sha256(source, cfg, location)
    previous, why_not = (None, "a flat log is read whole") if not log_cfg.daily else \
        _previous(paths, settings)
    plan = None
    if log_cfg.daily:
        found = event_files.list_days(spark, location)
        plan = event_files.plan_days(found, logical_date=paths.logical_date,
                                     ingested=previous.days if previous else None,
                                     allow_missing=log_cfg.allow_missing_days,
                                     location=location)
        files = [f for day in plan.read
                 for f in event_files.list_files(spark, found[day], day=day)]
        if plan.missing:
            log.warning("%s: no folder for %d day(s) (%s ...): counted as empty "
                        "(allow_missing_days)", location, len(plan.missing), plan.missing[0])
    else:
        files = event_files.list_files(spark, location, day=None)
    log.info("events %s: %s, %d file(s) to read%s", location,
             f"incremental on {previous.paths.logical_date}" if previous else
             f"full rebuild ({why_not})", len(files),
             f" from {len(plan.read)} day(s)" if plan else "")
    try:
        counts, lineage = _ingest_files(spark, files, source, paths, cfg=cfg, log_cfg=log_cfg,
                                        previous=previous, ts_before=ts_before)
    except Py4JJavaError as exc:
        if FAILED_READ not in str(exc):
            raise
        raise _unreadable(exc, files) from None  # one line, not the JVM's stack trace
    return {"format": EVENTS_FORMAT, "location": location, "incremental": previous is not None,
            "rebuild_reason": None if previous else why_not,
            "previous": previous.paths.logical_date if previous else None,
            "partitions": list(plan.days) if plan else None,
            "partitions_read": list(plan.read) if plan else None,
            "missing_days_allowed": list(plan.missing) if plan else [],
            **counts, "settings_sha256": settings, "files": lineage}


def _ingest_files(spark: SparkSession, files: list[events.EventFile], source: SourceConfig,
                  paths: layout.LakePaths, *, cfg: IngestConfig, log_cfg: EventLogConfig,
                  previous: _Previous | None,
                  ts_before: datetime) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the reconciled counts, the lineage of each file) once both folders are written."""
    classified, input_rows = events.read_events(
        spark, files, source, min_value=cfg.min_value, max_value=cfg.max_value,
        ts_before=ts_before)
    lineage = event_files.fingerprints(spark, files, file_type=log_cfg.file_type,
                                       input_rows=input_rows)
    classified = classified.persist()
    try:
        outcomes = events.outcomes(classified)
        _check_each_file_parses(files, input_rows, outcomes, log_cfg)
        counts = _write(spark, classified, previous, paths, cfg=cfg, log_cfg=log_cfg,
                        reconcile=lambda written: _reconcile(files, input_rows, outcomes,
                                                             previous, written))
    finally:
        classified.unpersist()
    for uri, entry in lineage.items():
        by_outcome = outcomes.get(uri, {})
        entry |= {"input_rows": input_rows[uri],
                  "rejected": sum(n for o, n in by_outcome.items()
                                  if o not in (None, events.FILTERED)),
                  events.FILTERED: by_outcome.get(events.FILTERED, 0)}
    return counts, lineage


def _unreadable(error: Py4JJavaError, files: list[events.EventFile]) -> events.EventsError:
    """Spark's FAILED_READ_FILE as one line naming the file (the trace is logged at debug)."""
    message = str(error)
    named = [f.uri for f in files if f.path in message or f.uri in message] or [
        f.uri for f in files][:3]
    causes = re.findall(r"^Caused by: (.*)$", message, flags=re.MULTILINE)
    log.debug("Spark failed reading %s: %s", named, message)
    return events.EventsError(
        f"{' or '.join(named)}: Spark could not read it to its end "
        f"({causes[-1] if causes else 'no cause given'}); the file is truncated or corrupt: "
        "write it again; nothing published")


def _check_each_file_parses(files: list[events.EventFile], input_rows: Mapping[str, int],
                            outcomes: Mapping[str, Mapping[str | None, int]],
                            log_cfg: EventLogConfig) -> None:
    """A file with rows of which none parses (a wrong separator, a wrong file type) fails."""
    for f in files:
        by_outcome = outcomes.get(f.uri, {})
        if input_rows[f.uri] and not by_outcome.get(None) and not by_outcome.get(
                events.FILTERED):
            raise EventIngestError(
                f"{f.uri}: none of its {input_rows[f.uri]} rows parses (rejects by reason: "
                f"{dict(by_outcome)}); expected {log_cfg.file_type} with the columns "
                f"{dataclasses.asdict(log_cfg.columns)} and ts_unit {log_cfg.ts_unit}")


def _write(spark: SparkSession, classified: DataFrame, previous: _Previous | None,
           paths: layout.LakePaths, *, cfg: IngestConfig, log_cfg: EventLogConfig,
           reconcile: Callable[[dict[str, int]], dict[str, Any]]) -> dict[str, Any]:
    """Write interactions/ and rejects/ (the earlier output's rows too, when incremental);
    both are swapped in only once `reconcile` (of the rows written) returned."""
    # Every column nullable, as the earlier output's files read back say: a column's
    # nullability is written into the Parquet schema, and so into the bytes.
    kept, rejects = (spark.createDataFrame([], layout.ddl(schema)).unionByName(frame)
                     for schema, frame in ((layout.INTERACTIONS_SCHEMA, events.kept(classified)),
                                           (layout.REJECTS_SCHEMA, events.rejects(classified))))
    if previous is not None:
        kept = kept.unionByName(read_parquet(spark, previous.paths.path(layout.INTERACTIONS)))
        rejects = rejects.unionByName(read_parquet(spark, previous.paths.path(layout.REJECTS)))
    by_user = partition_by_key(kept, cfg.output_partitions, layout.USER_ID)
    interactions = readers.collapse_duplicates(by_user, combine=log_cfg.combine,
                                               keys=[KEY_HASH])
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(layout.staged_dir(paths.path(name)))
                  for name in (layout.INTERACTIONS, layout.REJECTS)}
        write_parquet(conform(interactions, layout.INTERACTIONS_SCHEMA),
                      staged[layout.INTERACTIONS], files=cfg.output_partitions,
                      key=layout.USER_ID, sort_by=layout.columns(layout.INTERACTIONS_SCHEMA),
                      partitioned=True)
        write_parquet(conform(rejects, layout.REJECTS_SCHEMA), staged[layout.REJECTS],
                      files=cfg.output_partitions, key=layout.LINE,
                      sort_by=layout.columns(layout.REJECTS_SCHEMA))
        return reconcile({name: read_parquet(spark, folder).count()
                          for name, folder in staged.items()})


def _reconcile(files: list[events.EventFile], input_rows: Mapping[str, int],
               outcomes: Mapping[str, Mapping[str | None, int]], previous: _Previous | None,
               written: Mapping[str, int]) -> dict[str, Any]:
    """input_rows == kept + rejected + duplicates_collapsed + filtered over this run's
    files; kept is the rows they added. Raises EventIngestError when it does not hold
    (nothing is then published)."""
    by_reason = {reason: 0 for reason in REASONS}
    kept_events = filtered = 0
    for f in files:
        for outcome, n in outcomes.get(f.uri, {}).items():
            if outcome is None:
                kept_events += n
            elif outcome == events.FILTERED:
                filtered += n
            else:
                by_reason[outcome] += n
    rows_before = previous.rows if previous else 0
    rejects_before = previous.rejects if previous else 0
    n_input, n_rejected = sum(input_rows.values()), sum(by_reason.values())
    kept = written[layout.INTERACTIONS] - rows_before
    duplicates = kept_events - kept
    if (duplicates < 0 or n_input != kept + n_rejected + duplicates + filtered
            or written[layout.REJECTS] != rejects_before + n_rejected):
        raise EventIngestError(
            f"{len(files)} event file(s): {n_input} rows read but {kept} rows added + "
            f"{n_rejected} rejected + {duplicates} duplicates collapsed + {filtered} "
            f"filtered; {written[layout.REJECTS]} rejects written after {rejects_before}")
    return {"input_rows": n_input, "kept": kept, "rejected": n_rejected,
            "duplicates_collapsed": duplicates, events.FILTERED: filtered,
            "rejected_by_reason": by_reason, "rows": written[layout.INTERACTIONS],
            "previous_rows": rows_before, "rejects_rows": written[layout.REJECTS]}

