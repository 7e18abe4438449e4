"""The lake contract between pipeline stages: paths, column names, dtypes, manifest.

This is the single definition of the layout described in DESIGN.md. It imports
no pyspark (nor torch) at module level so that Spark jobs, the torch package and
the DAG files can all import it.

    data/lake/<dataset>/<logical_date>/
        interactions/  user_id string, item_id string, ts timestamp, value double
        rejects/       source_file string, line string, reason string
        user_features/ item_features/  side features of the raw ids (hybrid models)
        presplit_test/ a source's own test split, raw ids (NCF paper's files only)
        users/ items/  user_id -> user_idx int32, item_id -> item_idx int32 (dense from 0)
        train/         user_idx, item_idx, label int8 (positives + sampled negatives)
        sequences/     user_idx, sequence array<int>: the train positives in time order
        validation/    per user the second-latest positive + m sampled negatives
        test/          per user the latest positive + m sampled negatives
        model/         the trained model (state dict + config) chosen on validation
        als/<splits>/  user_factors/ (user_idx, factors array<float>), item_factors/ (item_idx,
                       factors): Spark ALS on the positives of <splits> (jobs/als.py):
                       train, train_validation, train_validation_test (als_folder)
        served/        the served model (the candidates' winner refitted on every positive)
        topk/          user_idx, rank, item_idx, score, source (model | popularity)
        reports/       validation reports (Great Expectations results)
        _manifest.json row counts, parameters, seed, input checksums of each stage

Every dataset folder is written to a temporary sibling and renamed into place
(`staged_dir`), so a reader never sees half a folder and a re-run of the same
logical date replaces the previous result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from jobs.lake import failpoints

# --- column names (the only place these literals are written) ---------------
USER_ID = "user_id"
ITEM_ID = "item_id"
TS = "ts"
VALUE = "value"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
LABEL = "label"
RANK = "rank"
SCORE = "score"
SOURCE_FILE = "source_file"
LINE = "line"
REASON = "reason"
AGE_BUCKET = "age_bucket"
GENDER = "gender"
OCCUPATION = "occupation"
COUNTRY = "country"
TITLE = "title"
GENRES = "genres"
SOURCE = "source"  # where a recommendation came from: SOURCE_MODEL or SOURCE_POPULARITY
FACTORS = "factors"  # a latent factor vector (ALS baseline)
SEQUENCE = "sequence"  # a user's item_idx values in time order, oldest first

# --- dataset folders ----------------------------------------------------------
INTERACTIONS = "interactions"
REJECTS = "rejects"
USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
PRESPLIT_TEST = "presplit_test"
USERS = "users"
ITEMS = "items"
TRAIN = "train"
SEQUENCES = "sequences"
VALIDATION = "validation"
TEST = "test"
MODEL = "model"
TOPK = "topk"
ALS = "als"  # holds <splits>/USER_FACTORS/ and ITEM_FACTORS/ (als_folder), swapped in together
SERVED = "served"  # the served model: the candidates' winner refitted on all positives
USER_FACTORS = "user_factors"
ITEM_FACTORS = "item_factors"
REPORTS = "reports"
MANIFEST = "_manifest.json"
# The evaluated splits (a held-out positive per user plus sampled negatives), and all three.
EVAL_SPLITS = (VALIDATION, TEST)
SPLITS = (TRAIN, *EVAL_SPLITS)

# --- schemas as (column, Spark SQL type) pairs --------------------------------
# Spark side: StructType.fromDDL(ddl(SCHEMA)); Arrow side: arrow_schema(SCHEMA).
Schema = tuple[tuple[str, str], ...]

INTERACTIONS_SCHEMA: Schema = ((USER_ID, "string"), (ITEM_ID, "string"), (TS, "timestamp"),
                               (VALUE, "double"))
REJECTS_SCHEMA: Schema = ((SOURCE_FILE, "string"), (LINE, "string"), (REASON, "string"))
USERS_SCHEMA: Schema = ((USER_ID, "string"), (USER_IDX, "int"))
ITEMS_SCHEMA: Schema = ((ITEM_ID, "string"), (ITEM_IDX, "int"))
PAIRS_SCHEMA: Schema = ((USER_IDX, "int"), (ITEM_IDX, "int"), (LABEL, "tinyint"))
# Side features: a column is null where the dataset does not have it. age_bucket is one of
# AGE_BUCKETS; genres holds MovieLens genres, or an artist's most used tags (HetRec 2K).
USER_FEATURES_SCHEMA: Schema = ((USER_ID, "string"), (AGE_BUCKET, "string"), (GENDER, "string"),
                                (OCCUPATION, "string"), (COUNTRY, "string"))
ITEM_FEATURES_SCHEMA: Schema = ((ITEM_ID, "string"), (TITLE, "string"),
                                (GENRES, "array<string>"))
# A source's own test split (raw ids): per user one positive (label 1) and its negatives.
PRESPLIT_TEST_SCHEMA: Schema = ((USER_ID, "string"), (ITEM_ID, "string"), (LABEL, "tinyint"))
# MovieLens 1M's age codes, as bands; raw ages elsewhere are bucketed into the same ones.
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
USER_FACTORS_SCHEMA: Schema = ((USER_IDX, "int"), (FACTORS, "array<float>"))
ITEM_FACTORS_SCHEMA: Schema = ((ITEM_IDX, "int"), (FACTORS, "array<float>"))
# Per user the training positives in time order (oldest first; same-second ties in the
# split's seeded order), the latest prepare.sequence_length of them.
SEQUENCES_SCHEMA: Schema = ((USER_IDX, "int"), (SEQUENCE, "array<int>"))
TOPK_SCHEMA: Schema = ((USER_IDX, "int"), (RANK, "int"), (ITEM_IDX, "int"), (SCORE, "float"),
                       (SOURCE, "string"))
# A topk/ row is the model's score, or a cold-start user's popularity fallback.
SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"

# Reasons a raw line lands in rejects/ (manifest counts are keyed by these).
REASON_FIELD_COUNT = "wrong_field_count"
REASON_NOT_NUMERIC = "not_numeric"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_BAD_TIMESTAMP = "bad_timestamp"
REASON_EMPTY_ID = "empty_id"
REASON_BAD_ENCODING = "bad_encoding"  # not UTF-8; the line is kept as latin-1 (byte for byte)
REASON_BAD_ID = "bad_id"  # not a positive integer id, in a format whose ids are
REASON_FUTURE_TS = "future_ts"  # later than the end of the run's logical date

# Deployment settings read from the environment by entry points (never by transforms).
ENV_LAKE_ROOT = "NCF_LAKE_ROOT"
ENV_RAW_DIR = "NCF_RAW_DIR"
ENV_CACHE_DIR = "NCF_CACHE_DIR"
ENV_DB_URL = "NCF_DB_URL"
DEFAULT_LAKE_ROOT = "data/lake"
DEFAULT_CACHE_DIR = "data/raw-cache"
DEFAULT_DB_URL = "sqlite:///data/recommendations.db"


def als_folder(splits: tuple[str, ...]) -> str:
    """The ALS factors fitted on the positives of `splits`, e.g. als/train_validation."""
    return f"{ALS}/{'_'.join(splits)}"


def ddl(schema: Schema) -> str:
    """`user_idx int, item_idx int, ...` for `StructType.fromDDL` / `spark.read.schema`."""
    return ", ".join(f"{name} {dtype}" for name, dtype in schema)


def columns(schema: Schema) -> list[str]:
    return [name for name, _ in schema]


_ARROW_TYPES = {
    "string": "string", "int": "int32", "tinyint": "int8", "bigint": "int64",
    "long": "int64", "double": "float64", "float": "float32", "timestamp": "timestamp[us]",
}


def arrow_schema(schema: Schema) -> Any:
    """The pyarrow schema of a lake dataset (pyarrow imported lazily)."""
    import pyarrow as pa

    def arrow_type(dtype: str) -> Any:
        if dtype.startswith("array<") and dtype.endswith(">"):
            return pa.list_(arrow_type(dtype[len("array<"):-1]))
        return pa.type_for_alias(_ARROW_TYPES[dtype])

    return pa.schema([(name, arrow_type(dtype)) for name, dtype in schema])


class LakeReadError(OSError):
    """A lake dataset folder is missing or unreadable; the message names the folder."""


def read_lake_table(path: Path, schema: Schema) -> Any:
    """A lake dataset folder as a pyarrow Table with `schema`'s columns (pyarrow lazily).

    Spark's `_SUCCESS`/`.crc` files and staged `.tmp-*` folders are skipped; a folder
    without data files gives an empty table of the schema.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    path = Path(path)
    if not path.is_dir():
        raise LakeReadError(f"{path} does not exist: the stage that writes {path.name}/ "
                            "has not run (or failed) for this date")
    try:
        dataset = pads.dataset(path, format="parquet")
        if not dataset.files:
            return arrow_schema(schema).empty_table()
        return dataset.to_table(columns=columns(schema))
    except (pa.ArrowException, OSError) as exc:
        raise LakeReadError(f"{path}: not a readable Parquet folder with columns "
                            f"{columns(schema)}: {exc}") from exc


def lake_root_from_env(default: str = DEFAULT_LAKE_ROOT) -> Path:
    return Path(os.environ.get(ENV_LAKE_ROOT, default)).resolve()


@dataclass(frozen=True)
class LakePaths:
    """Where one run (dataset, logical date) of the pipeline reads and writes."""

    root: Path
    dataset: str
    logical_date: str

    @property
    def base(self) -> Path:
        return Path(self.root) / self.dataset / self.logical_date

    def path(self, name: str) -> Path:
        return self.base / name

    @property
    def manifest(self) -> Path:
        return self.base / MANIFEST


def lake_dates(root: Path, dataset: str) -> list[str]:
    """The logical dates the lake holds a run's manifest for, oldest first."""
    folder = Path(root) / dataset
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        try:
            is_date = date.fromisoformat(child.name).isoformat() == child.name
        except ValueError:
            is_date = False
        if is_date and (child / MANIFEST).is_file():
            found.append(child.name)
    return sorted(found)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `final`; on success swap it into place.

    The yielded path does not exist yet (Spark's writer refuses an existing folder);
    Python writers create it. On an exception the temporary folder is removed and
    `final` is left as it was, so nothing half-written is ever published.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(final)
    token = uuid.uuid4().hex[:12]
    tmp = final.parent / f".tmp-{final.name}-{token}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"staged output {tmp} was never written for {final}")
        old = final.parent / f".old-{final.name}-{token}"
        failpoints.reach(failpoints.LAKE_RENAME.format(name=final.name))
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_stages(final: Path) -> None:
    """Clear what a killed writer of `final` left behind (SIGKILL runs no cleanup): its
    temporary folder goes; a previous version it had moved aside comes back when `final`
    is missing (killed between the two renames), else goes. One task writes a folder."""
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(final.parent.glob(f".old-{final.name}-*")):
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(paths: LakePaths) -> dict[str, Any]:
    if not paths.manifest.exists():
        return {}
    loaded: dict[str, Any] = json.loads(paths.manifest.read_text())
    return loaded


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on the directory itself: no lock file in the
    lake), held across a read-modify-write of its manifest. Tasks of one DAG run run in
    parallel under a real scheduler (train beside als): without it, two finishing
    together could each write the manifest they read, dropping the other's entry."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def update_manifest(paths: LakePaths, stage: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Record one stage's counts/params/checksums under `stage` (replacing a previous entry),
    atomically and under the run folder's lock: concurrent stages never lose an entry."""
    with _locked(paths.base):
        manifest = read_manifest(paths)
        manifest.setdefault("dataset", paths.dataset)
        manifest.setdefault("logical_date", paths.logical_date)
        manifest[stage] = {**entry, "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
        write_json_atomic(paths.manifest, manifest)
    return manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(path: Path) -> str:
    """One checksum over a dataset folder's data files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).rglob("*")):
        if file.is_file() and not file.name.startswith((".", "_")):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()
