"""ncf_model.metrics: ranks with ties against the positive, HR@K, NDCG@K, AUC."""

from __future__ import annotations

import math

import pytest
import torch

from ncf_model.metrics import auc, hit_rate, ndcg, positive_ranks


def _one_user(positive: float, negatives: list[float], user: int = 0):
    n = len(negatives) + 1
    return (torch.full((n,), user), torch.tensor([1.0] + [0.0] * len(negatives)),
            torch.tensor([positive, *negatives]))


def _stack(*groups):
    return tuple(torch.cat(parts) for parts in zip(*groups, strict=True))


def test_perfect_scores_rank_every_positive_first() -> None:
    user, label, score = _stack(_one_user(0.9, [0.1, 0.2, 0.3], user=0),
                                _one_user(5.0, [-1.0, 4.9], user=1))
    ranks = positive_ranks(user, label, score)
    assert ranks.tolist() == [0, 0]
    assert hit_rate(ranks, 1) == 1.0
    assert ndcg(ranks, 1) == 1.0
    assert auc(user, label, score) == 1.0


def test_worst_scores_rank_every_positive_last() -> None:
    user, label, score = _stack(_one_user(0.0, [0.1, 0.2, 0.3], user=0),
                                _one_user(-9.0, [1.0, 2.0], user=1))
    ranks = positive_ranks(user, label, score)
    assert ranks.tolist() == [3, 2]
    assert hit_rate(ranks, 2) == 0.0
    assert ndcg(ranks, 2) == 0.0
    assert auc(user, label, score) == 0.0


def test_ties_count_against_the_positive() -> None:
    user, label, score = _one_user(0.5, [0.5] * 99)
    ranks = positive_ranks(user, label, score)
    assert ranks.tolist() == [99]
    assert hit_rate(ranks, 10) == 0.0
    assert auc(user, label, score) == 0.0


def test_hand_computed_values() -> None:
    # user 0: positive beaten by 0.8 and tied by 0.7 -> rank 2; 2 of 4 negatives below.
    # user 1: positive first -> rank 0; 3 of 3 below.  user 2: rank 5 of 5 negatives.
    user, label, score = _stack(_one_user(0.7, [0.8, 0.7, 0.1, 0.2], user=0),
                                _one_user(0.9, [0.1, 0.2, 0.3], user=1),
                                _one_user(0.0, [1.0, 2.0, 3.0, 4.0, 5.0], user=2))
    ranks = positive_ranks(user, label, score)
    assert ranks.tolist() == [2, 0, 5]
    assert hit_rate(ranks, 3) == pytest.approx(2 / 3)
    assert ndcg(ranks, 3) == pytest.approx((1 / math.log2(4) + 1 / math.log2(2) + 0) / 3)
    assert ndcg(ranks, 10) == pytest.approx((0.5 + 1 + 1 / math.log2(7)) / 3)
    assert auc(user, label, score) == pytest.approx((2 / 4 + 3 / 3 + 0 / 5) / 3)


def test_rows_in_any_order_and_sparse_user_ids() -> None:
    user, label, score = _stack(_one_user(0.7, [0.8, 0.7, 0.1, 0.2], user=40),
                                _one_user(0.9, [0.1, 0.2, 0.3], user=7))
    shuffle = torch.randperm(len(user), generator=torch.Generator().manual_seed(3))
    ranks = positive_ranks(user[shuffle], label[shuffle], score[shuffle])
    assert ranks.tolist() == [0, 2]  # ordered by user_idx: 7, then 40
    assert auc(user[shuffle], label[shuffle], score[shuffle]) == pytest.approx((1 + 0.5) / 2)


def test_a_user_without_negatives_has_rank_zero() -> None:
    user, label, score = _one_user(0.1, [])
    assert positive_ranks(user, label, score).tolist() == [0]
    with pytest.raises(ValueError, match="no negatives"):
        auc(user, label, score)


def _reference(user, label, score, k):
    """The slow, obvious loop over users."""
    hits, gains, aucs = [], [], []
    for u in sorted(set(user.tolist())):
        rows = [r for r in range(len(user)) if user[r] == u]
        pos = next(score[r].item() for r in rows if label[r] == 1)
        negs = [score[r].item() for r in rows if label[r] == 0]
        rank = sum(s >= pos for s in negs)
        hits.append(rank < k)
        gains.append(1 / math.log2(rank + 2) if rank < k else 0.0)
        aucs.append(sum(s < pos for s in negs) / len(negs))
    return sum(hits) / len(hits), sum(gains) / len(gains), sum(aucs) / len(aucs)


def test_parity_with_a_python_loop_on_random_shuffled_data() -> None:
    g = torch.Generator().manual_seed(0)
    n_users, n_neg = 50, 19
    user = torch.arange(n_users).repeat_interleave(n_neg + 1)
    label = torch.zeros(len(user))
    label[:: n_neg + 1] = 1.0
    score = torch.randint(0, 8, (len(user),), generator=g).float()  # coarse: plenty of ties
    shuffle = torch.randperm(len(user), generator=g)
    user, label, score = user[shuffle], label[shuffle], score[shuffle]

    ranks = positive_ranks(user, label, score)
    hr, gain, area = _reference(user, label, score, k=5)
    assert hit_rate(ranks, 5) == pytest.approx(hr)
    assert ndcg(ranks, 5) == pytest.approx(gain)
    assert auc(user, label, score) == pytest.approx(area)
    assert 0.0 < hr < 1.0


@pytest.mark.parametrize("labels, message", [([1.0, 1.0, 0.0], "exactly one positive"),
                                             ([0.0, 0.0, 0.0], "exactly one positive"),
                                             ([1.0, 0.5, 0.0], "only 0")])
def test_bad_labels_are_rejected(labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        positive_ranks(torch.zeros(3, dtype=torch.long), torch.tensor(labels), torch.rand(3))


def test_nan_scores_and_empty_ranks_are_rejected() -> None:
    user, label, score = _one_user(float("nan"), [0.1])
    with pytest.raises(ValueError, match="NaN"):
        positive_ranks(user, label, score)
    with pytest.raises(ValueError, match="empty"):
        hit_rate(torch.empty(0, dtype=torch.long), 10)
