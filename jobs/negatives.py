"""Negative sampling: items a user never touched, drawn reproducibly at any scale.

A pure transform (`sample_negatives`) on the demand per user and every touched pair;
no session creation, no writes. Draw k of a user is item
pmod(xxhash64(seed, stream, user_idx, k), n_items): a pure function of its inputs, so
one seed gives the same negatives whatever the parallelism or the partitioning.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs import layout

MAX_ROUNDS = 4  # sampling rounds before the rest is drawn from the enumerated complement
OVERSAMPLE = 1.25  # draws per needed negative, on top of the hit rate of untouched items
SLACK = 8  # extra draws per user and round, for users who need only a few

# Working columns (never written). `N_NEEDED` is the demand's column.
N_NEEDED = "n_needed"
_SHORT, _UNTOUCHED, _NEXT_DRAW = "_short", "_n_untouched", "_next_draw"
_DRAW, _RANK, _N_DRAWS, _GOT = "_draw", "_rank", "_n_draws", "_got"


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
    needed = F.col(N_NEEDED).cast("bigint")
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
