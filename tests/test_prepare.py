"""jobs.prepare: dense ids, negatives, determinism, as-of backfills, main() end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, prepare
from jobs.filters import binarise
from jobs.index import index_ids
from jobs.lake import layout
from jobs.lake.config import BinariseConfig, PrepareConfig
from jobs.negatives import build_pairs
from jobs.prepare import PrepareError, default_as_of
from jobs.spark import write_parquet
from jobs.split import split_leave_one_out

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-23"
POSITIVES_DDL = "user_idx int, item_idx int, ts timestamp"
PAIRS_DDL = "user_idx int, item_idx int"


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _interactions(spark: SparkSession, rows: list[tuple[str, str, int, float]]) -> DataFrame:
    return spark.createDataFrame([(u, i, _ts(t), v) for u, i, t, v in rows],
                                 layout.ddl(layout.INTERACTIONS_SCHEMA))


def _pairs(df: DataFrame) -> list[tuple[int, ...]]:
    return sorted(tuple(row) for row in df.collect())


# --- index_ids -----------------------------------------------------------------------

def test_index_ids_dense_numeric_for_digits_else_text(spark: SparkSession) -> None:
    interactions = _interactions(spark, [
        ("10", "b", 1, 1.0), ("9", "a", 1, 1.0), ("100", "10", 1, 1.0), ("1", "9", 1, 1.0),
        ("9", "b", 2, 1.0)])
    users, items = index_ids(interactions.repartition(3))
    assert [(f.name, f.dataType.simpleString()) for f in users.schema] == list(
        layout.USERS_SCHEMA)
    assert [(f.name, f.dataType.simpleString()) for f in items.schema] == list(
        layout.ITEMS_SCHEMA)
    assert sorted(map(tuple, users.collect()), key=lambda r: r[1]) == [
        ("1", 0), ("9", 1), ("10", 2), ("100", 3)]
    assert sorted(map(tuple, items.collect()), key=lambda r: r[1]) == [
        ("10", 0), ("9", 1), ("a", 2), ("b", 3)]


@pytest.mark.parametrize("ids", [
    ["b", "a", "Z", "é", "ä", "日本", "a b", "~", "10", "9", "\U0001F600", "ſ", "ａ"],
    ["007", "7", "70", "123456789012345678901234567890", "0"],
], ids=["text", "digits"])
def test_index_ids_order_is_sparks_string_order(spark: SparkSession, ids: list[str]) -> None:
    """The driver numbers the ids as a Spark sort would (by UTF-8 bytes; digits by
    length first), whatever the characters."""
    interactions = _interactions(spark, [(i, i, 1, 1.0) for i in ids])
    users, _items = index_ids(interactions)
    frame = spark.createDataFrame([(i,) for i in ids], "user_id string")
    by_length = [F.length("user_id")] if all(i.isdigit() for i in ids) else []
    expected = [row[0] for row in frame.orderBy(*by_length, "user_id").collect()]
    assert [row[0] for row in users.orderBy(layout.USER_IDX).collect()] == expected
    assert sorted(row[1] for row in users.collect()) == list(range(len(ids)))


# --- build_pairs: determinism ----------------------------------------------------------

def _random_positives(spark: SparkSession, n_users: int = 25, n_items: int = 40) -> DataFrame:
    rng = random.Random(5)
    rows = [(u, i, _ts(rng.randrange(1000))) for u in range(n_users)
            for i in rng.sample(range(n_items), rng.randint(2, 12))]
    return spark.createDataFrame(rows, POSITIVES_DDL)


def test_build_pairs_same_seed_same_rows_and_bytes(spark: SparkSession,
                                                   tmp_path: Path) -> None:
    """Input in 1 vs 6 partitions, 1 vs 4 shuffle partitions: same rows, same files.

    (validation/ runs the code of test/ with another stream; it is left out for time.)
    """
    positives = _random_positives(spark)
    touched = positives.select(layout.USER_IDX, layout.ITEM_IDX)
    cfg = PrepareConfig(n_negatives=3, n_eval_negatives=8, seed=5, output_partitions=2)
    written = []
    for run, (parts, shuffle) in enumerate(((1, "1"), (6, "4"))):
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
        try:
            train, _validation, test = build_pairs(
                *split_leave_one_out(positives.repartition(parts), seed=cfg.seed),
                touched.repartition(parts), n_items=40, cfg=cfg)
            folder = tmp_path / f"run{run}"
            for name, df in (("train", train), ("test", test)):
                write_parquet(df, folder / name, files=cfg.output_partitions,
                              key=layout.USER_IDX, sort_by=prepare.pairs_order())
            written.append(folder)
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")
    for name in ("train", "test"):
        first, second = (spark.read.parquet(str(folder / name)) for folder in written)
        assertDataFrameEqual(first, second)
        assert layout.sha256_dir(written[0] / name) == layout.sha256_dir(written[1] / name)

    positive_pairs = set(_pairs(touched))
    for name, n_negatives in (("train", None), ("test", 8)):
        df = spark.read.parquet(str(written[0] / name))
        assert [(f.name, f.dataType.simpleString()) for f in df.schema] == list(
            layout.PAIRS_SCHEMA)
        per_user = [tuple(r)[1:] for r in df.groupBy(layout.USER_IDX).agg(
            F.sum(layout.LABEL), F.sum(1 - F.col(layout.LABEL))).collect()]
        expected = [(p, 3 * p if n_negatives is None else n_negatives) for p, _ in per_user]
        assert per_user == expected, name
        negatives = df.where(F.col(layout.LABEL) == 0).drop(layout.LABEL)
        known = set(_pairs(spark.read.parquet(str(written[0] / "train")).where(
            F.col(layout.LABEL) == 1).drop(layout.LABEL))) if name == "train" else positive_pairs
        assert not set(_pairs(negatives)) & known, name


def test_training_negatives_exclude_only_what_the_model_may_know(spark: SparkSession) -> None:
    """A user's held-out validation and test items may be training negatives (excluding them
    would tell the model something about the evaluation); its training positives never."""
    positives = spark.createDataFrame([(0, item, _ts(item)) for item in range(6)],
                                      POSITIVES_DDL)  # 8 items: 6 touched, latest = 5
    touched = positives.select(layout.USER_IDX, layout.ITEM_IDX)
    cfg = PrepareConfig(n_negatives=10, n_eval_negatives=2, seed=3)
    train, validation, test = build_pairs(*split_leave_one_out(positives, seed=cfg.seed),
                                          touched, n_items=8, cfg=cfg)
    drawn = {row[layout.ITEM_IDX] for row in train.where(F.col(layout.LABEL) == 0).collect()}
    assert drawn == {4, 5, 6, 7}  # 40 draws over the validation (4), test (5) and untouched
    assert {row[layout.ITEM_IDX] for row in test.where(F.col(layout.LABEL) == 0).collect()} \
        == {6, 7}  # evaluation negatives: never anything the user touched
    unsampled = PrepareConfig(n_eval_negatives=2, seed=3)  # the default: none in train/
    train, _, _ = build_pairs(*split_leave_one_out(positives, seed=3), touched, n_items=8,
                              cfg=unsampled)
    assert {row[layout.LABEL] for row in train.collect()} == {1}


# --- main --------------------------------------------------------------------------

def _write_config(folder: Path, **prepare_params: Any) -> Path:
    config = {
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "ml-100k/u.data", "sha256": "0" * 64},
        "ingest": {"min_value": 1, "max_value": 5},
        "prepare": {"binarise": {"rule": "rating", "threshold": 3.0}, "n_negatives": 2,
                    "n_eval_negatives": 5, "seed": 3, "output_partitions": 2,
                    **prepare_params},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tiny_lake(spark: SparkSession, root: Path) -> layout.LakePaths:
    """12 users x 15 items (threshold 3): u0 has two positives, u1 touched 12 items,
    one of them (i4) rated 1, so 3 items are left for its 5 evaluation negatives."""
    rng = random.Random(1)
    rows: list[tuple[str, str, int, float]] = [("u0", "i1", 50, 5.0), ("u0", "i2", 60, 4.0),
                                               ("u0", "i3", 70, 1.0)]
    rows += [("u1", f"i{i}", 100 + i, 1.0 if i == 4 else 5.0) for i in range(1, 13)]
    for user in range(2, 12):  # five positives and one low rating each
        for n, item in enumerate(rng.sample(range(1, 16), 6)):
            rows.append((f"u{user}", f"i{item}", rng.randrange(1000),
                         2.0 if n == 0 else float(rng.randint(3, 5))))
    rows += [("u10", "i4", 3, 5.0)] + [("u11", f"i{i}", 4, 4.0) for i in (13, 14, 15)]
    rows.append(("u2", "i1", 5, 5.0))
    rows.append(("u2", "i1", 2000, 5.0))  # a repeat: one positive, the latest ts
    paths = layout.LakePaths(root, "tiny", DATE)
    _interactions(spark, rows).coalesce(1).write.parquet(str(paths.path(layout.INTERACTIONS)))
    return paths


def _run_prepare(config: Path, root: Path, *extra: str) -> int:
    return prepare.main(["--config", str(config), "--logical-date", DATE,
                         "--lake-root", str(root), *extra])


@pytest.fixture(scope="module")
def prepared(spark: SparkSession,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[layout.LakePaths, Path]:
    """The tiny lake after one prepare.main() run (in this process: local[2])."""
    folder = tmp_path_factory.mktemp("prepared")
    paths = _tiny_lake(spark, folder / "lake")
    config = _write_config(folder / "configs")
    assert _run_prepare(config, paths.root) == 0
    return paths, config


def test_main_end_to_end(spark: SparkSession,
                         prepared: tuple[layout.LakePaths, Path]) -> None:
    paths, _config = prepared
    entry = json.loads(paths.manifest.read_text())["prepare"]
    interactions = spark.read.parquet(str(paths.path(layout.INTERACTIONS)))
    positives = binarise(interactions, rule="rating", threshold=3.0)
    n_users = positives.select(layout.USER_ID).distinct().count()
    n_items = positives.select(layout.ITEM_ID).distinct().count()
    assert {k: entry[k] for k in ("n_users", "n_items", "n_positives")} == {
        "n_users": n_users, "n_items": n_items, "n_positives": positives.count()}
    assert entry["params"] == dataclasses.asdict(PrepareConfig(
        binarise=BinariseConfig(rule="rating", threshold=3.0), n_negatives=2,
        n_eval_negatives=5, seed=3, output_partitions=2))
    assert entry["params"]["binarise"] == {"rule": "rating", "threshold": 3.0}
    assert entry["as_of"] == "2026-11-23T00:00:00+00:00"  # the logical date, 00:00 UTC
    assert (entry["timestamps"], entry["split"]["method"], entry["split"]["hold_out"]) == (
        "all", "leave_one_out", "latest")
    assert entry["split"]["test_positives_per_user"] == {"min": 1, "mean": 1.0, "max": 1}
    assert entry["events_in"] == interactions.count()
    assert entry["positives_after_binarise"] == entry["positives_selected"] == positives.count()
    assert (entry["events_dropped_after_as_of"], entry["users_dropped_by_k_core"],
            entry["k_core_iterations"]) == (0, 0, 0)
    assert entry["input_sha256"] == layout.sha256_dir(paths.path(layout.INTERACTIONS))
    assert entry["users_train_only"] == 1  # u0
    assert entry["users_short_of_eval_negatives"] == 1  # u1: only 3 untouched items

    users = spark.read.parquet(str(paths.path(layout.USERS)))
    items = spark.read.parquet(str(paths.path(layout.ITEMS)))
    assert sorted(r[1] for r in users.collect()) == list(range(n_users))
    assert sorted(r[1] for r in items.collect()) == list(range(n_items))
    u1 = users.where(F.col(layout.USER_ID) == "u1").first()[layout.USER_IDX]  # type: ignore[index]
    touched_by_u1 = {r[0] for r in interactions.where(F.col(layout.USER_ID) == "u1")
                     .join(items, layout.ITEM_ID).select(layout.ITEM_IDX).collect()}

    held_out_by_u1 = {r[0] for name in (layout.VALIDATION, layout.TEST)
                      for r in spark.read.parquet(str(paths.path(name))).where(
                          (F.col(layout.USER_IDX) == u1) & (F.col(layout.LABEL) == 1))
                      .select(layout.ITEM_IDX).collect()}
    for name in (layout.TRAIN, layout.VALIDATION, layout.TEST):
        df = spark.read.parquet(str(paths.path(name)))
        assert [(f.name, f.dataType.simpleString()) for f in df.schema] == list(
            layout.PAIRS_SCHEMA)
        assert entry[f"{name}_rows"] == df.count()
        u1_negatives = {r[0] for r in df.where((F.col(layout.USER_IDX) == u1)
                                               & (F.col(layout.LABEL) == 0))
                        .select(layout.ITEM_IDX).collect()}
        # Never an item u1 touched, not even the one it rated 1; training negatives may be
        # its held-out items (the model may not know them: the negative policy).
        known = touched_by_u1 - held_out_by_u1 if name == layout.TRAIN else touched_by_u1
        assert not u1_negatives & known, name
    test = spark.read.parquet(str(paths.path(layout.TEST)))
    per_user = {r[0]: (r[1], r[2]) for r in test.groupBy(layout.USER_IDX).agg(
        F.sum(layout.LABEL), F.sum(1 - F.col(layout.LABEL))).collect()}
    assert len(per_user) == n_users - 1
    assert per_user.pop(u1) == (1, 3)
    assert set(per_user.values()) == {(1, 5)}
    # Files: output_partitions of them, named without job ids, rows sorted in each.
    names = sorted(p.name for p in paths.path(layout.TRAIN).iterdir())
    assert names == ["_SUCCESS", "part-00000.snappy.parquet", "part-00001.snappy.parquet"]
    for part in paths.path(layout.TRAIN).glob("part-*"):
        rows = [tuple(r) for r in spark.read.parquet(str(part)).collect()]
        assert rows == sorted(rows, key=lambda r: (r[0], -r[2], r[1]))


def test_main_missing_or_empty_interactions_names_the_path(spark: SparkSession,
                                                           tmp_path: Path) -> None:
    config = _write_config(tmp_path / "configs")
    folder = layout.LakePaths(tmp_path / "lake", "tiny", DATE).path(layout.INTERACTIONS)
    with pytest.raises(PrepareError, match="does not exist") as error:
        _run_prepare(config, tmp_path / "lake")
    assert str(folder) in str(error.value)

    _interactions(spark, []).write.parquet(str(folder))
    with pytest.raises(PrepareError, match="no rows") as error:
        _run_prepare(config, tmp_path / "lake")
    assert str(folder) in str(error.value)
    assert not (folder.parent / layout.TRAIN).exists()


OUTPUTS = (layout.USERS, layout.ITEMS, layout.TRAIN, layout.VALIDATION, layout.TEST)


def test_default_as_of_is_the_dag_runs_data_interval_end() -> None:
    assert default_as_of("2026-11-23") == datetime(2026, 11, 23, tzinfo=UTC)
    assert default_as_of("2026-12-31") == datetime(2026, 12, 31, tzinfo=UTC)
    # tests/test_dag.py checks that this is the DAG run's data_interval_end.


def test_backfill_as_of_reproduces_what_was_known(spark: SparkSession, tmp_path: Path) -> None:
    """A backfill reads today's interactions, later events included: with the run's as-of
    they change nothing, byte for byte; without the cutoff they would."""
    then = _tiny_lake(spark, tmp_path / "then")
    now = layout.LakePaths(tmp_path / "now", "tiny", DATE)
    later = [("u2", "i1", 9_000, 5.0),  # a repeat: would move u2's latest positive
             ("u0", "i3", 9_100, 5.0),  # u0's low rating, now liked: would add a positive
             ("u0", "i9", 9_200, 4.0),  # u0's third positive: would evaluate u0
             ("u99", "i1", 9_300, 5.0), ("u99", "i99", 9_400, 5.0)]  # a new user and item
    spark.read.parquet(str(then.path(layout.INTERACTIONS))).unionByName(
        _interactions(spark, later)).repartition(3).write.parquet(
        str(now.path(layout.INTERACTIONS)))
    config = _write_config(tmp_path / "configs")
    as_of = ["--as-of", "1970-01-01T02:00:00+00:00"]  # 7200 s: after every event of `then`
    for paths in (then, now):
        assert _run_prepare(config, paths.root, *as_of) == 0
    for name in OUTPUTS:
        assert layout.sha256_dir(then.path(name)) == layout.sha256_dir(now.path(name)), name
    entry = json.loads(now.manifest.read_text())["prepare"]
    assert entry["as_of"] == "1970-01-01T02:00:00+00:00"
    assert (entry["events_dropped_after_as_of"], entry["events_without_ts_kept"]) == (5, 0)
    assert entry["events_in"] == json.loads(then.manifest.read_text())["prepare"][
        "events_in"] + 5

    no_cutoff = _write_config(tmp_path / "configs-no-cutoff", as_of_cutoff=False)
    assert _run_prepare(no_cutoff, now.root, *as_of) == 0
    assert json.loads(now.manifest.read_text())["prepare"]["as_of"] is None
    assert layout.sha256_dir(then.path(layout.USERS)) != layout.sha256_dir(now.path(layout.USERS))


@pytest.mark.parametrize("split", [{"method": "time_cutoff", "test_fraction": 0.3},
                                   {"method": "stratified", "train_ratio": 0.5}])
def test_main_multi_positive_splits_pass_the_splits_suites(
        spark: SparkSession, tmp_path: Path, split: dict[str, Any]) -> None:
    from jobs.quality import validate

    paths = _tiny_lake(spark, tmp_path / "lake")
    config = _write_config(tmp_path / "configs", split=split, min_user_positives=3,
                           min_item_positives=2)
    assert _run_prepare(config, paths.root) == 0
    entry = json.loads(paths.manifest.read_text())["prepare"]
    assert entry["split"]["method"] == split["method"]
    assert entry["users_dropped_by_k_core"] >= 1  # u0 has two positives
    assert entry["k_core_converged"] is True
    per_user = entry["split"]["test_positives_per_user"]
    assert per_user["min"] >= 1 and per_user["max"] >= 2
    test = spark.read.parquet(str(paths.path(layout.TEST)))
    counts = {tuple(r)[1:] for r in test.groupBy(layout.USER_IDX).agg(
        F.sum(layout.LABEL), F.sum(1 - F.col(layout.LABEL))).collect()}
    assert max(positives for positives, _ in counts) == per_user["max"]
    assert entry["split"]["test_users"] == test.select(layout.USER_IDX).distinct().count()
    if split["method"] == "time_cutoff":
        assert "1970-01-01" < entry["split"]["test_from"] < "1970-01-02"
        assert entry["split"]["test_fraction"] == 0.3
        assert "unscorable_test_users" in entry["split"]
    else:
        assert entry["split"]["train_ratio"] == 0.5
    assert validate.main(["--config", str(config), "--logical-date", DATE, "--lake-root",
                          str(paths.root), "--stage", "splits"]) == 0


def test_main_without_timestamps_keeps_events_and_holds_out_at_random(
        spark: SparkSession, tmp_path: Path) -> None:
    """last.fm 360K / HetRec 2K: no ts. The cutoff keeps every event, the manifest says
    so and that the hold-out is seeded random; time_cutoff is refused."""
    paths = layout.LakePaths(tmp_path / "lake", "tiny", DATE)
    rows = [(f"u{u}", f"i{(u + n) % 9}", None, 1.0) for u in range(6) for n in range(4)]
    spark.createDataFrame(rows, layout.ddl(layout.INTERACTIONS_SCHEMA)).write.parquet(
        str(paths.path(layout.INTERACTIONS)))
    config = _write_config(tmp_path / "configs", binarise={"rule": "plays", "threshold": 1})
    assert _run_prepare(config, paths.root) == 0
    entry = json.loads(paths.manifest.read_text())["prepare"]
    assert (entry["timestamps"], entry["events_without_ts_kept"], entry["n_positives"]) == (
        "none", 24, 24)
    assert entry["split"]["hold_out"] == "seeded_random"
    assert entry["split"]["test_users"] == 6
    timed = _write_config(tmp_path / "timed", binarise={"rule": "any"},
                          split={"method": "time_cutoff", "test_fraction": 0.2})
    with pytest.raises(PrepareError, match="time_cutoff needs a timestamp on every event; "
                                           "24 have none"):
        _run_prepare(timed, paths.root)


def test_main_refuses_a_split_the_source_cannot_support(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "a", split={"method": "time_cutoff",
                                                  "test_from": "2026-01-01"})
    raw = yaml.safe_load(config.read_text())
    raw["source"] = {"format": "lastfm-360k", "path": "x.tsv", "sha256": "0" * 64}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(PrepareError, match="prepare.split.method: time_cutoff needs timestamps"):
        _run_prepare(config, tmp_path / "lake")
    raw["source"] = {"format": "ncf-presplit", "files": {
        role: {"path": role, "sha256": "0" * 64} for role in ("train", "test", "test_negatives")}}
    raw["prepare"].pop("split")
    raw["prepare"]["user_fraction"] = 0.5
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(PrepareError, match="prepare.user_fraction: format ncf-presplit keeps"):
        _run_prepare(config, tmp_path / "lake")


def _file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of a dataset folder (`_SUCCESS` included), by name."""
    return {p.name: layout.sha256_file(p) for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_spark_submit_local_1_writes_byte_identical_parquet(
        spark: SparkSession, prepared: tuple[layout.LakePaths, Path], tmp_path: Path) -> None:
    """spark-submit on local[1], 3 shuffle partitions, input in 3 files, against local[2]
    in this process with 2 shuffle partitions and the input in 1 file: another JVM,
    another parallelism, another partitioning, and every output file is byte-identical.
    """
    here, config = prepared
    there = layout.LakePaths(tmp_path / "there", "tiny", DATE)
    spark.read.parquet(str(here.path(layout.INTERACTIONS))).repartition(3).write.parquet(
        str(there.path(layout.INTERACTIONS)))

    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1"}
    done = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=3",
         str(REPO / "jobs" / "prepare.py"), "--config", str(config), "--logical-date", DATE,
         "--lake-root", str(there.root)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    # spark-submit's PythonRunner sends the driver's stderr (our log lines) to its stdout.
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Spark session prepare-tiny on local[1]" in output, output[-3000:]
    for name in (layout.USERS, layout.ITEMS, layout.TRAIN, layout.VALIDATION, layout.TEST):
        ours, theirs = (_file_digests(paths.path(name)) for paths in (here, there))
        assert ours == theirs, name
        assert len(ours) == 3, name  # output_partitions=2 part files and _SUCCESS
        assert (layout.sha256_dir(here.path(name))
                == layout.sha256_dir(there.path(name))), name
    # The same counts too; only the input's checksum (1 file here, 3 there) and time differ.
    entries = [json.loads(paths.manifest.read_text())["prepare"] for paths in (here, there)]
    for entry in entries:
        entry.pop("written_at"), entry.pop("input_sha256")
    assert entries[0] == entries[1]


# --- real data -------------------------------------------------------------------------

@pytest.mark.slow
def test_ml_100k_ingest_and_prepare(spark: SparkSession, shared_data: Path,
                                    tmp_path: Path) -> None:
    config, lake = REPO / "configs" / "ml-100k.yaml", tmp_path / "lake"
    started = time.perf_counter()
    assert ingest.main(["--config", str(config), "--logical-date", DATE,
                        "--lake-root", str(lake), "--raw-dir", str(shared_data),
                        "--cache-dir", str(tmp_path / "cache")]) == 0
    ingested = time.perf_counter()
    assert _run_prepare(config, lake) == 0
    prepared = time.perf_counter()

    manifest = json.loads(layout.LakePaths(lake, "ml-100k", DATE).manifest.read_text())
    assert (manifest["ingest"]["kept"], manifest["ingest"]["rejected"]) == (100_000, 0)
    entry = manifest["prepare"]
    assert (entry["n_users"], entry["n_items"], entry["n_positives"]) == (943, 1682, 100_000)
    assert entry["test_rows"] == entry["validation_rows"] == 943 * 100
    # The shipped config writes no training negatives: the trainer draws its own.
    assert entry["train_rows"] == 100_000 - 2 * 943
    assert entry["sequences"] == {"rows": 943, "max_length": 1000}  # every history whole
    assert entry["users_train_only"] == entry["users_short_of_eval_negatives"] == 0
    print(f"\nML-100K: ingest {ingested - started:.1f} s, prepare {prepared - ingested:.1f} s, "
          f"train rows {entry['train_rows']}")
