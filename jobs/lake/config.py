"""Pipeline configuration: one YAML per dataset in `configs/`, one frozen dataclass per stage.

The YAML has one section per stage. This module holds the strict loader (unknown
keys rejected, types checked, errors naming the file and the field) and the
data-side sections; `ncf_model.config` holds the model-side ones and reuses the
loader. No pyspark import here, so the DAG files and `ncf_model` can use it.

    dataset: ml-100k
    source:   {format, url, files: {role: {path, sha256, archive_member, url, encoding}},
               strict_checksums}
              (or, for a one-file source, {format, path, sha256, url, archive_member});
              format events: {format, events: {location, file_type, columns, ...}}
              (the section: jobs/lake/source.py; an event log's: jobs/lake/eventlog.py)
    ingest:   {min_value, max_value, output_partitions}
    prepare:  {as_of_cutoff, binarise: {rule, threshold}, user_fraction,
               min_user_positives, min_item_positives, k_core_max_iterations,
               split: {method, test_from, test_fraction, train_ratio},
               n_negatives, n_eval_negatives, seed, output_partitions}
    model:    ...  (ncf_model.config)
    train:    ...  (ncf_model.config)
    evaluate: ...  (ncf_model.config)
    recommend: ... (ncf_model.config)
    publish:  {table, runs_table, history_table, keep_runs, reader_role, model_name}
    candidates: {families, select_metric, refit}  (both sides read it)
    mf:, ease:      ...  (ncf_model.config)
    als:      {rank, reg_param, alpha, max_iter, seed}  (jobs/als.py)
    validate: {mode, sample_rows, seed, max_full_rows}  (jobs/quality/validate.py)

`dataclasses.asdict(section)` is exactly what goes to MLflow params and the manifest.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

from jobs.lake.loader import check_field, load_sections

# The source section (jobs/lake/source.py), re-exported: stages import it from here.
from jobs.lake.source import (  # noqa: F401
    ENCODINGS,
    FORMATS_WITHOUT_TIMESTAMPS,
    PRESPLIT_FORMAT,
    SHA256_TODO,
    SOURCE_FORMATS,
    SourceConfig,
    SourceFile,
)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Cleaning rules: values outside [min_value, max_value] are rejected."""

    min_value: float | None = None
    max_value: float | None = None
    output_partitions: int = 1  # Parquet files per output folder (rows hashed by id)

    def __post_init__(self) -> None:
        check_field(self.output_partitions >= 1, "output_partitions", "must be >= 1")
        if self.min_value is not None and self.max_value is not None:
            check_field(self.min_value <= self.max_value, "min_value", "must be <= max_value")


BINARISE_RULES = ("any", "rating", "plays")
SPLIT_METHODS = ("leave_one_out", "time_cutoff", "stratified")
DEFAULT_TRAIN_RATIO = 0.75  # microsoft/recommenders' python_stratified_split default


def parse_utc(text: str) -> datetime:
    """An ISO 8601 timestamp as an aware UTC datetime; one without an offset is UTC."""
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class BinariseConfig:
    """Which (user, item) pairs are positives.

    any:    every pair with an event.
    rating: a pair with an event of value >= threshold (explicit ratings).
    plays:  a pair whose values sum to >= threshold (last.fm: 360K has one row with the
            play count per pair, 1K one row per listen with value 1: the sum is the count).
    """

    rule: str = "any"
    threshold: float | None = None

    def __post_init__(self) -> None:
        check_field(self.rule in BINARISE_RULES, "rule",
                    f"{self.rule!r} is not one of {list(BINARISE_RULES)}")
        if self.rule == "any":
            check_field(self.threshold is None, "threshold",
                        "must be null with rule 'any' (every event is a positive)")
        else:
            check_field(self.threshold is not None, "threshold",
                        f"rule {self.rule!r} needs a threshold (a number)")


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Which positives are held out to evaluate on.

    leave_one_out: per user the latest positive -> test, the second latest -> validation.
    time_cutoff:   positives at/after one global time -> test; give either `test_from` (an
                   ISO timestamp, UTC unless it says otherwise; quote it in YAML) or
                   `test_fraction` (the time is chosen so that about that share is test).
    stratified:    per user a seeded random `train_ratio` of the positives -> train, the
                   rest -> test (microsoft/recommenders' python_stratified_split).
    """

    method: str = "leave_one_out"
    test_from: str | None = None
    test_fraction: float | None = None
    train_ratio: float | None = None  # stratified only; default DEFAULT_TRAIN_RATIO

    def __post_init__(self) -> None:
        check_field(self.method in SPLIT_METHODS, "method",
                    f"{self.method!r} is not one of {list(SPLIT_METHODS)}")
        unused = {"time_cutoff": ("train_ratio",), "stratified": ("test_from", "test_fraction"),
                  "leave_one_out": ("test_from", "test_fraction", "train_ratio")}[self.method]
        for name in unused:
            check_field(getattr(self, name) is None, name,
                        f"does not apply to method {self.method!r}; remove it")
        if self.method == "time_cutoff":
            check_field((self.test_from is None) != (self.test_fraction is None), "test_from",
                        "method 'time_cutoff' needs exactly one of test_from (a timestamp) "
                        "and test_fraction")
        if self.test_from is not None:
            try:
                parse_utc(self.test_from)
            except ValueError:
                check_field(False, "test_from",
                            f"{self.test_from!r} is not an ISO 8601 timestamp "
                            "such as '2026-01-01T00:00:00Z'")
        if self.test_fraction is not None:
            check_field(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        if self.method == "stratified":
            if self.train_ratio is None:
                object.__setattr__(self, "train_ratio", DEFAULT_TRAIN_RATIO)
            check_field(0.0 < float(self.train_ratio or 0.0) < 1.0, "train_ratio",
                        "must be in (0, 1)")

    @property
    def test_from_utc(self) -> datetime | None:
        return None if self.test_from is None else parse_utc(self.test_from)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What prepare keeps (cutoff, binarisation, sample, k-core), the split, the negatives."""

    # Only events before --as-of (default: the logical date, 00:00 UTC) are
    # used, so a backfill sees what was known then. Events without a timestamp are kept.
    as_of_cutoff: bool = True
    binarise: BinariseConfig = dataclasses.field(default_factory=BinariseConfig)
    # Seeded sample of users: a user is kept when a hash of (seed, user_id) falls below it.
    user_fraction: float = 1.0
    # k-core: drop users/items with fewer positives, repeatedly, until none is left (1: off).
    min_user_positives: int = 1
    min_item_positives: int = 1
    k_core_max_iterations: int = 50  # the manifest says when this cap stopped the k-core
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    # Training negatives per positive written to train/: 0 (the default) writes none, the
    # trainer draws its own each epoch; > 0 only for train.negatives: lake.
    n_negatives: int = 0
    n_eval_negatives: int = 99  # per evaluated user, for validation and for test
    seed: int = 42
    output_partitions: int = 1
    # sequences/: each user's training positives in time order, the latest this many kept
    # (sequence models, e.g. SASRec); 0 writes none.
    sequence_length: int = 200

    def __post_init__(self) -> None:
        check_field(0.0 < self.user_fraction <= 1.0, "user_fraction", "must be in (0, 1]")
        check_field(self.min_user_positives >= 1, "min_user_positives", "must be >= 1 (1: off)")
        check_field(self.min_item_positives >= 1, "min_item_positives", "must be >= 1 (1: off)")
        check_field(self.k_core_max_iterations >= 1, "k_core_max_iterations", "must be >= 1")
        check_field(self.n_negatives >= 0, "n_negatives", "must be >= 0")
        check_field(self.n_eval_negatives >= 1, "n_eval_negatives", "must be >= 1")
        check_field(self.output_partitions >= 1, "output_partitions", "must be >= 1")
        check_field(self.sequence_length >= 0, "sequence_length", "must be >= 0")

    @property
    def k_core(self) -> bool:
        return self.min_user_positives > 1 or self.min_item_positives > 1


_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclasses.dataclass(frozen=True)
class PublishConfig:
    """The SQL tables downstream teams read (the database URL is a deployment setting)."""

    table: str = "recommendations"
    runs_table: str = "recommendation_runs"
    history_table: str = "recommendation_history"
    keep_runs: int = 7  # runs whose rows stay in history_table, for rollback
    reader_role: str | None = None  # PostgreSQL role granted SELECT and nothing else
    model_name: str | None = None  # registered model name; default ncf-<dataset>

    def __post_init__(self) -> None:
        for name in ("table", "runs_table", "history_table"):
            check_field(bool(re.fullmatch(_SQL_NAME, getattr(self, name))), name,
                        "must be a plain SQL identifier")
        check_field(len({self.table, self.runs_table, self.history_table}) == 3, "table",
                    "table, runs_table and history_table must be three different names")
        check_field(self.keep_runs >= 1, "keep_runs", "must be >= 1 (the serving run)")
        check_field(self.reader_role is None or bool(re.fullmatch(_SQL_NAME, self.reader_role)),
                    "reader_role", "must be a plain SQL identifier or null")


# The model families a run fits and scores on the same validation and test pairs
# (ncf_model.families): ncf is the flagship of the model/ and train/ sections, als is
# fitted by the Spark job jobs/als.py.
FAMILIES = ("ncf", "mf", "als", "ease", "sasrec", "popularity")
# Validation metrics a run may select on (k is evaluate.k): sampled HR/NDCG, AUC, and the
# full-ranking ones.
_SELECT_METRIC = r"(full_)?(hr|ndcg|recall)_\d+|auc"


@dataclasses.dataclass(frozen=True)
class CandidatesConfig:
    """The `candidates` section: which families compete, the validation metric that picks
    the served one, and the refit protocol (docs/DESIGN.md, "Serving the best model").

    Read by both sides: jobs/als.py fits what the protocol needs, ncf_model runs it.
    """

    families: tuple[str, ...] = FAMILIES
    select_metric: str = "ndcg_10"  # on validation, never on test
    # (b) refit on train + validation for the reported test metrics and (c) on every
    # positive for the served model; false: both are the train-only fits (fast experiments).
    refit: bool = True

    def __post_init__(self) -> None:
        unknown = [name for name in self.families if name not in FAMILIES]
        check_field(not unknown, "families", f"{unknown} not in {list(FAMILIES)}")
        check_field(len(set(self.families)) == len(self.families) and bool(self.families),
                    "families", "must name at least one family, each once")
        check_field(bool(re.fullmatch(_SELECT_METRIC, self.select_metric)), "select_metric",
                    f"{self.select_metric!r} is not a validation metric such as ndcg_10, "
                    "hr_10 or full_ndcg_10")


@dataclasses.dataclass(frozen=True)
class AlsConfig:
    """The `als` section: Spark MLlib ALS on implicit feedback (jobs/als.py).

    Each training positive is a rating of 1 with confidence 1 + alpha (Hu, Koren and
    Volinsky, ICDM 2008); the rest of the matrix is 0 with confidence 1. Spark scales
    reg_param by each user's (item's) rating count. Defaults: the best validation HR@10 of
    a small grid on MovieLens-100K (configs/ml-100k.yaml says which).
    """

    rank: int = 32
    reg_param: float = 0.2
    alpha: float = 10.0
    max_iter: int = 15
    seed: int = 42

    def __post_init__(self) -> None:
        check_field(self.rank >= 1, "rank", "must be >= 1")
        check_field(self.reg_param >= 0, "reg_param", "must be >= 0")
        check_field(self.alpha >= 0, "alpha", "must be >= 0")
        check_field(self.max_iter >= 1, "max_iter", "must be >= 1")


VALIDATE_MODES = ("auto", "full", "sampled")


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    """How the validate_* gates read the lake (jobs/quality/validate.py).

    full:    every table whole in pandas, the Great Expectations suites on all rows.
    sampled: exact aggregates streamed over the Parquet batches (row and null counts, ranges,
             sets, uniqueness, per-user counts, pair lookups), and the same suites on a
             seeded sample of `sample_rows` rows of each big table; never a whole split in
             pandas.
    auto:    sampled when the stage's largest table holds more than `max_full_rows` rows
             (from the Parquet footers), else full: small datasets validate as in full mode.
    """

    mode: str = "auto"
    sample_rows: int = 200_000
    seed: int = 42
    max_full_rows: int = 5_000_000

    def __post_init__(self) -> None:
        check_field(self.mode in VALIDATE_MODES, "mode",
                    f"{self.mode!r} is not one of {list(VALIDATE_MODES)}")
        check_field(self.sample_rows >= 1, "sample_rows", "must be >= 1")
        check_field(self.max_full_rows >= 1, "max_full_rows", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str
    source: SourceConfig
    ingest: IngestConfig
    prepare: PrepareConfig
    publish: PublishConfig
    als: AlsConfig = dataclasses.field(default_factory=AlsConfig)
    candidates: CandidatesConfig = dataclasses.field(default_factory=CandidatesConfig)
    validate: ValidateConfig = dataclasses.field(default_factory=ValidateConfig)

    @property
    def model_name(self) -> str:
        return self.publish.model_name or f"ncf-{self.dataset}"


def load_data_config(path: str | Path) -> DataConfig:
    return load_sections(DataConfig, path)
