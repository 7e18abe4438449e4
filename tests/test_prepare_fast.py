"""jobs.prepare_fast and jobs.xxhash: the per-user path writes the general path's bytes."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import negatives, prepare, prepare_fast, xxhash
from jobs.filters import binarise
from jobs.lake import layout
from jobs.lake.config import PrepareConfig

pytestmark = pytest.mark.spark

DATE = "2026-11-23"
SPLITS = layout.SPLITS


def test_xxhash_is_sparks(spark: SparkSession) -> None:
    """Every mix of int and bigint columns, extremes included, hashes as F.xxhash64 does."""
    rng = np.random.default_rng(3)
    ints = np.r_[rng.integers(-2**31, 2**31, 500), -2**31, 2**31 - 1, 0, -1].astype(np.int32)
    longs = np.r_[rng.integers(-2**63, 2**63 - 1, 500, dtype=np.int64),
                  -2**63, 2**63 - 1, 0, -1].astype(np.int64)
    df = spark.createDataFrame(pd.DataFrame({"i": ints, "l": longs}))
    expected = df.select(
        F.xxhash64("i").alias("a"), F.xxhash64("l").alias("b"),
        F.xxhash64(F.lit(7).cast("bigint"), F.lit(-3).cast("int"), "i", "l").alias("c"),
    ).toPandas()
    assert (xxhash.chain(ints) == expected["a"].to_numpy()).all()
    assert (xxhash.chain(longs) == expected["b"].to_numpy()).all()
    prefix = xxhash.chain(np.int64(7), np.int32(-3), ints)
    assert (xxhash.resume(prefix, longs) == expected["c"].to_numpy()).all()
    with pytest.raises(TypeError, match="float64"):
        xxhash.chain(np.zeros(2))


def _events(spark: SparkSession, n_items: int, seed: int, *, with_ts: bool) -> DataFrame:
    """Users of every kind: 1-2 positives (train only), same-second ties, a few without
    a timestamp, heavy users whose untouched items are few (enumerated) or just above
    twice the demand (several rounds), one who touched every item, repeated events."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, int | None, float]] = []
    for user in range(60):
        kind = user % 6
        size = {0: rng.randint(1, 2), 1: rng.randint(3, 8), 2: rng.randint(5, 20),
                3: n_items - rng.randint(0, 6), 4: n_items // 5 + rng.randint(0, 3),
                5: rng.randint(3, 40)}[kind]
        for item in rng.sample(range(n_items), min(size, n_items)):
            second = rng.randrange(50) if kind == 2 else rng.randrange(10_000)  # ties
            ts = None if not with_ts or (kind == 5 and user % 4 == 1) else second
            rows.append((f"u{user}", f"i{item}", ts, 4.0))
            if rng.random() < 0.05:  # the same pair again, later
                rows.append((f"u{user}", f"i{item}", None if ts is None else ts + 5, 3.0))
    rows.append(("u_all", "i0", 1, 1.0))
    rows += [("u_all", f"i{item}", 2, 1.0) for item in range(n_items)]
    return spark.createDataFrame(
        [(u, i, None if t is None else pd.Timestamp(t, unit="s", tz="UTC").to_pydatetime(), v)
         for u, i, t, v in rows], layout.ddl(layout.INTERACTIONS_SCHEMA))


def _write(spark: SparkSession, events: DataFrame, root: Path, cfg: PrepareConfig, *,
           fast_path: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict[str, str]]:
    positives = binarise(events, rule="any", threshold=None).persist()
    paths = layout.LakePaths(root, "t", DATE)
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "FUSED_PATH", fast_path)
        counts = prepare.write_outputs(events, positives, paths, cfg)
    positives.unpersist()
    return counts, {name: layout.sha256_dir(paths.path(name)) for name in SPLITS}


@pytest.mark.parametrize("case", [(30, 1, True, 7, 4, 9), (300, 2, True, 1000, 4, 9),
                                  (120, 3, False, 5, 4, 9), (300, 9, True, 1000, 1, 120)],
                         ids=["enumerated-chunks-of-7", "rounds", "without-timestamps",
                              "short-after-the-last-round"])
def test_prepare_fast_writes_the_general_paths_bytes(spark: SparkSession, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture,
                                              case: tuple[int, int, bool, int, int, int]) -> None:
    """Both paths on the same events (n_items items, a seed, chunks of users, sampling
    rounds): the same counts and the same sha256 for train/, validation/ and test/."""
    n_items, seed, with_ts, chunk_users, rounds, n_eval = case
    events = _events(spark, n_items, seed, with_ts=with_ts)
    cfg = PrepareConfig(n_eval_negatives=n_eval, seed=seed, output_partitions=3)
    assert prepare.uses_fast_path(cfg, presplit=False)
    monkeypatch.setattr(prepare_fast, "CHUNK_BYTES", chunk_users * (n_items + 1))
    monkeypatch.setattr(negatives, "MAX_ROUNDS", rounds)  # read by both paths
    with caplog.at_level(logging.INFO, logger="jobs.negatives"):
        general = _write(spark, events, tmp_path / "general", cfg, fast_path=False,
                         monkeypatch=monkeypatch)
    if rounds == 1:  # users the one round left short were enumerated for the rest
        short = [int(m.group(1)) for m in re.finditer(
            r"round 1: (\d+) users short", caplog.text)]
        assert short and max(short) > 0, caplog.text
    fast = _write(spark, events, tmp_path / "fused", cfg, fast_path=True,
                  monkeypatch=monkeypatch)
    assert fast == general
    counts = general[0]
    assert counts["train_rows"] > 0 and counts["test_rows"] > 0
    # The case the data is built for did happen: users short of evaluation negatives.
    assert counts["users_short_of_eval_negatives"] > 0
    lake = layout.LakePaths(tmp_path / "fused", "t", DATE)
    # No training negatives by default: train/ holds the positives only.
    assert set(pd.read_parquet(lake.path(layout.TRAIN))["label"]) == {1}
    # Evaluation negatives are distinct: min(needed, untouched) per user.
    touched = pd.concat([pd.read_parquet(lake.path(split)).query("label == 1")
                         for split in SPLITS]).groupby("user_idx").size()
    drawn = (pd.read_parquet(lake.path(layout.TEST)).query("label == 0")
             .groupby("user_idx")["item_idx"].agg(["size", "nunique"]))
    untouched = n_items - touched.reindex(drawn.index)
    assert (drawn["nunique"] == drawn["size"]).all()
    assert (drawn["size"] == np.minimum(n_eval, untouched)).all()


@pytest.mark.parametrize("n_users", [1, 3])
def test_prepare_fast_names_files_as_write_parquet_with_empty_partitions(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        n_users: int) -> None:
    """More files than users: most partitions are empty (partition 0 too, for some
    splits), and the files are numbered as write_parquet numbers Spark's."""
    rows = [(f"u{user}", f"i{item}", pd.Timestamp(item, unit="s", tz="UTC").to_pydatetime(),
             1.0) for user in range(n_users) for item in range(user * 2 + 1)]
    events = spark.createDataFrame(rows, layout.ddl(layout.INTERACTIONS_SCHEMA))
    cfg = PrepareConfig(n_eval_negatives=2, seed=1, output_partitions=6)
    general = _write(spark, events, tmp_path / "general", cfg, fast_path=False,
                     monkeypatch=monkeypatch)
    fast = _write(spark, events, tmp_path / "fused", cfg, fast_path=True,
                  monkeypatch=monkeypatch)
    assert fast == general
    def names(root: str) -> dict[str, list[str]]:  # hidden files too: no task leftovers
        paths = layout.LakePaths(tmp_path / root, "t", DATE)
        return {split: sorted(p.name for p in paths.path(split).iterdir()) for split in SPLITS}

    assert names("fused") == names("general")
    if n_users == 1:  # nothing to evaluate: one empty file with the schema
        test = layout.LakePaths(tmp_path / "fused", "t", DATE).path(layout.TEST)
        assert spark.read.parquet(str(test)).count() == 0


def test_split_and_sample_rows(spark: SparkSession) -> None:
    """The numpy core alone: the split, the demand met, negatives never touched."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(4, dtype=np.int32), [1, 3, 5, 8])
    items = np.concatenate([rng.choice(50, n, replace=False) for n in (1, 3, 5, 8)]
                           ).astype(np.int32)
    ts = np.arange(len(users), dtype=np.int64) * 1_000_000
    params = prepare_fast.Params(n_items=50, seed=1, n_eval_negatives=6)
    order = rng.permutation(len(users))
    result = prepare_fast.split_and_sample(users[order], items[order], ts[order],
                                    np.ones(len(users), bool), params)
    assert result.users.tolist() == [0, 1, 2, 3]
    assert result.positives[layout.TEST].tolist() == [0, 1, 1, 1]
    assert result.positives[layout.VALIDATION].tolist() == [0, 1, 1, 1]
    assert result.positives[layout.TRAIN].tolist() == [1, 1, 3, 6]
    for user in range(4):
        own = set(items[users == user].tolist())
        latest = int(items[users == user][-1])
        for split in prepare_fast.SPLITS:
            ragged = result.items[split]
            row = ragged.values[ragged.offsets[user]:ragged.offsets[user + 1]]
            n_pos = int(result.positives[split][user])
            negatives = row[n_pos:]
            assert not set(negatives.tolist()) & own
            assert list(negatives) == sorted(negatives) and list(row[:n_pos]) == sorted(
                row[:n_pos])
            wanted = 0 if split == layout.TRAIN else (6 if n_pos else 0)
            assert len(negatives) == wanted, (user, split)
        if user:
            test = result.items[layout.TEST]
            assert test.values[test.offsets[user]] == latest


def test_main_fused_and_general_write_the_same_lake(spark: SparkSession, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare.main on events with repeated pairs and events after the as-of time: on the
    fast path binarise happens inside jobs.prepare_fast; the manifest's counts and every
    output folder are the general path's."""
    events = _events(spark, 40, 4, with_ts=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "ml-100k/u.data", "sha256": "0" * 64},
        "prepare": {"binarise": {"rule": "any"}, "n_eval_negatives": 7,
                    "seed": 9, "output_partitions": 2}}))
    as_of = "1970-01-01T02:30:00+00:00"  # 9,000 s: a tenth of the events come later
    source = tmp_path / "interactions"
    events.coalesce(3).write.parquet(str(source))
    entries, digests = [], []
    for fast_path in (True, False):
        paths = layout.LakePaths(tmp_path / f"lake-{fast_path}", "tiny", DATE)
        shutil.copytree(source, paths.path(layout.INTERACTIONS))
        monkeypatch.setattr(prepare, "FUSED_PATH", fast_path)
        assert prepare.main(["--config", str(config), "--logical-date", DATE, "--lake-root",
                             str(paths.root), "--as-of", as_of]) == 0
        entry = json.loads(paths.manifest.read_text())["prepare"]
        entry.pop("written_at")
        entries.append(entry)
        digests.append({name: layout.sha256_dir(paths.path(name))
                        for name in (layout.USERS, layout.ITEMS, *SPLITS)})
    assert entries[0] == entries[1]
    assert digests[0] == digests[1]
    entry = entries[0]
    assert entry["events_dropped_after_as_of"] > 0
    assert entry["positives_selected"] == entry["positives_after_binarise"] > 0
    assert entry["positives_selected"] < entry["events_in"] - entry["events_dropped_after_as_of"]
