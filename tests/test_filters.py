"""jobs.filters: as-of cutoff, binarise rules, seeded user sample, k-core, the counts."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from pyspark.sql import DataFrame, SparkSession

from jobs.filters import binarise, cut_off, k_core, sample_users, select_positives
from jobs.lake import layout
from jobs.lake.config import BinariseConfig, PrepareConfig

pytestmark = pytest.mark.spark

POSITIVES_DDL = "user_id string, item_id string, ts timestamp"


def _ts(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _interactions(spark: SparkSession,
                  rows: list[tuple[str, str, int | None, float]]) -> DataFrame:
    return spark.createDataFrame([(u, i, _ts(t), v) for u, i, t, v in rows],
                                 layout.ddl(layout.INTERACTIONS_SCHEMA))


def _rows(df: DataFrame) -> list[tuple[object, ...]]:
    return sorted((tuple(row) for row in df.collect()), key=repr)


def _pairs(df: DataFrame) -> set[tuple[str, str]]:
    return {(row[0], row[1]) for row in df.select(layout.USER_ID, layout.ITEM_ID).collect()}


# --- cutoff and binarise -------------------------------------------------------------

def test_cut_off_keeps_events_before_as_of_and_those_without_ts(spark: SparkSession) -> None:
    events = _interactions(spark, [("u1", "a", 99, 1.0), ("u1", "b", 100, 1.0),
                                   ("u1", "c", 101, 1.0), ("u2", "a", None, 1.0)])
    kept = cut_off(events, as_of=_ts(100))  # type: ignore[arg-type]
    assert _pairs(kept) == {("u1", "a"), ("u2", "a")}  # ts == as_of is not known yet


def test_binarise_any_collapses_repeats_to_the_latest_ts(spark: SparkSession) -> None:
    events = _interactions(spark, [("u1", "i1", 10, 5.0), ("u1", "i1", 30, 1.0),
                                   ("u1", "i2", 5, 2.0), ("u2", "i1", None, 3.0)])
    assert _rows(binarise(events, rule="any", threshold=None)) == _rows(spark.createDataFrame(
        [("u1", "i1", _ts(30)), ("u1", "i2", _ts(5)), ("u2", "i1", None)], POSITIVES_DDL))


def test_binarise_rating_any_event_at_the_threshold(spark: SparkSession) -> None:
    events = _interactions(spark, [
        ("u1", "i1", 10, 5.0), ("u1", "i1", 20, 4.0), ("u1", "i1", 30, 1.0),  # latest >= 4: 20
        ("u1", "i2", 5, 3.999), ("u2", "i1", 7, 4.0), ("u2", "i2", 8, 3.0), ("u2", "i2", 9, 2.0)])
    liked = binarise(events, rule="rating", threshold=4.0)
    assert _rows(liked) == _rows(spark.createDataFrame(
        [("u1", "i1", _ts(20)), ("u2", "i1", _ts(7))], POSITIVES_DDL))


def test_binarise_plays_sums_the_pairs_values(spark: SparkSession) -> None:
    # last.fm 1K: one row per listen, value 1; 360K: one row with the count, no ts.
    events = _interactions(spark, [
        ("u1", "a", 10, 1.0), ("u1", "a", 40, 1.0), ("u1", "a", 20, 1.0),  # 3 plays: positive
        ("u1", "b", 50, 1.0), ("u1", "b", 60, 1.0),  # 2 plays: not
        ("u2", "a", None, 3.0), ("u2", "b", None, 2.5)])  # 360K-style counts
    plays = binarise(events, rule="plays", threshold=3.0)
    assert _rows(plays) == _rows(spark.createDataFrame(
        [("u1", "a", _ts(40)), ("u2", "a", None)], POSITIVES_DDL))
    with pytest.raises(ValueError, match="needs a threshold"):
        binarise(events, rule="plays", threshold=None)
    with pytest.raises(ValueError, match="not one of"):
        binarise(events, rule="likes", threshold=1.0)


# --- user sample -----------------------------------------------------------------------

def test_user_sample_is_seeded_partition_free_and_near_the_fraction(
        spark: SparkSession) -> None:
    rng = random.Random(3)
    rows = [(f"user-{u}", f"i{rng.randrange(50)}", _ts(u)) for u in range(4000) for _ in (0, 1)]
    positives = spark.createDataFrame(rows, POSITIVES_DDL)

    def kept(df: DataFrame, seed: int = 7) -> set[str]:
        sampled = sample_users(df, fraction=0.3, seed=seed)
        return {row[0] for row in sampled.select(layout.USER_ID).distinct().collect()}

    first = kept(positives.coalesce(1))
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        assert kept(positives.repartition(7, layout.ITEM_ID)) == first
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert 0.27 * 4000 < len(first) < 0.33 * 4000
    # A user's fate depends on its own id only: other users (another index) change nothing.
    fewer = positives.where(positives[layout.USER_ID] < "user-2")
    assert kept(fewer) == {user for user in first if user < "user-2"}
    assert kept(positives, seed=8) != first
    every = sample_users(positives, fraction=1.0, seed=7)
    assert every is positives


# --- k-core ----------------------------------------------------------------------------

# u4 has one positive; dropping it leaves d with one, dropping d leaves u3 with one,
# dropping u3 leaves c with one: four rounds, then the 2-core {u1, u2} x {a, b}.
CASCADE = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"),
           ("u3", "c"), ("u3", "d"), ("u4", "d")]


def _positives(spark: SparkSession, pairs: list[tuple[str, str]]) -> DataFrame:
    return spark.createDataFrame([(u, i, _ts(n)) for n, (u, i) in enumerate(pairs)],
                                 POSITIVES_DDL)


def test_k_core_reaches_the_fixed_point_through_a_cascade(spark: SparkSession) -> None:
    core = k_core(_positives(spark, CASCADE), min_user_positives=2, min_item_positives=2,
                  max_iterations=10)
    assert (core.iterations, core.converged) == (4, True)
    assert _pairs(core.positives) == {("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")}

    capped = k_core(_positives(spark, CASCADE), min_user_positives=2, min_item_positives=2,
                    max_iterations=2)
    assert (capped.iterations, capped.converged) == (2, False)
    assert _pairs(capped.positives) == {("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"),
                                        ("u2", "b"), ("u3", "c")}

    off = _positives(spark, CASCADE)
    untouched = k_core(off, min_user_positives=1, min_item_positives=1, max_iterations=1)
    assert (untouched.positives, untouched.iterations, untouched.converged) == (off, 0, True)


def _reference_core(pairs: set[tuple[str, str]], min_user: int,
                    min_item: int) -> set[tuple[str, str]]:
    """Remove one violating pair's user or item at a time, in Python, until none is left."""
    pairs = set(pairs)
    while True:
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        for user, item in pairs:
            users[user] = users.get(user, 0) + 1
            items[item] = items.get(item, 0) + 1
        bad = next((("u", u) for u, n in sorted(users.items()) if n < min_user),
                   next((("i", i) for i, n in sorted(items.items()) if n < min_item), None))
        if bad is None:
            return pairs
        pairs = {p for p in pairs if (p[0] if bad[0] == "u" else p[1]) != bad[1]}


def test_k_core_matches_a_one_at_a_time_reference(spark: SparkSession) -> None:
    rng = random.Random(12)
    pairs = {(f"u{rng.randrange(60)}", f"i{min(int(rng.expovariate(0.1)), 59)}")
             for _ in range(400)}
    core = k_core(_positives(spark, sorted(pairs)), min_user_positives=5,
                  min_item_positives=4, max_iterations=50)
    expected = _reference_core(pairs, 5, 4)
    assert (core.converged, core.iterations) == (True, 5)  # removes both ways, round by round
    assert 0 < len(expected) < len(pairs)
    assert _pairs(core.positives) == expected


# --- the whole selection -------------------------------------------------------------

def test_select_positives_counts_every_step(spark: SparkSession) -> None:
    rows: list[tuple[str, str, int | None, float]] = [
        (u, i, 10 + n, 4.0) for n, (u, i) in enumerate(CASCADE)]
    rows += [("u1", "a", 20, 1.0),  # a repeat, low rating: no new positive
             ("u5", "e", 15, 2.0),  # below the threshold: no positive, u5 and e never count
             ("u1", "z", 500, 5.0), ("u9", "a", 600, 5.0),  # after as-of: dropped
             ("u2", "c", None, 5.0)]  # no timestamp: kept (and keeps c, u3 above the core)
    cfg = PrepareConfig(binarise=BinariseConfig(rule="rating", threshold=3.0),
                        min_user_positives=2, min_item_positives=2)
    selection = select_positives(_interactions(spark, rows), cfg, as_of=_ts(100))
    try:
        assert _pairs(selection.positives) == {
            ("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u2", "c"),
            ("u3", "c"), ("u3", "d"), ("u4", "d")} - {("u3", "d"), ("u4", "d"), ("u3", "c")}
        assert selection.events.count() == len(rows) - 2
        assert selection.counts == {
            "events_in": 13, "events_dropped_after_as_of": 2, "events_without_ts_kept": 1,
            "positives_after_binarise": 9, "users_after_binarise": 4, "items_after_binarise": 4,
            "users_dropped_by_sampling": 0, "items_dropped_by_sampling": 0,
            "users_dropped_by_k_core": 2,
            "items_dropped_by_k_core": 1, "k_core_iterations": 3, "k_core_converged": True,
            "positives_selected": 6}
    finally:
        selection.unpersist()

    half = select_positives(_interactions(spark, rows), PrepareConfig(user_fraction=0.5, seed=1),
                            as_of=None)
    try:
        kept = {row[0] for row in half.positives.select(layout.USER_ID).distinct().collect()}
        expected = sample_users(binarise(_interactions(spark, rows), rule="any", threshold=None),
                                fraction=0.5, seed=1)
        assert kept == {row[0] for row in expected.select(layout.USER_ID).collect()}
        assert 0 < len(kept) < 6  # of u1..u5 and u9: some kept, some not
        assert half.counts["events_dropped_after_as_of"] == 0
        assert half.counts["users_dropped_by_sampling"] == 6 - len(kept)
        assert half.counts["positives_selected"] == half.positives.count()
    finally:
        half.unpersist()
