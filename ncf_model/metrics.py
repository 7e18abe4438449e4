"""Ranking metrics as pure, vectorised functions (no Python loop over users), on any device.

Sampled metrics (the NCF protocol): each evaluated user has one or more positives (label 1)
and some sampled negatives (label 0), rows in any order. Each positive is ranked against
that user's negatives only (never against the user's other positives), so
  rank    = the number of the user's negatives scoring >= the positive (0-based),
  HR@K    = the share of positives with rank < K,
  NDCG@K  = the mean over positives of 1 / log2(rank + 2) when rank < K, else 0,
  AUC     = the mean over positives of the share of the user's negatives scoring < it.
All three are averaged over positives; with one positive per user (leave-one-out) that is
the usual per-user average. Ties count against the positive (the MLPerf rule): otherwise
a model that scores every item the same, or a sigmoid saturated at 1.0, would rank every
positive first.

Full-ranking metrics (Krichene & Rendle, KDD 2020: sampled metrics are biased): each
user's positives are ranked among every item the user has not seen (the `seen` items,
e.g. train and validation positives when ranking test, are left out; the other positives
stay in the list). Per user, with P positives and ties again against the positives:
  HR@K     = 1 if any positive is in the top K,
  recall@K = (positives in the top K) / P,
  NDCG@K   = DCG@K / IDCG@K with binary relevance: DCG@K = sum over positives in the top
             K of 1 / log2(position + 2), IDCG@K = sum_{i < min(K, P)} 1 / log2(i + 2),
each averaged over users. `FullRankingSums` accumulates them chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


def _check_inputs(user: Tensor, label: Tensor, score: Tensor) -> None:
    if not user.shape == label.shape == score.shape or user.dim() != 1:
        raise ValueError(f"user, label and score must be 1-d and of equal length, got "
                         f"{tuple(user.shape)}, {tuple(label.shape)}, {tuple(score.shape)}")
    if user.numel() == 0:
        raise ValueError("no rows to evaluate")
    if not bool(((label == 0) | (label == 1)).all()):
        raise ValueError("label must hold only 0 (sampled negative) and 1 (held-out positive)")
    if bool(score.isnan().any()):
        raise ValueError(f"{int(score.isnan().sum())} score(s) are NaN: the model diverged")


class PositiveCounts(NamedTuple):
    """Per positive, ordered by user_idx (then row order): what the sampled metrics need."""

    user: Tensor  # (P,) user_idx of each positive
    n_at_or_above: Tensor  # (P,) the user's negatives scoring >= the positive: its rank
    n_below: Tensor  # (P,) the user's negatives scoring < the positive
    n_negatives: Tensor  # (P,) the user's negatives


def count_negatives(user: Tensor, label: Tensor, score: Tensor) -> PositiveCounts:
    """Compare every positive with its own user's negatives, in O(N log N) time and O(N) memory.

    Scores become dense integer ranks, and each row the key position * (R + 1) + rank:
    sorted, one user's negatives are one slice ordered by score, so two searchsorted
    calls per positive count the negatives at or above it and below it.
    """
    _check_inputs(user, label, score)
    users, position = torch.unique(user, return_inverse=True)  # position: (N,) in 0..U-1
    is_positive = label == 1
    n_positives = torch.bincount(position[is_positive], minlength=len(users))  # (U,)
    without = (n_positives == 0).nonzero().flatten()
    if without.numel():
        raise ValueError(f"{without.numel()} user(s) have negatives but no positive "
                         f"(user_idx {users[without[:5]].tolist()}); every evaluated user "
                         "needs at least one held-out positive")
    _values, dense = torch.unique(score, return_inverse=True)  # (N,) 0..R-1, equal scores equal
    stride = int(dense.max()) + 2
    key = position * stride + dense  # (N,) int64
    negative_key = torch.sort(key[~is_positive]).values  # (N_neg,)
    # Positives ordered by user (stable: rows of one user keep their order).
    order = torch.argsort(position[is_positive], stable=True)
    positive_position = position[is_positive][order]  # (P,)
    positive_key = key[is_positive][order]  # (P,)
    start = torch.searchsorted(negative_key, positive_position * stride)  # user's first negative
    end = torch.searchsorted(negative_key, (positive_position + 1) * stride)  # one past its last
    at = torch.searchsorted(negative_key, positive_key)  # first negative scoring >= positive
    return PositiveCounts(users[positive_position], end - at, at - start, end - start)


def positive_ranks(user: Tensor, label: Tensor, score: Tensor) -> Tensor:
    """(P,) int64: the 0-based rank of each positive among its user's negatives (the number
    scoring >= it), ordered by user_idx, a user's positives in row order.

    With one positive per user that is one rank per user, in `torch.unique(user)` order.
    """
    return count_negatives(user, label, score).n_at_or_above


def _check_ranks(ranks: Tensor, k: int) -> None:
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    if ranks.numel() == 0:
        raise ValueError("no positives to evaluate (ranks is empty)")


def hit_rate(ranks: Tensor, k: int) -> float:
    """HR@k: the share of positives ranked in the top k."""
    _check_ranks(ranks, k)
    return float((ranks < k).double().mean())


def ndcg(ranks: Tensor, k: int) -> float:
    """NDCG@k of each positive on its own (one relevant item per list), averaged:
    1 / log2(rank + 2) for a 0-based rank < k, else 0."""
    _check_ranks(ranks, k)
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return float(torch.where(ranks < k, gain, torch.zeros_like(gain)).mean())


def hit_rate_curve(ranks: Tensor, max_k: int) -> list[float]:
    """[HR@1, ..., HR@max_k] from one pass over the ranks (the data of an HR@K plot)."""
    _check_ranks(ranks, max_k)
    counts = torch.bincount(ranks.clamp(max=max_k).long(), minlength=max_k + 1)[:max_k]
    return (counts.cumsum(0).double() / ranks.numel()).tolist()


def auc(user: Tensor, label: Tensor, score: Tensor) -> float:
    """Per positive the share of its user's negatives scoring strictly below it, averaged."""
    return auc_of_counts(count_negatives(user, label, score))


def auc_of_counts(counts: PositiveCounts) -> float:
    """`auc` from counts already made (evaluation counts once for ranks and AUC)."""
    empty = counts.n_negatives == 0
    if bool(empty.any()):
        raise ValueError(f"{int(counts.user[empty].unique().numel())} user(s) have no "
                         "negatives: AUC is undefined for them")
    return float((counts.n_below.double() / counts.n_negatives.double()).mean())


# --- full ranking -------------------------------------------------------------------------

# Up to this many positives per row, counting a row's scores once per positive is cheaper
# than sorting it (leave-one-out has one).
_COUNT_MAX_POSITIVES = 8


def _count_at_or_above(scores: Tensor, thresholds: Tensor) -> Tensor:
    """(C, M) int64: how many of each row's `scores` (C, n) are >= each of its `thresholds`
    (C, M): one comparison pass per threshold when M is small, else a sort of each row and
    a binary search (the same counts)."""
    n_rows, width = thresholds.shape
    if width > _COUNT_MAX_POSITIVES:
        ranked = torch.sort(scores, dim=1).values
        return scores.shape[1] - torch.searchsorted(ranked, thresholds.contiguous())
    counts = torch.empty((n_rows, width), dtype=torch.int64, device=scores.device)
    for j in range(width):
        counts[:, j] = (scores >= thresholds[:, j:j + 1]).sum(dim=1)
    return counts


def full_ranking_positions(scores: Tensor, positive_row: Tensor, positive_item: Tensor,
                           seen_row: Tensor, seen_item: Tensor) -> Tensor:
    """(P,) int64: each positive's 0-based position in its row's ranked candidate list.

    `scores` is (C, n_items), one row per user. A row's candidates are its items except
    the seen ones; positives are always candidates (a positive also marked seen stays).
    Position = the row's non-positive candidates scoring >= the positive (ties against
    it) + the row's positives ranked before it (by score, then by index: the order among
    equally relevant items does not change any metric). Memory: a few (C, n_items) arrays.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (users, items), got {tuple(scores.shape)}")
    if bool(scores.isnan().any()):
        raise ValueError(f"{int(scores.isnan().sum())} score(s) are NaN: the model diverged")
    n_rows, n_items = scores.shape
    positive_row, positive_item = positive_row.long(), positive_item.long()
    other = torch.ones_like(scores, dtype=torch.bool)  # (C, n_items) non-positive candidates
    other[seen_row.long(), seen_item.long()] = False
    other[positive_row, positive_item] = False
    n_other = other.sum(dim=1)  # (C,)
    # Non-candidates go to -inf: they are counted only for a positive scoring -inf itself,
    # and the min() with n_other removes them again.
    masked = scores.masked_fill(~other, float("-inf"))  # (C, n_items)
    # The positives as a (C, M) matrix, one row per user, padded at the end of each row.
    n_pos = torch.bincount(positive_row, minlength=n_rows)  # (C,)
    width = int(n_pos.max()) if positive_row.numel() else 0
    by_row = torch.argsort(positive_row, stable=True)  # (P,)
    row_start = torch.cumsum(n_pos, 0) - n_pos  # (C,)
    slot = torch.arange(len(by_row), device=scores.device) - row_start[positive_row[by_row]]
    padded = torch.full((n_rows, width), float("-inf"), dtype=scores.dtype,
                        device=scores.device)
    real = torch.zeros((n_rows, width), dtype=torch.bool, device=scores.device)
    rows = positive_row[by_row]
    padded[rows, slot] = scores[rows, positive_item[by_row]]
    real[rows, slot] = True
    # Best positive first; the stable sort keeps real -inf positives before the padding.
    order = torch.sort(padded, dim=1, descending=True, stable=True).indices  # (C, M)
    sorted_scores = torch.gather(padded, 1, order)
    at_or_above = _count_at_or_above(masked, sorted_scores)  # (C, M)
    position = torch.minimum(at_or_above, n_other[:, None]) + torch.arange(
        width, device=scores.device)  # (C, M): j better positives before the j-th
    # Back to the input order of the positives: (row, sorted slot) -> padded slot -> input.
    slot_position = torch.empty_like(position)
    slot_position.scatter_(1, order, position)
    result = torch.empty(len(by_row), dtype=torch.int64, device=scores.device)
    result[by_row] = slot_position[rows, slot]
    return result


@dataclass
class FullRankingSums:
    """Per-user full-ranking metrics summed over users, chunk by chunk; `means()` at the end."""

    k: int
    hr: float = 0.0
    ndcg: float = 0.0
    recall: float = 0.0
    n_users: int = 0
    _ideal: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k}: must be >= 1")
        # _ideal[p] = IDCG@k of a user with p positives (p = 0 unused).
        gains = 1.0 / torch.log2(torch.arange(self.k, dtype=torch.float64) + 2.0)
        self._ideal = torch.cat([torch.zeros(1, dtype=torch.float64), gains.cumsum(0)])

    def add(self, positions: Tensor, row: Tensor, n_rows: int) -> None:
        """Add the users of one chunk: `positions` from `full_ranking_positions`, `row` the
        chunk row of each positive. Rows without a positive are not evaluated."""
        positions, row = positions.cpu(), row.long().cpu()
        n_pos = torch.bincount(row, minlength=n_rows)  # (C,)
        hit = positions < self.k
        hits = torch.bincount(row[hit], minlength=n_rows).double()  # (C,)
        gain = torch.where(hit, 1.0 / torch.log2(positions.double() + 2.0),
                           torch.zeros(positions.shape, dtype=torch.float64))
        dcg = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, row, gain)  # (C,)
        evaluated = n_pos > 0
        ideal = self._ideal[n_pos.clamp(max=self.k)]
        self.hr += float((hits[evaluated] > 0).double().sum())
        self.recall += float((hits[evaluated] / n_pos[evaluated].double()).sum())
        self.ndcg += float((dcg[evaluated] / ideal[evaluated]).sum())
        self.n_users += int(evaluated.sum())

    def means(self, prefix: str = "full_") -> dict[str, float]:
        """{"full_hr_<k>", "full_ndcg_<k>", "full_recall_<k>"}, each averaged over users."""
        if self.n_users == 0:
            raise ValueError("no users with a positive were added: nothing to average")
        return {f"{prefix}hr_{self.k}": self.hr / self.n_users,
                f"{prefix}ndcg_{self.k}": self.ndcg / self.n_users,
                f"{prefix}recall_{self.k}": self.recall / self.n_users}


def full_ranking_metrics(scores: Tensor, positive_row: Tensor, positive_item: Tensor,
                         seen_row: Tensor, seen_item: Tensor, *, k: int) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k and recall@k of one (users, items) score matrix."""
    sums = FullRankingSums(k)
    positions = full_ranking_positions(scores, positive_row, positive_item, seen_row, seen_item)
    sums.add(positions, positive_row, scores.shape[0])
    return sums.means()
