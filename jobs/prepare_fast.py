"""Prepare's fast path: leave-one-out split and every negative in one pass per user.

For the most common configuration (leave_one_out split, binarise rule `any`: the NCF
paper's protocol), the split and the three rounds of negative sampling of the general
path (jobs.split + jobs.negatives: a window sort, a repartition of the touched pairs,
per-user sets and a few sampling rounds, each a Spark job) are the same per-user
computation, and each user's positives fit in memory many times over. Here the indexed
events are shuffled once, by user, into the partitions that jobs.spark.write_parquet
writes as files; each partition's users are then binarised, split and sampled in numpy
(`mapInArrow`), and the task writes its rows of train/, validation/ and test/, in the
files' order (by user, positives first, then by item), with the pyarrow writer that
write_parquet re-encodes every file with (jobs.spark.write_batches). Spark's own
Parquet writer is skipped on purpose: write_parquet would turn the same rows into the
same bytes after Spark had written them once, and for 125M rows at ML-20M scale that
first write, the explode feeding it and the re-encoding cost more than everything else
here. Each task writes a hidden file named by its partition (a retried task writes the
same bytes again); the driver names the files as write_parquet does once all tasks are
done, inside the staged folders that jobs.prepare publishes. Like write_parquet, this
needs the lake on a file system the executors and the driver share.

The rows are the general path's, byte for byte (tests/test_prepare_fast.py): the same ranking
(ts desc, nulls last, then the seeded tie-break hash desc, then item desc), the same
draws (jobs.xxhash is Spark's xxhash64 in numpy), the same rounds with the same
oversampling arithmetic, the same enumeration of the untouched items for users who have
few. The general path stays the reference for every other split, rule or source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs import negatives, xxhash
from jobs.lake import layout
from jobs.lake.protocol import STREAM_TEST, STREAM_TIE_BREAK, STREAM_TRAIN, STREAM_VALIDATION
from jobs.negatives_fast import sample as _sample
from jobs.negatives_fast import sorted_with_order as _sorted_with_order
from jobs.spark import (
    PART_NAME,
    SUCCESS_MARKER,
    arrow_schema,
    partition_by_key,
    write_batches,
    write_table,
)
from jobs.split import MIN_POSITIVES_TO_EVALUATE

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

STREAMS = {layout.TRAIN: STREAM_TRAIN, layout.VALIDATION: STREAM_VALIDATION,
           layout.TEST: STREAM_TEST}
SPLITS = layout.SPLITS
# Bytes of the (users x items) table of one chunk of users: what a Python worker holds.
CHUNK_BYTES = 32 << 20
_NO_TS = np.iinfo(np.int64).min  # a null ts ranks after every other (latest first)


@dataclass(frozen=True)
class Params:
    """What the per-user computation needs (jobs.lake.config.PrepareConfig's and the index's).

    The tuning constants are read when the driver builds it and travel with it to the
    Python workers (a worker imports the modules afresh: the driver's module globals,
    as a test may set them, never reach it).
    """

    n_items: int
    seed: int
    n_eval_negatives: int
    max_rounds: int = dataclasses.field(default_factory=lambda: negatives.MAX_ROUNDS)
    chunk_bytes: int = dataclasses.field(default_factory=lambda: CHUNK_BYTES)


# --- the numpy core --------------------------------------------------------------------

@dataclass
class Ragged:
    """Per-user lists as one array of values and the offsets of each user's first."""

    values: np.ndarray
    offsets: np.ndarray  # int64, n_users + 1

    @classmethod
    def from_rows(cls, rows: np.ndarray, values: np.ndarray, n_rows: int) -> Ragged:
        """Values already grouped by row (rows non-decreasing)."""
        counts = np.bincount(rows, minlength=n_rows)
        offsets = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(values, offsets)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class Result:
    """Per user (ascending user_idx) and split: the items in file order, how many positive."""

    users: np.ndarray
    items: dict[str, Ragged]
    positives: dict[str, np.ndarray]

    def pairs(self, split: str, schema: pa.Schema) -> pa.Table:
        """The split's rows (user_idx, item_idx, label) in file order."""
        import pyarrow as pa

        ragged = self.items[split]
        lengths = ragged.lengths()
        position = np.arange(len(ragged.values)) - np.repeat(ragged.offsets[:-1], lengths)
        label = position < np.repeat(self.positives[split], lengths)
        return pa.Table.from_arrays([pa.array(np.repeat(self.users, lengths)),
                                     pa.array(ragged.values), pa.array(label.astype(np.int8))],
                                    schema=schema)

    def tally(self, n_eval_negatives: int) -> dict[str, int]:
        """This partition's share of the Tally (`TALLY_SCHEMA`'s fields)."""
        counts: dict[str, int] = {}
        short = np.zeros(len(self.users), bool)
        for split in SPLITS:
            lengths, positives = self.items[split].lengths(), self.positives[split]
            counts[f"{split}_rows"] = int(lengths.sum())
            counts[f"{split}_positives"] = int(positives.sum())
            if split != layout.TRAIN:
                short |= (lengths > 0) & (lengths - positives < n_eval_negatives)
        tested = self.positives[layout.TEST][self.positives[layout.TEST] > 0]
        counts.update(users_short=int(short.sum()), test_users=len(tested),
                      test_positives_sum=int(tested.sum()),
                      test_positives_min=int(tested.min()) if len(tested) else 0,
                      test_positives_max=int(tested.max()) if len(tested) else 0)
        return counts


def split_and_sample(users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                     has_ts: np.ndarray, params: Params) -> Result:
    """Leave-one-out split and negatives of the users of one partition.

    users, items (int32), ts (int64 microseconds; anything where has_ts is False): one
    row per event. A pair seen more than once is one positive with its latest ts (as
    binarise rule `any`). Each user's latest positive (ts desc, nulls last, then the
    seeded tie-break hash desc, then item desc: jobs.split._rank_latest_first) goes to
    test and the second latest to validation when the user has >= 3; the rest train.
    Then each split's negatives as jobs.negatives.build_pairs asks sample_negatives for them.
    """
    user_ids, local = np.unique(users, return_inverse=True)
    n_users, n_items = len(user_ids), params.n_items
    pair, order = _sorted_with_order(local.astype(np.int64) * n_items + items)
    first = np.r_[True, pair[1:] != pair[:-1]]
    starts = np.flatnonzero(first)
    latest = np.maximum.reduceat(np.where(has_ts, ts, _NO_TS)[order], starts)
    pair = pair[starts]
    row, items = pair // n_items, (pair % n_items).astype(np.int32)  # by row, then item
    counts = np.bincount(row, minlength=n_users)
    user_starts = np.r_[0, np.cumsum(counts)[:-1]]

    tie = xxhash.chain(np.int64(params.seed), np.int32(STREAM_TIE_BREAK),
                       user_ids[row].astype(np.int32), items)
    rank_keys = (latest, tie, items.astype(np.int64))
    evaluated = counts >= MIN_POSITIVES_TO_EVALUATE
    test = _top(rank_keys, row, user_starts, np.zeros(len(row), bool)) & evaluated[row]
    validation = _top(rank_keys, row, user_starts, test) & evaluated[row]
    in_split = {layout.TRAIN: ~(test | validation), layout.VALIDATION: validation,
                layout.TEST: test}

    touched = Ragged(items, np.r_[0, np.cumsum(counts)].astype(np.int64))
    untouched = n_items - counts.astype(np.int64)
    # Distinct evaluation negatives: at most the untouched items. The fast path writes no
    # training negatives (the trainer draws its own; prepare sends n_negatives > 0 to the
    # general path, whose rule excludes only what the model may know).
    demand = np.where(evaluated, np.minimum(params.n_eval_negatives, untouched), 0)
    result = Result(user_ids.astype(np.int32), {}, {})
    none = np.empty(0, dtype=np.int64)
    for split in SPLITS:
        negative_rows, negative_items = (none, none) if split == layout.TRAIN else _sample(
            user_ids, touched, untouched, demand.astype(np.int64), params,
            stream=STREAMS[split], distinct=True)
        mask = in_split[split]
        # File order: by user, positives first, then by item (repeats side by side).
        key = np.sort(np.r_[row[mask] * (2 * n_items) + items[mask],
                            negative_rows * (2 * n_items) + n_items + negative_items])
        result.items[split] = Ragged.from_rows(key // (2 * n_items),
                                               (key % n_items).astype(np.int32), n_users)
        result.positives[split] = np.bincount(row[mask], minlength=n_users).astype(np.int32)
    return result


def _top(keys: tuple[np.ndarray, ...], row: np.ndarray, starts: np.ndarray,
         excluded: np.ndarray) -> np.ndarray:
    """The row of each user that is largest by `keys` (compared in turn) among those not
    `excluded`: one per user that has any, as a mask. Rows are grouped by user."""
    candidate = ~excluded
    lowest = np.iinfo(np.int64).min
    for key in keys:
        level = np.where(candidate, key, lowest)
        candidate &= level == np.maximum.reduceat(level, starts)[row]
    return candidate


# --- the Spark side --------------------------------------------------------------------

@dataclass
class Tally:
    """What the manifest records of the written splits: rows and positives per split,
    users short of evaluation negatives (validation or test), the test users and their
    positives per user (min, mean, max)."""

    rows: dict[str, int]
    positives: dict[str, int]
    users_short: int = 0
    test_users: dict[str, Any] = dataclasses.field(default_factory=dict)

    @staticmethod
    def per_user(n_users: int, low: int | None = None, mean: float | None = None,
                 high: int | None = None) -> dict[str, Any]:
        stats = ({"min": int(low or 0), "mean": round(float(mean or 0.0), 4),
                  "max": int(high or 0)} if n_users else {"min": 0, "mean": 0.0, "max": 0})
        return {"test_users": int(n_users), "test_positives_per_user": stats}

    @classmethod
    def of_partitions(cls, rows: list[dict[str, int]]) -> Tally:
        def total(field: str) -> int:
            return sum(row[field] for row in rows)

        tested = [row for row in rows if row["test_users"]]
        n_users = total("test_users")
        return cls(rows={split: total(f"{split}_rows") for split in SPLITS},
                   positives={split: total(f"{split}_positives") for split in SPLITS},
                   users_short=total("users_short"),
                   test_users=cls.per_user(
                       n_users, min((row["test_positives_min"] for row in tested), default=0),
                       total("test_positives_sum") / n_users if n_users else 0.0,
                       max((row["test_positives_max"] for row in tested), default=0)))


# One row per partition: its Result.tally().
TALLY_SCHEMA = ", ".join(
    ["partition long"] + [f"{split}_{what} long" for split in SPLITS
                         for what in ("rows", "positives")]
    + [f"{name} long" for name in ("users_short", "test_users", "test_positives_sum",
                                   "test_positives_min", "test_positives_max")])


def write_splits(indexed: DataFrame, staged: dict[str, Path], params: Params, *,
                 files: int) -> Tally:
    """Write train/, validation/, test/ of the indexed events (user_idx, item_idx, ts)
    into their staged folders, as jobs.spark.write_parquet(files=files, key=user_idx,
    sort_by=jobs.prepare.pairs_order()) writes the general path's pairs; their Tally.

    `indexed` may repeat a pair: binarise rule `any` happens per user here.
    """
    from pyspark.sql.types import ByteType, IntegerType, StructField, StructType

    # The general path's schema: its labels are literals, never null.
    schema = arrow_schema(StructType([StructField(layout.USER_IDX, IntegerType()),
                                      StructField(layout.ITEM_IDX, IntegerType()),
                                      StructField(layout.LABEL, ByteType(), False)]))
    folders = {split: str(staged[split]) for split in SPLITS}
    for folder in folders.values():
        Path(folder).mkdir(parents=True)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _write_partition(batches, params, folders, schema)

    rows = [row.asDict() for row in partition_by_key(indexed, files, layout.USER_IDX)
            .select(layout.USER_IDX, layout.ITEM_IDX, layout.TS)
            .mapInArrow(run, TALLY_SCHEMA).collect()]
    for split in SPLITS:
        _name_parts(Path(folders[split]), {row["partition"]: row[f"{split}_rows"]
                                           for row in rows}, schema)
    return Tally.of_partitions(rows)


def _write_partition(batches: Iterator[pa.RecordBatch], params: Params,
                     folders: dict[str, str], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One task: its users' rows of each split into `.part-<partition>` of each folder,
    then one row of TALLY_SCHEMA. A file is written beside and renamed into place, so a
    failed attempt leaves nothing half-written under the name the driver looks for."""
    import pyarrow as pa
    from pyspark import TaskContext

    context = TaskContext.get()
    assert context is not None  # mapInArrow runs its function inside a task
    read = list(batches)
    if not sum(batch.num_rows for batch in read):
        return
    table = pa.Table.from_batches(read)
    del read
    ts = table.column(layout.TS).cast(pa.int64())
    result = split_and_sample(
        table.column(layout.USER_IDX).to_numpy().astype(np.int32),
        table.column(layout.ITEM_IDX).to_numpy().astype(np.int32),
        ts.fill_null(0).to_numpy(), ts.is_valid().to_numpy(zero_copy_only=False), params)
    del table, ts
    for split in SPLITS:
        pairs = result.pairs(split, schema)
        if pairs.num_rows:
            final = Path(folders[split]) / f".part-{context.partitionId():05d}"
            attempt = final.with_name(f"{final.name}.{context.attemptNumber()}")
            write_batches(pairs.to_batches(), str(attempt), schema)
            os.replace(attempt, final)
    tally = {"partition": context.partitionId(), **result.tally(params.n_eval_negatives)}
    yield pa.RecordBatch.from_pylist([tally])


def _name_parts(folder: Path, rows: dict[int, int], schema: pa.Schema) -> None:
    """Name the tasks' files as write_parquet names Spark's: part-<n> in partition order,
    counting partition 0 always (Spark writes its file even when it is empty) and each
    other partition with rows; `_SUCCESS`; one empty file when there are no rows."""

    numbered = sorted({0, *(partition for partition, n in rows.items() if n)})
    for number, partition in enumerate(numbered):
        if rows.get(partition):
            os.replace(folder / f".part-{partition:05d}", folder / PART_NAME.format(number))
    for leftover in folder.glob(".part-*"):  # a failed or speculative attempt's file
        leftover.unlink()
    if not any(rows.values()):
        write_table(schema.empty_table(), str(folder / PART_NAME.format(0)))
    (folder / SUCCESS_MARKER).touch()
    log.info("wrote %s: %d rows in %d files", folder, sum(rows.values()),
             max(sum(1 for n in rows.values() if n), 1))
