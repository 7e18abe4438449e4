"""Sampled validation (jobs.quality.sampled, jobs.quality.aggregates): the same suites fail
the same way as in full mode, with exact counts, on seeded samples, and never with a
split read whole into pandas."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lake import layout
from jobs.lake.config import ValidateConfig
from jobs.lake.layout import (
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    ITEM_ID,
    PAIRS_SCHEMA,
    SCORE,
    SEQUENCE,
    SEQUENCES,
    SPLITS,
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
from jobs.lake.loader import ConfigError, build_section
from jobs.quality import aggregates
from jobs.quality.results import DataValidationError, ValidationReport
from jobs.quality.validate import (
    main,
    sampling_for,
    validate_interactions,
    validate_recommendations,
    validate_splits,
)
from tests.test_validate import (
    DATASET,
    DATE,
    N_USERS,
    REPO,
    _broken,
    good_sequences,
    good_splits,
    good_topk,
    pair,
    write_folder,
    write_recommendations,
    write_sequences,
    write_splits,
)

# A sample far smaller than the tables: whatever the suites find, the exact pass finds.
TINY = ValidateConfig(mode="sampled", sample_rows=2, seed=7)


@pytest.fixture()
def paths(tmp_path: Path) -> LakePaths:
    return LakePaths(tmp_path / "lake", DATASET, DATE)


def write_interactions(paths: LakePaths, user_ids: list[str | None],
                       item_ids: list[str] | None = None) -> None:
    items = item_ids or [f"i{n}" for n in range(len(user_ids))]
    rows = [{USER_ID: user, ITEM_ID: item, TS: datetime(2026, 1, 1, 0, n % 60), VALUE: 4.0}
            for n, (user, item) in enumerate(zip(user_ids, items, strict=True))]
    write_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA, rows)


def _outcome(run: Callable[[], ValidationReport]) -> tuple[bool, list[str]]:
    """(passed, the error's lines: the header with the counts, then each failed
    expectation with its counts, samples and fix)."""
    try:
        run()
    except DataValidationError as exc:
        return False, str(exc).splitlines()
    return True, []


def _both_modes(write: Callable[[], None],
                run: Callable[[ValidateConfig | None], ValidationReport]) -> bool:
    """Write the lake, validate it in full and in sampled mode: the same verdict, the same
    failed expectations with the same counts and samples, out of as many evaluated.
    Returns whether it passed."""
    write()
    full_passed, full = _outcome(lambda: run(None))
    sampled_passed, sampled = _outcome(lambda: run(TINY))
    assert sampled_passed == full_passed
    if not full_passed:
        assert sampled[0] == full[0] + SAMPLED_NOTE  # "n of m expectations failed; ..."
        assert sampled[1:] == full[1:]
    return full_passed


SAMPLED_NOTE = ("; sampled validation: counts are exact, the suites also ran on seeded "
                "samples (see each report's 'sampled')")


# --- bad data fails the same way in both modes ------------------------------------------

INTERACTION_CASES: dict[str, Callable[[LakePaths], None]] = {
    "good": lambda p: write_interactions(p, [f"u{n % 7}" for n in range(40)]),
    "null_user_id": lambda p: write_interactions(p, [*(f"u{n}" for n in range(30)), None,
                                                     *(f"u{n}" for n in range(9))]),
    "blank_item_id": lambda p: write_interactions(p, ["u1"] * 20,
                                                  [*(f"i{n}" for n in range(19)), " "]),
    "empty": lambda p: write_folder(p.path(INTERACTIONS), INTERACTIONS_SCHEMA, []),
}


@pytest.mark.parametrize("case", list(INTERACTION_CASES))
def test_interactions_fail_the_same_way_sampled(paths: LakePaths, case: str) -> None:
    passed = _both_modes(lambda: INTERACTION_CASES[case](paths),
                         lambda sample: validate_interactions(paths, sample=sample))
    assert passed == (case == "good")


def _splits_with(change: Callable[[dict[str, list[dict[str, int]]]], None]) -> Callable[
        [LakePaths], None]:
    def write(paths: LakePaths) -> None:
        splits = good_splits()
        change(splits)
        write_splits(paths, splits)
    return write


def _users_with_a_repeated_id(paths: LakePaths) -> None:
    write_splits(paths, good_splits())
    write_folder(paths.path(USERS), USERS_SCHEMA,
                 [{USER_ID: "u0", USER_IDX: 0}, {USER_ID: "u0", USER_IDX: 1},
                  {USER_ID: "u2", USER_IDX: 2}])


SPLIT_CASES: dict[str, Callable[[LakePaths], None]] = {
    "good": _splits_with(lambda s: None),
    "two_test_positives": _splits_with(lambda s: s[TEST].append(pair(0, 6, 1))),
    "train_negative_is_train_positive": _splits_with(lambda s: s[TRAIN].append(pair(0, 1, 0))),
    "test_negative_is_validation_positive": _splits_with(
        lambda s: s[TEST].append(pair(0, 2, 0))),
    "test_positive_left_in_train": _splits_with(lambda s: s[TRAIN].append(pair(1, 4, 1))),
    "item_out_of_range": _splits_with(lambda s: s[TEST].append(pair(1, 99, 0))),
    "many_items_out_of_range": _splits_with(lambda s: s[TEST].extend(
        pair(1, 100 + n % 23, 0) for n in range(40))),  # past GX's 20 counted values
    "null_label": _splits_with(lambda s: s[VALIDATION].append(
        {USER_IDX: 2, "item_idx": 7, "label": None})),  # type: ignore[dict-item]
    "repeated_user_id": _users_with_a_repeated_id,
    "empty_train": _splits_with(lambda s: s[TRAIN].clear()),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_splits_fail_the_same_way_sampled(paths: LakePaths, case: str) -> None:
    passed = _both_modes(lambda: SPLIT_CASES[case](paths),
                         lambda sample: validate_splits(paths, sample=sample))
    assert passed == (case == "good")


def _sequences(change: Callable[[list[dict[str, Any]]], None]) -> Callable[[LakePaths], None]:
    def write(paths: LakePaths) -> None:
        rows = good_sequences()
        change(rows)
        write_sequences(paths, rows)
    return write


SEQUENCE_CASES: dict[str, Callable[[LakePaths], None]] = {
    "good": _sequences(lambda rows: None),
    "holds_the_test_item": _sequences(lambda rows: rows[1].update({SEQUENCE: [1, 2, 4]})),
    "too_long": _sequences(lambda rows: rows[0].update({SEQUENCE: [0, 1, 0]})),
    "repeated_and_empty": _sequences(lambda rows: rows.append({USER_IDX: 2, SEQUENCE: []})),
}


@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
def test_sequences_fail_the_same_way_sampled(paths: LakePaths, case: str) -> None:
    passed = _both_modes(lambda: SEQUENCE_CASES[case](paths),
                         lambda sample: validate_splits(paths, max_sequence_length=2,
                                                        sample=sample))
    assert passed == (case == "good")


@pytest.mark.parametrize("change", ["good", "missing_user", "repeated_item", "seen_item",
                                    "score_rises", "score_above_one", "item_out_of_range",
                                    "bad_source", "rank_gap", "score_as_double"])
def test_recommendations_fail_the_same_way_sampled(paths: LakePaths, change: str) -> None:
    schema: Schema = TOPK_SCHEMA
    if change == "score_as_double":
        schema = tuple((name, "double" if name == SCORE else dtype) for name, dtype in schema)
    rows = good_topk() if change in ("good", "score_as_double") else _broken(change)
    passed = _both_modes(lambda: write_recommendations(paths, rows, schema),
                         lambda sample: validate_recommendations(paths, sample=sample))
    assert passed == (change == "good")


def test_exact_counts_reach_rows_the_sample_missed(paths: LakePaths) -> None:
    """One bad row among many, a sample of 2: the verdict and the count are still exact."""
    write_interactions(paths, [*(f"u{n}" for n in range(300)), None])
    with pytest.raises(DataValidationError, match="1 of 301 rows unexpected, e.g. None"):
        validate_interactions(paths, sample=TINY)
    saved = json.loads(paths.path("reports/interactions.json").read_text())
    assert saved["success"] is False and saved["sampled"]["sample_rows"] == 2


# --- what sampled mode reports, reads and draws ------------------------------------------


def test_sampled_report_gives_the_sample_size_and_seed(paths: LakePaths) -> None:
    write_interactions(paths, [f"u{n % 7}" for n in range(40)])
    report = validate_interactions(paths, sample=TINY)
    assert report.success and report.mode == "sampled"
    (suite,) = report.suites
    assert suite.rows == 40 and suite.sampling is not None
    assert (suite.sampling.table_rows, suite.sampling.sample_rows, suite.sampling.seed) == (
        40, 2, 7)
    entry = layout.read_manifest(paths)["validate_interactions"]
    assert entry["mode"] == "sampled"
    assert entry["suites"][INTERACTIONS]["sampled"] == {"table_rows": 40, "sample_rows": 2,
                                                       "seed": 7}
    saved = json.loads(paths.path("reports/interactions.json").read_text())
    assert saved["success"] is True
    assert saved["sampled"]["sample_rows"] == 2
    # null counts, blank ids and the row count are exact; the column set is the sample's
    assert "expect_column_values_to_not_be_null" in saved["sampled"]["exact"]
    assert "expect_table_row_count_to_be_between" in saved["sampled"]["exact"]
    assert saved["sampled"]["on_sample"] == ["expect_table_columns_to_match_set"]
    not_null = [r for r in saved["results"]
                if r["expectation_config"]["type"] == "expect_column_values_to_not_be_null"]
    assert {r["result"]["element_count"] for r in not_null} == {40}  # the table's, not 2


def test_sampled_mode_never_reads_a_split_whole(paths: LakePaths,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_sequences(paths, good_sequences())
    layout.update_manifest(paths, "prepare", {"n_users": N_USERS, "n_items": 8})
    write_folder(paths.path(TOPK), TOPK_SCHEMA, good_topk())
    layout.update_manifest(paths, "recommend", {"k": 2})
    read = layout.read_lake_table
    whole: list[str] = []

    def watched(path: Path, schema: Schema) -> Any:
        whole.append(Path(path).name)
        return read(path, schema)

    monkeypatch.setattr(layout, "read_lake_table", watched)
    assert validate_splits(paths, max_sequence_length=2, sample=TINY).success
    assert validate_recommendations(paths, sample=TINY).success
    assert whole == [USERS]  # users/ (one row per user), for the per-user top-k counts
    assert validate_splits(paths, max_sequence_length=2).success  # full mode reads them all
    assert set(whole) >= {*SPLITS, SEQUENCES}


def test_the_sample_is_seeded_uniform_and_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    schema = layout.arrow_schema(PAIRS_SCHEMA)
    for part in range(3):  # several files, read in name order
        rows = range(part * 1000, (part + 1) * 1000)
        pq.write_table(pa.table({USER_IDX: list(rows), "item_idx": [0] * 1000,
                                 "label": [1] * 1000}, schema=schema),
                       folder / f"part-{part:05d}.parquet")

    def draw(seed: int, size: int = 300) -> list[int]:
        found = aggregates.scan([], aggregates.lake_batches(folder, PAIRS_SCHEMA), schema,
                                sample_rows=size, seed=seed)
        assert found.rows == 3000
        drawn: list[int] = found.sample.column(USER_IDX).to_pylist()
        return drawn

    first = draw(1)
    assert first == draw(1)  # same seed, same sample
    assert first != draw(2)
    assert len(first) == len(set(first)) == 300 and first == sorted(first)  # stream order
    assert all(sum(lo <= u < lo + 1000 for u in first) > 50 for lo in (0, 1000, 2000))
    assert draw(1, size=5000) == list(range(3000))  # a sample bigger than the table: all
    assert aggregates.count_rows(folder) == 3000


def test_validate_config_and_auto_mode(paths: LakePaths, tmp_path: Path) -> None:
    assert ValidateConfig().mode == "auto"
    with pytest.raises(ConfigError, match="unknown key"):
        build_section(ValidateConfig, {"mode": "sampled", "rows": 5}, "validate")
    with pytest.raises(ConfigError, match="mode"):
        build_section(ValidateConfig, {"mode": "sometimes"}, "validate")
    write_interactions(paths, [f"u{n}" for n in range(10)])
    assert sampling_for("interactions", paths, ValidateConfig(max_full_rows=10)) is None
    small = ValidateConfig(max_full_rows=9)
    assert sampling_for("interactions", paths, small) is small
    assert sampling_for("interactions", paths, ValidateConfig(mode="full", max_full_rows=1)) \
        is None
    assert sampling_for("interactions", paths, TINY) is TINY
    # through the CLI: the config's validate section decides
    config = tmp_path / "sampled.yaml"
    text = (REPO / "configs" / "ml-100k.yaml").read_text()
    config.write_text(text + "\nvalidate: {mode: sampled, sample_rows: 3, seed: 1}\n")
    args = ["--config", str(config), "--logical-date", DATE, "--lake-root", str(paths.root),
            "--stage", "interactions"]
    assert main(args) == 0
    entry = layout.read_manifest(paths)["validate_interactions"]
    assert entry["mode"] == "sampled"
    assert entry["suites"][INTERACTIONS]["sampled"]["sample_rows"] == 3
