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

    python -m jobs.quality.validate --config configs/ml-100k.yaml --logical-date 2026-11-23 \
        --stage interactions|splits|recommendations [--lake-root data/lake]

Importing this module imports Great Expectations (~10 s): DAG files run it as a subprocess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core import ExpectationSuite
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from jobs.lake import cli, layout
from jobs.lake.config import FORMATS_WITHOUT_TIMESTAMPS, DataConfig
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
    Schema,
)
from jobs.quality.expectations import (
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
from jobs.quality.results import (
    SAMPLE_SIZE,
    DataValidationError,
    FailedExpectation,
    SuiteResult,
    ValidationReport,
)

logger = logging.getLogger(__name__)
# GX logs at INFO freely, which drowns the task log; one of its modules sets its own logger
# to INFO explicitly, so the parent's level alone does not cover it.
for _name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(_name).setLevel(logging.WARNING)

STAGES = ("interactions", "splits", "recommendations")
# Split methods whose test/ holds one positive per user (jobs.lake.config.SPLIT_METHODS; presplit:
# the NCF paper's files). time_cutoff and stratified hold out several.
ONE_TEST_POSITIVE = ("leave_one_out", "presplit")


# --- running suites -----------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    suite: ExpectationSuite
    frame: pd.DataFrame
    dataset: str
    # columns quoted next to each unexpected value, e.g. the user of a bad per-user count
    index_columns: tuple[str, ...] = field(default=())


def read_lake_folder(path: Path, schema: Schema, *, widen: bool = True) -> pd.DataFrame:
    """A lake dataset folder as pandas; an existing folder without data files is 0 rows.

    widen=False keeps the dtypes as written (for a dtype check).
    """
    try:
        table = layout.read_lake_table(path, schema)
    except layout.LakeReadError as exc:
        raise DataValidationError(str(exc)) from exc
    frame = table.to_pandas()
    return widen_integers(frame) if widen else frame


def widen_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as int64. GX 1.24 vectorises expect_column_values_to_be_between only
    for int64/float64 columns; int32 indices would go through a Python call per value (~20x
    slower on 5M rows). Columns with nulls are float64 already."""
    wide = {name: "int64" for name, dtype in frame.dtypes.items()
            if pd.api.types.is_integer_dtype(dtype) and dtype != np.int64}
    return frame.astype(wide) if wide else frame


def _context() -> EphemeralDataContext:
    # In memory, no temporary data-docs folder, no tqdm bars in the task log.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _sample(result: Mapping[str, Any], column: str | None,
            index_columns: Sequence[str]) -> tuple[str, ...]:
    if index_columns and result.get("partial_unexpected_index_list"):
        rows = result["partial_unexpected_index_list"][:SAMPLE_SIZE]
        order = [*index_columns, *([column] if column and column not in index_columns else [])]
        return tuple(" ".join(f"{key}={row.get(key)!r}" for key in order) for row in rows)
    counts = result.get("partial_unexpected_counts") or []
    return tuple(f"{entry['value']!r} (x{entry['count']})" for entry in counts[:SAMPLE_SIZE])


def _failure(result: Mapping[str, Any], index_columns: Sequence[str]) -> FailedExpectation:
    config = result.get("expectation_config") or {}
    kwargs = dict(config.get("kwargs") or {})
    column = kwargs.pop("column", None)
    kwargs.pop("batch_id", None)
    details = result.get("result") or {}
    errors = [info.get("exception_message") for info in _exception_infos(result)]
    observed = details.get("observed_value")
    mismatched = (details.get("details") or {}).get("mismatched")
    return FailedExpectation(
        expectation=str(config.get("type", "?")),
        column=column,
        kwargs=kwargs,
        unexpected_count=details.get("unexpected_count"),
        element_count=details.get("element_count"),
        observed=mismatched if mismatched else observed,
        samples=_sample(details, column, index_columns),
        hint=str((config.get("meta") or {}).get("hint", "")),
        error="; ".join(sorted({str(e) for e in errors if e})) or None,
    )


def _exception_infos(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """GX puts one exception_info per expectation, or one per metric when metrics fail."""
    info = result.get("exception_info") or {}
    if "raised_exception" in info:
        return [info] if info.get("raised_exception") else []
    return [value for value in info.values()
            if isinstance(value, Mapping) and value.get("raised_exception")]


def _run_checks(checks: Sequence[_Check], reports: Path) -> tuple[SuiteResult, ...]:
    """Validate every frame against its suite; write each GX result to reports/<suite>.json."""
    context = _context()
    source = context.data_sources.add_pandas("lake")
    results = []
    for check in checks:
        name = check.suite.name
        batch = (source.add_dataframe_asset(name)
                 .add_batch_definition_whole_dataframe("whole")
                 .get_batch(batch_parameters={"dataframe": check.frame}))
        result_format: dict[str, Any] = {"result_format": "SUMMARY"}
        if check.index_columns:
            result_format["unexpected_index_column_names"] = list(check.index_columns)
        outcome = batch.validate(check.suite, result_format=result_format).to_json_dict()
        report = reports / f"{name}.json"
        layout.write_json_atomic(report, outcome)
        failures = tuple(_failure(r, check.index_columns)
                         for r in outcome["results"] if not r["success"])
        results.append(SuiteResult(
            suite=name, dataset=check.dataset, success=bool(outcome["success"]),
            evaluated=int(outcome["statistics"]["evaluated_expectations"]),
            rows=len(check.frame), report=report, failures=failures))
        logger.info("suite %s on %s: %d rows, %d expectations, %d failed", name, check.dataset,
                    len(check.frame), results[-1].evaluated, len(failures))
    return tuple(results)


def _finish(stage: str, paths: LakePaths, checks: Sequence[_Check]) -> ValidationReport:
    report = ValidationReport(stage, paths, _run_checks(checks, paths.path(REPORTS)))
    layout.update_manifest(paths, f"validate_{stage}", report.manifest_entry())
    if not report.success:
        raise DataValidationError(report.describe())
    return report


def _require(paths: LakePaths, names: Sequence[str]) -> None:
    missing = [str(paths.path(name)) for name in names if not paths.path(name).is_dir()]
    if missing:
        raise DataValidationError(f"missing lake folder(s) {', '.join(missing)}: the stage that "
                                  "writes them has not run (or failed) for this date")


# --- stages -------------------------------------------------------------------------


def validate_interactions(paths: LakePaths, *, timestamps: bool = True) -> ValidationReport:
    """Gate after ingest: the clean interactions of this run (`timestamps=False`: a source
    without them, whose ts must then be null throughout)."""
    _require(paths, [INTERACTIONS])
    frame = read_lake_folder(paths.path(INTERACTIONS), INTERACTIONS_SCHEMA)
    return _finish("interactions", paths,
                   [_Check(interactions_suite(timestamps=timestamps), frame, f"{INTERACTIONS}/")])


def validate_splits(paths: LakePaths, *, one_test_positive: bool = True,
                    max_sequence_length: int | None = None) -> ValidationReport:
    """Gate after prepare: the id mappings, the three splits and how they relate, and
    sequences/ against them when prepare wrote it.

    one_test_positive=False: test/ may hold several positives per user (time_cutoff,
    stratified); validation/ always holds one. max_sequence_length: the most items a
    sequence may hold (prepare.sequence_length); None leaves the length unchecked.
    """
    _require(paths, [USERS, ITEMS, *SPLITS])
    users = read_lake_folder(paths.path(USERS), USERS_SCHEMA)
    items = read_lake_folder(paths.path(ITEMS), ITEMS_SCHEMA)
    splits = {name: read_lake_folder(paths.path(name), PAIRS_SCHEMA) for name in SPLITS}
    n_users, n_items = len(users), len(items)
    evaluation = {name: splits[name] for name in EVAL_SPLITS}
    checks = [
        _Check(index_suite(USERS, n=n_users), users, f"{USERS}/"),
        _Check(index_suite(ITEMS, n=n_items), items, f"{ITEMS}/"),
        *(_Check(pairs_suite(name, n_users=n_users, n_items=n_items), frame, f"{name}/")
          for name, frame in splits.items()),
        *(_Check(per_user_suite(name, one_positive=one_test_positive or name != TEST),
                 per_user_labels(frame), f"{name}/ counted per user", (USER_IDX,))
          for name, frame in evaluation.items()),
        _Check(negatives_suite(), negative_collisions(splits),
               f"label-0 rows of {', '.join(f'{s}/' for s in SPLITS)}",
               (SPLIT, USER_IDX, ITEM_IDX)),
        _Check(leakage_suite(), eval_positives_in_train(splits[TRAIN], evaluation),
               f"positives of {', '.join(f'{s}/' for s in EVAL_SPLITS)}",
               (SPLIT, USER_IDX, ITEM_IDX)),
    ]
    if paths.path(SEQUENCES).is_dir():
        checks += _sequence_checks(paths, splits, max_sequence_length)
    return _finish("splits", paths, checks)


def _sequence_checks(paths: LakePaths, splits: Mapping[str, pd.DataFrame],
                     max_length: int | None) -> list[_Check]:
    """sequences/ per user (one row, 1..max_length items) and item by item against the
    splits' positives (train/ positives only, never a held-out one)."""
    sequences = read_lake_folder(paths.path(SEQUENCES), SEQUENCES_SCHEMA)
    return [
        _Check(sequences_suite(max_length=max_length), per_user_sequences(sequences),
               f"{SEQUENCES}/ counted per user", (USER_IDX,)),
        _Check(sequence_items_suite(), sequence_items(sequences, splits),
               f"items of {SEQUENCES}/ against the positives of "
               f"{', '.join(f'{s}/' for s in SPLITS)}", (USER_IDX, ITEM_IDX)),
    ]


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


def validate_recommendations(paths: LakePaths) -> ValidationReport:
    """Gate between recommend and publish: topk/ against users/, the splits and the manifest."""
    _require(paths, [TOPK, USERS, *SPLITS])
    n_users, n_items = _manifest_counts(paths, "prepare", ("n_users", "n_items"))
    (k,) = _manifest_counts(paths, "recommend", ("k",))
    as_written = read_lake_folder(paths.path(TOPK), TOPK_SCHEMA, widen=False)
    topk = widen_integers(as_written)
    users = read_lake_folder(paths.path(USERS), USERS_SCHEMA)[USER_IDX].to_numpy()
    positives = [_positive_pairs(paths.path(name)) for name in SPLITS]
    checks = [
        _Check(topk_schema_suite(), as_written, f"{TOPK}/ as written"),
        _Check(topk_suite(n_users=n_users, n_items=n_items, k=k), topk, f"{TOPK}/",
               (USER_IDX, RANK)),
        _Check(topk_per_user_suite(k=k), per_user_topk(topk, users),
               f"{TOPK}/ counted per user of {USERS}/", (USER_IDX,)),
        _Check(topk_seen_suite(), seen_recommendations(topk, positives),
               f"{TOPK}/ against the positives of {', '.join(f'{s}/' for s in SPLITS)}",
               (USER_IDX, RANK, ITEM_IDX)),
    ]
    return _finish("recommendations", paths, checks)


def _split_method(paths: LakePaths, cfg: DataConfig) -> str:
    """The split prepare wrote (its manifest entry), else the one the config asks for."""
    entry = layout.read_manifest(paths).get("prepare") or {}
    return str((entry.get("split") or {}).get("method") or cfg.prepare.split.method)


def _sequence_length(paths: LakePaths, cfg: DataConfig) -> int | None:
    """The sequence cap prepare wrote with (its manifest entry), else the config's."""
    entry = (layout.read_manifest(paths).get("prepare") or {}).get("sequences") or {}
    length = entry.get("max_length", cfg.prepare.sequence_length)
    return int(length) if length else None


_STAGE_RUNNERS: dict[str, Callable[[LakePaths, DataConfig], ValidationReport]] = {
    "interactions": lambda paths, cfg: validate_interactions(
        paths, timestamps=cfg.source.format not in FORMATS_WITHOUT_TIMESTAMPS),
    "splits": lambda paths, cfg: validate_splits(
        paths, one_test_positive=_split_method(paths, cfg) in ONE_TEST_POSITIVE,
        max_sequence_length=_sequence_length(paths, cfg)),
    "recommendations": lambda paths, _cfg: validate_recommendations(paths),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.stage_parser(__doc__)
    parser.prog = "python -m jobs.quality.validate"
    parser.add_argument("--stage", required=True, choices=STAGES)
    args = parser.parse_args(argv)
    cfg = cli.load_stage_config(args.config)
    paths = LakePaths(cli.lake_root(args.lake_root), cfg.dataset, args.logical_date)
    try:
        report = _STAGE_RUNNERS[args.stage](paths, cfg)
    except DataValidationError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("validate_%s passed: %d expectations in %d suite(s); reports in %s",
                args.stage, report.evaluated, len(report.suites), paths.path(REPORTS))
    return 0


if __name__ == "__main__":
    cli.configure_logging()
    raise SystemExit(main())
