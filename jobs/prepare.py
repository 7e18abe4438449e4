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
from jobs.spark import conform, get_spark, read_parquet, write_parquet

log = logging.getLogger(__name__)

# Independent random streams drawn with the one seed.
STREAM_TRAIN, STREAM_VALIDATION, STREAM_TEST = 1, 2, 3
STREAM_TIE_BREAK = 4  # the split's tie-break among same-second positives
MIN_POSITIVES_TO_EVALUATE = 3  # one each for test and validation, at least one to train on
MAX_ROUNDS = 4  # sampling rounds before the rest is drawn from the enumerated complement
OVERSAMPLE = 1.25  # draws per needed negative, on top of the hit rate of untouched items
SLACK = 8  # extra draws per user and round, for users who need only a few

# Working columns (never written).
_N_NEEDED, _SHORT, _UNTOUCHED, _NEXT_DRAW = "n_needed", "_short", "_n_untouched", "_next_draw"
_DRAW, _RANK, _N_DRAWS, _GOT = "_draw", "_rank", "_n_draws", "_got"


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


def split_leave_one_out(positives: DataFrame, *,
                        seed: int) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, validation, test) of user_idx, item_idx from positives (user_idx, item_idx, ts).

    Per user with at least three positives: the latest -> test, the second latest ->
    validation, the rest -> train. Users with fewer positives keep them all in train.
    Ties in ts are broken by a seeded hash of (seed, user_idx, item_idx), then item_idx.
    Why not simply item_idx: on ML-100K 44% of users rate their last two items in the
    same second, and a fixed id order then makes the test item systematically the
    late-catalogue (obscure) film, which biases HR@10 down by ~0.05 (popularity: 0.33
    with the id rule, 0.41 with a random one).
    """
    ranked = _rank_latest_first(positives, seed=seed)
    evaluated = F.col("_n") >= MIN_POSITIVES_TO_EVALUATE
    pairs = (layout.USER_IDX, layout.ITEM_IDX)
    test = ranked.where(evaluated & (F.col(_RANK) == 1)).select(*pairs)
    validation = ranked.where(evaluated & (F.col(_RANK) == 2)).select(*pairs)
    train = ranked.where(~evaluated | (F.col(_RANK) > 2)).select(*pairs)
    return train, validation, test


def _rank_latest_first(positives: DataFrame, *, seed: int) -> DataFrame:
    """user_idx, item_idx, _rank (1 = latest, ties by the seeded hash), _n (per user).

    A source without timestamps (null ts: last.fm 360K, HetRec 2K) is all ties, so its
    order, and with it the hold-out, is the seeded hash: a seeded random hold-out.
    """
    tie_break = F.xxhash64(F.lit(seed).cast("bigint"), F.lit(STREAM_TIE_BREAK).cast("int"),
                           F.col(layout.USER_IDX).cast("int"),
                           F.col(layout.ITEM_IDX).cast("int"))
    latest_first = Window.partitionBy(layout.USER_IDX).orderBy(
        F.col(layout.TS).desc(), tie_break.desc(), F.col(layout.ITEM_IDX).desc())
    return positives.select(
        layout.USER_IDX, layout.ITEM_IDX,
        F.row_number().over(latest_first).alias(_RANK),
        F.count(F.lit(1)).over(Window.partitionBy(layout.USER_IDX)).alias("_n"),
    )


def split_presplit(positives: DataFrame, test_positives: DataFrame, *,
                   seed: int) -> tuple[DataFrame, DataFrame]:
    """(train, validation) around a source's own test positives (the NCF paper's files).

    The test positives leave train; of the rest, each user's latest positive is the
    validation item when at least one other is left to train on.
    """
    rest = positives.join(test_positives.select(layout.USER_IDX, layout.ITEM_IDX),
                          [layout.USER_IDX, layout.ITEM_IDX], "left_anti")
    ranked = _rank_latest_first(rest, seed=seed)
    held_out = (F.col("_n") >= 2) & (F.col(_RANK) == 1)
    pairs = (layout.USER_IDX, layout.ITEM_IDX)
    return ranked.where(~held_out).select(*pairs), ranked.where(held_out).select(*pairs)


def _draw_item(seed: int, stream: int, draw: Column, n_items: int) -> Column:
    """The item of one draw: a pure function of (seed, stream, user_idx, draw)."""
    hashed = F.xxhash64(F.lit(seed).cast("bigint"), F.lit(stream).cast("int"),
                        F.col(layout.USER_IDX).cast("int"), draw.cast("bigint"))
    return F.pmod(hashed, F.lit(n_items).cast("bigint")).cast("int")


def _count_users_still_short(state: DataFrame) -> int:
    """How many users still need negatives: the one action the sampling loop takes."""
    return state.where(F.col(_SHORT) > 0).count()


def sample_negatives(
    demand: DataFrame,
    touched: DataFrame,
    *,
    n_items: int,
    seed: int,
    stream: int,
    distinct: bool,
    max_rounds: int = MAX_ROUNDS,
) -> DataFrame:
    """Negatives (user_idx, item_idx) for each user of `demand` (user_idx, n_needed).

    Never an item of `touched` (user_idx, item_idx: every pair the user touched).
    distinct=True: up to n_needed different items per user; a user with fewer untouched
    items gets all of them. distinct=False: exactly n_needed draws, repeats allowed
    (any user with an untouched item). Draw k of a user is item
    pmod(xxhash64(seed, stream, user_idx, k), n_items); per round each short user
    oversamples, touched (and, if distinct, already chosen) items are dropped, and the
    first needed by draw number are kept. Users still short after `max_rounds`, and
    users whose untouched items are so few that random draws would mostly miss, take
    them from their enumerated untouched items in a hashed order instead.
    """
    n_touched = touched.groupBy(layout.USER_IDX).agg(F.count(F.lit(1)).alias("_n_touched"))
    untouched = F.lit(n_items) - F.coalesce(F.col("_n_touched"), F.lit(0))
    needed = F.col(_N_NEEDED).cast("bigint")
    target = F.least(needed, untouched) if distinct else F.when(untouched > 0, needed)
    state = (demand.join(n_touched, layout.USER_IDX, "left")
             .select(layout.USER_IDX, F.coalesce(target, F.lit(0)).cast("bigint").alias(_SHORT),
                     untouched.cast("bigint").alias(_UNTOUCHED),
                     F.lit(0).cast("bigint").alias(_NEXT_DRAW))
             .where(F.col(_SHORT) > 0))
    few_untouched = F.col(_UNTOUCHED) <= F.col(_SHORT) * (2 if distinct else 1)
    to_enumerate = state.where(few_untouched)
    state = state.where(~few_untouched)

    chosen: DataFrame | None = None
    for attempt in range(max_rounds):
        n_draws = (F.ceil(F.col(_SHORT) * (n_items * OVERSAMPLE * 2 ** attempt)
                          / F.col(_UNTOUCHED)) + SLACK).cast("bigint")
        round_state = state.where(F.col(_SHORT) > 0).withColumn(_N_DRAWS, n_draws)
        candidates = (
            round_state.select(
                layout.USER_IDX, _SHORT,
                F.explode(F.sequence(F.col(_NEXT_DRAW),
                                     F.col(_NEXT_DRAW) + F.col(_N_DRAWS) - 1)).alias(_DRAW))
            .withColumn(layout.ITEM_IDX, _draw_item(seed, stream, F.col(_DRAW), n_items))
            .join(touched, [layout.USER_IDX, layout.ITEM_IDX], "left_anti")
        )
        if distinct:
            if chosen is not None:
                candidates = candidates.join(chosen, [layout.USER_IDX, layout.ITEM_IDX],
                                             "left_anti")
            candidates = candidates.groupBy(layout.USER_IDX, layout.ITEM_IDX, _SHORT).agg(
                F.min(_DRAW).alias(_DRAW))
        first_drawn = Window.partitionBy(layout.USER_IDX).orderBy(_DRAW)
        taken = (candidates.withColumn(_RANK, F.row_number().over(first_drawn))
                 .where(F.col(_RANK) <= F.col(_SHORT))
                 .select(layout.USER_IDX, layout.ITEM_IDX))
        chosen = taken if chosen is None else chosen.unionByName(taken)
        got = taken.groupBy(layout.USER_IDX).agg(F.count(F.lit(1)).alias(_GOT))
        state = (round_state.join(got, layout.USER_IDX, "left").select(
            layout.USER_IDX,
            (F.col(_SHORT) - F.coalesce(F.col(_GOT), F.lit(0))).alias(_SHORT),
            F.col(_UNTOUCHED),
            (F.col(_NEXT_DRAW) + F.col(_N_DRAWS)).alias(_NEXT_DRAW)))
        if _count_users_still_short(state) == 0:
            break

    to_enumerate = to_enumerate.unionByName(state.where(F.col(_SHORT) > 0))
    enumerated = _take_untouched(to_enumerate, touched, chosen, n_items=n_items, seed=seed,
                                 stream=stream, distinct=distinct)
    return enumerated if chosen is None else chosen.unionByName(enumerated)


def _take_untouched(
    state: DataFrame,
    touched: DataFrame,
    chosen: DataFrame | None,
    *,
    n_items: int,
    seed: int,
    stream: int,
    distinct: bool,
) -> DataFrame:
    """`_short` negatives per user from all their untouched items, in a hashed order.

    distinct: the first `_short` not yet chosen. Otherwise draw j is the (j mod U)-th
    untouched item, U of them: a user who touched almost everything cycles through
    what is left.
    """
    spark = state.sparkSession
    all_items = spark.range(n_items).select(F.col("id").cast("int").alias(layout.ITEM_IDX))
    available = (state.select(layout.USER_IDX, _SHORT, _UNTOUCHED).crossJoin(all_items)
                 .join(touched, [layout.USER_IDX, layout.ITEM_IDX], "left_anti"))
    if distinct and chosen is not None:
        available = available.join(chosen, [layout.USER_IDX, layout.ITEM_IDX], "left_anti")
    hashed_order = Window.partitionBy(layout.USER_IDX).orderBy(
        F.xxhash64(F.lit(seed).cast("bigint"), F.lit(-stream).cast("int"),
                   F.col(layout.USER_IDX), F.col(layout.ITEM_IDX)),
        F.col(layout.ITEM_IDX))
    ranked = available.withColumn(_RANK, F.row_number().over(hashed_order) - 1)
    if distinct:
        return ranked.where(F.col(_RANK) < F.col(_SHORT)).select(layout.USER_IDX,
                                                                  layout.ITEM_IDX)
    wanted = (state.select(layout.USER_IDX, _UNTOUCHED,
                           F.explode(F.sequence(F.lit(0).cast("bigint"), F.col(_SHORT) - 1))
                           .alias(_DRAW))
              .select(layout.USER_IDX, F.pmod(F.col(_DRAW), F.col(_UNTOUCHED)).alias(_RANK)))
    return wanted.join(ranked.select(layout.USER_IDX, layout.ITEM_IDX, _RANK),
                       [layout.USER_IDX, _RANK]).select(layout.USER_IDX, layout.ITEM_IDX)


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
                                  F.lit(cfg.n_eval_negatives).alias(_N_NEEDED))
        negatives = sample_negatives(demand, touched, n_items=n_items, seed=cfg.seed,
                                     stream=stream, distinct=True)
        return _labelled(positives, negatives)

    train_demand = train_positives.groupBy(layout.USER_IDX).agg(
        (F.count(F.lit(1)) * cfg.n_negatives).alias(_N_NEEDED))
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
