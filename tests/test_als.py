"""jobs.als: implicit-feedback ALS on the train positives -> user and item factors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession

from jobs import als
from jobs.lake import layout
from jobs.lake.config import AlsConfig

pytestmark = pytest.mark.spark

N_USERS, N_ITEMS = 12, 10


def _train_rows() -> list[tuple[int, int, int]]:
    """Users 0..11; even users like items 0..4, odd ones 5..9; one negative each."""
    rows = []
    for user in range(N_USERS):
        liked = range(0, 5) if user % 2 == 0 else range(5, 10)
        rows += [(user, item, 1) for item in liked if (user + item) % 5 != 0]
        rows.append((user, (user + 7) % N_ITEMS, 0))
    return rows


def _train(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(_train_rows(), layout.ddl(layout.PAIRS_SCHEMA))


def test_implicit_ratings_keep_the_positives_as_ones(spark: SparkSession) -> None:
    ratings = als.implicit_ratings(_train(spark)).collect()
    assert len(ratings) == sum(label for _u, _i, label in _train_rows())
    assert {row[2] for row in ratings} == {1.0}


def test_fit_als_factor_shapes_and_determinism(spark: SparkSession) -> None:
    cfg = AlsConfig(rank=4, reg_param=0.1, alpha=5.0, max_iter=5, seed=3)
    ratings = als.implicit_ratings(_train(spark))
    users, items = als.fit_als(ratings, cfg)
    assert users.columns == layout.columns(layout.USER_FACTORS_SCHEMA)
    assert items.columns == layout.columns(layout.ITEM_FACTORS_SCHEMA)
    user_rows = sorted(tuple(r) for r in users.collect())
    item_rows = sorted(tuple(r) for r in items.collect())
    assert [r[0] for r in user_rows] == list(range(N_USERS))
    assert [r[0] for r in item_rows] == list(range(N_ITEMS))
    assert {len(r[1]) for r in user_rows + item_rows} == {4}
    # The same seed, the same factors (exactly), whatever the input's partitioning.
    again_users, again_items = als.fit_als(ratings.repartition(3), cfg)
    assert sorted(tuple(r) for r in again_users.collect()) == user_rows
    assert sorted(tuple(r) for r in again_items.collect()) == item_rows
    # Another seed starts elsewhere.
    other, _ = als.fit_als(ratings, AlsConfig(rank=4, reg_param=0.1, alpha=5.0, max_iter=5,
                                              seed=4))
    assert sorted(tuple(r) for r in other.collect()) != user_rows
    # The planted taste groups: a user scores its group's items above the others.
    u0 = dict(user_rows)[0]
    score = {item: sum(a * b for a, b in zip(u0, vec, strict=True)) for item, vec in item_rows}
    assert min(score[i] for i in range(5)) > max(score[i] for i in range(5, 10))


def _config(tmp_path: Path, sections: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "tiny",
        "source": {"format": "movielens-100k", "path": "u.data", "sha256": "0" * 64},
        **sections,
    }))
    return path


def _write(folder: Path, rows: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True)
    user, item, label = zip(*rows, strict=True)
    pq.write_table(pa.Table.from_arrays([pa.array(user), pa.array(item), pa.array(label)],
                                        schema=layout.arrow_schema(layout.PAIRS_SCHEMA)),
                   folder / "part-00000.parquet")


def _factors(paths: layout.LakePaths, splits: tuple[str, ...]) -> tuple[pa.Table, pa.Table]:
    folder = paths.path(layout.als_folder(splits))
    return (layout.read_lake_table(folder / layout.USER_FACTORS, layout.USER_FACTORS_SCHEMA),
            layout.read_lake_table(folder / layout.ITEM_FACTORS, layout.ITEM_FACTORS_SCHEMA))


def test_main_fits_each_step_of_the_protocol_and_a_manifest_entry(spark: SparkSession,
                                                                   tmp_path: Path) -> None:
    paths = layout.LakePaths(tmp_path / "lake", "tiny", "2026-11-23")
    _write(paths.path(layout.TRAIN), _train_rows())
    # Each user's held-out items: (user + 5) % 5 ... one validation and one test positive.
    held_out = {layout.VALIDATION: 0, layout.TEST: 5}
    for split, first in held_out.items():
        _write(paths.path(split), [(user, (first + user) % N_ITEMS, 1)
                                   for user in range(N_USERS)])
    # 6 iterations: past CHECKPOINT_INTERVAL, so the checkpoint folder is used and removed.
    config = _config(tmp_path, {"als": {"rank": 3, "max_iter": 6, "seed": 1}})
    argv = ["--config", str(config), "--logical-date", "2026-11-23",
            "--lake-root", str(tmp_path / "lake")]
    assert als.main(argv) == 0
    sets = [(layout.TRAIN,), (layout.TRAIN, layout.VALIDATION),
            (layout.TRAIN, layout.VALIDATION, layout.TEST)]
    fitted = {splits: _factors(paths, splits) for splits in sets}
    for users, items in fitted.values():
        assert users.column(layout.USER_IDX).to_pylist() == list(range(N_USERS))
        assert items.column(layout.ITEM_IDX).to_pylist() == list(range(N_ITEMS))
        assert {len(v) for v in users.column(layout.FACTORS).to_pylist()} == {3}
    # More positives, other factors: each step is fitted on its own splits.
    vectors = [users.column(layout.FACTORS).to_pylist() for users, _ in fitted.values()]
    assert vectors[0] != vectors[1] != vectors[2]
    entry = json.loads(paths.manifest.read_text())["als"]
    assert entry["params"] == {**dataclasses.asdict(AlsConfig()), "rank": 3, "max_iter": 6,
                               "seed": 1}
    assert entry["fitted"]["train"] == {"n_users": N_USERS, "n_items": N_ITEMS}
    assert set(entry["fitted"]) == {"train", "train_validation", "train_validation_test"}
    assert entry["input_sha256"][layout.TRAIN] == layout.sha256_dir(paths.path(layout.TRAIN))
    # A re-run of the same date replaces the folder with the same factors.
    assert als.main(argv) == 0
    assert _factors(paths, sets[0])[0].column(layout.FACTORS).to_pylist() == vectors[0]
    leftovers = [p for folder in (paths.base, paths.path(layout.ALS)) for p in folder.iterdir()
                 if p.name.startswith(".tmp")]
    assert not leftovers
    # Without refit only the selection step is fitted.
    config = _config(tmp_path, {"als": {"rank": 3, "max_iter": 2, "seed": 1},
                                "candidates": {"refit": False}})
    assert als.main(["--config", str(config), *argv[2:]]) == 0
    assert sorted(p.name for p in paths.path(layout.ALS).iterdir()) == ["train"]


def test_main_fits_nothing_when_als_is_not_a_candidate_and_rejects_bad_sections(
        tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    argv = ["--logical-date", "2026-11-23", "--lake-root", str(lake)]
    config = _config(tmp_path, {"candidates": {"families": ["popularity"]}})
    assert als.main(["--config", str(config), *argv]) == 0
    assert not lake.exists()
    config = _config(tmp_path, {"als": {"rank": 0}})
    with pytest.raises(SystemExit) as exc:
        als.main(["--config", str(config), *argv])
    assert exc.value.code == 2
