"""Ingest: the raw ratings file -> clean interactions and the rejected lines, with why.

Reads   the raw file of the config's `source` (--raw-dir / $NCF_RAW_DIR, else the
        download cache --cache-dir / $NCF_CACHE_DIR, else its URL), sha256-verified.
Writes  <lake>/<dataset>/<logical_date>/interactions/  user_id, item_id, ts, value
        <lake>/<dataset>/<logical_date>/rejects/       source_file, line, reason
        and the manifest entry "ingest" (input_rows == kept + rejected, by reason).

Run:
    spark-submit jobs/ingest.py --config configs/ml-100k.yaml --logical-date 2026-11-23

MovieLens 100K `u.data`: `user id \\t item id \\t rating \\t unix seconds`, no header.
A line is rejected with the first reason that applies, in this order: wrong field
count, empty id, non-numeric rating or timestamp, bad timestamp (not whole
non-negative seconds up to year 9999), rating outside [min_value, max_value].
A file with no line to keep publishes nothing: an earlier interactions/ stays.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs import layout
from jobs.cli import configure_logging, lake_root, stage_parser
from jobs.config import IngestConfig, load_data_config
from jobs.sources import resolve_raw_file
from jobs.spark import conform, get_spark, read_parquet, write_parquet

log = logging.getLogger(__name__)

EXPECTED_FORMAT = ("4 tab-separated fields per line, no header: "
                   "user id \\t item id \\t rating \\t unix seconds")
N_FIELDS = 4
# The largest timestamp Spark can hold is in year 294247; keep to four-digit years.
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
REASONS = (layout.REASON_FIELD_COUNT, layout.REASON_EMPTY_ID, layout.REASON_NOT_NUMERIC,
           layout.REASON_BAD_TIMESTAMP, layout.REASON_OUT_OF_RANGE)


class IngestError(RuntimeError):
    """The raw file holds nothing usable; the message names the file and the format."""


def _field(fields: Column, number: int) -> Column:
    """The n-th field (0-based), trimmed; null when the line has fewer fields."""
    return F.trim(F.try_element_at(fields, F.lit(number + 1)))


def _is_finite(value: Column) -> Column:
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))


def parse_movielens_100k(
    lines: DataFrame,
    *,
    min_value: float | None,
    max_value: float | None,
) -> tuple[DataFrame, DataFrame]:
    """Split raw `u.data` lines into (interactions, rejects).

    `lines` has columns `line` (one raw line) and `source_file`. Interactions follow
    layout.INTERACTIONS_SCHEMA, rejects layout.REJECTS_SCHEMA with a layout.REASON_*;
    every input line lands in exactly one of the two. A trailing carriage return is
    dropped (files saved on Windows); fields are trimmed.
    """
    fields = F.split(F.regexp_replace(F.col(layout.LINE), "\r$", ""), "\t", -1)
    user_id, item_id = _field(fields, 0), _field(fields, 1)
    rating_text, ts_text = _field(fields, 2), _field(fields, 3)
    rating = rating_text.try_cast("double")
    # try_cast never raises, whether or not spark.sql.ansi.enabled is on.
    ts_number = ts_text.try_cast("double")
    ts_seconds = F.when(ts_text.rlike(r"^[0-9]{1,12}$"), ts_text.try_cast("bigint"))
    below = F.lit(False) if min_value is None else rating < F.lit(float(min_value))
    above = F.lit(False) if max_value is None else rating > F.lit(float(max_value))

    reason = (
        F.when(F.size(fields) != N_FIELDS, F.lit(layout.REASON_FIELD_COUNT))
        .when((user_id == "") | (item_id == ""), F.lit(layout.REASON_EMPTY_ID))
        .when(~_is_finite(rating) | ~_is_finite(ts_number), F.lit(layout.REASON_NOT_NUMERIC))
        .when(ts_seconds.isNull() | (ts_seconds > MAX_UNIX_SECONDS),
              F.lit(layout.REASON_BAD_TIMESTAMP))
        .when(below | above, F.lit(layout.REASON_OUT_OF_RANGE))
    )
    parsed = lines.select(
        F.col(layout.SOURCE_FILE), F.col(layout.LINE), reason.alias(layout.REASON),
        user_id.alias(layout.USER_ID), item_id.alias(layout.ITEM_ID),
        F.timestamp_seconds(ts_seconds).alias(layout.TS), rating.alias(layout.VALUE),
    )
    interactions = conform(parsed.where(F.col(layout.REASON).isNull()),
                           layout.INTERACTIONS_SCHEMA)
    rejects = conform(parsed.where(F.col(layout.REASON).isNotNull()), layout.REJECTS_SCHEMA)
    return interactions, rejects


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help=f"folder holding the raw file at source.path "
                             f"(default ${layout.ENV_RAW_DIR}, may be unset)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"download cache (default ${layout.ENV_CACHE_DIR} "
                             f"or {layout.DEFAULT_CACHE_DIR})")
    args = parser.parse_args(argv)
    args.lake_root = lake_root(args.lake_root)
    if args.raw_dir is None and os.environ.get(layout.ENV_RAW_DIR):
        args.raw_dir = Path(os.environ[layout.ENV_RAW_DIR])
    if args.cache_dir is None:
        args.cache_dir = Path(os.environ.get(layout.ENV_CACHE_DIR, layout.DEFAULT_CACHE_DIR))
    return args


def _count_by_reason(rejects: DataFrame) -> dict[str, int]:
    """Rejected lines per reason (every reason present, zero when none)."""
    counts = {reason: 0 for reason in REASONS}
    for row in rejects.groupBy(layout.REASON).count().collect():
        counts[row[layout.REASON]] = int(row["count"])
    return counts


def write_outputs(lines: DataFrame, raw_file: Path, paths: layout.LakePaths,
                  cfg: IngestConfig) -> dict[str, Any]:
    """Parse, write interactions/ and rejects/ atomically, return the counts.

    Both folders are staged and published together only when at least one line was
    kept and every line is accounted for; otherwise IngestError and nothing moves.
    """
    spark = lines.sparkSession
    interactions, rejects = parse_movielens_100k(
        lines, min_value=cfg.min_value, max_value=cfg.max_value)
    with contextlib.ExitStack() as stack:
        staged_interactions = stack.enter_context(
            layout.staged_dir(paths.path(layout.INTERACTIONS)))
        staged_rejects = stack.enter_context(layout.staged_dir(paths.path(layout.REJECTS)))
        write_parquet(interactions, staged_interactions)
        write_parquet(rejects, staged_rejects)

        input_rows = lines.count()
        kept = read_parquet(spark, staged_interactions).count()
        written_rejects = read_parquet(spark, staged_rejects)
        by_reason = _count_by_reason(written_rejects)
        rejected = sum(by_reason.values())
        if input_rows == 0:
            raise IngestError(f"{raw_file} is empty; expected {EXPECTED_FORMAT}")
        if kept == 0:
            sample = [row[layout.LINE] for row in written_rejects.limit(3).collect()]
            raise IngestError(
                f"{raw_file}: none of its {input_rows} lines parses (rejects by reason: "
                f"{ {k: v for k, v in by_reason.items() if v} }); expected {EXPECTED_FORMAT}; "
                f"first lines: {sample!r}")
        if kept + rejected != input_rows:
            raise IngestError(f"{raw_file}: {input_rows} lines read but {kept} kept + "
                              f"{rejected} rejected were written; nothing published")
    return {"input_rows": input_rows, "kept": kept, "rejected": rejected,
            "rejected_by_reason": by_reason}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging()
    cfg = load_data_config(args.config)
    paths = layout.LakePaths(args.lake_root, cfg.dataset, args.logical_date)
    raw_file = resolve_raw_file(cfg.source, raw_dir=args.raw_dir, cache_dir=args.cache_dir)
    if raw_file.stat().st_size == 0:
        raise IngestError(f"{raw_file} is empty; expected {EXPECTED_FORMAT}")

    spark = get_spark(f"ingest-{cfg.dataset}")
    lines = spark.read.text(str(raw_file)).select(
        F.lit(str(raw_file)).alias(layout.SOURCE_FILE), F.col("value").alias(layout.LINE))
    counts = write_outputs(lines, raw_file, paths, cfg.ingest)
    update_entry = {"source_file": str(raw_file), "sha256": cfg.source.sha256, **counts,
                    "params": dataclasses.asdict(cfg.ingest)}
    layout.update_manifest(paths, "ingest", update_entry)
    log.info("ingest %s %s: %s rows read, %s kept, %s rejected %s -> %s", cfg.dataset,
             args.logical_date, counts["input_rows"], counts["kept"], counts["rejected"],
             counts["rejected_by_reason"], paths.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
