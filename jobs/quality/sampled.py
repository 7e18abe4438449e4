"""Sampled validation: the same suites as full mode, on tables too big for one pandas frame.

For each check of a stage (jobs.quality.validate builds the full-mode ones), in the same
order and with the same suite:

* a lake table (interactions/, users/, items/, train/, validation/, test/, topk/) is
  streamed once (`aggregates.scan`): row counts, nulls, ranges, sets, blank ids and
  uniqueness are answered exactly; the suite also runs on a seeded sample of
  `validate.sample_rows` rows, which answers the column and dtype expectations;
* the per-user frames (held-out labels per user, sequences per user, top-k rows per user)
  hold one row per user: they are built exactly, batch by batch (topk/'s user, rank and
  score columns are read whole: users x k rows), and validated whole;
* the pair-level frames (negatives that are positives, held-out positives in train,
  sequence items, recommended items already seen) are streamed batch by batch against the
  sorted keys of the splits' positives: the flags are counted exactly, and the suite also
  runs on a seeded sample of the flagged rows.

Memory: the sorted positive keys (8 bytes per positive pair), one batch, the samples and
the per-user frames; never a whole split in pandas.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.core import ExpectationSuite

from jobs.lake import layout
from jobs.lake.config import ValidateConfig
from jobs.lake.layout import (
    EVAL_SPLITS,
    ITEM_IDX,
    LABEL,
    PAIRS_SCHEMA,
    RANK,
    SCORE,
    SEQUENCE,
    SEQUENCES_SCHEMA,
    SPLITS,
    TOPK_SCHEMA,
    TRAIN,
    USER_IDX,
    Schema,
)
from jobs.quality import aggregates
from jobs.quality.expectations import (
    HELD_OUT,
    IN_TRAIN_POSITIVES,
    N_NEGATIVES,
    N_POSITIVES,
    NEGATIVE_IS_POSITIVE,
    RECOMMENDED_SEEN,
    SEQUENCE_LENGTH,
    SPLIT,
    per_user_topk,
)
from jobs.quality.results import Sampling
from jobs.quality.runner import Check, widen_integers


def _scanned(suite: ExpectationSuite, batches: Iterator[pa.RecordBatch], schema: pa.Schema,
             dataset: str, cfg: ValidateConfig, *, index_columns: Sequence[str] = (),
             widen: bool = True) -> Check:
    found = aggregates.scan(suite.expectations, batches, schema, sample_rows=cfg.sample_rows,
                            seed=cfg.seed, index_columns=index_columns)
    frame = found.sample.to_pandas()
    return Check(suite, widen_integers(frame) if widen else frame, dataset,
                 tuple(index_columns), Sampling(found.rows, len(frame), cfg.seed), found.exact)


def table_check(suite: ExpectationSuite, path: Path, schema: Schema, dataset: str,
                cfg: ValidateConfig, *, index_columns: Sequence[str] = (),
                widen: bool = True) -> Check:
    """`suite` on a lake folder: exact answers streamed, the rest on a seeded sample."""
    return _scanned(suite, aggregates.lake_batches(path, schema), layout.arrow_schema(schema),
                    dataset, cfg, index_columns=index_columns, widen=widen)


# --- pairs and their keys -------------------------------------------------------------


def _valid_pairs(batch: pa.RecordBatch,
                 names: Sequence[str] = (USER_IDX, ITEM_IDX, LABEL)) -> list[np.ndarray]:
    """The rows with every one of `names` as int64 arrays (nulls are the suites' job)."""
    keep = pc.and_(pc.is_valid(batch.column(names[0])), pc.is_valid(batch.column(names[1])))
    for name in names[2:]:
        keep = pc.and_(keep, pc.is_valid(batch.column(name)))
    kept = batch.filter(keep)
    return [kept.column(name).to_numpy(zero_copy_only=False).astype(np.int64)
            for name in names]


def _keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(user_idx, item_idx) packed into one int64, exact for any pair of int32 values."""
    keys: np.ndarray = (users << 32) | (items & 0xFFFFFFFF)
    return keys


def _isin(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    found: np.ndarray = sorted_keys[at] == keys
    return found


def positive_keys(paths: layout.LakePaths, names: Sequence[str]) -> np.ndarray:
    """Sorted unique pair keys of the label-1 rows of the splits `names`, streamed."""
    parts = [np.empty(0, dtype=np.int64)]
    for name in names:
        for batch in aggregates.lake_batches(paths.path(name), PAIRS_SCHEMA):
            users, items, labels = _valid_pairs(batch)
            parts.append(_keys(users[labels == 1], items[labels == 1]))
    keys = np.sort(np.concatenate(parts))
    # np.unique of numpy 2.4 hashes first: ~10x slower than sort + drop repeats here
    distinct: np.ndarray = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] \
        if len(keys) else keys
    return distinct


def _flag_batch(columns: Mapping[str, np.ndarray | str], flags: Mapping[str, np.ndarray],
                rows: int) -> pa.RecordBatch:
    arrays = {name: pa.array(np.full(rows, value) if isinstance(value, str) else value)
              for name, value in columns.items()}
    return pa.RecordBatch.from_pydict({**arrays, **{k: pa.array(v) for k, v in flags.items()}})


def _flag_schema(names: Sequence[str], flags: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, pa.string() if name == SPLIT else pa.int64()) for name in names]
                     + [(flag, pa.bool_()) for flag in flags])


class PositiveKeys:
    """The splits' positives as sorted keys: train/'s, and validation/'s with test/'s."""

    def __init__(self, paths: layout.LakePaths) -> None:
        self.train = positive_keys(paths, [TRAIN])
        self.held_out = positive_keys(paths, EVAL_SPLITS)

    def any_split(self, keys: np.ndarray) -> np.ndarray:
        found: np.ndarray = _isin(keys, self.train) | _isin(keys, self.held_out)
        return found


def per_user_labels(path: Path) -> pd.DataFrame:
    """jobs.quality.expectations.per_user_labels, streamed: one row per user of a split."""
    users: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    positives: list[np.ndarray] = [np.empty(0)]
    negatives: list[np.ndarray] = [np.empty(0)]
    for batch in aggregates.lake_batches(path, PAIRS_SCHEMA):
        user, _item, label = _valid_pairs(batch)
        found, inverse = np.unique(user, return_inverse=True)
        users.append(found)
        positives.append(np.bincount(inverse, weights=label == 1, minlength=len(found)))
        negatives.append(np.bincount(inverse, weights=label != 1, minlength=len(found)))
    found, inverse = np.unique(np.concatenate(users), return_inverse=True)
    return pd.DataFrame({
        USER_IDX: found.astype(np.int64),
        N_POSITIVES: np.bincount(inverse, weights=np.concatenate(positives),
                                 minlength=len(found)).astype(np.int64),
        N_NEGATIVES: np.bincount(inverse, weights=np.concatenate(negatives),
                                 minlength=len(found)).astype(np.int64)})


def negative_rows(paths: layout.LakePaths, keys: PositiveKeys) -> Iterator[pa.RecordBatch]:
    """expectations.negative_collisions, batch by batch: every label-0 row of every split,
    flagged when it is a positive it must not be (a training negative: of train only)."""
    for name in SPLITS:
        for batch in aggregates.lake_batches(paths.path(name), PAIRS_SCHEMA):
            users, items, labels = _valid_pairs(batch)
            users, items = users[labels == 0], items[labels == 0]
            pair = _keys(users, items)
            flag = _isin(pair, keys.train) if name == TRAIN else keys.any_split(pair)
            yield _flag_batch({SPLIT: name, USER_IDX: users, ITEM_IDX: items},
                              {NEGATIVE_IS_POSITIVE: flag}, len(users))


def held_out_rows(paths: layout.LakePaths, keys: PositiveKeys) -> Iterator[pa.RecordBatch]:
    """expectations.eval_positives_in_train, batch by batch."""
    for name in EVAL_SPLITS:
        for batch in aggregates.lake_batches(paths.path(name), PAIRS_SCHEMA):
            users, items, labels = _valid_pairs(batch)
            users, items = users[labels == 1], items[labels == 1]
            yield _flag_batch({SPLIT: name, USER_IDX: users, ITEM_IDX: items},
                              {IN_TRAIN_POSITIVES: _isin(_keys(users, items), keys.train)},
                              len(users))


def pair_check(suite: ExpectationSuite, rows: Iterator[pa.RecordBatch], flags: Sequence[str],
               dataset: str, cfg: ValidateConfig, *,
               index_columns: Sequence[str] = (SPLIT, USER_IDX, ITEM_IDX)) -> Check:
    """A flag suite on derived pair rows: flags counted exactly, the suite on a sample."""
    return _scanned(suite, rows, _flag_schema(index_columns, flags), dataset, cfg,
                    index_columns=index_columns)


# --- sequences ------------------------------------------------------------------------


def per_user_sequences(path: Path) -> pd.DataFrame:
    """expectations.per_user_sequences, streamed: user_idx, sequence_length (0 for null)."""
    parts = [pa.table({USER_IDX: pa.array([], pa.int32()),
                       SEQUENCE_LENGTH: pa.array([], pa.int64())})]
    for batch in aggregates.lake_batches(path, SEQUENCES_SCHEMA):
        length = pc.fill_null(pc.list_value_length(batch.column(SEQUENCE)), 0)
        parts.append(pa.table({USER_IDX: batch.column(USER_IDX),
                               SEQUENCE_LENGTH: pc.cast(length, pa.int64())}))
    return widen_integers(pa.concat_tables(parts, promote_options="permissive").to_pandas())


def sequence_item_rows(path: Path, keys: PositiveKeys) -> Iterator[pa.RecordBatch]:
    """expectations.sequence_items, batch by batch: each item of each sequence, flagged
    held out (a validation/test positive) and in train (a train positive)."""
    for batch in aggregates.lake_batches(path, SEQUENCES_SCHEMA):
        sequences = batch.column(SEQUENCE)
        items = pc.list_flatten(sequences)
        users = pc.take(batch.column(USER_IDX), pc.list_parent_indices(sequences))
        keep = pc.and_(pc.is_valid(items), pc.is_valid(users))
        user = users.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)
        item = items.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)
        pair = _keys(user, item)
        yield _flag_batch({USER_IDX: user, ITEM_IDX: item},
                          {HELD_OUT: _isin(pair, keys.held_out),
                           IN_TRAIN_POSITIVES: _isin(pair, keys.train)}, len(user))


# --- recommendations ------------------------------------------------------------------


def per_user_topk_frame(path: Path, users: np.ndarray) -> pd.DataFrame:
    """expectations.per_user_topk on topk/'s user, rank and score columns (users x k rows:
    the size of the output, never of a split)."""
    schema = tuple((name, dtype) for name, dtype in TOPK_SCHEMA if name in (USER_IDX, RANK, SCORE))
    tables = [pa.Table.from_batches([batch]) for batch in aggregates.lake_batches(path, schema)]
    table = pa.concat_tables(tables or [layout.arrow_schema(schema).empty_table()],
                             promote_options="permissive")
    return per_user_topk(widen_integers(table.to_pandas()), users)


def seen_rows(path: Path, keys: PositiveKeys) -> Iterator[pa.RecordBatch]:
    """expectations.seen_recommendations, batch by batch."""
    for batch in aggregates.lake_batches(path, TOPK_SCHEMA):
        users, ranks, items = _valid_pairs(batch, (USER_IDX, RANK, ITEM_IDX))
        yield _flag_batch({USER_IDX: users, RANK: ranks, ITEM_IDX: items},
                          {RECOMMENDED_SEEN: keys.any_split(_keys(users, items))}, len(users))
