"""Prepare's fused path: leave-one-out split and every negative in one pass per user.

For the most common configuration (leave_one_out split, binarise rule `any`: the NCF
paper's protocol), the split and the three rounds of negative sampling of the general
path (jobs.split + jobs.negatives: a window sort, a repartition of the touched pairs,
per-user sets and a few sampling rounds, each a Spark job) are the same per-user
computation, and each user's positives fit in memory many times over. Here the indexed
positives are shuffled once, by user, into the partitions that jobs.spark.write_parquet
writes as files; each partition's users are then split and sampled in numpy
(`mapInArrow`), and one row per user carries its train/, validation/ and test/ items as
arrays, already in the files' order (positives first, then by item).

The rows are the general path's, byte for byte (tests/test_fused.py): the same ranking
(ts desc, nulls last, then the seeded tie-break hash desc, then item desc), the same
draws (jobs.xxhash is Spark's xxhash64 in numpy), the same rounds with the same
oversampling arithmetic, the same enumeration of the untouched items for users who have
few. The general path stays the reference for every other split, rule or source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs import layout, xxhash
from jobs.negatives import (
    MAX_ROUNDS,
    OVERSAMPLE,
    SLACK,
    STREAM_TEST,
    STREAM_TRAIN,
    STREAM_VALIDATION,
)
from jobs.spark import conform, partition_by_key, write_parquet
from jobs.split import MIN_POSITIVES_TO_EVALUATE, STREAM_TIE_BREAK

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

STREAMS = {layout.TRAIN: STREAM_TRAIN, layout.VALIDATION: STREAM_VALIDATION,
           layout.TEST: STREAM_TEST}
SPLITS = (layout.TRAIN, layout.VALIDATION, layout.TEST)
POSITIVES_SUFFIX = "_positives"  # per split: how many of the user's items are positives
# Bytes of the (users x items) table of one chunk of users: what a Python worker holds.
CHUNK_BYTES = 32 << 20
_NO_TS = np.iinfo(np.int64).min  # a null ts ranks after every other (latest first)


@dataclass(frozen=True)
class Params:
    """What the per-user computation needs (jobs.config.PrepareConfig's and the index's)."""

    n_items: int
    seed: int
    n_negatives: int
    n_eval_negatives: int


def arrays_schema() -> str:
    """The Spark schema (DDL) of the per-user rows: user_idx, then per split its items
    (positives first, each part by item) and how many of them are positives."""
    parts = [f"{layout.USER_IDX} int"]
    for split in SPLITS:
        parts += [f"{split} array<int>", f"{split}{POSITIVES_SUFFIX} int"]
    return ", ".join(parts)


def per_user_arrays(by_user: DataFrame, params: Params) -> DataFrame:
    """One row per user (`arrays_schema`), in each partition of `by_user` in user order.

    `by_user` holds indexed events (user_idx, item_idx, ts), every user's rows in one
    partition (jobs.spark.partition_by_key); a pair's repeated events are one positive
    with its latest ts (binarise rule `any`). The rows come out in the same partitions,
    so writing them as they are keeps write_parquet's file of each user.
    """
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _partition(batches, params)

    return by_user.select(layout.USER_IDX, layout.ITEM_IDX, layout.TS).mapInArrow(
        run, arrays_schema())


def _partition(batches: Iterator[pa.RecordBatch], params: Params) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    table = pa.Table.from_batches(list(batches))
    if table.num_rows == 0:
        return
    users = table.column(layout.USER_IDX).to_numpy().astype(np.int32)
    items = table.column(layout.ITEM_IDX).to_numpy().astype(np.int32)
    ts_column = table.column(layout.TS).cast(pa.int64())
    ts = ts_column.fill_null(0).to_numpy()
    has_ts = ts_column.is_valid().to_numpy(zero_copy_only=False)
    del table
    result = split_and_sample(users, items, ts, has_ts, params)
    yield pa.RecordBatch.from_pydict(result.arrow_columns(), schema=_arrow_schema())


def _arrow_schema() -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field(layout.USER_IDX, pa.int32())]
    for split in SPLITS:
        fields += [pa.field(split, pa.list_(pa.int32())),
                   pa.field(f"{split}{POSITIVES_SUFFIX}", pa.int32())]
    return pa.schema(fields)


# --- the numpy core --------------------------------------------------------------------

@dataclass
class Ragged:
    """Per-user lists as one array of values and offsets (Arrow's list layout)."""

    values: np.ndarray
    offsets: np.ndarray  # int32, n_users + 1

    @classmethod
    def from_rows(cls, rows: np.ndarray, values: np.ndarray, n_rows: int) -> Ragged:
        """Values already grouped by row (rows non-decreasing)."""
        counts = np.bincount(rows, minlength=n_rows)
        offsets = np.zeros(n_rows + 1, dtype=np.int32)
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

    def arrow_columns(self) -> dict[str, pa.Array]:
        import pyarrow as pa

        columns: dict[str, pa.Array] = {layout.USER_IDX: pa.array(self.users, pa.int32())}
        for split in SPLITS:
            ragged = self.items[split]
            columns[split] = pa.ListArray.from_arrays(
                pa.array(ragged.offsets, pa.int32()), pa.array(ragged.values, pa.int32()))
            columns[f"{split}{POSITIVES_SUFFIX}"] = pa.array(self.positives[split], pa.int32())
        return columns


def split_and_sample(users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                     has_ts: np.ndarray, params: Params) -> Result:
    """Leave-one-out split and negatives of the users of one partition.

    users, items (int32), ts (int64 microseconds; anything where has_ts is False): one
    row per event. A pair seen more than once is one positive with its latest ts (as
    binarise rule `any`). Each user's latest positive (ts desc, nulls last, then the
    seeded tie-break hash desc, then item desc: jobs.split._rank_latest_first) goes to
    test and the second latest to validation when the user has >= 3; the rest train.
    Then each split's negatives as jobs.prepare.build_pairs asks jobs.negatives for them.
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
    n_train = np.bincount(row[in_split[layout.TRAIN]], minlength=n_users)
    demand = {
        # distinct=False: exactly the demand for any user with an untouched item.
        layout.TRAIN: np.where(untouched > 0, n_train * params.n_negatives, 0),
        # distinct=True: at most the untouched items.
        layout.VALIDATION: np.where(evaluated, np.minimum(params.n_eval_negatives,
                                                          untouched), 0),
    }
    demand[layout.TEST] = demand[layout.VALIDATION]
    result = Result(user_ids.astype(np.int32), {}, {})
    for split in SPLITS:
        negative_rows, negatives = _sample(
            user_ids, touched, untouched, demand[split].astype(np.int64), params,
            stream=STREAMS[split], distinct=split != layout.TRAIN)
        mask = in_split[split]
        # File order: by user, positives first, then by item (repeats side by side).
        key = np.sort(np.r_[row[mask] * (2 * n_items) + items[mask],
                            negative_rows * (2 * n_items) + n_items + negatives])
        result.items[split] = Ragged.from_rows(key // (2 * n_items),
                                               (key % n_items).astype(np.int32), n_users)
        result.positives[split] = np.bincount(row[mask], minlength=n_users).astype(np.int32)
    return result


def _sorted_with_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, the stable order that sorts them) for non-negative int64 keys.

    numpy's sort of plain int64 is several times faster than its argsort: when the keys
    leave room, each carries its position in its low bits and one sort gives both.
    """
    position_bits = max(int(len(keys)).bit_length(), 1)
    if len(keys) == 0 or int(keys.max()) < (1 << (62 - position_bits)):
        packed = np.sort((keys << position_bits) | np.arange(len(keys), dtype=np.int64))
        return packed >> position_bits, packed & ((1 << position_bits) - 1)
    order = np.argsort(keys, kind="stable")
    return keys[order], order


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


def _sample(user_ids: np.ndarray, touched: Ragged, untouched: np.ndarray,
            target: np.ndarray, params: Params, *, stream: int,
            distinct: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) of every negative of the users with target > 0, in no given order.

    jobs.negatives.sample_negatives per user: users whose untouched items are at most
    twice the target are enumerated; the others draw in up to MAX_ROUNDS rounds, and
    whoever is still short is enumerated for the rest. Users are taken in chunks, each
    with a (users x items) table of what is touched (1) or chosen (2).
    """
    n_items = params.n_items
    chunk = max(1, CHUNK_BYTES // max(n_items, 1))
    out_rows: list[np.ndarray] = []
    out_items: list[np.ndarray] = []
    for first in range(0, len(user_ids), chunk):
        last = min(first + chunk, len(user_ids))
        table = np.zeros((last - first, n_items), dtype=np.uint8)
        lo, hi = touched.offsets[first], touched.offsets[last]
        local = np.repeat(np.arange(last - first), np.diff(touched.offsets[first:last + 1]))
        table[local, touched.values[lo:hi]] = 1
        rows, chosen = _sample_chunk(user_ids[first:last], table, untouched[first:last],
                                     target[first:last], seed=params.seed, stream=stream,
                                     distinct=distinct)
        out_rows.append(rows + first)
        out_items.append(chosen)
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(out_rows), np.concatenate(out_items)


def _sample_chunk(user_ids: np.ndarray, table: np.ndarray, untouched: np.ndarray,
                  target: np.ndarray, *, seed: int, stream: int,
                  distinct: bool) -> tuple[np.ndarray, np.ndarray]:
    """The negatives (local row, item) of one chunk; marks the chosen items in `table`."""
    n_items = table.shape[1]
    wanted = target > 0
    few = wanted & (untouched <= target * 2)
    pending = np.flatnonzero(wanted & ~few)
    missing = target[pending].copy()
    next_draw = np.zeros(len(pending), dtype=np.int64)
    prefix = xxhash.chain(np.int64(seed), np.int32(stream), user_ids[pending].astype(np.int32))
    rows_out: list[np.ndarray] = []
    items_out: list[np.ndarray] = []
    for round_number in range(1, MAX_ROUNDS + 1):
        if len(pending) == 0:
            break
        scale = n_items * OVERSAMPLE * 2 ** (round_number - 1)  # as jobs.negatives does
        n_draws = (np.ceil(missing.astype(np.float64) * scale
                           / untouched[pending].astype(np.float64)).astype(np.int64) + SLACK)
        owner = np.repeat(np.arange(len(pending)), n_draws)
        draw = np.repeat(next_draw - np.r_[0, np.cumsum(n_draws)[:-1]], n_draws) + np.arange(
            owner.size)
        drawn = np.mod(xxhash.resume(prefix[owner], draw), n_items).astype(np.int32)
        row = pending[owner]
        fresh = np.flatnonzero(table[row, drawn] == 0)
        # The first draw of each (user, item) among the fresh ones, in draw order.
        pair, position = _sorted_with_order(row[fresh].astype(np.int64) * n_items
                                            + drawn[fresh])
        fresh = fresh[np.sort(position[np.r_[True, pair[1:] != pair[:-1]]])]
        owner_fresh = owner[fresh]
        starts = np.searchsorted(owner_fresh, np.arange(len(pending)))
        rank = np.arange(len(fresh)) - starts[owner_fresh]
        take = fresh[rank < missing[owner_fresh]]
        table[row[take], drawn[take]] = 2
        rows_out.append(row[take])
        items_out.append(drawn[take])
        missing -= np.bincount(owner[take], minlength=len(pending))
        next_draw += n_draws
        still = missing > 0
        pending, missing, next_draw, prefix = (pending[still], missing[still],
                                               next_draw[still], prefix[still])
    short = np.r_[np.flatnonzero(few), pending].astype(np.int64)
    short_by = np.r_[target[few], missing].astype(np.int64)
    for local, n_short in zip(short.tolist(), short_by.tolist(), strict=True):
        enumerated = _enumerate(int(user_ids[local]), table[local], n_short,
                                int(untouched[local]), seed=seed, stream=stream,
                                distinct=distinct)
        rows_out.append(np.full(len(enumerated), local, dtype=np.int64))
        items_out.append(enumerated)
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(rows_out).astype(np.int64), np.concatenate(items_out)


def _enumerate(user: int, marks: np.ndarray, n_short: int, n_untouched: int, *, seed: int,
               stream: int, distinct: bool) -> np.ndarray:
    """jobs.negatives._take_untouched for one user: its untouched items (distinct: not
    chosen either) in a hashed order; distinct takes the first n_short, otherwise item r
    of the U untouched comes n_short // U times, once more if r < n_short mod U."""
    available = np.flatnonzero(marks == 0 if distinct else marks != 1).astype(np.int32)
    hashed = xxhash.chain(np.int64(seed), np.int32(-stream), np.int32(user), available)
    ordered = available[np.lexsort((available, hashed))]
    if distinct:
        return ordered[:n_short]
    times = n_short // n_untouched + (np.arange(len(ordered)) < n_short % n_untouched)
    return np.repeat(ordered, times)



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


def tally(arrays: DataFrame, n_eval_negatives: int) -> Tally:
    """The Tally of what `write_splits` wrote, from its per-user rows (one small pass)."""
    from pyspark.sql import functions as F

    def positives(split: str) -> Column:
        return F.col(f"{split}{POSITIVES_SUFFIX}")

    def short(split: str) -> Column:
        return (F.size(split) > 0) & (F.size(split) - positives(split) < n_eval_negatives)

    tested = F.when(positives(layout.TEST) > 0, positives(layout.TEST))
    sums = [F.coalesce(F.sum(agg), F.lit(0)) for split in SPLITS
            for agg in (F.size(split), positives(split))]
    row = arrays.agg(*sums, F.coalesce(F.sum((short(layout.VALIDATION) | short(layout.TEST))
                                             .cast("long")), F.lit(0)),
                     F.count(tested), F.min(tested), F.avg(tested), F.max(tested)).first()
    assert row is not None  # an aggregate without grouping has its one row
    counts = [int(value) for value in row[:2 * len(SPLITS) + 1]]
    return Tally(rows=dict(zip(SPLITS, counts[0::2], strict=False)),
                 positives=dict(zip(SPLITS, counts[1::2], strict=False)),
                 users_short=counts[-1], test_users=Tally.per_user(*row[2 * len(SPLITS) + 1:]))


def write_splits(indexed: DataFrame, staged: dict[str, Path], params: Params, *,
                 files: int, cache: list[DataFrame]) -> DataFrame:
    """train/, validation/, test/ of the indexed events (user_idx, item_idx, ts) into
    their staged folders, as jobs.spark.write_parquet(files=files, key=user_idx,
    sort_by=jobs.prepare.pairs_order()) writes the general path's pairs.

    One shuffle (by user, into the files' partitions); the per-user rows are persisted
    (appended to `cache`), each split is exploded from them in file order, and they are
    returned (for `tally`).
    """
    from pyspark.sql import functions as F

    arrays = per_user_arrays(partition_by_key(indexed, files, layout.USER_IDX), params)
    cache.append(arrays.persist())
    for split in SPLITS:
        pairs = arrays.select(
            layout.USER_IDX, F.posexplode(split).alias("_position", layout.ITEM_IDX),
            F.col(f"{split}{POSITIVES_SUFFIX}").alias("_positives"),
        ).select(layout.USER_IDX, layout.ITEM_IDX,
                 # Never null (as the general path's literal labels): the same schema.
                 F.coalesce(F.col("_position") < F.col("_positives"), F.lit(False))
                 .alias(layout.LABEL))
        write_parquet(conform(pairs, layout.PAIRS_SCHEMA), staged[split], files=files,
                      key=layout.USER_IDX, partitioned=True)
    return arrays
