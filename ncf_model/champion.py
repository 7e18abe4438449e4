"""The serving model: a registered champion applied to any day's lake indices.

A model is trained on the dense indices of its own day's `users/` and `items/`. A later
day's data may number users and items differently (new ids arrive, old ones leave), so a
champion from an earlier run is wrapped in a `RemappedScorer`: today's index -> raw id ->
the champion's index. Pairs with a user or item the champion never saw score -inf: in
evaluation they count against the model (ties go against the positive), in top-K they are
never chosen over a known item, and such users are cold-start users (popularity fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from jobs import layout
from ncf_model import checkpoint


class RemappedScorer(nn.Module):
    """`model` scored on another index space; -inf for ids the model does not know."""

    user_map: Tensor
    item_map: Tensor

    def __init__(self, model: nn.Module, user_map: Tensor, item_map: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("user_map", user_map.to(torch.int64))  # (n_users_today,)
        self.register_buffer("item_map", item_map.to(torch.int64))  # (n_items_today,)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        user = self.user_map[user_idx]  # (B,) the model's index, -1 when unknown
        item = self.item_map[item_idx]  # (B,)
        known = (user >= 0) & (item >= 0)
        logits = self.model(user.clamp(min=0), item.clamp(min=0)).float()  # (B,)
        return logits.masked_fill(~known, float("-inf"))


def index_map(ids: Sequence[str], model_ids: Sequence[str]) -> Tensor:
    """(len(ids),) int64: the position of each id in `model_ids`, -1 where it is absent."""
    positions = pd.Index(list(model_ids)).get_indexer(list(ids))
    return torch.from_numpy(positions.astype("int64"))


def lake_ids(paths: layout.LakePaths) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of a lake run's users/ and items/, each in index order."""
    users = layout.read_lake_table(paths.path(layout.USERS), layout.USERS_SCHEMA)
    items = layout.read_lake_table(paths.path(layout.ITEMS), layout.ITEMS_SCHEMA)
    return (users.sort_by(layout.USER_IDX).column(layout.USER_ID).to_pylist(),
            items.sort_by(layout.ITEM_IDX).column(layout.ITEM_ID).to_pylist())


def load_for_lake(folder: Path, paths: layout.LakePaths,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, Tensor]:
    """(scorer over `paths`' indices, (n_users,) bool: users the model knows).

    When the model was trained on exactly these indices the model itself is returned.
    """
    model, _meta = checkpoint.load_model(folder, device)
    model_users, model_items = checkpoint.load_vocabulary(folder)
    users, items = lake_ids(paths)
    if users == model_users and items == model_items:
        return model, torch.ones(len(users), dtype=torch.bool)
    user_map, item_map = index_map(users, model_users), index_map(items, model_items)
    scorer = RemappedScorer(model, user_map, item_map).to(device).eval()
    return scorer, user_map >= 0
