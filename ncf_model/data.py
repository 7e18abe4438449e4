"""Training and evaluation pairs as tensors on the device (NVIDIA NCF style).

Reads a lake pairs folder (`train/`, `validation/`, `test/`: user_idx, item_idx, label,
see `jobs.lake.layout.PAIRS_SCHEMA`) once with pyarrow and keeps it on the device. Each
training epoch draws its negatives with one seeded `torch.randint`, redraws exactly the
draws that hit one of the user's positives, shuffles with `torch.randperm` and gathers
each batch from int32 columns in that order when the loop reaches it (`Batches`): no
Dataset, no DataLoader, no Python loop over users, and no shuffled copy of the epoch.
For the BPR loss, `pair_epoch` pairs every positive with its own freshly drawn negatives
instead.

It is also the torch side's one reader of the lake: each split's pairs and positives,
the id vocabularies, side features, the ALS factors and the sequences. Models
(`ncf_model.models`) hold no I/O.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from jobs.lake import layout
from jobs.lake.layout import ITEM_IDX, LABEL, PAIRS_SCHEMA, USER_IDX, columns
from ncf_model.config import NEGATIVE_MODES
from ncf_model.features import (
    FeatureVocabulary,
    SideFeatureError,
    SideFeatures,
    build_vocabulary,
    encode,
)
from ncf_model.models.baselines import FactorScorer

log = logging.getLogger(__name__)

# user (B,) int64, item (B,) int64, label (B,) float32 (`epoch`); for a pairwise loss
# user, positive item, negative item, each (B,) int64 (`pair_epoch`)
Batch = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Pairs:
    """(user, item, label) rows: int64, int64, float32 tensors of equal length."""

    user: Tensor
    item: Tensor
    label: Tensor

    def __post_init__(self) -> None:
        if not self.user.shape == self.item.shape == self.label.shape or self.user.dim() != 1:
            raise ValueError(f"Pairs: user, item and label must be 1-d and of equal length, got "
                             f"{tuple(self.user.shape)}, {tuple(self.item.shape)}, "
                             f"{tuple(self.label.shape)}")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def device(self) -> torch.device:
        return self.user.device

    def to(self, device: torch.device | str) -> Pairs:
        return Pairs(self.user.to(device), self.item.to(device), self.label.to(device))


def load_pairs(path: Path, device: torch.device | str) -> Pairs:
    """Read a lake pairs folder (or one Parquet file) onto `device`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Parquet folder (run the prepare stage first)")
    wanted = columns(PAIRS_SCHEMA)
    table = pq.read_table(path)  # a folder: every part file; `_SUCCESS` and `.crc` are skipped
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {table.column_names}, "
                         f"expected {wanted} (jobs.lake.layout.PAIRS_SCHEMA)")
    tensors = {}
    for name, dtype in ((USER_IDX, torch.int64), (ITEM_IDX, torch.int64), (LABEL, torch.float32)):
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} null(s); "
                             "pairs must be complete")
        tensors[name] = torch.tensor(column.to_numpy(), dtype=dtype)  # copies: Arrow is read-only
    label = tensors[LABEL]
    if not bool(((label == 0) | (label == 1)).all()):
        raise ValueError(f"{path}: column {LABEL!r} must hold only 0 and 1")
    if len(label) and min(int(tensors[USER_IDX].min()), int(tensors[ITEM_IDX].min())) < 0:
        raise ValueError(f"{path}: negative {USER_IDX}/{ITEM_IDX}; indices are dense from 0")
    return Pairs(tensors[USER_IDX], tensors[ITEM_IDX], label).to(device)


class TrainingData:
    """The training positives (and the lake's negatives), on the device of `train`."""

    def __init__(self, train: Pairs, *, n_users: int, n_items: int) -> None:
        if len(train) and (int(train.user.min()) < 0 or int(train.user.max()) >= n_users
                           or int(train.item.min()) < 0 or int(train.item.max()) >= n_items):
            raise ValueError(f"train pairs hold indices outside {n_users} users x {n_items} "
                             "items; pass the n_users/n_items of the users/ and items/ tables")
        positive = train.label == 1
        self.n_users, self.n_items = n_users, n_items
        self.user, self.item = train.user[positive], train.item[positive]
        self.lake_user, self.lake_item = train.user[~positive], train.item[~positive]
        # Sorted, unique user * n_items + item of every positive: membership is a searchsorted.
        self._positive_keys = torch.unique(self.user * n_items + self.item)

    @property
    def device(self) -> torch.device:
        return self.user.device

    @property
    def n_positives(self) -> int:
        return int(self.user.shape[0])

    def is_positive(self, user: Tensor, item: Tensor) -> Tensor:
        """(N,) bool: whether each (user, item) is one of the training positives. Looked up
        `_LOOKUP_CHUNK` pairs at a time: its int64 keys and positions stay bounded."""
        found = torch.zeros(user.shape, dtype=torch.bool, device=user.device)
        if self._positive_keys.numel() == 0:
            return found
        last = len(self._positive_keys) - 1
        for start in range(0, user.shape[0], _LOOKUP_CHUNK):
            stop = start + _LOOKUP_CHUNK
            keys = user[start:stop].long() * self.n_items + item[start:stop].long()
            at = torch.searchsorted(self._positive_keys, keys).clamp_(max=last)
            found[start:stop] = self._positive_keys[at] == keys
        return found

    def sample_negatives(self, n_negatives: int,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`n_negatives` items per positive, uniform over the items the user has no positive on."""
        per_user = torch.bincount(self._positive_keys // self.n_items, minlength=self.n_users)
        full = (per_user >= self.n_items).nonzero().flatten()
        if full.numel():
            raise ValueError(f"user_idx {full[:5].tolist()} (of {full.numel()}) have a positive "
                             f"on every one of the {self.n_items} items: no negative can be "
                             "drawn; drop such users in prepare or use negatives: lake")
        user = self.user.repeat_interleave(n_negatives)  # (P * n_negatives,)
        item = torch.randint(self.n_items, user.shape, generator=generator, device=self.device)
        redraw = self.is_positive(user, item).nonzero().flatten()
        # Only the collisions are redrawn, and each round keeps those that collide again;
        # with density p a user needs about log(n) / log(1/p) rounds.
        while redraw.numel():
            item[redraw] = torch.randint(self.n_items, redraw.shape, generator=generator,
                                         device=self.device)
            redraw = redraw[self.is_positive(user[redraw], item[redraw])]
        return user, item

    @staticmethod
    def _check(n_negatives: int, batch_size: int) -> None:
        if batch_size < 1 or n_negatives < 1:
            raise ValueError(f"batch_size={batch_size}, n_negatives={n_negatives}: must be >= 1")

    def epoch(self, n_negatives: int, batch_size: int, generator: torch.Generator,
              mode: str) -> Batches:
        """One shuffled pass over the positives and their negatives, in batches.

        mode "resample": `n_negatives` fresh negatives per positive, drawn with `generator`;
        mode "lake": the negatives stored in the train pairs, as they are.
        The same generator state gives the same batches.
        """
        if mode not in NEGATIVE_MODES:
            raise ValueError(f"negatives mode {mode!r} is not one of {NEGATIVE_MODES}")
        self._check(n_negatives, batch_size)
        if mode == "resample":
            neg_user, neg_item = self.sample_negatives(n_negatives, generator)
        else:
            if self.lake_user.numel() == 0:
                raise ValueError("negatives: lake, but the train pairs hold no label-0 rows; "
                                 "write negatives in prepare or use negatives: resample")
            neg_user, neg_item = self.lake_user, self.lake_item
        user = _compact(self.user, neg_user)
        item = _compact(self.item, neg_item)
        del neg_user, neg_item
        order = torch.randperm(user.shape[0], generator=generator, device=self.device)
        return Batches((user, item), order, batch_size, n_positives=self.n_positives)

    def pair_epoch(self, n_negatives: int, batch_size: int,
                   generator: torch.Generator) -> Batches:
        """One shuffled pass of (user, positive, negative) triples for a pairwise loss: each
        positive `n_negatives` times, each time with its own negative, drawn as in
        `sample_negatives` (never one of the user's positives)."""
        self._check(n_negatives, batch_size)
        user, negative = self.sample_negatives(n_negatives, generator)  # (P * n,), (P * n,)
        user, negative = _compact(user), _compact(negative)
        positive = _compact(self.item).repeat_interleave(n_negatives)  # aligned with `user`
        order = torch.randperm(user.shape[0], generator=generator, device=self.device)
        return Batches((user, positive, negative), order, batch_size)


# Pairs looked up at once in TrainingData.is_positive (int64 keys: 8 bytes each).
_LOOKUP_CHUNK = 1 << 23


def _compact(*parts: Tensor) -> Tensor:
    """The indices of `parts`, concatenated, as int32: an epoch's columns at half the bytes
    (user and item indices stay far below 2**31)."""
    return torch.cat([part.to(torch.int32) for part in parts])


class Batches(Sequence[Batch]):
    """One epoch's batches, gathered from its columns one batch at a time in the shuffled
    `order`: the epoch holds its int32 columns and the order, never a shuffled copy of
    them. Each batch is int64 indices (and, given `n_positives`, a float32 label: 1 for the
    rows before `n_positives`, the positives, else 0)."""

    def __init__(self, columns: tuple[Tensor, ...], order: Tensor, batch_size: int, *,
                 n_positives: int | None = None) -> None:
        self._columns, self._order = columns, order
        self._batch_size, self._n_positives = batch_size, n_positives

    def __len__(self) -> int:
        return math.ceil(self._order.shape[0] / self._batch_size)

    def __getitem__(self, index: int) -> Batch:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = (index % len(self)) * self._batch_size
        rows = self._order[start:start + self._batch_size]
        batch = tuple(column[rows].long() for column in self._columns)
        if self._n_positives is None:
            return batch  # type: ignore[return-value]
        return (*batch, (rows < self._n_positives).float())  # type: ignore[return-value]


@dataclass(frozen=True)
class FullRanking:
    """What full-ranking evaluation needs beside the model and the pairs.

    `seen_user`/`seen_item`: the pairs never ranked (for test: the train and validation
    positives; for validation: the train positives). `chunk_users` users are scored at
    once against all `n_items` items. Past `max_users` evaluated users (None: no limit), a
    sample of that many drawn with `seed` is ranked (ncf_model.evaluate).
    """

    n_items: int
    seen_user: Tensor
    seen_item: Tensor
    chunk_users: int = 256
    max_users: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.chunk_users < 1:
            raise ValueError(f"n_items={self.n_items}, chunk_users={self.chunk_users}: "
                             "both must be >= 1")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users={self.max_users}: must be >= 1 (None: every user)")
        if self.seen_user.shape != self.seen_item.shape or self.seen_user.dim() != 1:
            raise ValueError(f"seen_user {tuple(self.seen_user.shape)} and seen_item "
                             f"{tuple(self.seen_item.shape)} must be 1-d of equal length")


class BaselineError(RuntimeError):
    """The ALS factors of a run are missing or were fitted on another train/."""


def load_positives(paths: layout.LakePaths) -> dict[str, Pairs]:
    """Each split's positive pairs (label 1), on the CPU, each split read once."""
    positives = {}
    for name in (layout.TRAIN, layout.VALIDATION, layout.TEST):
        pairs = load_pairs(paths.path(name), "cpu")
        keep = pairs.label == 1
        positives[name] = Pairs(pairs.user[keep], pairs.item[keep], pairs.label[keep])
    return positives


def lake_ids(paths: layout.LakePaths) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of a lake run's users/ and items/, each in index order."""
    users = layout.read_lake_table(paths.path(layout.USERS), layout.USERS_SCHEMA)
    items = layout.read_lake_table(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA)
    return (users.sort_by(layout.USER_IDX).column(layout.USER_ID).to_pylist(),
            items.sort_by(layout.ITEM_IDX).column(layout.ITEM_ID).to_pylist())


def _read_or_empty(paths: layout.LakePaths, name: str, schema: layout.Schema) -> Any:
    folder = paths.path(name)
    if not folder.is_dir():
        return layout.arrow_schema(schema).empty_table()
    return layout.read_lake_table(folder, schema)


def load_side_features(paths: layout.LakePaths, user_ids: Sequence[str],
                       item_ids: Sequence[str],
                       vocabulary: FeatureVocabulary | None = None) -> SideFeatures:
    """The side features of a lake run for `user_ids` / `item_ids` (the users/ and items/
    ids in index order). Without `vocabulary` (training) it is built from this data, and a
    run with no side feature at all is an error; with one (serving) missing folders only
    leave every code missing.
    """
    user_features = _read_or_empty(paths, layout.USER_FEATURES, layout.USER_FEATURES_SCHEMA)
    item_features = _read_or_empty(paths, layout.ITEM_FEATURES, layout.ITEM_FEATURES_SCHEMA)
    if vocabulary is None:
        vocabulary = build_vocabulary(user_ids, item_ids, user_features, item_features)
        if vocabulary.empty:
            raise SideFeatureError(
                f"model kind 'hybrid' needs side features, but {paths.path(layout.USER_FEATURES)}"
                f" and {paths.path(layout.ITEM_FEATURES)} hold none for this run's users and "
                f"items: dataset {paths.dataset!r} has no users/items files in its source (or "
                "ingest did not read them); use model.kind neumf for it")
    elif user_features.num_rows == 0 and item_features.num_rows == 0:
        log.warning("%s has no side features: users and items the model does not know are "
                    "scored from its out-of-vocabulary rows alone", paths.base)
    features = encode(vocabulary, user_ids, item_ids, user_features, item_features)
    log.info("side features: %d user codes over %d users, %d tags over %d items",
             vocabulary.n_user_codes - 1, features.n_users, vocabulary.n_tags,
             features.n_items)
    return features


def _factor_table(folder: Any, schema: layout.Schema, key: str, n_rows: int) -> Tensor:
    """(n_rows, rank) float32; rows the folder does not hold stay 0."""
    table = layout.read_lake_table(folder, schema)
    index = torch.tensor(table.column(key).to_numpy(), dtype=torch.int64)
    vectors = table.column(layout.FACTORS).to_pylist()
    if not vectors:
        raise BaselineError(f"{folder} holds no factors: re-run jobs/als.py")
    if int(index.min()) < 0 or int(index.max()) >= n_rows:
        raise BaselineError(f"{folder}: {key} outside 0..{n_rows - 1}: the factors were fitted "
                            "on another prepare run; re-run jobs/als.py for this date")
    out = torch.zeros(n_rows, len(vectors[0]))
    out[index] = torch.tensor(vectors, dtype=torch.float32)
    return out


def load_als_scorer(paths: layout.LakePaths, n_users: int, n_items: int,
                    splits: tuple[str, ...] = (layout.TRAIN,)) -> FactorScorer:
    """The factors jobs/als.py fitted on the positives of `splits`, as a dot-product scorer."""
    folder = paths.path(layout.als_folder(splits))
    if not folder.is_dir():
        raise BaselineError(f"{folder} does not exist: run jobs/als.py (spark-submit) for "
                            f"{paths.logical_date} before the candidates stage (with "
                            "candidates.refit it also fits train_validation and "
                            "train_validation_test)")
    fitted_on = (layout.read_manifest(paths).get("als") or {}).get("input_sha256") or {}
    stale = [name for name in splits if name in fitted_on
             and fitted_on[name] != layout.sha256_dir(paths.path(name))]
    if stale:
        raise BaselineError(f"{folder} was fitted on another {', '.join(stale)}/ than the one "
                            "in the lake (prepare ran again since): re-run jobs/als.py for "
                            f"{paths.logical_date}")
    return FactorScorer(
        _factor_table(folder / layout.USER_FACTORS, layout.USER_FACTORS_SCHEMA,
                      layout.USER_IDX, n_users),
        _factor_table(folder / layout.ITEM_FACTORS, layout.ITEM_FACTORS_SCHEMA,
                      layout.ITEM_IDX, n_items))


def load_sequences(paths: layout.LakePaths) -> tuple[Tensor, Tensor, Tensor] | None:
    """sequences/ of a lake run as flat (user_idx, item_idx, position) int64 tensors on the
    CPU, position 0 the oldest of each user's training positives; None when prepare wrote
    none (sequence_length 0, or a split other than leave-one-out)."""
    folder = paths.path(layout.SEQUENCES)
    if not folder.is_dir():
        return None
    table = layout.read_lake_table(folder, layout.SEQUENCES_SCHEMA)
    sequences = table.column(layout.SEQUENCE).combine_chunks()
    lengths = torch.from_numpy(
        pc.list_value_length(sequences).to_numpy(zero_copy_only=False).astype("int64"))
    users = torch.from_numpy(table.column(layout.USER_IDX).to_numpy().astype("int64"))
    item = torch.from_numpy(pc.list_flatten(sequences).to_numpy().astype("int64"))
    first = (torch.cumsum(lengths, 0) - lengths).repeat_interleave(lengths)  # each row's start
    position = torch.arange(len(item), dtype=torch.int64) - first
    return users.repeat_interleave(lengths), item, position
