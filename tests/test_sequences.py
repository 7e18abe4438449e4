"""jobs.sequences: training sequences in the split's time order, and prepare writing them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from jobs import prepare, xxhash
from jobs.filters import binarise
from jobs.lake import layout
from jobs.lake.config import PrepareConfig, SplitConfig
from jobs.lake.protocol import STREAM_TIE_BREAK
from jobs.sequences import skip_reason, training_sequences
from jobs.split import MIN_POSITIVES_TO_EVALUATE, split_leave_one_out

POSITIVES_DDL = "user_idx int, item_idx int, ts timestamp"
PAIRS_DDL = "user_idx int, item_idx int"
DATE = "2026-11-23"
Row = tuple[int, int, int | None]  # user_idx, item_idx, ts in seconds (None: no timestamp)


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _positives(spark: SparkSession, rows: Sequence[Row]) -> DataFrame:
    return spark.createDataFrame([(u, i, None if t is None else _ts(t)) for u, i, t in rows],
                                 POSITIVES_DDL)


def _held_out(spark: SparkSession, pairs: Sequence[tuple[int, int]]) -> DataFrame:
    return spark.createDataFrame(list(pairs), PAIRS_DDL)


def _random_rows(seed: int, *, n_users: int = 40, n_items: int = 60, seconds: int = 20,
                 null_share: float = 0.1) -> list[Row]:
    """Few distinct seconds (many same-second ties), some events without a timestamp."""
    rng = random.Random(seed)
    return [(u, i, None if rng.random() < null_share else rng.randrange(seconds))
            for u in range(n_users) for i in rng.sample(range(n_items), rng.randint(1, 15))]


def _collected(sequences: DataFrame) -> dict[int, list[int]]:
    return {int(row[0]): list(row[1]) for row in sequences.collect()}


def _reference(rows: Sequence[Row], held_out: set[tuple[int, int]], *, seed: int,
               max_length: int) -> dict[int, list[int]]:
    """The sequences in pandas: ts ascending (no ts first), the tie hash, item; the last
    max_length. The hash is jobs.xxhash's numpy copy of Spark's xxhash64."""
    frame = pd.DataFrame(rows, columns=["user", "item", "ts"])
    frame = frame[[(u, i) not in held_out for u, i in zip(frame.user, frame.item, strict=True)]]
    frame = frame.assign(
        has_ts=frame.ts.notna(), ts=frame.ts.fillna(0),
        tie=xxhash.chain(np.int64(seed), np.int32(STREAM_TIE_BREAK),
                         frame.user.to_numpy(np.int32), frame.item.to_numpy(np.int32)))
    ordered = frame.sort_values(["user", "has_ts", "ts", "tie", "item"], kind="stable")
    return {int(user): [int(i) for i in group.item][-max_length:]
            for user, group in ordered.groupby("user")}


def test_skip_reason_names_the_setting() -> None:
    assert skip_reason(PrepareConfig()) is None
    assert skip_reason(PrepareConfig(sequence_length=0)) == "prepare.sequence_length is 0"
    reason = skip_reason(PrepareConfig(split=SplitConfig(method="stratified")))
    assert reason is not None and "stratified" in reason and "leave_one_out" in reason


@pytest.mark.spark
@pytest.mark.parametrize("max_length", [1, 3, 200])
def test_sequences_equal_a_pandas_reference(spark: SparkSession, max_length: int) -> None:
    """Hand-made same-second ties and held-out pairs, then random data, against pandas."""
    rows: list[Row] = [(0, 5, 10), (0, 3, 10), (0, 9, 10), (0, 1, 7), (0, 2, 11), (0, 4, 12),
                       (1, 8, 3), (1, 6, 3), (2, 7, 1),
                       *((u + 3, i, t) for u, i, t in _random_rows(1))]
    held = {(0, 4), (0, 2), (1, 8)} | {(u, i) for u, i, _ in rows[9:] if (u + i) % 5 == 0}
    got = _collected(training_sequences(_positives(spark, rows), _held_out(spark, sorted(held)),
                                        seed=7, max_length=max_length))
    want = _reference(rows, held, seed=7, max_length=max_length)
    assert got == want
    assert max(map(len, got.values())) == min(max_length, max(
        len(s) for s in _reference(rows, held, seed=7, max_length=1000).values()))
    # User 0: item 1 at 7 s, then 3, 5, 9 all at 10 s (their order: the hash); 2 and 4
    # held out. User 1: 8 held out.
    assert set(got[0][-3:]) <= {3, 5, 9} and got[1] == [6] and got[2] == [7]
    if max_length >= 4:
        assert got[0][0] == 1 and len(got[0]) == 4


@pytest.mark.spark
def test_sequences_do_not_depend_on_partitioning(spark: SparkSession) -> None:
    positives = _positives(spark, _random_rows(2, n_users=60))
    held = _held_out(spark, [(u, i) for u, i, _ in _random_rows(2, n_users=60)[::4]])
    runs = []
    for parts, shuffle in ((1, "1"), (4, "5")):
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
        try:
            runs.append(training_sequences(positives.repartition(parts),
                                           held.repartition(parts), seed=3, max_length=6)
                        .orderBy(layout.USER_IDX).collect())
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert len(runs[0]) == 60
    assertDataFrameEqual(runs[0], runs[1], checkRowOrder=True)


@pytest.mark.spark
@pytest.mark.parametrize("seed", [0, 11])
def test_sequence_order_is_the_splits_order(spark: SparkSession, seed: int) -> None:
    """On random data with ties and missing timestamps: each user's sequence of all its
    positives ends with the split's validation item, then its test item; the training
    sequence is that sequence without them."""
    positives = _positives(spark, _random_rows(seed + 5, seconds=4, null_share=0.2))
    train, validation, test = split_leave_one_out(positives, seed=seed)
    held = validation.unionByName(test)
    everything = _collected(training_sequences(positives, _held_out(spark, []), seed=seed,
                                               max_length=1000))
    trained = _collected(training_sequences(positives, held, seed=seed, max_length=1000))
    tested = dict(map(tuple, test.collect()))
    validated = dict(map(tuple, validation.collect()))
    assert len(tested) > 20 and set(tested) == set(validated)
    for user, sequence in everything.items():
        if user in tested:
            assert len(sequence) >= MIN_POSITIVES_TO_EVALUATE
            assert sequence[-2:] == [validated[user], tested[user]], user
            assert trained[user] == sequence[:-2], user
        else:
            assert trained[user] == sequence, user
    assert {u: sorted(s) for u, s in trained.items()} == {
        u: sorted(items) for u, items in _group(train).items()}


def _group(pairs: DataFrame) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for user, item in pairs.collect():
        grouped.setdefault(int(user), []).append(int(item))
    return grouped


@pytest.mark.spark
def test_null_ts_sorts_first_and_alone_is_the_hash_order(spark: SparkSession) -> None:
    """User 0 has no timestamps (its order is the tie hash's); user 1 mixes: its events
    without a timestamp come first."""
    rows: list[Row] = [(0, i, None) for i in range(8)] + [(1, 3, 5), (1, 4, None),
                                                         (1, 5, 2), (1, 6, None)]
    got = _collected(training_sequences(_positives(spark, rows), _held_out(spark, []),
                                        seed=4, max_length=10))
    hashes = xxhash.chain(np.int64(4), np.int32(STREAM_TIE_BREAK), np.zeros(8, np.int32),
                          np.arange(8, dtype=np.int32))
    assert got[0] == [int(i) for i in np.argsort(hashes, kind="stable")]
    assert sorted(got[1][:2]) == [4, 6] and got[1][2:] == [5, 3]


@pytest.mark.spark
def test_max_length_below_one_is_refused(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="sequence_length 0 writes no sequences"):
        training_sequences(_positives(spark, [(0, 1, 1)]), _held_out(spark, []), seed=1,
                           max_length=0)


# --- prepare writes sequences/ on both paths ----------------------------------------------

def _events(spark: SparkSession, seed: int) -> DataFrame:
    """Raw events (tests/test_prepare_fast.py's kind, smaller): users with 1-2 positives,
    same-second ties, some without a timestamp, pairs repeated later."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, int | None, float]] = []
    for user in range(40):
        for item in rng.sample(range(30), rng.randint(1, 2) if user % 4 == 0 else
                               rng.randint(3, 25)):
            ts = None if user % 7 == 3 and rng.random() < 0.5 else rng.randrange(40)
            rows.append((f"u{user}", f"i{item}", ts, 4.0))
            if rng.random() < 0.1:
                rows.append((f"u{user}", f"i{item}", None if ts is None else ts + 50, 3.0))
    return spark.createDataFrame(
        [(u, i, None if t is None else _ts(t), v) for u, i, t, v in rows],
        layout.ddl(layout.INTERACTIONS_SCHEMA))


def _write(events: DataFrame, root: Path, cfg: PrepareConfig, *, fast_path: bool,
           monkeypatch: pytest.MonkeyPatch) -> tuple[dict, layout.LakePaths]:
    """prepare.write_outputs on one path (tests/test_prepare_fast.py's helper), given the
    positives as jobs.filters.select_positives hands them over: on the fast path the
    events themselves, repeated pairs included (pairs_later)."""
    positives = (events.select(layout.USER_ID, layout.ITEM_ID, layout.TS) if fast_path
                 else binarise(events, rule="any", threshold=None)).persist()
    paths = layout.LakePaths(root, "t", DATE)
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "FUSED_PATH", fast_path)
        counts = prepare.write_outputs(events, positives, paths, cfg)
    positives.unpersist()
    return counts, paths


@pytest.mark.spark
@pytest.mark.parametrize("max_length", [4, 200])
def test_both_prepare_paths_write_the_same_sequences(spark: SparkSession, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     max_length: int) -> None:
    """The same events through the general and the fast path: the same sequences/ bytes
    and manifest record; the sequences hold each user's train/ positives (the latest
    max_length). A later run with sequence_length 0 records why and removes sequences/."""
    events = _events(spark, max_length)
    cfg = PrepareConfig(n_eval_negatives=5, seed=3, output_partitions=3,
                        sequence_length=max_length)
    assert prepare.uses_fast_path(cfg, presplit=False)
    general = _write(events, tmp_path / "general", cfg, fast_path=False,
                     monkeypatch=monkeypatch)
    fast = _write(events, tmp_path / "fast", cfg, fast_path=True, monkeypatch=monkeypatch)
    assert fast[0] == general[0]
    folders = [paths.path(layout.SEQUENCES) for _, paths in (general, fast)]
    assert layout.sha256_dir(folders[0]) == layout.sha256_dir(folders[1])
    assert sorted(p.name for p in folders[1].iterdir()) == [
        "_SUCCESS", *(f"part-0000{n}.snappy.parquet" for n in range(3))]
    lake = pd.read_parquet(folders[1])
    assert len(lake) == 40  # every user keeps a training positive under leave-one-out
    assert fast[0]["sequences"] == {"rows": 40, "max_length": max_length}
    train = pd.read_parquet(fast[1].path(layout.TRAIN)).groupby(layout.USER_IDX)[
        layout.ITEM_IDX].apply(set)
    for user, sequence in zip(lake[layout.USER_IDX], lake[layout.SEQUENCE], strict=True):
        assert len(sequence) == min(max_length, len(train[user]))
        assert set(sequence) <= train[user] and len(set(sequence)) == len(sequence)
    from jobs.quality.validate import validate_splits  # Great Expectations: ~10 s to import

    assert validate_splits(fast[1], max_sequence_length=max_length).success
    skipped = _write(events, tmp_path / "fast", PrepareConfig(sequence_length=0, seed=3),
                     fast_path=True, monkeypatch=monkeypatch)
    assert skipped[0]["sequences"] == {"skipped": "prepare.sequence_length is 0"}
    assert not skipped[1].path(layout.SEQUENCES).exists()
