"""The serving model: a registered champion applied to any day's lake indices.

A model is trained on the dense indices of its own day's `users/` and `items/`. A later
day's data may number users and items differently (new ids arrive, old ones leave), so a
champion from an earlier run is wrapped in a `RemappedScorer`: today's index -> raw id ->
the champion's index. Pairs with a user or item the champion never saw score -inf: in
evaluation they count against the model (ties go against the positive), in top-K they are
never chosen over a known item, and such users are cold-start users (popularity fallback).

A hybrid champion is the exception: it scores a user or item it never saw from today's
side features (its out-of-vocabulary id row plus the embedded features), so every user is
scored by the model and none falls back to popularity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pandas as pd
import torch
from torch import Tensor, nn

from jobs.lake import layout
from ncf_model import checkpoint
from ncf_model.data import lake_ids, load_side_features
from ncf_model.features import SideFeatures
from ncf_model.models import Hybrid


class RemappedScorer(nn.Module):
    """`model` scored on another index space; -inf for ids the model does not know.

    For a `Hybrid` model pass `features`: today's side features in today's index space,
    encoded with the model's vocabulary. Unknown ids then take the model's
    out-of-vocabulary row and are scored from their features.
    """

    user_map: Tensor
    item_map: Tensor
    user_codes: Tensor
    item_bags: Tensor

    def __init__(self, model: nn.Module, user_map: Tensor, item_map: Tensor,
                 features: SideFeatures | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("user_map", user_map.to(torch.int64))  # (n_users_today,)
        self.register_buffer("item_map", item_map.to(torch.int64))  # (n_items_today,)
        self.hybrid = isinstance(model, Hybrid)
        if isinstance(model, Hybrid):
            if features is None or (features.n_users, features.n_items) != (
                    len(user_map), len(item_map)):
                raise ValueError("a hybrid model needs today's side features, one row per "
                                 f"user ({len(user_map)}) and item ({len(item_map)})")
            self.register_buffer("user_codes", features.user_codes)  # (n_users_today, fields)
            # (n_items_today, max_tags): today's tag bags, padded with the model's pad code.
            self.register_buffer("item_bags", model.bags(features))

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        user = self.user_map[user_idx]  # (B,) the model's index, -1 when unknown
        item = self.item_map[item_idx]  # (B,)
        if self.hybrid:
            model = cast(Hybrid, self.model)  # checked in __init__
            user_row = torch.where(user >= 0, user, torch.full_like(user, model.n_users))
            item_row = torch.where(item >= 0, item, torch.full_like(item, model.n_items))
            return model.score(user_row, self.user_codes[user_idx], item_row,
                               self.item_bags[item_idx]).float()  # (B,)
        known = (user >= 0) & (item >= 0)
        logits = self.model(user.clamp(min=0), item.clamp(min=0)).float()  # (B,)
        return logits.masked_fill(~known, float("-inf"))


def index_map(ids: Sequence[str], model_ids: Sequence[str]) -> Tensor:
    """(len(ids),) int64: the position of each id in `model_ids`, -1 where it is absent."""
    positions = pd.Index(list(model_ids)).get_indexer(list(ids))
    return torch.from_numpy(positions.astype("int64"))


def load_for_lake(folder: Path, paths: layout.LakePaths,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, Tensor]:
    """(scorer over `paths`' indices, (n_users,) bool: users the model scores).

    When the model was trained on exactly these indices the model itself is returned. A
    hybrid model scores every user (unknown ones from their features): all True.
    """
    model, _meta = checkpoint.load_model(folder, device)
    model_users, model_items = checkpoint.load_vocabulary(folder)
    users, items = lake_ids(paths)
    if users == model_users and items == model_items:
        return model, torch.ones(len(users), dtype=torch.bool)
    user_map, item_map = index_map(users, model_users), index_map(items, model_items)
    if isinstance(model, Hybrid):
        features = load_side_features(paths, users, items, model.vocabulary)
        scorer = RemappedScorer(model, user_map, item_map, features).to(device).eval()
        return scorer, torch.ones(len(users), dtype=torch.bool)
    scorer = RemappedScorer(model, user_map, item_map).to(device).eval()
    return scorer, user_map >= 0


@dataclasses.dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def champion_gate(value: float, champion_value: float | None, *, metric: str, floor: float,
                  tolerance: float,
                  no_champion: str = "there is no champion yet") -> GateDecision:
    """Promote a new model when `metric` clears the absolute `floor` and is not worse than
    the champion's on the same split by more than `tolerance` (absolute).

    Without a champion score (`no_champion` says why), only the floor applies.
    """
    if value < floor:
        return GateDecision(False, f"{metric}={value:.4f} is below the floor {floor:.4f}")
    if champion_value is None:
        return GateDecision(True, f"{metric}={value:.4f} clears the floor {floor:.4f}; "
                                  f"{no_champion}")
    if value < champion_value - tolerance:
        return GateDecision(False, f"{metric}={value:.4f} is worse than the champion's "
                                   f"{champion_value:.4f} by more than the tolerance "
                                   f"{tolerance:.4f}")
    return GateDecision(True, f"{metric}={value:.4f} vs the champion's {champion_value:.4f} "
                              f"(tolerance {tolerance:.4f}, floor {floor:.4f})")
