"""Prepare: clean interactions -> dense ids, a leave-one-out split by time, sampled negatives.

Reads   <lake>/<dataset>/<logical_date>/interactions/   (written by jobs/ingest.py)
Writes  <lake>/<dataset>/<logical_date>/users/ items/     user_id -> user_idx, item_id -> item_idx
        <lake>/<dataset>/<logical_date>/train/            positives (label 1) + n_negatives each
        <lake>/<dataset>/<logical_date>/validation/ test/ per user 1 positive + m negatives
        and the manifest entry "prepare" (counts, params, input checksum).

Run:
    spark-submit jobs/prepare.py --config configs/ml-100k.yaml --logical-date 2026-11-23

The protocol of the NCF paper: each user's latest positive is the test item, the
second latest the validation item, the rest train; users with fewer than three
positives are trained on, never evaluated. Same-second ties are broken by item_idx,
the higher index counting as the later one. Negatives are never an item the user
touched (in any split, at any rating). All randomness comes from
xxhash64(seed, stream, user_idx, draw), so one seed gives the same rows, and the same
Parquet bytes, whatever the parallelism or the input's partitioning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs import layout
from jobs.cli import configure_logging, lake_root, load_stage_config, stage_parser
from jobs.config import PRESPLIT_FORMAT, PrepareConfig
from jobs.negatives import N_NEEDED, sample_negatives
from jobs.spark import conform, get_spark, read_parquet, write_parquet
from jobs.split import split_leave_one_out, split_presplit

log = logging.getLogger(__name__)

# Independent random streams drawn with the one seed (jobs.split uses 4).
STREAM_TRAIN, STREAM_VALIDATION, STREAM_TEST = 1, 2, 3


class PrepareError(RuntimeError):
    """The input of prepare is missing or unusable; the message names the path and the fix."""


def pairs_order() -> list[Column]:
    """How train/, validation/ and test/ rows are sorted: by user, positive first, by item."""
    return [F.col(layout.USER_IDX), F.col(layout.LABEL).desc(), F.col(layout.ITEM_IDX)]


# --- transforms ----------------------------------------------------------------------

def binarise(interactions: DataFrame, *, threshold: float | None) -> DataFrame:
    """Positives: interactions with value >= threshold (all when None), one row per pair.

    Repeated (user_id, item_id) events collapse to one positive stamped with the
    latest ts. Returns user_id, item_id, ts.
    """
    kept = interactions if threshold is None else interactions.where(
        F.col(layout.VALUE) >= F.lit(float(threshold)))
    return kept.groupBy(layout.USER_ID, layout.ITEM_ID).agg(F.max(layout.TS).alias(layout.TS))


def _dense_index(ids: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Number distinct ids 0..n-1: numerically when all are digits, else as text."""
    all_digits = ids.agg(
        F.coalesce(F.min(F.col(id_col).rlike(r"^[0-9]+$").cast("int")), F.lit(0))
        .alias("_all_digits"))
    # Shorter digit strings first, then text order: numeric order without casting, so
    # ids past the range of a long still sort. The window has no partition on purpose
    # (Spark warns about it): one task numbers all ids, which is what makes them dense,
    # and is fine up to tens of millions of ids.
    length = F.when(F.col("_all_digits") == 1, F.length(id_col)).otherwise(F.lit(0))
    order = Window.orderBy(length, F.col(id_col))
    return ids.crossJoin(all_digits).select(
        F.col(id_col), (F.row_number().over(order) - 1).cast("int").alias(idx_col))


def index_ids(interactions: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(users, items): user_id -> user_idx and item_id -> item_idx, int32, dense from 0."""
    users = _dense_index(interactions.select(layout.USER_ID).distinct(),
                         layout.USER_ID, layout.USER_IDX)
    items = _dense_index(interactions.select(layout.ITEM_ID).distinct(),
                         layout.ITEM_ID, layout.ITEM_IDX)
    return conform(users, layout.USERS_SCHEMA), conform(items, layout.ITEMS_SCHEMA)


def _labelled(positives: DataFrame, negatives: DataFrame) -> DataFrame:
    return conform(
        positives.withColumn(layout.LABEL, F.lit(1))
        .unionByName(negatives.withColumn(layout.LABEL, F.lit(0))),
        layout.PAIRS_SCHEMA)


def build_pairs(
    train_positives: DataFrame,
    validation_positives: DataFrame,
    test_positives: DataFrame,
    touched: DataFrame,
    *,
    n_items: int,
    cfg: PrepareConfig,
    presplit_test: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, validation, test) in layout.PAIRS_SCHEMA: the split's positives + negatives.

    The positives are the (user_idx, item_idx) frames of `split_leave_one_out`; touched
    holds every pair any user interacted with (more than the positives when a
    binarisation threshold applies). Each split draws from its own random stream.
    `presplit_test` (user_idx, item_idx, label), a source's own test split, is test/
    as it is: its negatives are not drawn again.
    """
    def evaluation(positives: DataFrame, stream: int) -> DataFrame:
        demand = positives.select(layout.USER_IDX,
                                  F.lit(cfg.n_eval_negatives).alias(N_NEEDED))
        negatives = sample_negatives(demand, touched, n_items=n_items, seed=cfg.seed,
                                     stream=stream, distinct=True)
        return _labelled(positives, negatives)

    train_demand = train_positives.groupBy(layout.USER_IDX).agg(
        (F.count(F.lit(1)) * cfg.n_negatives).alias(N_NEEDED))
    train_negatives = sample_negatives(train_demand, touched, n_items=n_items, seed=cfg.seed,
                                       stream=STREAM_TRAIN, distinct=False)
    test = (evaluation(test_positives, STREAM_TEST) if presplit_test is None
            else conform(presplit_test, layout.PAIRS_SCHEMA))
    return (_labelled(train_positives, train_negatives),
            evaluation(validation_positives, STREAM_VALIDATION), test)


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


def write_outputs(interactions: DataFrame, paths: layout.LakePaths,
                  cfg: PrepareConfig, *, presplit_test: DataFrame | None = None) -> dict[str, Any]:
    """Write users/, items/, train/, validation/, test/ together; return the counts.

    All five folders are staged and swapped in only when every one was written, so a
    failure leaves the previous run's outputs untouched. `presplit_test` (raw ids,
    layout.PRESPLIT_TEST_SCHEMA) is a source's own test split, taken as test/ as it is
    (its items are indexed too); validation is then each user's latest other positive.
    """
    spark = interactions.sparkSession
    names = (layout.USERS, layout.ITEMS, layout.TRAIN, layout.VALIDATION, layout.TEST)
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(layout.staged_dir(paths.path(name)))
                  for name in names}
        positives = interactions.transform(binarise, threshold=cfg.binarise_threshold)
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
            raise PrepareError(f"{paths.path(layout.INTERACTIONS)}: no positives with "
                               f"binarise_threshold={cfg.binarise_threshold}")

        def indexed(df: DataFrame) -> DataFrame:
            return (df.join(users, layout.USER_ID).join(items, layout.ITEM_ID)
                    .drop(layout.USER_ID, layout.ITEM_ID))

        # Each sampling round and each write reads these again: compute them once.
        touched = interactions.select(layout.USER_ID, layout.ITEM_ID).distinct().transform(indexed)
        if presplit_test is None:
            kept = [touched, *split_leave_one_out(positives.transform(indexed), seed=cfg.seed)]
            given_test = None
        else:
            given_test = presplit_test.transform(indexed)
            test_pairs = given_test.where(F.col(layout.LABEL) == 1)
            kept = [touched, *split_presplit(positives.transform(indexed), test_pairs,
                                             seed=cfg.seed), test_pairs]
        for df in kept:
            df.persist()
            stack.callback(df.unpersist)
        touched, train_positives, validation_positives, test_positives = kept
        pairs = build_pairs(train_positives, validation_positives, test_positives, touched,
                            n_items=n_items, cfg=cfg, presplit_test=given_test)
        written = {}
        for name, df in zip((layout.TRAIN, layout.VALIDATION, layout.TEST), pairs, strict=True):
            write_parquet(df, staged[name], files=cfg.output_partitions, key=layout.USER_IDX,
                          sort_by=pairs_order())
            written[name] = read_parquet(spark, staged[name])

        # One pass over the written files: (rows, positives) of each split.
        tallies = functools.reduce(DataFrame.unionByName, [
            df.select(F.lit(name).alias("_split"), layout.LABEL) for name, df in written.items()
        ]).groupBy("_split").agg(F.count(F.lit(1)), F.sum(layout.LABEL)).collect()
        split_rows = {name: 0 for name in written}
        split_positives = {name: 0 for name in written}
        for split, n_rows, n_positive in tallies:
            split_rows[split], split_positives[split] = int(n_rows), int(n_positive)
        short = (_users_short(written[layout.VALIDATION], cfg.n_eval_negatives)
                 .unionByName(_users_short(written[layout.TEST], cfg.n_eval_negatives)))
        counts = {
            "n_users": n_users,
            "n_items": n_items,
            "n_positives": sum(split_positives.values()),
            **{f"{name}_rows": n for name, n in split_rows.items()},
            "users_train_only": n_users - split_positives[layout.TEST],  # one per test user
            "users_short_of_eval_negatives": short.distinct().count(),
        }
    return counts


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__).parse_args(argv)
    configure_logging()
    cfg = load_stage_config(args.config)
    paths = layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)
    source = paths.path(layout.INTERACTIONS)
    _check_input(source)

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
    counts = write_outputs(interactions, paths, cfg.prepare, presplit_test=presplit_test)
    layout.update_manifest(paths, "prepare", {
        "params": dataclasses.asdict(cfg.prepare), "input_sha256": input_sha256, **counts})
    log.info("prepare %s %s: %s -> %s", cfg.dataset, args.logical_date, counts, paths.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
