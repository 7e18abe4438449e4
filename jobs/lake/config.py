"""Pipeline configuration: one YAML per dataset in `configs/`, one frozen dataclass per stage.

The YAML has one section per stage. This module holds the strict loader (unknown
keys rejected, types checked, errors naming the file and the field) and the
data-side sections; `ncf_model.config` holds the model-side ones and reuses the
loader. No pyspark import here, so the DAG files and `ncf_model` can use it.

    dataset: ml-100k
    source:   {format, url, files: {role: {path, sha256, archive_member, url, encoding}}}
              (or, for a one-file source, {format, path, sha256, url, archive_member})
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

`dataclasses.asdict(section)` is exactly what goes to MLflow params and the manifest.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

from jobs.lake.loader import check_field, load_sections

PRESPLIT_FORMAT = "ncf-presplit"  # test split given by the source; prepare keeps it as-is
# The raw formats jobs/readers.py reads: per format the file roles it needs, then the
# roles it may also read (side features). A one-file source (path/sha256) is "ratings".
SOURCE_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "movielens-100k": (("ratings",), ("users", "items")),      # u.data, u.user, u.item
    "movielens-dat": (("ratings",), ("users", "items")),       # ML-1M/10M ratings.dat ...
    "movielens-csv": (("ratings",), ("items",)),               # ML-20M/25M/latest ratings.csv
    "lastfm-360k": (("ratings",), ("users",)),
    "lastfm-1k": (("ratings",), ("users",)),
    "lastfm-2k": (("ratings",), ("items", "tags", "item_tags")),
    PRESPLIT_FORMAT: (("train", "test", "test_negatives"), ()),  # the NCF paper's files
}
# Sources with no time per interaction: ts is null (expectations and prepare allow it).
FORMATS_WITHOUT_TIMESTAMPS = ("lastfm-360k", "lastfm-2k")
ENCODINGS = ("utf-8", "latin-1")
SHA256_TODO = "fill-in-on-first-download"



def _check_relative(path: str, field: str) -> None:
    check_field(not Path(path).is_absolute() and ".." not in Path(path).parts, field,
                "must be relative to the raw folder, without '..'")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One raw file: where it lies, what its bytes hash to, how its text is encoded.

    sha256 is required. Where the project does not know it yet (a dataset never
    downloaded here) the config says SHA256_TODO: resolving the file then fails and
    prints the sha256 of what it found, to be checked against the publisher's
    checksum and written into the config. Verification is never skipped.
    """

    path: str  # relative to the raw folder (NCF_RAW_DIR / --raw-dir) or the download cache
    sha256: str
    archive_member: str | None = None  # its name inside the source's archive (default: path)
    url: str | None = None  # where to fetch this file (or its archive) if not the source's url
    encoding: str = "utf-8"  # latin-1 for the old MovieLens/HetRec files

    def __post_init__(self) -> None:
        _check_relative(self.path, "path")
        check_field(self.sha256 == SHA256_TODO or bool(re.fullmatch(r"[0-9a-f]{64}", self.sha256)),
                    "sha256", "must be 64 lower-case hex digits (sha256sum of the raw file), "
                    f"or {SHA256_TODO!r} until it is known")
        check_field(self.encoding in ENCODINGS, "encoding",
                    f"{self.encoding!r} is not one of {list(ENCODINGS)}")

    @property
    def sha256_known(self) -> bool:
        return self.sha256 != SHA256_TODO


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """The raw files of a dataset, by role (ratings, users, items, ...), and where to get them.

    A one-file source may give `path`/`sha256`/`archive_member` directly: that is the
    file of role "ratings". `files` then comes out filled, so readers only look there.
    """

    format: str
    url: str | None = None  # an archive (zip, tar.gz) holding the files, or the one file
    files: dict[str, SourceFile] = dataclasses.field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None
    archive_member: str | None = None

    def __post_init__(self) -> None:
        check_field(self.format in SOURCE_FORMATS, "format",
                    f"{self.format!r} is not one of {list(SOURCE_FORMATS)}")
        one_file = (self.path, self.sha256, self.archive_member)
        if self.files:
            check_field(one_file == (None, None, None), "files",
                        "give either files: {role: {path, sha256}} or path/sha256, not both")
            required, optional = SOURCE_FORMATS[self.format]
            check_field(set(required) <= set(self.files), "files",
                        f"format {self.format} needs the roles {list(required)}")
            unknown = sorted(set(self.files) - set(required) - set(optional))
            check_field(not unknown, "files", f"unknown role(s) {unknown} for format "
                        f"{self.format}; known: {[*required, *optional]}")
            return
        check_field(self.path is not None, "path", "missing (or give files: {role: ...})")
        check_field(SOURCE_FORMATS[self.format][0] == ("ratings",), "path",
                    f"format {self.format} has several files: give files: {{role: {{path, "
                    f"sha256}}}} for {list(SOURCE_FORMATS[self.format][0])}")
        check_field(self.sha256 is not None, "sha256", "missing")
        ratings = SourceFile(path=str(self.path), sha256=str(self.sha256),
                             archive_member=self.archive_member)
        object.__setattr__(self, "files", {"ratings": ratings})


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


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str
    source: SourceConfig
    ingest: IngestConfig
    prepare: PrepareConfig
    publish: PublishConfig
    als: AlsConfig = dataclasses.field(default_factory=AlsConfig)
    candidates: CandidatesConfig = dataclasses.field(default_factory=CandidatesConfig)

    @property
    def model_name(self) -> str:
        return self.publish.model_name or f"ncf-{self.dataset}"


def load_data_config(path: str | Path) -> DataConfig:
    return load_sections(DataConfig, path)
