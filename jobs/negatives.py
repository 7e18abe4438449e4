"""Negative sampling: items a user never touched, drawn reproducibly at any scale.

A pure transform (`sample_negatives`) on the demand per user and every touched pair;
no session creation, no writes. It counts what is left after each sampling round (to
decide whether another is needed). Given a `cache` list, the frames it reads more than
once (the touched pairs by user, each round's draws) are persisted and appended to it,
and the caller unpersists them once the result is written; without one nothing is
persisted (the same rows, recomputed by each round). Every draw is
pmod(xxhash64(seed, stream, user_idx, ...), n_items): a pure function of its inputs, so
one seed gives the same negatives whatever the parallelism or the partitioning.

How it scales (ML-20M: 80M training negatives against 20M touched pairs). The demand
and the touched pairs are hash-partitioned by user into the same partitions, and each
user's touched items and draws are arrays in the user's one row: excluding the touched
items is a hash set per user (`array_except`), with no join, no sort and no shuffle of
the draws. Every user's negatives are distinct (drawn without replacement), training
and evaluation alike; only a user who needs more negatives than it has untouched items
gets repeats (training: its untouched items in turn), and one who needs nearly all of
them takes them from the enumerated complement instead of drawing.
"""

from __future__ import annotations

import functools
import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.lake import layout
from jobs.lake.config import PrepareConfig
from jobs.lake.protocol import STREAM_TEST, STREAM_TRAIN, STREAM_VALIDATION
from jobs.spark import cached, conform

log = logging.getLogger(__name__)

MAX_ROUNDS = 4  # sampling rounds before the rest is drawn from the enumerated complement
OVERSAMPLE = 1.25  # draws per needed negative, on top of the hit rate of untouched items
SLACK = 8  # extra draws per user and round, for users who need only a few

# Working columns (never written). `N_NEEDED` is the demand's column.
N_NEEDED = "n_needed"
_SHORT, _UNTOUCHED, _NEXT_DRAW, _TARGET = "_short", "_n_untouched", "_next_draw", "_target"
_RANK, _CHOSEN, _TOUCHED = "_rank", "_chosen", "_touched"
_ITEMS = "array<int>"


def _draw_item(seed: int, stream: int, n_items: int, *draw: Column) -> Column:
    """The item of one draw: a pure function of (seed, stream, user_idx, *draw)."""
    hashed = F.xxhash64(F.lit(seed).cast("bigint"), F.lit(stream).cast("int"),
                        F.col(layout.USER_IDX).cast("int"), *[d.cast("bigint") for d in draw])
    return F.pmod(hashed, F.lit(n_items).cast("bigint")).cast("int")


def _untouched(candidates: DataFrame, by_user: DataFrame, how: str = "left_anti") -> DataFrame:
    """The candidates whose (user_idx, item_idx) is not (left_anti) / is (left_semi) touched.

    A hash join per partition: `by_user` is the touched pairs partitioned like the
    candidates, and the hash table is built from it (the smaller side per user).
    """
    return candidates.join(by_user.hint("shuffle_hash"), [layout.USER_IDX, layout.ITEM_IDX],
                           how)


def sample_negatives(
    demand: DataFrame,
    touched: DataFrame,
    *,
    n_items: int,
    seed: int,
    stream: int,
    distinct: bool,
    max_rounds: int | None = None,
    cache: list[DataFrame] | None = None,
) -> DataFrame:
    """Negatives (user_idx, item_idx) for each user of `demand` (user_idx, n_needed).

    Never an item of `touched` (user_idx, item_idx: every pair the user touched), and
    distinct within a user. distinct=True: up to n_needed items per user; a user with
    fewer untouched items gets all of them. distinct=False (training): exactly n_needed
    for any user with an untouched item, repeating its untouched items in turn only when
    it has fewer than n_needed. Users whose untouched items are so few that random draws
    would mostly miss, and users still short after `max_rounds` rounds, take them from
    their enumerated untouched items in a hashed order instead (max_rounds None:
    MAX_ROUNDS, read at call time). What it persists goes into `cache` (module docstring).
    """
    max_rounds = MAX_ROUNDS if max_rounds is None else max_rounds
    n_parts = int(demand.sparkSession.conf.get("spark.sql.shuffle.partitions") or "200")
    # Cached once partitioned by user, so no later query shuffles them again, and a
    # later call with the same `touched` finds the cache (Spark matches cached plans).
    # The same goes for the count per user.
    by_user = cached(touched.select(layout.USER_IDX, layout.ITEM_IDX).repartition(
        n_parts, layout.USER_IDX), cache)
    n_touched = cached(by_user.groupBy(layout.USER_IDX).agg(
        F.count(F.lit(1)).alias("_n_touched")), cache)
    untouched = F.lit(n_items) - F.coalesce(F.col("_n_touched"), F.lit(0))
    needed = F.col(N_NEEDED).cast("bigint")
    target = F.least(needed, untouched) if distinct else F.when(untouched > 0, needed)
    state = (demand.repartition(n_parts, layout.USER_IDX)
             .join(F.broadcast(n_touched), layout.USER_IDX, "left")
             .select(layout.USER_IDX, F.coalesce(target, F.lit(0)).cast("bigint").alias(_SHORT),
                     untouched.cast("bigint").alias(_UNTOUCHED))
             .where(F.col(_SHORT) > 0))
    few_untouched = F.col(_UNTOUCHED) <= F.col(_SHORT) * 2
    to_enumerate = state.where(few_untouched)
    n_to_enumerate = _count(to_enumerate, "users with too few untouched items to draw", 0)
    chosen, short, n_short = _sample_distinct(state.where(~few_untouched), by_user,
                                              n_items=n_items, seed=seed, stream=stream,
                                              max_rounds=max_rounds, cache=cache)
    if chosen is not None and n_to_enumerate == 0 and n_short == 0:
        return chosen  # the enumeration's plan costs a pass over `touched` even when empty
    enumerated = _take_untouched(to_enumerate.unionByName(short), touched, chosen,
                                 n_items=n_items, seed=seed, stream=stream, distinct=distinct)
    return enumerated if chosen is None else chosen.unionByName(enumerated)


_Sampled = tuple[DataFrame | None, DataFrame, int | None]


def _sample_distinct(state: DataFrame, by_user: DataFrame, *, n_items: int, seed: int,
                     stream: int, max_rounds: int,
                     cache: list[DataFrame] | None) -> _Sampled:
    """Distinct negatives: (chosen, users still short with _short left, how many; None:
    not counted).

    Draw k of a user is item(seed, stream, user, k). Per round each short user
    oversamples; the user's distinct draws that are neither touched nor chosen in an
    earlier round, in draw order, extend the chosen items up to the target. A user's
    draws and touched items are arrays in the user's one row (array_except is a hash
    set per user), so there is no join, no sort and no shuffle of the draws. A round
    carries on only the users it left short (a few percent after the first): the
    others' rows are cached once, by the round that completed them.
    """
    if max_rounds <= 0:
        return None, state.select(layout.USER_IDX, _SHORT, _UNTOUCHED), None
    # Cached like by_user: the three splits' calls use the same sets.
    touched_sets = cached(by_user.groupBy(layout.USER_IDX).agg(
        F.collect_list(layout.ITEM_IDX).alias(_TOUCHED)), cache)
    pending = state.select(
        layout.USER_IDX, F.col(_SHORT).alias(_TARGET), _UNTOUCHED,
        F.lit(0).cast("bigint").alias(_NEXT_DRAW), F.array().cast(_ITEMS).alias(_CHOSEN))
    missing = F.col(_TARGET) - F.size(_CHOSEN)
    touched = F.coalesce(F.col(_TOUCHED), F.array().cast(_ITEMS))
    rounds: list[DataFrame] = []
    n_short = None
    for round_number in range(1, max_rounds + 1):
        # Every pending user misses at least one (state keeps users with _short > 0).
        n_draws = (F.ceil(missing * (n_items * OVERSAMPLE * 2 ** (round_number - 1))
                          / F.col(_UNTOUCHED)) + SLACK).cast("bigint")
        draws = F.transform(
            F.sequence(F.col(_NEXT_DRAW), F.col(_NEXT_DRAW) + n_draws - 1),
            lambda k: _draw_item(seed, stream, n_items, k))
        fresh = F.array_except(draws, F.concat(touched, F.col(_CHOSEN)))
        drawn = cached(pending.join(touched_sets, layout.USER_IDX, "left").select(
            layout.USER_IDX, _TARGET, _UNTOUCHED,
            (F.col(_NEXT_DRAW) + n_draws).alias(_NEXT_DRAW),
            F.concat(_CHOSEN, F.slice(fresh, 1, missing.cast("int"))).alias(_CHOSEN)), cache)
        rounds.append(drawn)
        pending = drawn.where(missing > 0)
        n_short = _count(pending, "users short", round_number)
        if n_short == 0:
            break
    # Each user's row of the round that completed it; the still short: their last row.
    finals = [df.where(missing <= 0) for df in rounds[:-1]] + [rounds[-1]]
    users = functools.reduce(DataFrame.unionByName, finals)
    chosen = users.select(layout.USER_IDX, F.explode(_CHOSEN).alias(layout.ITEM_IDX))
    return chosen, pending.select(layout.USER_IDX, missing.alias(_SHORT), _UNTOUCHED), n_short


def _count(df: DataFrame, what: str, round_number: int) -> int:
    """The one action per round: how much is still to draw (round 0: to enumerate)."""
    n = df.count()
    log.info("negative sampling round %d: %d %s", round_number, n, what)
    return n


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
    """`_short` negatives per user from their untouched items not chosen yet, in a
    hashed order.

    distinct: the first `_short`. Otherwise draw j is the (j mod U)-th, U untouched
    items: a user who touched almost everything (enumerated from the start, nothing
    chosen) cycles through what is left; a user still short after the rounds has more
    than U / 2 items left (it was not enumerated from the start), more than it misses,
    so it gets no repeats either.
    """
    spark = state.sparkSession
    all_items = spark.range(n_items).select(F.col("id").cast("int").alias(layout.ITEM_IDX))
    available = (state.select(layout.USER_IDX, _SHORT, _UNTOUCHED).crossJoin(all_items)
                 .join(touched, [layout.USER_IDX, layout.ITEM_IDX], "left_anti"))
    if chosen is not None:  # training too: a user short after the rounds has room
        available = available.join(chosen, [layout.USER_IDX, layout.ITEM_IDX], "left_anti")
    hashed_order = Window.partitionBy(layout.USER_IDX).orderBy(
        F.xxhash64(F.lit(seed).cast("bigint"), F.lit(-stream).cast("int"),
                   F.col(layout.USER_IDX), F.col(layout.ITEM_IDX)),
        F.col(layout.ITEM_IDX))
    ranked = available.withColumn(_RANK, F.row_number().over(hashed_order) - 1)
    if distinct:
        return ranked.where(F.col(_RANK) < F.col(_SHORT)).select(layout.USER_IDX,
                                                                  layout.ITEM_IDX)
    # Draw j (0 <= j < _short) is the (j mod U)-th item: item r comes _short // U times,
    # once more if r < _short mod U. (Repeated in place, not joined to the draws: an
    # inner join on two keys of sides partitioned by user alone trips Spark 4.2's
    # adaptive execution under requireAllClusterKeysForCoPartition=false.)
    times = (F.floor(F.col(_SHORT) / F.col(_UNTOUCHED))
             + F.when(F.col(_RANK) < F.pmod(F.col(_SHORT), F.col(_UNTOUCHED)), 1).otherwise(0))
    return ranked.where(times > 0).select(
        layout.USER_IDX, F.explode(F.array_repeat(layout.ITEM_IDX, times.cast("int")))
        .alias(layout.ITEM_IDX))


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
    cache: list[DataFrame] | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, validation, test) in layout.PAIRS_SCHEMA: the split's positives + negatives.

    The positives are the (user_idx, item_idx) frames of a jobs.split protocol; touched
    holds every pair any user interacted with (more than the positives when binarisation
    leaves some out). Each split draws from its own random stream.
    `presplit_test` (user_idx, item_idx, label), a source's own test split, is test/
    as it is: its negatives are not drawn again. What the sampling persists goes into
    `cache` (jobs.negatives), for the caller to release once the pairs are written.
    """
    def evaluation(positives: DataFrame, stream: int) -> DataFrame:
        # One demand row per user: time_cutoff and stratified test several positives each.
        demand = positives.select(layout.USER_IDX).distinct().select(
            layout.USER_IDX, F.lit(cfg.n_eval_negatives).alias(N_NEEDED))
        negatives = sample_negatives(demand, touched, n_items=n_items, seed=cfg.seed,
                                     stream=stream, distinct=True, cache=cache)
        return _labelled(positives, negatives)

    if cfg.n_negatives == 0:  # the default: the trainer draws its own on the device
        train = conform(train_positives.withColumn(layout.LABEL, F.lit(1)), layout.PAIRS_SCHEMA)
    else:
        # Training negatives exclude only what the model may know: the items the user
        # touched, less its held-out validation and test positives (excluding those would
        # tell the model they are not negatives: a leak into the evaluation).
        keys = (layout.USER_IDX, layout.ITEM_IDX)
        held_out = validation_positives.select(*keys).unionByName(test_positives.select(*keys))
        known = touched.join(held_out, [layout.USER_IDX, layout.ITEM_IDX], "left_anti")
        train_demand = train_positives.groupBy(layout.USER_IDX).agg(
            (F.count(F.lit(1)) * cfg.n_negatives).alias(N_NEEDED))
        train = _labelled(train_positives, sample_negatives(
            train_demand, known, n_items=n_items, seed=cfg.seed, stream=STREAM_TRAIN,
            distinct=False, cache=cache))
    test = (evaluation(test_positives, STREAM_TEST) if presplit_test is None
            else conform(presplit_test, layout.PAIRS_SCHEMA))
    return train, evaluation(validation_positives, STREAM_VALIDATION), test
