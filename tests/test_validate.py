"""jobs.quality.validate: GX suites on tiny Parquet folders written with pyarrow in a tmp lake."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lake import layout
from jobs.lake.layout import (
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    ITEM_ID,
    ITEM_IDX,
    ITEMS,
    ITEMS_SCHEMA,
    LABEL,
    PAIRS_SCHEMA,
    RANK,
    SCORE,
    SEQUENCE,
    SEQUENCES,
    SEQUENCES_SCHEMA,
    SOURCE,
    TEST,
    TOPK,
    TOPK_SCHEMA,
    TRAIN,
    TS,
    USER_ID,
    USER_IDX,
    USERS,
    USERS_SCHEMA,
    VALIDATION,
    VALUE,
    LakePaths,
    Schema,
)
from jobs.quality.expectations import (
    HELD_OUT,
    IN_TRAIN_POSITIVES,
    N_POSITIVES,
    NEGATIVE_IS_POSITIVE,
    SEQUENCE_LENGTH,
    negative_collisions,
    per_user_labels,
    per_user_sequences,
    sequence_items,
)
from jobs.quality.results import DataValidationError
from jobs.quality.validate import (
    main,
    validate_interactions,
    validate_recommendations,
    validate_splits,
)

REPO = Path(__file__).resolve().parents[1]
DATASET = "ml-100k"  # matches configs/ml-100k.yaml, used by the CLI test
DATE = "2026-11-23"
N_USERS, N_ITEMS = 3, 8


def write_folder(folder: Path, schema: Schema, rows: list[dict[str, Any]]) -> None:
    """One Parquet part file (or none when `rows` is empty), as Spark would leave it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_SUCCESS").touch()
    if rows:
        table = pa.Table.from_pylist(rows, schema=layout.arrow_schema(schema))
        pq.write_table(table, folder / "part-00000.parquet")


def pair(user: int, item: int, label: int) -> dict[str, int]:
    return {USER_IDX: user, ITEM_IDX: item, LABEL: label}


def good_splits() -> dict[str, list[dict[str, int]]]:
    """User u touched items u..u+3: two train positives, then validation, then test.

    Items 6 and 7 are touched by nobody; the two items after a user's four are its negatives.
    """
    splits: dict[str, list[dict[str, int]]] = {TRAIN: [], VALIDATION: [], TEST: []}
    for user in range(N_USERS):
        negatives = [(user + 4) % 6, (user + 5) % 6]
        splits[TRAIN] += [pair(user, user, 1), pair(user, user + 1, 1)]
        splits[TRAIN] += [pair(user, item, 0) for item in negatives]
        for offset, split in ((2, VALIDATION), (3, TEST)):
            splits[split] += [pair(user, user + offset, 1)]
            splits[split] += [pair(user, item, 0) for item in negatives]
    return splits


@pytest.fixture()
def paths(tmp_path: Path) -> LakePaths:
    return LakePaths(tmp_path / "lake", DATASET, DATE)


def write_splits(paths: LakePaths, splits: dict[str, list[dict[str, int]]]) -> None:
    write_folder(paths.path(USERS), USERS_SCHEMA,
                 [{USER_ID: f"u{u}", USER_IDX: u} for u in range(N_USERS)])
    write_folder(paths.path(ITEMS), ITEMS_SCHEMA,
                 [{ITEM_ID: f"i{i}", ITEM_IDX: i} for i in range(N_ITEMS)])
    for name, rows in splits.items():
        write_folder(paths.path(name), PAIRS_SCHEMA, rows)


def write_interactions(paths: LakePaths, user_ids: list[str | None]) -> None:
    rows = [{USER_ID: user, ITEM_ID: f"i{n}", TS: datetime(2026, 1, 1, 0, n), VALUE: 4.0}
            for n, user in enumerate(user_ids)]
    write_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA, rows)


def test_interactions_pass_and_report_written(paths: LakePaths) -> None:
    write_interactions(paths, ["u1", "u2", "u1"])
    report = validate_interactions(paths)
    assert report.success and report.failed == 0 and report.evaluated == 8
    saved = json.loads(paths.path("reports/interactions.json").read_text())
    assert saved["success"] is True
    entry = layout.read_manifest(paths)["validate_interactions"]
    assert (entry["success"], entry["evaluated_expectations"], entry["failed_expectations"]) == (
        True, 8, 0)


def test_null_user_id_fails_naming_column_and_fix(paths: LakePaths) -> None:
    write_interactions(paths, ["u1", None, "u3"])
    with pytest.raises(DataValidationError) as raised:
        validate_interactions(paths)
    message = str(raised.value)
    assert "expect_column_values_to_not_be_null on column user_id" in message
    assert "1 of 3 rows unexpected" in message
    assert "fix: ingest must send rows without a user_id to rejects/" in message
    saved = json.loads(paths.path("reports/interactions.json").read_text())
    assert saved["success"] is False
    assert layout.read_manifest(paths)["validate_interactions"]["failed_expectations"] == 1


def test_blank_item_id_fails(paths: LakePaths) -> None:
    rows = [{USER_ID: "u1", ITEM_ID: " ", TS: datetime(2026, 1, 1), VALUE: 1.0}]
    write_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA, rows)
    with pytest.raises(DataValidationError, match=r"not_match_regex on column item_id.*' '"):
        validate_interactions(paths)


def test_empty_interactions_folder_fails_on_row_count(paths: LakePaths) -> None:
    write_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA, [])
    with pytest.raises(DataValidationError) as raised:
        validate_interactions(paths)
    assert "expect_table_row_count_to_be_between (min_value=1): observed 0" in str(raised.value)
    assert "interactions/ is empty" in str(raised.value)


def test_missing_folder_names_the_path(paths: LakePaths) -> None:
    with pytest.raises(DataValidationError, match=str(paths.path(INTERACTIONS))):
        validate_interactions(paths)
    assert not paths.manifest.exists()


def test_splits_pass(paths: LakePaths) -> None:
    write_splits(paths, good_splits())
    report = validate_splits(paths)
    assert report.success
    assert [s.suite for s in report.suites] == [
        USERS, ITEMS, TRAIN, VALIDATION, TEST, "validation_per_user", "test_per_user",
        "negatives", "leakage"]
    entry = layout.read_manifest(paths)["validate_splits"]
    assert entry["success"] is True and entry["failed_expectations"] == 0
    assert entry["evaluated_expectations"] == report.evaluated > 30
    assert entry["suites"]["test"]["rows"] == 9
    assert (paths.base / entry["suites"]["negatives"]["report"]).is_file()


def test_two_test_positives_for_one_user(paths: LakePaths) -> None:
    splits = good_splits()
    splits[TEST].append(pair(0, 6, 1))  # item 6 is nobody's negative: only this check fails
    write_splits(paths, splits)
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths)
    message = str(raised.value)
    assert "1 of 44 expectations failed" in message
    assert "suite test_per_user" in message
    assert f"on column {N_POSITIVES}" in message and "user_idx=0 n_positives=2" in message
    assert "exactly one positive per user in test/" in message
    saved = json.loads(paths.path("reports/test_per_user.json").read_text())
    assert saved["success"] is False
    assert layout.read_manifest(paths)["validate_splits"]["failed_expectations"] == 1


@pytest.mark.parametrize(("split", "item"), [(TRAIN, 1), (TEST, 2)],
                         ids=["train-negative-on-a-train-positive",
                              "test-negative-on-the-validation-positive"])
def test_negative_equal_to_a_positive_of_the_same_user(paths: LakePaths, split: str,
                                                       item: int) -> None:
    splits = good_splits()
    splits[split].append(pair(0, item, 0))  # user 0: items 0, 1 train, 2 validation, 3 test
    write_splits(paths, splits)
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths)
    message = str(raised.value)
    assert f"on column {NEGATIVE_IS_POSITIVE}" in message
    assert f"split='{split}' user_idx=0 item_idx={item}" in message
    assert "1 of 19 rows unexpected" in message


def test_a_training_negative_may_be_a_held_out_item(paths: LakePaths) -> None:
    """The model may not know a user's validation and test items: as training negatives
    they pass (docs/DESIGN.md, the negative policy)."""
    splits = good_splits()
    splits[TRAIN] += [pair(0, 2, 0), pair(0, 3, 0)]  # user 0's validation and test items
    write_splits(paths, splits)
    assert validate_splits(paths).success


def test_test_positive_left_in_train(paths: LakePaths) -> None:
    splits = good_splits()
    splits[TRAIN].append(pair(1, 4, 1))  # user 1's test positive
    write_splits(paths, splits)
    with pytest.raises(DataValidationError, match=r"suite leakage.*split='test' user_idx=1 "
                                                  r"item_idx=4"):
        validate_splits(paths)


def test_out_of_range_item_idx(paths: LakePaths) -> None:
    splits = good_splits()
    splits[TEST].append(pair(1, 99, 0))
    write_splits(paths, splits)
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths)
    message = str(raised.value)
    assert "suite test on test/: expect_column_values_to_be_between on column item_idx" in message
    assert "max_value=7" in message and "99 (x1)" in message
    assert "must index a row of items/ (8 rows)" in message


def test_missing_split_folder_names_the_path(paths: LakePaths) -> None:
    splits = good_splits()
    del splits[VALIDATION]
    write_splits(paths, splits)
    with pytest.raises(DataValidationError, match=str(paths.path(VALIDATION))):
        validate_splits(paths)


def test_derived_frames() -> None:
    test = pd.DataFrame([pair(0, 1, 1), pair(0, 2, 1), pair(0, 3, 0), pair(1, 4, 0)])
    counts = per_user_labels(test)
    assert counts.to_dict("records") == [
        {USER_IDX: 0, N_POSITIVES: 2, "n_negatives": 1},
        {USER_IDX: 1, N_POSITIVES: 0, "n_negatives": 1}]
    # (0, 1) is user 0's test positive: as a training negative it is allowed (the model may
    # not know it); (0, 3), a training positive, as a test negative is not.
    train = pd.DataFrame([pair(0, 3, 1), pair(1, 1, 0), pair(0, 1, 0)])
    flagged = negative_collisions({TRAIN: train, TEST: test})
    assert flagged[NEGATIVE_IS_POSITIVE].tolist() == [False, False, True, False]
    train = pd.DataFrame([pair(0, 3, 1), pair(0, 3, 0)])  # its own positive: never
    assert negative_collisions({TRAIN: train})[NEGATIVE_IS_POSITIVE].tolist() == [True]


def test_cli(paths: LakePaths) -> None:
    write_splits(paths, good_splits())
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", DATE,
            "--lake-root", str(paths.root)]
    assert main([*args, "--stage", "splits"]) == 0
    assert main([*args, "--stage", "interactions"]) == 1  # interactions/ was never written


def test_several_test_positives_per_user_pass_outside_leave_one_out(paths: LakePaths) -> None:
    splits = good_splits()
    splits[TEST].append(pair(0, 6, 1))  # time_cutoff / stratified: several per user
    write_splits(paths, splits)
    assert validate_splits(paths, one_test_positive=False).success
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", DATE,
            "--lake-root", str(paths.root), "--stage", "splits"]
    assert main(args) == 1  # the config's leave_one_out demands exactly one
    layout.update_manifest(paths, "prepare", {"split": {"method": "stratified"}})
    assert main(args) == 0  # what prepare wrote (its manifest) decides
    splits[VALIDATION].append(pair(1, 7, 1))  # validation holds one per user, whatever the split
    write_splits(paths, splits)
    with pytest.raises(DataValidationError, match="suite validation_per_user.*user_idx=1 "
                                                  "n_positives=2"):
        validate_splits(paths, one_test_positive=False)


# --- sequences -------------------------------------------------------------------------

def good_sequences() -> list[dict[str, Any]]:
    """Each user's two train positives (good_splits), oldest first."""
    return [{USER_IDX: user, SEQUENCE: [user, user + 1]} for user in range(N_USERS)]


def write_sequences(paths: LakePaths, rows: list[dict[str, Any]],
                    splits: dict[str, list[dict[str, int]]] | None = None) -> None:
    write_splits(paths, good_splits() if splits is None else splits)
    write_folder(paths.path(SEQUENCES), SEQUENCES_SCHEMA, rows)


def test_splits_with_sequences_pass(paths: LakePaths) -> None:
    write_sequences(paths, good_sequences())
    report = validate_splits(paths, max_sequence_length=2)
    assert report.success
    assert [s.suite for s in report.suites][-3:] == ["leakage", "sequences", "sequences_items"]
    entry = layout.read_manifest(paths)["validate_splits"]["suites"]
    assert (entry["sequences"]["rows"], entry["sequences_items"]["rows"]) == (3, 6)


def test_sequence_holding_the_users_test_item_fails(paths: LakePaths) -> None:
    rows = good_sequences()
    rows[1][SEQUENCE] = [1, 2, 4]  # user 1: items 1, 2 train, 3 validation, 4 test
    write_sequences(paths, rows)
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths, max_sequence_length=200)
    message = str(raised.value)
    assert f"suite sequences_items on items of {SEQUENCES}/" in message
    assert f"on column {HELD_OUT}" in message and "user_idx=1 item_idx=4 held_out=True" in message
    assert "lets a sequence model see the answer" in message
    # Not a train positive either: the second expectation names the same pair.
    assert f"user_idx=1 item_idx=4 {IN_TRAIN_POSITIVES}=False" in message
    assert "2 of " in message and "expectations failed" in message


def test_too_long_sequence_fails(paths: LakePaths) -> None:
    splits = good_splits()
    splits[TRAIN].append(pair(0, 6, 1))  # user 0 now has three train positives
    rows = good_sequences()
    rows[0][SEQUENCE] = [0, 1, 6]
    write_sequences(paths, rows, splits)
    assert validate_splits(paths).success  # no maximum given: unchecked
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths, max_sequence_length=2)
    message = str(raised.value)
    assert "1 of " in message and "expectations failed" in message
    assert (f"suite sequences on {SEQUENCES}/ counted per user: expect_column_values_to_be_"
            f"between on column {SEQUENCE_LENGTH} (min_value=1.0, max_value=2.0): 1 of 3 rows "
            f"unexpected, e.g. user_idx=0 {SEQUENCE_LENGTH}=3") in message


def test_repeated_or_empty_sequence_fails(paths: LakePaths) -> None:
    rows = [*good_sequences(), {USER_IDX: 2, SEQUENCE: []}]
    write_sequences(paths, rows)
    with pytest.raises(DataValidationError) as raised:
        validate_splits(paths)
    message = str(raised.value)
    assert "expect_column_values_to_be_unique on column user_idx" in message
    assert f"user_idx=2 {SEQUENCE_LENGTH}=0" in message


def test_cli_checks_sequences_against_prepares_length(paths: LakePaths) -> None:
    write_sequences(paths, good_sequences())
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", DATE,
            "--lake-root", str(paths.root), "--stage", "splits"]
    layout.update_manifest(paths, "prepare", {"split": {"method": "leave_one_out"},
                                              "sequences": {"rows": 3, "max_length": 1}})
    assert main(args) == 1
    layout.update_manifest(paths, "prepare", {"split": {"method": "leave_one_out"},
                                              "sequences": {"rows": 3, "max_length": 2}})
    assert main(args) == 0


def test_sequence_derived_frames() -> None:
    sequences = pd.DataFrame({USER_IDX: [0, 1], SEQUENCE: [[5, 6], []]})
    assert per_user_sequences(sequences)[SEQUENCE_LENGTH].tolist() == [2, 0]
    splits = {TRAIN: pd.DataFrame([pair(0, 5, 1), pair(0, 6, 0)]),
              TEST: pd.DataFrame([pair(0, 6, 1)])}
    items = sequence_items(sequences, splits)
    assert items.to_dict("records") == [
        {USER_IDX: 0, ITEM_IDX: 5, HELD_OUT: False, IN_TRAIN_POSITIVES: True},
        {USER_IDX: 0, ITEM_IDX: 6, HELD_OUT: True, IN_TRAIN_POSITIVES: False}]


# --- recommendations -------------------------------------------------------------------

K = 2


def topk_row(user: int, rank: int, item: int, score: float,
             source: str = layout.SOURCE_MODEL) -> dict[str, Any]:
    return {USER_IDX: user, RANK: rank, ITEM_IDX: item, SCORE: score, SOURCE: source}


def good_topk() -> list[dict[str, Any]]:
    """Items 6 and 7 are nobody's positive (good_splits): k=2 for each of the 3 users."""
    return [topk_row(0, 1, 7, 0.9), topk_row(0, 2, 6, 0.9),  # a tie is fine
            topk_row(1, 1, 6, 0.8), topk_row(1, 2, 0, 0.1),  # item 0: user 0's, not user 1's
            topk_row(2, 1, 6, 0.5, layout.SOURCE_POPULARITY),
            topk_row(2, 2, 7, 0.25, layout.SOURCE_POPULARITY)]


def write_recommendations(paths: LakePaths, rows: list[dict[str, Any]],
                          schema: Schema = TOPK_SCHEMA) -> None:
    write_splits(paths, good_splits())
    write_folder(paths.path(TOPK), schema, rows)
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    layout.update_manifest(paths, "recommend", {"k": K, "rows": len(rows)})


def test_recommendations_pass_and_report_written(paths: LakePaths) -> None:
    write_recommendations(paths, good_topk())
    report = validate_recommendations(paths)
    assert report.success and report.failed == 0
    assert [s.suite for s in report.suites] == [
        "topk_schema", "topk", "topk_per_user", "topk_seen"]
    entry = layout.read_manifest(paths)["validate_recommendations"]
    assert (entry["success"], entry["failed_expectations"]) == (True, 0)
    assert entry["evaluated_expectations"] == report.evaluated == 6 + 13 + 2 + 1
    assert entry["suites"]["topk"]["rows"] == 6
    assert json.loads(paths.path("reports/topk.json").read_text())["success"] is True
    args = ["--config", str(REPO / "configs" / "ml-100k.yaml"), "--logical-date", DATE,
            "--lake-root", str(paths.root)]
    assert main([*args, "--stage", "recommendations"]) == 0


def _broken(change: str) -> list[dict[str, Any]]:
    rows = good_topk()
    if change == "missing_user":
        return rows[:4]
    if change == "repeated_item":
        rows[3][ITEM_IDX] = 6
    elif change == "seen_item":
        rows[3][ITEM_IDX] = 2  # user 1's training positive
    elif change == "score_rises":
        rows[5][SCORE] = 0.75
    elif change == "score_above_one":
        rows[0][SCORE] = rows[1][SCORE] = 1.5
    elif change == "item_out_of_range":
        rows[1][ITEM_IDX] = 8
    elif change == "bad_source":
        rows[4][SOURCE] = "random"
    elif change == "rank_gap":
        rows[1][RANK] = 3
    return rows


@pytest.mark.parametrize(("change", "expected"), [
    ("missing_user", [
        "suite topk on topk/: expect_table_row_count_to_equal (value=6): observed 4",
        "k=2 rows for each of the 3 users of users/",
        "suite topk_per_user on topk/ counted per user of users/: expect_column_values_to_be"
        "_in_set on column n_rows (value_set=[2]): 1 of 3 rows unexpected, e.g. user_idx=2 "
        "n_rows=0", "0: the user is missing from topk/"]),
    ("repeated_item", ["expect_compound_columns_to_be_unique (column_list=['user_idx', "
                       "'item_idx'])", "an item appears at most once in a user's list"]),
    ("seen_item", ["suite topk_seen", "on column recommended_seen", "user_idx=1 rank=2 "
                   "item_idx=2 recommended_seen=True", "positive on in train/, validation/ "
                   "or test/"]),
    ("score_rises", ["on column scores_non_increasing", "user_idx=2 scores_non_increasing="
                     "False", "not sorted by score"]),
    ("score_above_one", ["on column score (min_value=0.0, max_value=1.0): 2 of 6 rows",
                         "scores are probabilities"]),
    ("item_out_of_range", ["on column item_idx (min_value=0.0, max_value=7.0): 1 of 6 rows "
                           "unexpected", "must index a row of items/ (8 rows"]),
    ("bad_source", ["on column source (value_set=['model', 'popularity'])", "'random'"]),
    ("rank_gap", ["on column rank (min_value=1.0, max_value=2.0): 1 of 6 rows unexpected, "
                  "e.g. user_idx=0 rank=3"]),
])
def test_broken_recommendations_fail_readably(paths: LakePaths, change: str,
                                              expected: list[str]) -> None:
    write_recommendations(paths, _broken(change))
    with pytest.raises(DataValidationError) as raised:
        validate_recommendations(paths)
    message = str(raised.value)
    assert message.startswith(f"data validation failed for {DATASET} {DATE} (stage "
                              "recommendations)")
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert layout.read_manifest(paths)["validate_recommendations"]["success"] is False


def test_topk_dtypes_are_checked_as_written(paths: LakePaths) -> None:
    as_doubles: Schema = tuple((name, "double" if name == SCORE else dtype)
                               for name, dtype in TOPK_SCHEMA)
    write_recommendations(paths, good_topk(), schema=as_doubles)
    with pytest.raises(DataValidationError) as raised:
        validate_recommendations(paths)
    message = str(raised.value)
    assert "1 of 22 expectations failed" in message
    assert ("suite topk_schema on topk/ as written: expect_column_values_to_be_of_type on "
            "column score (type_='float32'): observed 'float64'") in message


def test_recommendations_need_the_recommend_manifest_entry(paths: LakePaths) -> None:
    write_splits(paths, good_splits())
    write_folder(paths.path(TOPK), TOPK_SCHEMA, good_topk())
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": N_ITEMS})
    with pytest.raises(DataValidationError, match=r"no recommend entry with \['k'\]: run "
                                                  "recommend for this date first"):
        validate_recommendations(paths)
