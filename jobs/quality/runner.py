"""Running Great Expectations suites on frames: one in-memory context, one report per suite.

A `Check` is a suite, the frame it runs on and what to call that frame in messages. In
full mode the frame holds every row. In sampled mode (`jobs.quality.sampled`) it holds a
seeded sample, and `Check.exact` holds the exact answers a streaming pass found
(`jobs.quality.aggregates`): they replace the sample's results for the same expectations,
so counts and verdicts are those of the whole table, and the report says which
expectations were answered exactly and how many rows the sample held.

Importing this module imports Great Expectations (~10 s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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

from jobs.lake import layout
from jobs.lake.layout import Schema
from jobs.quality.aggregates import expectation_key
from jobs.quality.results import (
    SAMPLE_SIZE,
    DataValidationError,
    FailedExpectation,
    Sampling,
    SuiteResult,
)

logger = logging.getLogger(__name__)
# GX logs at INFO freely, which drowns the task log; one of its modules sets its own logger
# to INFO explicitly, so the parent's level alone does not cover it.
for _name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class Check:
    suite: ExpectationSuite
    frame: pd.DataFrame  # every row, or (sampled) the seeded sample
    dataset: str
    # columns quoted next to each unexpected value, e.g. the user of a bad per-user count
    index_columns: tuple[str, ...] = field(default=())
    # sampled: the table's size and the sample's; exact answers by aggregates.expectation_key
    sampling: Sampling | None = None
    exact: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


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


def _apply_exact(outcome: dict[str, Any], check: Check) -> None:
    """Put the exact answers in place of the sample's results, and say so in the report."""
    exact, on_sample = [], []
    for result in outcome["results"]:
        config = result.get("expectation_config") or {}
        kind = str(config.get("type"))
        answer = check.exact.get(expectation_key(kind, dict(config.get("kwargs") or {})))
        if answer is None or _exception_infos(result):
            on_sample.append(kind)
            continue
        result["success"] = bool(answer["success"])
        result["result"] = dict(answer["result"])
        exact.append(kind)
    successes = sum(bool(result["success"]) for result in outcome["results"])
    outcome["success"] = successes == len(outcome["results"])
    outcome["statistics"].update(successful_expectations=successes,
                                 unsuccessful_expectations=len(outcome["results"]) - successes)
    assert check.sampling is not None  # only sampled checks carry exact answers
    outcome["sampled"] = {**check.sampling.entry(), "exact": sorted(exact),
                          "on_sample": sorted(on_sample)}


def run_checks(checks: Sequence[Check], reports: Path) -> tuple[SuiteResult, ...]:
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
        if check.sampling is not None:
            _apply_exact(outcome, check)
        report = reports / f"{name}.json"
        layout.write_json_atomic(report, outcome)
        failures = tuple(_failure(r, check.index_columns)
                         for r in outcome["results"] if not r["success"])
        rows = check.sampling.table_rows if check.sampling else len(check.frame)
        results.append(SuiteResult(
            suite=name, dataset=check.dataset, success=bool(outcome["success"]),
            evaluated=int(outcome["statistics"]["evaluated_expectations"]),
            rows=rows, report=report, failures=failures, sampling=check.sampling))
        logger.info("suite %s on %s: %d rows%s, %d expectations, %d failed", name,
                    check.dataset, rows,
                    f" ({len(check.frame)} sampled)" if check.sampling else "",
                    results[-1].evaluated, len(failures))
    return tuple(results)
