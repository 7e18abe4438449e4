"""Replay: a shipped dataset as an event log that grows by one folder a day.

Reads   the raw files of --config as ingest does (--raw-dir / $NCF_RAW_DIR, else the
        download cache, else the URL; checksums checked as ingest checks them) and
        parses their interactions with ingest's readers (ingest.min_value/max_value
        too): lines that do not parse are left out, and counted in the log line.
Writes  <events root>/<dataset>/dt=YYYY-MM-DD/part-0.csv, header `user_id,item_id,ts,value`,
        ts in Unix seconds (decimals only where the source has them), one folder for
        every day from the first event's to the last's (UTC; a day without events holds
        the header alone, as a daily log writes it), rows in (ts, user, item, value)
        order: the same input gives the same bytes. The folder is replaced whole.
        <events root> is --events-root, else $NCF_EVENTS_ROOT, else data/events.
        --last-day YYYY-MM-DD moves every event by the same whole number of days so
        that the log ends that day (the DAGs start in 2026; MovieLens 100K ends in 1998).

configs/<dataset>-events.yaml reads it back (source.format: events), so that a DAG run
for each logical date sees the dataset as it had grown by then.

Run:
    make replay DATASET=ml-100k
    python -m jobs.replay --config configs/ml-100k.yaml [--events-root DIR]
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import formats, readers
from jobs.lake import layout
from jobs.lake.cli import configure_logging, load_stage_config, logical_date
from jobs.lake.config import DataConfig
from jobs.lake.eventlog import DEFAULT_EVENTS_ROOT, ENV_EVENTS_ROOT, partition_name
from jobs.sources import check_decompresses, find_raw_files
from jobs.spark import get_spark

log = logging.getLogger(__name__)

HEADER = (layout.USER_ID, layout.ITEM_ID, layout.TS, layout.VALUE)
PART_FILE = "part-0.csv"
_MICROS = "_micros"


class ReplayError(RuntimeError):
    """The dataset cannot be replayed as a daily log (no timestamps, no events)."""


def parse_events(spark: SparkSession, cfg: DataConfig,
                 files: dict[str, Path]) -> tuple[DataFrame, DataFrame]:
    """(events user_id, item_id, ts, value; rejects) of the interactions files of `files`,
    parsed as ingest parses them."""
    fmt = formats.FORMATS[cfg.source.format]
    if any(spec.ts is None for spec in fmt.interactions.values()):
        raise ReplayError(f"format {cfg.source.format} has no time per event: nothing to "
                          "replay day by day")
    parsed = []
    for role, spec in fmt.interactions.items():
        check_decompresses(files[role])
        raw = spark.read.text(str(files[role])).select(
            F.lit(str(files[role])).alias(layout.SOURCE_FILE), F.col("value").alias(layout.LINE))
        lines, bad_encoding = readers.decode_lines(
            raw, encoding=cfg.source.files[role].encoding, header=spec.line.header)
        rows, rejects = readers.parse_interactions(
            lines, spec, min_value=cfg.ingest.min_value, max_value=cfg.ingest.max_value,
            ts_before=None)
        parsed.append((rows.select(*layout.columns(layout.INTERACTIONS_SCHEMA)),
                       bad_encoding.unionByName(rejects)))
    return (functools.reduce(DataFrame.unionByName, [rows for rows, _ in parsed]),
            functools.reduce(DataFrame.unionByName, [rejects for _, rejects in parsed]))


def _seconds(micros: int) -> str:
    """Unix seconds as text: whole, or with the decimals the time has."""
    whole, fraction = divmod(micros, 1_000_000)
    return str(whole) if not fraction else f"{whole}.{fraction:06d}".rstrip("0")


def _day(micros: int) -> str:
    return datetime.fromtimestamp(micros // 1_000_000, tz=UTC).date().isoformat()


def write_log(rows: Iterable[Any], folder: Path) -> dict[str, Any]:
    """Write rows (user_id, item_id, micros, value), in time order, as one CSV file per
    day into `folder` (which must not exist); the empty days between get a header alone."""
    folder.mkdir(parents=True)
    counts: dict[str, int] = {}
    handle: IO[str] | None = None
    writer: Any = None
    last_day: str | None = None

    def open_day(day: str) -> None:
        nonlocal handle, writer
        if handle is not None:
            handle.close()
        part = folder / partition_name(day) / PART_FILE
        part.parent.mkdir()
        handle = open(part, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed above)
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        counts[day] = 0

    try:
        for user, item, micros, value in rows:
            day = _day(micros)
            if day != last_day:
                for gap in _days_after(last_day, day):
                    open_day(gap)
                open_day(day)
                last_day = day
            writer.writerow((user, item, _seconds(micros), repr(float(value))))
            counts[day] += 1
    finally:
        if handle is not None:
            handle.close()
    if not counts:
        raise ReplayError("no event to replay: every line was rejected")
    return {"days": len(counts), "first": min(counts), "last": max(counts),
            "empty_days": sum(1 for n in counts.values() if not n),
            "events": sum(counts.values())}


def _days_after(last: str | None, day: str) -> Iterator[str]:
    """The days strictly between `last` and `day` (none when last is None)."""
    if last is None:
        return
    current = date.fromisoformat(last) + timedelta(days=1)
    while current.isoformat() < day:
        yield current.isoformat()
        current += timedelta(days=1)


def replay(spark: SparkSession, cfg: DataConfig, files: dict[str, Path], out: Path, *,
           last_day: str | None = None) -> dict[str, Any]:
    """Write the events of `files` as a daily log at `out` (replaced whole); the counts.
    last_day: move every event by whole days so that the last one falls on that day."""
    events, rejects = parse_events(spark, cfg, files)
    micros = F.unix_micros(layout.TS)
    shift_days = 0
    if last_day is not None:
        latest = events.agg(F.max(layout.TS).cast("date")).first()
        if latest is None or latest[0] is None:
            raise ReplayError("no event to replay: every line was rejected")
        shift_days = (date.fromisoformat(last_day) - latest[0]).days
        micros = micros + F.lit(shift_days * 86_400 * 1_000_000)
    ordered = (events.select(layout.USER_ID, layout.ITEM_ID, micros.alias(_MICROS),
                             layout.VALUE)
               .orderBy(_MICROS, layout.USER_ID, layout.ITEM_ID, layout.VALUE))
    with layout.staged_dir(out) as staged:
        counts = write_log(ordered.toLocalIterator(), staged)
    return {**counts, "left_out": rejects.count(), "shift_days": shift_days}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path,
                        help="the dataset to replay, e.g. configs/ml-100k.yaml")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help=f"folder of the raw files (default ${layout.ENV_RAW_DIR})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"download cache (default ${layout.ENV_CACHE_DIR} "
                             f"or {layout.DEFAULT_CACHE_DIR})")
    parser.add_argument("--events-root", type=Path, default=None,
                        help=f"where logs are written (default ${ENV_EVENTS_ROOT} or "
                             f"{DEFAULT_EVENTS_ROOT}); the log is <events root>/<dataset>")
    parser.add_argument("--strict-checksums", action="store_true", default=None,
                        help="fail on a raw file whose sha256 the config does not know yet")
    parser.add_argument("--last-day", type=logical_date, default=None,
                        help="move every event by whole days so that the log ends this day "
                             "(YYYY-MM-DD; default: the events' own days)")
    args = parser.parse_args(argv)
    if args.raw_dir is None and os.environ.get(layout.ENV_RAW_DIR):
        args.raw_dir = Path(os.environ[layout.ENV_RAW_DIR])
    if args.cache_dir is None:
        args.cache_dir = Path(os.environ.get(layout.ENV_CACHE_DIR, layout.DEFAULT_CACHE_DIR))
    if args.events_root is None:
        args.events_root = Path(os.environ.get(ENV_EVENTS_ROOT) or DEFAULT_EVENTS_ROOT)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    if cfg.source.events is not None:
        raise ReplayError(f"{args.config} reads an event log already: replay a dataset of "
                          "raw files (e.g. configs/ml-100k.yaml)")
    found = find_raw_files(cfg.source, raw_dir=args.raw_dir, cache_dir=args.cache_dir,
                           strict_checksums=args.strict_checksums)
    out = Path(args.events_root).resolve() / cfg.dataset
    counts = replay(get_spark(f"replay-{cfg.dataset}"), cfg,
                    {role: f.path for role, f in found.items()}, out, last_day=args.last_day)
    log.info("replay %s: %d events in %d day folders (%s to %s, %d of them empty, moved by "
             "%d days) -> %s; %d raw lines left out (they do not parse)", cfg.dataset,
             counts["events"], counts["days"], counts["first"], counts["last"],
             counts["empty_days"], counts["shift_days"], out, counts["left_out"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
