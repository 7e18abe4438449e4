"""What a validation run reports: each suite's result, each failed expectation with sample
values, and the one-paragraph error a failed gate raises (jobs.quality.validate)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.lake.layout import REPORTS, LakePaths

SAMPLE_SIZE = 5  # unexpected values quoted per failed expectation in the error message


class DataValidationError(Exception):
    """The data in the lake breaks an expectation (or is missing); the message says what to fix."""


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation, reduced to what a person needs to act on it."""

    expectation: str  # GX type, e.g. expect_column_values_to_not_be_null
    column: str | None
    kwargs: Mapping[str, Any]  # the expectation's bounds/sets (column and batch_id removed)
    unexpected_count: int | None
    element_count: int | None
    observed: Any  # table-level expectations: the observed value
    samples: tuple[str, ...]
    hint: str
    error: str | None  # GX could not evaluate the expectation (e.g. a missing column)

    def describe(self) -> str:
        target = f" on column {self.column}" if self.column else ""
        args = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        text = f"{self.expectation}{target}" + (f" ({args})" if args else "")
        if self.error is not None:
            text += f": could not be evaluated: {self.error}"
        elif self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            text += f": {self.unexpected_count}{of} rows unexpected"
            if self.samples:
                text += f", e.g. {'; '.join(self.samples)}"
        elif self.observed is not None:
            text += f": observed {self.observed!r}"
        return text + (f"\n      fix: {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Sampling:
    """A suite run on a seeded sample (sampled validation): how big the table and the
    sample were, and the seed that drew it."""

    table_rows: int
    sample_rows: int
    seed: int

    def entry(self) -> dict[str, Any]:
        return {"table_rows": self.table_rows, "sample_rows": self.sample_rows,
                "seed": self.seed}


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    dataset: str  # what the suite ran on: a lake folder, or a frame derived from folders
    success: bool
    evaluated: int
    rows: int
    report: Path
    failures: tuple[FailedExpectation, ...] = ()
    sampling: Sampling | None = None  # None: the suite ran on every row


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation stage (all suites run, even after a failure)."""

    stage: str
    paths: LakePaths
    suites: tuple[SuiteResult, ...]
    mode: str = "full"  # or "sampled" (jobs.lake.config.ValidateConfig)

    @property
    def success(self) -> bool:
        return all(result.success for result in self.suites)

    @property
    def evaluated(self) -> int:
        return sum(result.evaluated for result in self.suites)

    @property
    def failed(self) -> int:
        return sum(len(result.failures) for result in self.suites)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "mode": self.mode,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": self.failed,
            "suites": {
                result.suite: {
                    "dataset": result.dataset,
                    "success": result.success,
                    "evaluated_expectations": result.evaluated,
                    "failed_expectations": len(result.failures),
                    "rows": result.rows,
                    "report": str(result.report.relative_to(self.paths.base)),
                    **({"sampled": result.sampling.entry()} if result.sampling else {}),
                }
                for result in self.suites
            },
        }

    def describe(self) -> str:
        lines = [f"data validation failed for {self.paths.dataset} {self.paths.logical_date} "
                 f"(stage {self.stage}): {self.failed} of {self.evaluated} expectations failed; "
                 f"full reports in {self.paths.path(REPORTS)}"
                 + ("; sampled validation: counts are exact, the suites also ran on seeded "
                    "samples (see each report's 'sampled')" if self.mode == "sampled" else "")]
        for result in self.suites:
            for failure in result.failures:
                lines.append(f"  - suite {result.suite} on {result.dataset}: "
                             f"{failure.describe()}")
        return "\n".join(lines)
