"""Prepare: clean interactions -> positives, dense ids, a split, sampled negatives.

Reads   <lake>/<dataset>/<logical_date>/interactions/   (written by jobs/ingest.py)
Writes  <lake>/<dataset>/<logical_date>/users/ items/     user_id -> user_idx, item_id -> item_idx
        <lake>/<dataset>/<logical_date>/train/            positives (label 1) + n_negatives each
        <lake>/<dataset>/<logical_date>/validation/       per user 1 positive + m negatives
        <lake>/<dataset>/<logical_date>/test/             per user its test positive(s) + m
                                                          negatives
        <lake>/<dataset>/<logical_date>/sequences/        per user its train positives in time
                                                          order (leave_one_out; jobs/sequences.py)
        and the manifest entry "prepare" (each step's counts, params, input checksum).

Run:
    spark-submit jobs/prepare.py --config configs/ml-100k.yaml --logical-date 2026-11-23 \
        [--as-of 2026-11-23T00:00:00+00:00]

Steps (jobs/filters.py): only events before the as-of time (default: the logical date,
00:00 UTC: the end of its data interval under the DAG's @daily schedule) so that a
backfill sees what was known then; binarise by the configured rule; a seeded sample of
users; a k-core. Then dense ids and the split
(jobs/split.py): leave_one_out, the NCF paper's protocol (each user's latest positive is
the test item, the second latest the validation item, the rest train; users with fewer
than three positives are trained on, never evaluated), time_cutoff or stratified.
Leave-one-out on binarise rule `any` (the NCF protocol, the default) takes the fused
path of jobs/prepare_fast.py: one shuffle by user, then binarise, split and negatives per user
in numpy, the same rows and bytes as jobs/split.py + jobs/negatives.py write for every
other configuration. Negatives are never an item the user touched (in any split, at any
rating). All randomness comes from xxhash64(seed, stream, ...), so one seed gives the
same rows, and the same Parquet bytes, whatever the parallelism or the input's
partitioning.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import prepare_fast, sequences
from jobs.filters import binarise, select_positives
from jobs.index import index_ids
from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, load_stage_config, stage_parser
from jobs.lake.config import FORMATS_WITHOUT_TIMESTAMPS, PRESPLIT_FORMAT, PrepareConfig, parse_utc
from jobs.negatives import build_pairs
from jobs.prepare_fast import Tally
from jobs.spark import get_spark, read_parquet, write_parquet
from jobs.split import (
    split_leave_one_out,
    split_presplit,
    split_stratified,
    split_time_cutoff,
    time_cutoff_for_fraction,
)

log = logging.getLogger(__name__)

# Leave-one-out on rule `any` goes through jobs.prepare_fast (the same bytes, one pass per user);
# False sends every configuration through jobs.split + jobs.negatives (tests compare).
FUSED_PATH = True


class PrepareError(RuntimeError):
    """The input of prepare is missing or unusable; the message names the path and the fix."""


def pairs_order() -> list[Column]:
    """How train/, validation/ and test/ rows are sorted: by user, positive first, by item."""
    return [F.col(layout.USER_IDX), F.col(layout.LABEL).desc(), F.col(layout.ITEM_IDX)]


# --- transforms ----------------------------------------------------------------------


# --- the job -------------------------------------------------------------------------

def _check_input(folder: Path) -> None:
    if not folder.is_dir():
        raise PrepareError(f"{folder} does not exist: run jobs/ingest.py for this dataset "
                           "and logical date first")
    if not any(f.is_file() and not f.name.startswith((".", "_")) for f in folder.rglob("*")):
        raise PrepareError(f"{folder} holds no data files: re-run jobs/ingest.py for this "
                           "dataset and logical date")


def _users_short(pairs: DataFrame, n_eval_negatives: int) -> DataFrame:
    per_user = pairs.groupBy(layout.USER_IDX).agg(
        F.sum((F.col(layout.LABEL) == 0).cast("int")).alias("_negatives"))
    return per_user.where(F.col("_negatives") < n_eval_negatives).select(layout.USER_IDX)


def _split(positives: DataFrame, indexed: DataFrame, cfg: PrepareConfig,
           cache: list[DataFrame]) -> tuple[list[DataFrame], DataFrame | None, dict[str, Any]]:
    """([train, validation, test] positives, unscorable test positives, split facts).

    `positives` are the raw-id positives (for the time_cutoff's time), `indexed` the same
    with user_idx, item_idx. The one action here picks time_cutoff's time from
    test_fraction. The split's per-user ranking is persisted into `cache`.
    """
    split = cfg.split
    info: dict[str, Any] = {"method": split.method}
    if split.method == "leave_one_out":
        return list(split_leave_one_out(indexed, seed=cfg.seed, cache=cache)), None, info
    if split.method == "stratified":
        info["train_ratio"] = split.train_ratio
        return (list(split_stratified(indexed, train_ratio=float(split.train_ratio or 0.0),
                                      seed=cfg.seed, cache=cache)), None, info)
    test_from = split.test_from_utc
    if test_from is None:
        # As microseconds: Python datetimes from Spark are in the driver's local zone.
        row = time_cutoff_for_fraction(positives, test_fraction=float(
            split.test_fraction or 0.0)).select(F.unix_micros(layout.TS)).first()
        if row is None or row[0] is None:
            raise PrepareError("split.test_fraction: no positive has a timestamp to cut at")
        test_from = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(row[0]))
        info["test_fraction"] = split.test_fraction
    info["test_from"] = test_from.isoformat()
    train, validation, test, unscorable = split_time_cutoff(indexed, test_from=test_from,
                                                            seed=cfg.seed, cache=cache)
    return [train, validation, test], unscorable, info


def _touched(events: DataFrame, split_positives: list[DataFrame], rule: str,
             indexed: Callable[[DataFrame], DataFrame]) -> DataFrame:
    """Every (user_idx, item_idx) pair a user touched, among the indexed users and items.

    With binarise rule `any` every pair of the events is a positive, and the user sample
    and the k-core drop whole users and items, so the touched pairs of indexed users and
    items are exactly the split's positives (already indexed and cached): no second
    distinct over the events' raw-id pairs. Other rules leave pairs out of the
    positives (a low rating is still touched): those come from the events.
    """
    if rule == "any":
        return functools.reduce(DataFrame.unionByName, [
            df.select(layout.USER_IDX, layout.ITEM_IDX) for df in split_positives])
    return events.select(layout.USER_ID, layout.ITEM_ID).distinct().transform(indexed)


def _tally_written(spark: SparkSession, staged: dict[str, Path],
                   n_eval_negatives: int) -> Tally:
    """The counts of the written train/, validation/ and test/ files."""
    written = {name: read_parquet(spark, staged[name]) for name in prepare_fast.SPLITS}
    # One pass over the written files: (rows, positives) of each split.
    rows = functools.reduce(DataFrame.unionByName, [
        df.select(F.lit(name).alias("_split"), layout.LABEL) for name, df in written.items()
    ]).groupBy("_split").agg(F.count(F.lit(1)), F.sum(layout.LABEL)).collect()
    tally = Tally(rows={name: 0 for name in written}, positives={name: 0 for name in written})
    for split, n_rows, n_positive in rows:
        tally.rows[split], tally.positives[split] = int(n_rows), int(n_positive)
    short = (_users_short(written[layout.VALIDATION], n_eval_negatives)
             .unionByName(_users_short(written[layout.TEST], n_eval_negatives)))
    tally.users_short = short.distinct().count()
    row = (written[layout.TEST].where(F.col(layout.LABEL) == 1).groupBy(layout.USER_IDX)
           .count().agg(F.count(F.lit(1)), F.min("count"), F.avg("count"), F.max("count"))
           .first())
    tally.test_users = Tally.per_user(*row) if row is not None else Tally.per_user(0)
    return tally


def uses_fast_path(cfg: PrepareConfig, *, presplit: bool) -> bool:
    """Whether jobs.prepare_fast writes the splits: leave_one_out on binarise rule `any` (the
    touched pairs are then exactly the positives) with no training negatives in the lake
    (the default), unless FUSED_PATH is turned off."""
    return (FUSED_PATH and not presplit and cfg.split.method == "leave_one_out"
            and cfg.binarise.rule == "any" and cfg.n_negatives == 0)


def _write_general(positives: DataFrame, presplit_test: DataFrame | None, events: DataFrame,
                   indexed: Callable[[DataFrame], DataFrame], staged: dict[str, Path], *,
                   n_items: int, cfg: PrepareConfig, cache: list[DataFrame],
                   ) -> tuple[DataFrame | None, dict[str, Any]]:
    """train/, validation/, test/ through jobs.split and jobs.negatives, into `staged`;
    returns (time_cutoff's unscorable test positives, the split facts).

    cache[0] holds the indexed positives; the split's per-user ranking is cached after
    it (the three splits are filters of the ranking: persisting each split instead
    sorted all positives once per split).
    """
    unscorable = given_test = None
    if presplit_test is None:
        split_positives, unscorable, split_info = _split(positives, cache[0], cfg, cache)
        kept = list(split_positives)
    else:
        given_test = presplit_test.transform(indexed)
        test_pairs = given_test.where(F.col(layout.LABEL) == 1)
        kept = [*split_presplit(cache[0], test_pairs, seed=cfg.seed, cache=cache), test_pairs]
        split_info = {"method": "presplit"}
    train_positives, validation_positives, test_positives = kept
    # Not persisted here: jobs.negatives caches it once, partitioned by user, and its
    # three calls share that cache (persisting it here too held it twice).
    touched = _touched(events, kept, cfg.binarise.rule, indexed)
    pairs = build_pairs(train_positives, validation_positives, test_positives, touched,
                        n_items=n_items, cfg=cfg, presplit_test=given_test, cache=cache)
    for name, df in zip((layout.TRAIN, layout.VALIDATION, layout.TEST), pairs, strict=True):
        write_parquet(df, staged[name], files=cfg.output_partitions, key=layout.USER_IDX,
                      sort_by=pairs_order())
    return unscorable, split_info


def write_outputs(events: DataFrame, positives: DataFrame, paths: layout.LakePaths,
                  cfg: PrepareConfig, *, presplit_test: DataFrame | None = None,
                  ) -> dict[str, Any]:
    """Write users/, items/, train/, validation/, test/, sequences/ together; the counts.

    `events` are the interactions prepare may use (known at as-of): every pair in them is
    touched, never a negative. `positives` (user_id, item_id, ts) are what
    jobs.filters.select_positives kept (on the fast path, with pairs_later, the events
    themselves: jobs.prepare_fast collapses repeated pairs). All the folders are staged and
    swapped in only when every one was written, so a failure leaves the previous run's
    outputs untouched (sequences/ too; a run that skips it removes the previous one's after
    the swap). `presplit_test` (raw ids, layout.PRESPLIT_TEST_SCHEMA) is a source's own
    test split, taken as test/ as it is (its items are indexed too); validation is then
    each user's latest other positive.
    """
    spark = positives.sparkSession
    skipped = sequences.skip_reason(cfg)
    names = (layout.USERS, layout.ITEMS, layout.TRAIN, layout.VALIDATION, layout.TEST,
             *(() if skipped else (layout.SEQUENCES,)))
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(layout.staged_dir(paths.path(name)))
                  for name in names}
        ids = positives if presplit_test is None else positives.select(
            layout.USER_ID, layout.ITEM_ID).unionByName(
            presplit_test.select(layout.USER_ID, layout.ITEM_ID))
        users, items = index_ids(ids)
        write_parquet(users, staged[layout.USERS], files=cfg.output_partitions,
                      key=layout.USER_IDX, sort_by=[layout.USER_IDX])
        write_parquet(items, staged[layout.ITEMS], files=cfg.output_partitions,
                      key=layout.ITEM_IDX, sort_by=[layout.ITEM_IDX])
        # Read back what was written: short lineage, and the counts are the files'.
        users = read_parquet(spark, staged[layout.USERS])
        items = read_parquet(spark, staged[layout.ITEMS])
        n_users, n_items = users.count(), items.count()
        if n_users == 0:
            raise PrepareError(f"{paths.path(layout.INTERACTIONS)}: no positives to index "
                               f"with {cfg.binarise}")

        def indexed(df: DataFrame) -> DataFrame:
            return (df.join(users, layout.USER_ID).join(items, layout.ITEM_ID)
                    .drop(layout.USER_ID, layout.ITEM_ID))

        cache: list[DataFrame] = []
        stack.callback(lambda: [df.unpersist() for df in cache])
        unscorable = None
        if uses_fast_path(cfg, presplit=presplit_test is not None):
            params = prepare_fast.Params(n_items=n_items, seed=cfg.seed,
                                         n_eval_negatives=cfg.n_eval_negatives)
            tally = prepare_fast.write_splits(positives.transform(indexed), staged, params,
                                              files=cfg.output_partitions)
            split_info: dict[str, Any] = {"method": cfg.split.method}
            # The events may repeat a pair: one positive per pair, as the general path has.
            timed = positives.transform(binarise, rule="any", threshold=None).transform(indexed)
        else:
            # Read again by each sampling round and each write: cached once.
            cache.append(positives.transform(indexed).persist())
            unscorable, split_info = _write_general(positives, presplit_test, events, indexed,
                                                    staged, n_items=n_items, cfg=cfg,
                                                    cache=cache)
            tally = _tally_written(spark, staged, cfg.n_eval_negatives)
            timed = cache[0]  # the indexed positives, with ts
        sequence_info = ({"skipped": skipped} if skipped
                         else sequences.write_sequences(timed, staged, cfg))
        split_info.update(tally.test_users)
        unscorable_users = 0
        if unscorable is not None:  # time_cutoff: test users without a training positive
            row = unscorable.agg(F.count(F.lit(1)), F.countDistinct(layout.USER_IDX)).first()
            split_info["unscorable_test_positives"] = int(row[0]) if row else 0
            unscorable_users = split_info["unscorable_test_users"] = int(row[1]) if row else 0
        counts = {
            "n_users": n_users,
            "n_items": n_items,
            "n_positives": sum(tally.positives.values()),
            **{f"{name}_rows": n for name, n in tally.rows.items()},
            "users_train_only": n_users - split_info["test_users"] - unscorable_users,
            "users_short_of_eval_negatives": tally.users_short,
            "split": split_info,
            "sequences": sequence_info,
        }
    if skipped:  # a previous run's sequences/ would not match these splits
        log.info("prepare: no %s/: %s", layout.SEQUENCES, skipped)
        shutil.rmtree(paths.path(layout.SEQUENCES), ignore_errors=True)
    return counts


# --- the job -------------------------------------------------------------------------

def _as_of_arg(text: str) -> datetime:
    """argparse type: an ISO 8601 timestamp, UTC unless it carries an offset."""
    try:
        return parse_utc(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 timestamp such as 2026-11-24T00:00:00+00:00"
        ) from None


def default_as_of(logical_date: str) -> datetime:
    """The end of the logical date's data interval under the DAG's schedule: the logical
    date, 00:00 UTC. Airflow 3's "@daily" is a CronTriggerTimetable, whose data interval
    ends where it starts, at the run's logical date; the DAG passes exactly that
    (`{{ data_interval_end | ts }}`), so a stage run by hand sees what the DAG run saw."""
    return datetime.combine(date.fromisoformat(logical_date), time(), tzinfo=UTC)


def _check_config(cfg: PrepareConfig, source_format: str) -> None:
    """Refuse what the source cannot support, before Spark starts."""
    if cfg.split.method == "time_cutoff" and source_format in FORMATS_WITHOUT_TIMESTAMPS:
        raise PrepareError(f"prepare.split.method: time_cutoff needs timestamps and format "
                           f"{source_format} has none: use leave_one_out or stratified")
    if source_format == PRESPLIT_FORMAT:
        changed = [name for name, value, default in (
            ("split.method", cfg.split.method, "leave_one_out"),
            ("user_fraction", cfg.user_fraction, 1.0),
            ("min_user_positives", cfg.min_user_positives, 1),
            ("min_item_positives", cfg.min_item_positives, 1)) if value != default]
        if changed:
            raise PrepareError(f"prepare.{changed[0]}: format {PRESPLIT_FORMAT} keeps the "
                               "source's own test split as it is; remove "
                               f"{', '.join(changed)}")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--as-of", type=_as_of_arg, default=None,
                        help="use only events before this time (ISO 8601, UTC unless it "
                             "says otherwise; default: --logical-date 00:00 UTC, the end of "
                             "its data interval under the DAG's @daily schedule)")
    args = parser.parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    _check_config(cfg.prepare, cfg.source.format)
    paths = layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)
    source = paths.path(layout.INTERACTIONS)
    _check_input(source)
    as_of = None
    if cfg.prepare.as_of_cutoff:
        as_of = args.as_of if args.as_of is not None else default_as_of(args.logical_date)

    spark = get_spark(f"prepare-{cfg.dataset}")
    interactions = spark.read.schema(layout.ddl(layout.INTERACTIONS_SCHEMA)).parquet(str(source))
    if interactions.isEmpty():
        raise PrepareError(f"{source} holds no rows: re-run jobs/ingest.py for this dataset "
                           "and logical date")
    input_sha256 = layout.sha256_dir(source)
    presplit_test = None
    if cfg.source.format == PRESPLIT_FORMAT:  # the NCF paper's own test split, as it is
        folder = paths.path(layout.PRESPLIT_TEST)
        _check_input(folder)
        presplit_test = spark.read.schema(layout.ddl(layout.PRESPLIT_TEST_SCHEMA)).parquet(
            str(folder))
    # Without a source test split, users/ and items/ index exactly the positives: their
    # counts are the distinct users and items after binarise when nothing was sampled.
    selection = select_positives(interactions, cfg.prepare, as_of=as_of,
                                 distinct_later=presplit_test is None,
                                 pairs_later=uses_fast_path(cfg.prepare,
                                                             presplit=presplit_test is not None))
    try:
        steps = selection.counts
        log.info("prepare %s %s: as of %s: %s", cfg.dataset, args.logical_date, as_of, steps)
        if steps["positives_selected"] == 0 or (  # None: binarise `any` keeps every event
                steps["positives_selected"] is None
                and steps["events_in"] == steps["events_dropped_after_as_of"]):
            raise PrepareError(f"{source}: no positives left after the as-of cutoff "
                               f"({as_of}), binarise, user sample and k-core: {steps}")
        if cfg.prepare.split.method == "time_cutoff" and steps["events_without_ts_kept"]:
            raise PrepareError(f"{source}: prepare.split.method time_cutoff needs a timestamp "
                               f"on every event; {steps['events_without_ts_kept']} have none: "
                               "use leave_one_out or stratified")
        counts = write_outputs(selection.events, selection.positives, paths, cfg.prepare,
                               presplit_test=presplit_test)
        steps = selection.indexed(counts["n_users"], counts["n_items"], counts["n_positives"])
    finally:
        selection.unpersist()
    events_used = steps["events_in"] - steps["events_dropped_after_as_of"]
    timestamps = ("none" if steps["events_without_ts_kept"] == events_used
                  else "all" if steps["events_without_ts_kept"] == 0 else "some")
    # Held-out validation (and leave_one_out's test) positives: the latest, or without
    # timestamps the seeded hash alone picks them (a seeded random hold-out).
    counts["split"]["hold_out"] = "latest" if timestamps == "all" else "seeded_random"
    layout.update_manifest(paths, "prepare", {
        "params": dataclasses.asdict(cfg.prepare), "input_sha256": input_sha256,
        "as_of": None if as_of is None else as_of.isoformat(), "timestamps": timestamps,
        **steps, **counts})
    log.info("prepare %s %s: %s -> %s", cfg.dataset, args.logical_date, counts, paths.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
