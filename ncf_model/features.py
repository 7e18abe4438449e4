"""Side features of users and items as integer codes, for the hybrid model.

Reads the lake's `user_features/` (age_bucket, gender, occupation, country per user_id)
and `item_features/` (genres, or an artist's tags, per item_id), joins them to user_idx /
item_idx through `users/` and `items/`, and encodes every value with a
`FeatureVocabulary`:

- user codes: one code space over all fields, 0 = missing (its embedding stays zero), then
  each field's values in turn; a user is a (fields,) row of codes;
- item tags: code = position in `tags`; an item is a bag of codes, stored flat
  (`item_tags`) with the start of each item's bag (`item_offsets`); `pad_bags` turns the
  bags into one padded (n_items, longest bag) matrix, the form the hybrid model gathers
  a batch's rows from.

Training builds the vocabulary from its own day's data; serving encodes a later day's
features with the model's vocabulary (a value it does not know counts as missing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jobs.lake import layout

log = logging.getLogger(__name__)

USER_FIELDS = (layout.AGE_BUCKET, layout.GENDER, layout.OCCUPATION, layout.COUNTRY)


class SideFeatureError(ValueError):
    """The lake has no side features for a model that needs them; the message names where."""


@dataclass(frozen=True)
class FeatureVocabulary:
    """The known values of each user field (in USER_FIELDS order) and the known item tags."""

    user_values: tuple[tuple[str, ...], ...]
    tags: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.user_values) != len(USER_FIELDS):
            raise ValueError(f"user_values: one tuple per field {USER_FIELDS}, got "
                             f"{len(self.user_values)}")

    @property
    def n_user_codes(self) -> int:
        return 1 + sum(len(values) for values in self.user_values)

    @property
    def n_tags(self) -> int:
        return len(self.tags)

    @property
    def empty(self) -> bool:
        return self.n_user_codes == 1 and self.n_tags == 0

    def to_json(self) -> dict[str, Any]:
        return {"user_fields": dict(zip(USER_FIELDS, map(list, self.user_values), strict=True)),
                "tags": list(self.tags)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureVocabulary:
        fields = raw["user_fields"]
        return cls(tuple(tuple(fields.get(name, ())) for name in USER_FIELDS),
                   tuple(raw["tags"]))


@dataclass(frozen=True)
class SideFeatures:
    """Encoded features of `n_users` users and `n_items` items (index order)."""

    vocabulary: FeatureVocabulary
    user_codes: Tensor  # (n_users, len(USER_FIELDS)) int64, 0 = missing
    item_tags: Tensor  # (T,) int64 tag codes, item after item
    item_offsets: Tensor  # (n_items,) int64: where each item's bag starts in item_tags

    @property
    def n_users(self) -> int:
        return int(self.user_codes.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_offsets.shape[0])

    @classmethod
    def placeholder(cls, vocabulary: FeatureVocabulary, *, n_users: int, n_items: int,
                    bag_width: int) -> SideFeatures:
        """Zeros of the right shapes (`bag_width` tags per item, so that `pad_bags` gives
        (n_items, bag_width)): a checkpoint's state dict then fills them in."""
        return cls(vocabulary, torch.zeros(n_users, len(USER_FIELDS), dtype=torch.int64),
                   torch.zeros(n_items * bag_width, dtype=torch.int64),
                   torch.arange(n_items, dtype=torch.int64) * bag_width)


def pad_bags(item_tags: Tensor, item_offsets: Tensor, pad: int) -> Tensor:
    """(n_items, width) int64: row i holds item i's tag codes, then `pad` up to the width.

    `item_tags` (T,) and `item_offsets` (n_items,) are the flat bags of `SideFeatures`.
    The width is the longest bag (ingest keeps an item's top few tags, jobs/readers.py
    TOP_TAGS), at least 1: EmbeddingBag rejects a 2-D input of width 0, and a row of `pad`
    alone is an empty bag (a zero vector under `padding_idx=pad`).
    """
    n_items, n_entries = int(item_offsets.shape[0]), int(item_tags.shape[0])
    offsets, device = item_offsets.to(torch.int64), item_offsets.device
    ends = torch.cat([offsets[1:], offsets.new_tensor([n_entries])])
    lengths = ends - offsets  # (n_items,)
    if (n_items and (int(offsets[0]) != 0 or int(lengths.min()) < 0)) or (
            not n_items and n_entries):
        raise ValueError(f"item_offsets {offsets[:8].tolist()}... must start at 0 and never "
                         f"decrease, within the {n_entries} tag entries")
    width = max(int(lengths.max()) if n_items else 0, 1)
    bags = torch.full((n_items, width), pad, dtype=torch.int64, device=device)
    row = torch.repeat_interleave(torch.arange(n_items, device=device), lengths)  # (T,)
    column = torch.arange(n_entries, device=device) - offsets[row]  # (T,) place in its bag
    bags[row, column] = item_tags.to(torch.int64)
    return bags


def build_vocabulary(user_ids: Sequence[str], item_ids: Sequence[str], user_features: Any,
                     item_features: Any) -> FeatureVocabulary:
    """Every value the `user_ids` / `item_ids` hold in the feature tables (pyarrow Tables in
    layout.USER_FEATURES_SCHEMA / ITEM_FEATURES_SCHEMA), sorted; ages in AGE_BUCKETS order."""
    users = _user_frame(user_ids, user_features)
    values = []
    for name in USER_FIELDS:
        present = users[name].dropna()
        if name == layout.AGE_BUCKET:
            values.append(tuple(b for b in layout.AGE_BUCKETS if b in set(present)))
        else:
            values.append(tuple(sorted(set(present))))
    tags, item_of = _item_tags(item_ids, item_features)
    listed = {t for t in tags[item_of >= 0] if t is not None}  # tags of listed items only
    return FeatureVocabulary(tuple(values), tuple(sorted(listed)))


def encode(vocabulary: FeatureVocabulary, user_ids: Sequence[str], item_ids: Sequence[str],
           user_features: Any, item_features: Any) -> SideFeatures:
    """The features of `user_ids` and `item_ids` (index order) as `vocabulary` codes."""
    import numpy as np
    import pandas as pd

    users = _user_frame(user_ids, user_features)
    codes, offset = [], 1
    for name, values in zip(USER_FIELDS, vocabulary.user_values, strict=True):
        field = pd.Categorical(users[name], categories=list(values)).codes.astype("int64")
        codes.append(np.where(field >= 0, field + offset, 0))
        offset += len(values)
    user_codes = np.stack(codes, axis=1) if len(user_ids) else np.zeros((0, len(USER_FIELDS)))

    tags, item_of = _item_tags(item_ids, item_features)
    tag_codes = pd.Categorical(tags, categories=list(vocabulary.tags)).codes.astype("int64")
    keep = (tag_codes >= 0) & (item_of >= 0)
    order = np.argsort(item_of[keep], kind="stable")  # item after item, tags in their order
    counts = np.bincount(item_of[keep], minlength=len(item_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(item_ids) else counts
    return SideFeatures(vocabulary, torch.from_numpy(user_codes.astype("int64")),
                        torch.from_numpy(tag_codes[keep][order]),
                        torch.from_numpy(offsets.astype("int64")))


def _user_frame(user_ids: Sequence[str], user_features: Any) -> Any:
    """A pandas frame of USER_FIELDS, one row per user id (in order), NaN where missing."""
    frame = user_features.select([layout.USER_ID, *USER_FIELDS]).to_pandas()
    frame = frame.drop_duplicates(layout.USER_ID).set_index(layout.USER_ID)
    return frame.reindex(list(user_ids))


def _item_tags(item_ids: Sequence[str], item_features: Any) -> tuple[Any, Any]:
    """(tags, item_idx): every tag of every item row, flat, and the index of its item
    among `item_ids` (-1 for a row of an item not listed)."""
    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc

    if item_features.num_rows == 0:
        return np.array([], dtype=object), np.array([], dtype="int64")
    genres = item_features.column(layout.GENRES).combine_chunks()
    tags = pc.list_flatten(genres).to_numpy(zero_copy_only=False)
    parent = pc.list_parent_indices(genres).to_numpy()
    ids = item_features.column(layout.ITEM_ID).to_pylist()
    first = ~pd.Index(ids).duplicated()  # one row per item id, as ingest writes it
    row_item = np.where(first, pd.Index(list(item_ids)).get_indexer(ids), -1)
    return tags, row_item[parent].astype("int64")


