"""jobs.negatives: counts, exclusion, distinctness, determinism, every round and fallback."""

from __future__ import annotations

from collections import Counter

import pytest
from pyspark.sql import DataFrame, SparkSession

from jobs import negatives
from jobs.negatives import sample_negatives

pytestmark = pytest.mark.spark

PAIRS_DDL = "user_idx int, item_idx int"
N_ITEMS = 20
TOUCHED = {0: set(range(5)), 1: set(range(18)), 2: set(range(5, 10)), 3: set(range(N_ITEMS))}


def _pairs(df: DataFrame) -> list[tuple[int, ...]]:
    return sorted(tuple(row) for row in df.collect())


def _touched_frame(spark: SparkSession, touched: dict[int, set[int]]) -> DataFrame:
    return spark.createDataFrame([(u, i) for u, items in touched.items() for i in items],
                                 PAIRS_DDL)


@pytest.fixture(scope="module")
def touched(spark: SparkSession) -> DataFrame:
    return _touched_frame(spark, TOUCHED)


def _negatives(spark: SparkSession, touched: DataFrame, needs: dict[int, int], *,
               distinct: bool, max_rounds: int = negatives.MAX_ROUNDS, n_items: int = N_ITEMS,
               seed: int = 7) -> dict[int, list[int]]:
    demand = spark.createDataFrame(list(needs.items()), "user_idx int, n_needed int")
    cache: list[DataFrame] = []
    drawn = sample_negatives(demand, touched, n_items=n_items, seed=seed, stream=1,
                             distinct=distinct, max_rounds=max_rounds, cache=cache)
    by_user: dict[int, list[int]] = {user: [] for user in needs}
    try:
        for user, item in drawn.collect():
            by_user[user].append(item)
    finally:
        for df in cache:  # what a caller must do once the result is written
            df.unpersist()
    assert cache or max_rounds == 0  # the rounds read persisted frames
    return by_user


@pytest.mark.parametrize("max_rounds", [negatives.MAX_ROUNDS, 0])  # 0: enumeration only
def test_eval_negatives_distinct_untouched_all_of_them_when_short(
        spark: SparkSession, touched: DataFrame, max_rounds: int) -> None:
    got = _negatives(spark, touched, {0: 6, 1: 6, 2: 6, 3: 6}, distinct=True,
                     max_rounds=max_rounds)
    assert {user: len(items) for user, items in got.items()} == {0: 6, 1: 2, 2: 6, 3: 0}
    for user, items in got.items():
        assert len(set(items)) == len(items), user
        assert not set(items) & TOUCHED[user], user
        assert all(0 <= item < N_ITEMS for item in items)
    assert sorted(got[1]) == [18, 19]  # the only untouched items of user 1


@pytest.mark.parametrize("max_rounds", [negatives.MAX_ROUNDS, 0])
def test_train_negatives_exact_counts_distinct_until_short(
        spark: SparkSession, touched: DataFrame, max_rounds: int) -> None:
    got = _negatives(spark, touched, {0: 30, 1: 5, 2: 3, 3: 4}, distinct=False,
                     max_rounds=max_rounds)
    assert {user: len(items) for user, items in got.items()} == {0: 30, 1: 5, 2: 3, 3: 0}
    for user, items in got.items():
        assert not set(items) & TOUCHED[user], user
    assert set(got[1]) == {18, 19}  # cycles through what is left
    assert len(set(got[2])) == 3  # enough untouched items: drawn without replacement
    # 30 needed of 15 untouched: each of them twice, no more
    assert sorted(got[0]) == sorted(2 * [i for i in range(N_ITEMS) if i not in TOUCHED[0]])


def test_negatives_do_not_depend_on_partitioning(spark: SparkSession,
                                                 touched: DataFrame) -> None:
    demand = spark.createDataFrame([(0, 9), (1, 3), (2, 9)], "user_idx int, n_needed int")
    runs = []
    for parts, shuffle in ((1, "1"), (4, "3")):
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
        try:
            runs.append(_pairs(sample_negatives(
                demand.repartition(parts), touched.repartition(parts), n_items=N_ITEMS,
                seed=11, stream=2, distinct=True)))
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert runs[0] == runs[1]
    cache: list[DataFrame] = []
    with_cache = _pairs(sample_negatives(demand, touched, n_items=N_ITEMS, seed=11, stream=2,
                                         distinct=True, cache=cache))
    for df in cache:
        df.unpersist()
    assert with_cache == runs[0]  # persisting what the rounds re-read changes no row
    other_seed = _pairs(sample_negatives(demand, touched, n_items=N_ITEMS, seed=12, stream=2,
                                         distinct=True))
    assert other_seed != runs[0]


# Users who touched most items but not so many that they are enumerated outright: their
# first draws are mostly touched, so the later rounds (more draws per user) do the work.
CROWDED = {10: set(range(12)), 11: set(range(3, 16)), 12: {0}}


@pytest.fixture(scope="module")
def crowded(spark: SparkSession) -> DataFrame:
    return _touched_frame(spark, CROWDED)


def test_train_negatives_left_by_the_first_draws_are_filled_in_later_rounds(
        spark: SparkSession, crowded: DataFrame) -> None:
    needs = {10: 7, 11: 6, 12: 15}  # 8, 7 and 19 untouched items: drawn, not enumerated
    results = [_negatives(spark, crowded, needs, distinct=False, max_rounds=rounds)
               for rounds in (3, 8)]
    for got in results:
        assert {user: len(items) for user, items in got.items()} == needs
        for user, items in got.items():
            assert not set(items) & CROWDED[user], user
            assert all(0 <= item < N_ITEMS for item in items)
            assert len(set(items)) == len(items), user  # without replacement
    # A user keeps its draws in draw order: extra rounds change nothing once all are full.
    assert {u: sorted(i) for u, i in results[0].items()} == {
        u: sorted(i) for u, i in results[1].items()}
    # One round only: what the first draws leave is enumerated, still exact, untouched
    # and without replacement (the enumeration skips what the round chose).
    once = _negatives(spark, crowded, needs, distinct=False, max_rounds=1)
    assert {user: len(items) for user, items in once.items()} == needs
    for user, items in once.items():
        assert not set(items) & CROWDED[user], user
        assert len(set(items)) == len(items), user


def test_eval_negatives_for_crowded_users_are_distinct_and_exact(
        spark: SparkSession, crowded: DataFrame) -> None:
    needs = {10: 3, 11: 3, 12: 19}  # 12 has 19 untouched items: all of them
    for rounds in (1, negatives.MAX_ROUNDS):
        got = _negatives(spark, crowded, needs, distinct=True, max_rounds=rounds)
        assert {user: len(items) for user, items in got.items()} == needs
        for user, items in got.items():
            assert len(set(items)) == len(items), user
            assert not set(items) & CROWDED[user], user
        assert sorted(got[12]) == list(range(1, 20))


def test_draws_shuffled_or_not_give_the_same_negatives(spark: SparkSession,
                                                      crowded: DataFrame) -> None:
    """With the session's co-partitioned joins (get_spark) and with Spark's default, which
    shuffles the draws to meet the touched pairs: the same negatives."""
    needs = {10: 7, 11: 6, 12: 15}
    key = "spark.sql.requireAllClusterKeysForCoPartition"
    assert spark.conf.get(key) == "false"
    co_partitioned = {d: _negatives(spark, crowded, needs, distinct=d) for d in (False, True)}
    spark.conf.set(key, "true")
    try:
        shuffled = {d: _negatives(spark, crowded, needs, distinct=d) for d in (False, True)}
    finally:
        spark.conf.set(key, "false")
    assert {d: {u: sorted(i) for u, i in got.items()} for d, got in co_partitioned.items()} == {
        d: {u: sorted(i) for u, i in got.items()} for d, got in shuffled.items()}
    assert len(co_partitioned[False][12]) == 15


def test_train_negatives_are_spread_evenly_over_untouched_items(spark: SparkSession) -> None:
    touched = _touched_frame(spark, {0: set(range(1000)), 1: set(range(4000, 5000))})
    got = _negatives(spark, touched, {0: 3999, 1: 3999}, distinct=False, n_items=5000)
    for user, lo in ((0, 1000), (1, 0)):
        assert len(got[user]) == 3999
        assert lo <= min(got[user]) and max(got[user]) < lo + 4000, user
        # Ten bands of 400 untouched items, ~400 draws expected in each (sd ~19): a hash
        # that favoured some items or left some out would leave this range.
        bands = Counter((item - lo) // 400 for item in got[user])
        assert sorted(bands) == list(range(10)), user
        assert min(bands.values()) > 320 and max(bands.values()) < 480, bands


def test_eval_negatives_differ_by_stream_and_seed(spark: SparkSession,
                                                  touched: DataFrame) -> None:
    demand = spark.createDataFrame([(0, 6), (2, 6)], "user_idx int, n_needed int")

    def drawn(seed: int, stream: int) -> list[tuple[int, ...]]:
        return _pairs(sample_negatives(demand, touched, n_items=N_ITEMS, seed=seed,
                                       stream=stream, distinct=True))

    first = drawn(3, 2)
    assert first == drawn(3, 2)
    assert first != drawn(3, 3)
    assert first != drawn(4, 2)
    assert len(first) == 12
