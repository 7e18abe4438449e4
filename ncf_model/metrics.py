"""Leave-one-out ranking metrics: the rank of each user's positive, then HR@K, NDCG@K, AUC.

Each evaluated user has exactly one positive (label 1) and some sampled negatives
(label 0), in rows of any order. All functions are pure and vectorised (scatter /
bincount over users, no Python loop), and work on any device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class _Candidates(NamedTuple):
    n_users: int
    negative_user: Tensor  # (N_neg,) dense 0..n_users-1 position of each negative's user
    negative_score: Tensor  # (N_neg,)
    positive_score: Tensor  # (n_users,)


def _candidates(user: Tensor, label: Tensor, score: Tensor) -> _Candidates:
    if not user.shape == label.shape == score.shape or user.dim() != 1:
        raise ValueError(f"user, label and score must be 1-d and of equal length, got "
                         f"{tuple(user.shape)}, {tuple(label.shape)}, {tuple(score.shape)}")
    if user.numel() == 0:
        raise ValueError("no rows to evaluate")
    if not bool(((label == 0) | (label == 1)).all()):
        raise ValueError("label must hold only 0 (sampled negative) and 1 (held-out positive)")
    if bool(score.isnan().any()):
        raise ValueError(f"{int(score.isnan().sum())} score(s) are NaN: the model diverged")
    users, position = torch.unique(user, return_inverse=True)  # position: (N,) in 0..U-1
    is_positive = label == 1
    n_positives = torch.bincount(position[is_positive], minlength=len(users))  # (U,)
    wrong = (n_positives != 1).nonzero().flatten()
    if wrong.numel():
        examples = {int(users[w]): int(n_positives[w]) for w in wrong[:5]}
        raise ValueError(f"{wrong.numel()} user(s) do not have exactly one positive "
                         f"(user_idx: count {examples}); leave-one-out needs one per user")
    positive_score = torch.empty(len(users), dtype=score.dtype, device=score.device)
    positive_score[position[is_positive]] = score[is_positive]
    return _Candidates(len(users), position[~is_positive], score[~is_positive], positive_score)


def positive_ranks(user: Tensor, label: Tensor, score: Tensor) -> Tensor:
    """(U,) int64: per evaluated user (in `torch.unique(user)` order), the 0-based rank of
    the positive = the number of that user's negatives scoring >= the positive.

    Ties count against the positive (the MLPerf rule): otherwise a model that scores every
    item the same, or a sigmoid saturated at 1.0, would rank every positive first.
    """
    c = _candidates(user, label, score)
    beaten_by = c.negative_score >= c.positive_score[c.negative_user]  # (N_neg,)
    return torch.bincount(c.negative_user[beaten_by], minlength=c.n_users)


def _check_ranks(ranks: Tensor, k: int) -> None:
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    if ranks.numel() == 0:
        raise ValueError("no users to evaluate (ranks is empty)")


def hit_rate(ranks: Tensor, k: int) -> float:
    """HR@k: the share of users whose positive ranks in the top k."""
    _check_ranks(ranks, k)
    return float((ranks < k).double().mean())


def ndcg(ranks: Tensor, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) for a 0-based rank < k, else 0."""
    _check_ranks(ranks, k)
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return float(torch.where(ranks < k, gain, torch.zeros_like(gain)).mean())


def auc(user: Tensor, label: Tensor, score: Tensor) -> float:
    """Per user the share of negatives scoring strictly below the positive, averaged."""
    c = _candidates(user, label, score)
    n_negatives = torch.bincount(c.negative_user, minlength=c.n_users)  # (U,)
    if bool((n_negatives == 0).any()):
        raise ValueError(f"{int((n_negatives == 0).sum())} user(s) have no negatives: "
                         "AUC is undefined for them")
    below = c.negative_score < c.positive_score[c.negative_user]  # (N_neg,)
    n_below = torch.bincount(c.negative_user[below], minlength=c.n_users)  # (U,)
    return float((n_below.double() / n_negatives.double()).mean())
