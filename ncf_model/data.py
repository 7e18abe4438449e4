"""Training and evaluation pairs as tensors on the device (NVIDIA NCF style).

Reads a lake pairs folder (`train/`, `validation/`, `test/`: user_idx, item_idx, label,
see `jobs.lake.layout.PAIRS_SCHEMA`) once with pyarrow and keeps it on the device. Each
training epoch draws its negatives with one seeded `torch.randint`, redraws exactly the
draws that hit one of the user's positives, shuffles with `torch.randperm` and batches
with `.split()`: no Dataset, no DataLoader, no Python loop over users. For the BPR loss,
`pair_epoch` pairs every positive with its own freshly drawn negatives instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import Tensor

from jobs.lake.layout import ITEM_IDX, LABEL, PAIRS_SCHEMA, USER_IDX, columns
from ncf_model.config import NEGATIVE_MODES

Batch = tuple[Tensor, Tensor, Tensor]  # user (B,) int64, item (B,) int64, label (B,) float32
# user (B,) int64, positive item (B,) int64, negative item (B,) int64
PairBatch = tuple[Tensor, Tensor, Tensor]


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
        """(N,) bool: whether each (user, item) is one of the training positives."""
        keys = user * self.n_items + item
        if self._positive_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(self._positive_keys, keys).clamp_(max=len(self._positive_keys) - 1)
        return self._positive_keys[at] == keys

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
              mode: str) -> list[Batch]:
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
        user = torch.cat([self.user, neg_user])
        item = torch.cat([self.item, neg_item])
        label = torch.cat([torch.ones(self.n_positives, device=self.device),
                           torch.zeros(neg_user.shape[0], device=self.device)])
        order = torch.randperm(user.shape[0], generator=generator, device=self.device)
        return list(zip(user[order].split(batch_size), item[order].split(batch_size),
                        label[order].split(batch_size), strict=True))

    def pair_epoch(self, n_negatives: int, batch_size: int,
                   generator: torch.Generator) -> list[PairBatch]:
        """One shuffled pass of (user, positive, negative) triples for a pairwise loss: each
        positive `n_negatives` times, each time with its own negative, drawn as in
        `sample_negatives` (never one of the user's positives)."""
        self._check(n_negatives, batch_size)
        user, negative = self.sample_negatives(n_negatives, generator)  # (P * n,), (P * n,)
        positive = self.item.repeat_interleave(n_negatives)  # (P * n,), aligned with `user`
        order = torch.randperm(user.shape[0], generator=generator, device=self.device)
        return list(zip(user[order].split(batch_size), positive[order].split(batch_size),
                        negative[order].split(batch_size), strict=True))
