"""Baseline scorers beside NCF: item popularity and a dot product of fixed factors (ALS).

No I/O here: `ncf_model.data.load_als_scorer` reads the factors jobs/als.py wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ncf_model.data import Pairs


class PopularityScorer(nn.Module):
    """score(u, i) = training positives of item i, for every user."""

    item_count: Tensor

    def __init__(self, item_count: Tensor) -> None:
        super().__init__()
        self.register_buffer("item_count", item_count.float())  # (n_items,)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.item_count[item_idx]  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        return self.item_count.expand(len(user_idx), -1)  # (C, n_items)


def popularity_scorer(train: Pairs, n_items: int) -> PopularityScorer:
    positive = train.label == 1
    return PopularityScorer(torch.bincount(train.item[positive].long(), minlength=n_items))


class FactorScorer(nn.Module):
    """score(u, i) = <user_factors[u], item_factors[i]> (ALS)."""

    user_factors: Tensor
    item_factors: Tensor

    def __init__(self, user_factors: Tensor, item_factors: Tensor) -> None:
        super().__init__()
        if user_factors.shape[1] != item_factors.shape[1]:
            raise ValueError(f"user factors {tuple(user_factors.shape)} and item factors "
                             f"{tuple(item_factors.shape)} must have the same rank")
        self.register_buffer("user_factors", user_factors.float())  # (n_users, r)
        self.register_buffer("item_factors", item_factors.float())  # (n_items, r)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return (self.user_factors[user_idx] * self.item_factors[item_idx]).sum(-1)  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        return self.user_factors[user_idx] @ self.item_factors.T  # (C, n_items)
