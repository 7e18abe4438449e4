"""Data validation: Great Expectations suites, written as code, on what ingest and prepare wrote.

Three stages, each a gate in the DAG:

* ``interactions`` (after ingest) reads ``interactions/``: at least one row, no nulls in
  user_id/item_id/ts/value, no blank ids.
* ``splits`` (after prepare) reads ``users/``, ``items/``, ``train/``, ``validation/``,
  ``test/``: dense unique indices, every index of the splits in range, labels in {0, 1},
  one positive per user in validation/ and, under leave-one-out, in test/ (time_cutoff
  and stratified test several), at least one negative per evaluated user, no sampled
  negative that is a positive of the same user anywhere, no held-out positive in train;
  and, when prepare wrote ``sequences/``, one sequence per user of 1 to
  prepare.sequence_length items, each a train/ positive of the user, none held out.
* ``recommendations`` (after recommend) reads ``topk/`` against ``users/``, the splits'
  positives and the manifest (n_users, n_items, k): the columns and dtypes of the
  contract, k rows ranked 1..k for every user, indices in range, no repeated item in a
  list, scores in [0, 1] falling with rank, source model|popularity, and no recommended
  item the user already has a positive on.

Each suite's full GX result goes to ``reports/<suite>.json`` in the run's lake folder, the
stage's summary to the manifest under ``validate_<stage>``; any failed expectation raises
`DataValidationError` whose message says which one, on which column, with sample values
and what to fix.

The config's `validate` section says how the lake is read: `full`, every table whole in
pandas; `sampled`, exact aggregates streamed over the Parquet batches and the same suites
on seeded samples, never a whole split in pandas (jobs.quality.sampled); `auto` (the
default), sampled when the stage's largest table holds more than `max_full_rows` rows.

    python -m jobs.quality.validate --config configs/ml-100k.yaml --logical-date 2026-11-23 \
        --stage interactions|splits|recommendations [--lake-root data/lake]

Importing this module imports Great Expectations (~10 s): DAG files run it as a subprocess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from jobs.lake import cli, layout
from jobs.lake.config import FORMATS_WITHOUT_TIMESTAMPS, DataConfig, ValidateConfig
from jobs.lake.layout import (
    EVAL_SPLITS,
    INTERACTIONS,
    INTERACTIONS_SCHEMA,
    ITEM_IDX,
    ITEMS,
    ITEMS_SCHEMA,
    LABEL,
    PAIRS_SCHEMA,
    RANK,
    REPORTS,
    SEQUENCES,
    SEQUENCES_SCHEMA,
    SPLITS,
    TEST,
    TOPK,
    TOPK_SCHEMA,
    TRAIN,
    USER_IDX,
    USERS,
    USERS_SCHEMA,
    LakePaths,
)
from jobs.quality import sampled
from jobs.quality.aggregates import count_rows
from jobs.quality.expectations import (
    HELD_OUT,
    IN_TRAIN_POSITIVES,
    NEGATIVE_IS_POSITIVE,
    RECOMMENDED_SEEN,
    SPLIT,
    eval_positives_in_train,
    index_suite,
    interactions_suite,
    leakage_suite,
    negative_collisions,
    negatives_suite,
    pairs_suite,
    per_user_labels,
    per_user_sequences,
    per_user_suite,
    per_user_topk,
    seen_recommendations,
    sequence_items,
    sequence_items_suite,
    sequences_suite,
    topk_per_user_suite,
    topk_schema_suite,
    topk_seen_suite,
    topk_suite,
)
from jobs.quality.results import DataValidationError, ValidationReport
from jobs.quality.runner import Check, read_lake_folder, run_checks, widen_integers

logger = logging.getLogger(__name__)

STAGES = ("interactions", "splits", "recommendations")
# Split methods whose test/ holds one positive per user (jobs.lake.config.SPLIT_METHODS; presplit:
# the NCF paper's files). time_cutoff and stratified hold out several.
ONE_TEST_POSITIVE = ("leave_one_out", "presplit")


def _finish(stage: str, paths: LakePaths, checks: Sequence[Check],
            mode: str = "full") -> ValidationReport:
    report = ValidationReport(stage, paths, run_checks(checks, paths.path(REPORTS)), mode)
    layout.update_manifest(paths, f"validate_{stage}", report.manifest_entry())
    if not report.success:
        raise DataValidationError(report.describe())
    return report


def _require(paths: LakePaths, names: Sequence[str]) -> None:
    missing = [str(paths.path(name)) for name in names if not paths.path(name).is_dir()]
    if missing:
        raise DataValidationError(f"missing lake folder(s) {', '.join(missing)}: the stage that "
                                  "writes them has not run (or failed) for this date")


def _mode(sample: ValidateConfig | None) -> str:
    return "full" if sample is None else "sampled"


# --- stages -------------------------------------------------------------------------
# Each stage takes `sample`: None validates every row in pandas (full mode); a
# ValidateConfig streams exact aggregates and runs the suites on seeded samples of
# `sample_rows` rows (jobs.quality.sampled). Both build the same suites in the same order.


def validate_interactions(paths: LakePaths, *, timestamps: bool = True,
                          sample: ValidateConfig | None = None) -> ValidationReport:
    """Gate after ingest: the clean interactions of this run (`timestamps=False`: a source
    without them, whose ts must then be null throughout)."""
    _require(paths, [INTERACTIONS])
    suite, dataset = interactions_suite(timestamps=timestamps), f"{INTERACTIONS}/"
    if sample is None:
        check = Check(suite, read_lake_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA),
                      dataset)
    else:
        check = sampled.table_check(suite, paths.path(INTERACTIONS), INTERACTIONS_SCHEMA,
                                    dataset, sample)
    return _finish("interactions", paths, [check], _mode(sample))


def _splits_named(names: Sequence[str]) -> str:
    return ", ".join(f"{name}/" for name in names)


def validate_splits(paths: LakePaths, *, one_test_positive: bool = True,
                    max_sequence_length: int | None = None,
                    sample: ValidateConfig | None = None) -> ValidationReport:
    """Gate after prepare: the id mappings, the three splits and how they relate, and
    sequences/ against them when prepare wrote it.

    one_test_positive=False: test/ may hold several positives per user (time_cutoff,
    stratified); validation/ always holds one. max_sequence_length: the most items a
    sequence may hold (prepare.sequence_length); None leaves the length unchecked.
    """
    _require(paths, [USERS, ITEMS, *SPLITS])
    if sample is not None:
        return _finish("splits", paths, _sampled_split_checks(
            paths, one_test_positive, max_sequence_length, sample), "sampled")
    users = read_lake_folder(paths.path(USERS), USERS_SCHEMA)
    items = read_lake_folder(paths.path(ITEMS), ITEMS_SCHEMA)
    splits = {name: read_lake_folder(paths.path(name), PAIRS_SCHEMA) for name in SPLITS}
    n_users, n_items = len(users), len(items)
    evaluation = {name: splits[name] for name in EVAL_SPLITS}
    checks = [
        Check(index_suite(USERS, n=n_users), users, f"{USERS}/"),
        Check(index_suite(ITEMS, n=n_items), items, f"{ITEMS}/"),
        *(Check(pairs_suite(name, n_users=n_users, n_items=n_items), frame, f"{name}/")
          for name, frame in splits.items()),
        *(Check(per_user_suite(name, one_positive=one_test_positive or name != TEST),
                per_user_labels(frame), f"{name}/ counted per user", (USER_IDX,))
          for name, frame in evaluation.items()),
        Check(negatives_suite(), negative_collisions(splits),
              f"label-0 rows of {_splits_named(SPLITS)}", (SPLIT, USER_IDX, ITEM_IDX)),
        Check(leakage_suite(), eval_positives_in_train(splits[TRAIN], evaluation),
              f"positives of {_splits_named(EVAL_SPLITS)}", (SPLIT, USER_IDX, ITEM_IDX)),
    ]
    if paths.path(SEQUENCES).is_dir():
        sequences = read_lake_folder(paths.path(SEQUENCES), SEQUENCES_SCHEMA)
        checks += [
            Check(sequences_suite(max_length=max_sequence_length),
                  per_user_sequences(sequences), _PER_USER_SEQUENCES, (USER_IDX,)),
            Check(sequence_items_suite(), sequence_items(sequences, splits), _SEQUENCE_ITEMS,
                  (USER_IDX, ITEM_IDX))]
    return _finish("splits", paths, checks)


# sequences/ per user (one row, 1..max_length items) and item by item against the splits'
# positives (train/ positives only, never a held-out one).
_PER_USER_SEQUENCES = f"{SEQUENCES}/ counted per user"
_SEQUENCE_ITEMS = (f"items of {SEQUENCES}/ against the positives of "
                   f"{_splits_named(SPLITS)}")


def _sampled_split_checks(paths: LakePaths, one_test_positive: bool,
                          max_sequence_length: int | None,
                          sample: ValidateConfig) -> list[Check]:
    """validate_splits' checks in sampled mode (jobs.quality.sampled)."""
    n_users, n_items = count_rows(paths.path(USERS)), count_rows(paths.path(ITEMS))
    keys = sampled.PositiveKeys(paths)
    checks = [
        sampled.table_check(index_suite(USERS, n=n_users), paths.path(USERS), USERS_SCHEMA,
                            f"{USERS}/", sample),
        sampled.table_check(index_suite(ITEMS, n=n_items), paths.path(ITEMS), ITEMS_SCHEMA,
                            f"{ITEMS}/", sample),
        *(sampled.table_check(pairs_suite(name, n_users=n_users, n_items=n_items),
                              paths.path(name), PAIRS_SCHEMA, f"{name}/", sample)
          for name in SPLITS),
        *(Check(per_user_suite(name, one_positive=one_test_positive or name != TEST),
                sampled.per_user_labels(paths.path(name)), f"{name}/ counted per user",
                (USER_IDX,))
          for name in EVAL_SPLITS),
        sampled.pair_check(negatives_suite(), sampled.negative_rows(paths, keys),
                           [NEGATIVE_IS_POSITIVE], f"label-0 rows of {_splits_named(SPLITS)}",
                           sample),
        sampled.pair_check(leakage_suite(), sampled.held_out_rows(paths, keys),
                           [IN_TRAIN_POSITIVES], f"positives of {_splits_named(EVAL_SPLITS)}",
                           sample),
    ]
    if paths.path(SEQUENCES).is_dir():
        checks += [
            Check(sequences_suite(max_length=max_sequence_length),
                  sampled.per_user_sequences(paths.path(SEQUENCES)), _PER_USER_SEQUENCES,
                  (USER_IDX,)),
            sampled.pair_check(sequence_items_suite(),
                               sampled.sequence_item_rows(paths.path(SEQUENCES), keys),
                               [HELD_OUT, IN_TRAIN_POSITIVES], _SEQUENCE_ITEMS, sample,
                               index_columns=(USER_IDX, ITEM_IDX))]
    return checks


def _manifest_counts(paths: LakePaths, stage: str, keys: Sequence[str]) -> list[int]:
    entry = layout.read_manifest(paths).get(stage) or {}
    missing = [key for key in keys if not isinstance(entry.get(key), int)]
    if missing:
        raise DataValidationError(f"{paths.manifest} has no {stage} entry with {missing}: "
                                  f"run {stage} for this date first")
    return [int(entry[key]) for key in keys]


def _positive_pairs(path: Path) -> pd.DataFrame:
    """The label-1 rows of a split folder as (user_idx, item_idx)."""
    frame = read_lake_folder(path, PAIRS_SCHEMA)
    return frame.loc[frame[LABEL] == 1, [USER_IDX, ITEM_IDX]].dropna()


_TOPK_PER_USER = f"{TOPK}/ counted per user of {USERS}/"
_TOPK_SEEN = f"{TOPK}/ against the positives of {_splits_named(SPLITS)}"


def validate_recommendations(paths: LakePaths, *,
                             sample: ValidateConfig | None = None) -> ValidationReport:
    """Gate between recommend and publish: topk/ against users/, the splits and the manifest."""
    _require(paths, [TOPK, USERS, *SPLITS])
    n_users, n_items = _manifest_counts(paths, "prepare", ("n_users", "n_items"))
    (k,) = _manifest_counts(paths, "recommend", ("k",))
    users = read_lake_folder(paths.path(USERS), USERS_SCHEMA)[USER_IDX].to_numpy()
    suites = (topk_schema_suite(), topk_suite(n_users=n_users, n_items=n_items, k=k),
              topk_per_user_suite(k=k), topk_seen_suite())
    if sample is not None:
        keys = sampled.PositiveKeys(paths)
        topk = paths.path(TOPK)
        return _finish("recommendations", paths, [
            sampled.table_check(suites[0], topk, TOPK_SCHEMA, f"{TOPK}/ as written", sample,
                                widen=False),
            sampled.table_check(suites[1], topk, TOPK_SCHEMA, f"{TOPK}/", sample,
                                index_columns=(USER_IDX, RANK)),
            Check(suites[2], sampled.per_user_topk_frame(topk, users), _TOPK_PER_USER,
                  (USER_IDX,)),
            sampled.pair_check(suites[3], sampled.seen_rows(topk, keys), [RECOMMENDED_SEEN],
                               _TOPK_SEEN, sample, index_columns=(USER_IDX, RANK, ITEM_IDX))],
                       "sampled")
    as_written = read_lake_folder(paths.path(TOPK), TOPK_SCHEMA, widen=False)
    topk_frame = widen_integers(as_written)
    positives = [_positive_pairs(paths.path(name)) for name in SPLITS]
    return _finish("recommendations", paths, [
        Check(suites[0], as_written, f"{TOPK}/ as written"),
        Check(suites[1], topk_frame, f"{TOPK}/", (USER_IDX, RANK)),
        Check(suites[2], per_user_topk(topk_frame, users), _TOPK_PER_USER, (USER_IDX,)),
        Check(suites[3], seen_recommendations(topk_frame, positives), _TOPK_SEEN,
              (USER_IDX, RANK, ITEM_IDX))])


# The folders each stage reads; `validate.mode: auto` samples when the largest is bigger
# than `validate.max_full_rows`.
STAGE_TABLES = {"interactions": (INTERACTIONS,), "splits": (USERS, ITEMS, *SPLITS),
                "recommendations": (TOPK, *SPLITS)}


def sampling_for(stage: str, paths: LakePaths, cfg: ValidateConfig) -> ValidateConfig | None:
    """The config's choice for this stage: None (full) or the sampling settings."""
    if cfg.mode == "full":
        return None
    if cfg.mode == "sampled":
        return cfg
    sizes = [count_rows(paths.path(name)) for name in STAGE_TABLES[stage]
             if paths.path(name).is_dir()]
    return cfg if max(sizes, default=0) > cfg.max_full_rows else None


def _split_method(paths: LakePaths, cfg: DataConfig) -> str:
    """The split prepare wrote (its manifest entry), else the one the config asks for."""
    entry = layout.read_manifest(paths).get("prepare") or {}
    return str((entry.get("split") or {}).get("method") or cfg.prepare.split.method)


def _sequence_length(paths: LakePaths, cfg: DataConfig) -> int | None:
    """The sequence cap prepare wrote with (its manifest entry), else the config's."""
    entry = (layout.read_manifest(paths).get("prepare") or {}).get("sequences") or {}
    length = entry.get("max_length", cfg.prepare.sequence_length)
    return int(length) if length else None


_STAGE_RUNNERS: dict[str, Callable[..., ValidationReport]] = {
    "interactions": lambda paths, cfg, sample: validate_interactions(
        paths, timestamps=cfg.source.format not in FORMATS_WITHOUT_TIMESTAMPS, sample=sample),
    "splits": lambda paths, cfg, sample: validate_splits(
        paths, one_test_positive=_split_method(paths, cfg) in ONE_TEST_POSITIVE,
        max_sequence_length=_sequence_length(paths, cfg), sample=sample),
    "recommendations": lambda paths, _cfg, sample: validate_recommendations(paths,
                                                                            sample=sample),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.stage_parser(__doc__)
    parser.prog = "python -m jobs.quality.validate"
    parser.add_argument("--stage", required=True, choices=STAGES)
    args = parser.parse_args(argv)
    cfg = cli.load_stage_config(args.config)
    paths = LakePaths(cli.lake_root(args.lake_root), cfg.dataset, args.logical_date)
    try:
        sample = sampling_for(args.stage, paths, cfg.validate)
        report = _STAGE_RUNNERS[args.stage](paths, cfg, sample)
    except DataValidationError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("validate_%s passed (%s): %d expectations in %d suite(s); reports in %s",
                args.stage, report.mode, report.evaluated, len(report.suites),
                paths.path(REPORTS))
    return 0


if __name__ == "__main__":
    cli.configure_logging()
    raise SystemExit(main())
