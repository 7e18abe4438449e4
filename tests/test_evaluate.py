"""ncf_model.evaluate: batched scoring, sampled and full-ranking metrics, the HR@K curve."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ncf_model.data import FullRanking, Pairs
from ncf_model.evaluate import evaluate, evaluate_report, score_pairs
from ncf_model.metrics import full_ranking_metrics


class ItemScore(nn.Module):
    """Scores a pair by a fixed per-item value: the ranks are known in advance."""

    def __init__(self, item_score: list[float]) -> None:
        super().__init__()
        self.item_score = nn.Parameter(torch.tensor(item_score))

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.item_score[item_idx] + 0.0 * user_idx


def test_score_pairs_batches_in_eval_mode_and_restores_the_mode() -> None:
    class ShiftedInTraining(ItemScore):
        def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
            return super().forward(user_idx, item_idx) + (100.0 if self.training else 0.0)

    model = ShiftedInTraining([0.0, 1.0, 2.0, 3.0]).train()
    scores = score_pairs(model, torch.tensor([0, 1, 2, 0, 1]), torch.tensor([3, 2, 1, 0, 3]),
                         batch_size=2)
    assert scores.tolist() == [3.0, 2.0, 1.0, 0.0, 3.0]
    assert scores.dtype == torch.float32
    assert model.training


def test_evaluate_returns_hand_computed_metrics() -> None:
    # 5 items scored 0..4. User 0's positive is item 3 among negatives 4, 0, 1 -> rank 1;
    # user 1's positive is item 0 among 2, 4 -> rank 2; user 2's is item 4 among 0 -> rank 0.
    pairs = Pairs(user=torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2]),
                  item=torch.tensor([3, 4, 0, 1, 0, 2, 4, 4, 0]),
                  label=torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 1, 0]))
    metrics = evaluate(ItemScore([0.0, 1.0, 2.0, 3.0, 4.0]), pairs, k=2)
    assert set(metrics) == {"hr_2", "ndcg_2", "auc", "n_users", "n_positives"}
    assert metrics["hr_2"] == pytest.approx(2 / 3)
    assert metrics["ndcg_2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert metrics["auc"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics["n_users"] == metrics["n_positives"] == 3.0


def test_a_constant_model_hits_nothing() -> None:
    pairs = Pairs(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), torch.tensor([1.0, 0, 0]))
    metrics = evaluate(ItemScore([0.5, 0.5, 0.5]), pairs, k=1)
    assert metrics == {"hr_1": 0.0, "ndcg_1": 0.0, "auc": 0.0, "n_users": 1.0,
                       "n_positives": 1.0}


def test_full_ranking_is_reported_beside_the_sampled_metrics() -> None:
    # 6 items scored 0..5. User 0 saw items 5 and 4 in training: its positive item 3 is
    # first among the unseen ones; sampled, it is second (item 4 is a sampled negative).
    # User 1 saw nothing: its positive item 2 comes after 5, 4, 3 -> position 3.
    pairs = Pairs(user=torch.tensor([0, 0, 0, 1, 1]), item=torch.tensor([3, 4, 0, 2, 1]),
                  label=torch.tensor([1.0, 0, 0, 1, 0]))
    full = FullRanking(n_items=6, seen_user=torch.tensor([0, 0]), seen_item=torch.tensor([5, 4]))
    metrics = evaluate(ItemScore([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), pairs, k=1, full=full)
    assert metrics["hr_1"] == pytest.approx(1 / 2)  # user 0 misses, user 1 hits (2 > 1)
    assert metrics["full_hr_1"] == pytest.approx(1 / 2)  # user 0 hits, user 1 misses
    assert metrics["full_recall_1"] == pytest.approx(1 / 2)
    assert metrics["full_ndcg_1"] == pytest.approx(1 / 2)
    wider = evaluate(ItemScore([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]), pairs, k=4, full=full)
    assert wider["full_ndcg_4"] == pytest.approx((1 + 1 / math.log2(5)) / 2)


class RandomTable(nn.Module):
    """A fixed random (user, item) score table; `score_all_items` is the fast path."""

    def __init__(self, table: Tensor, fast: bool) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        if fast:
            self.score_all_items = lambda users: self.table[users]

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.table[user_idx, item_idx]


def _multi_positive_pairs(g: torch.Generator, n_users: int, n_items: int):
    """Per user 1-4 positives and 5 sampled negatives among its unseen items."""
    rows, seen = [], []
    for user in range(n_users):
        items = torch.randperm(n_items, generator=g).tolist()
        n_pos = int(torch.randint(1, 5, (1,), generator=g))
        rows += [(user, i, 1.0) for i in items[:n_pos]]
        rows += [(user, i, 0.0) for i in items[n_pos:n_pos + 5]]
        seen += [(user, i) for i in items[n_pos + 5:n_pos + 12]]
    user, item, label = (torch.tensor(c) for c in zip(*rows, strict=True))
    seen_user, seen_item = (torch.tensor(c) for c in zip(*seen, strict=True))
    return Pairs(user, item, label), seen_user, seen_item


@pytest.mark.parametrize("chunk_users", [1, 7, 1000])
@pytest.mark.parametrize("fast", [False, True])
def test_full_ranking_does_not_depend_on_chunking_or_the_scoring_path(chunk_users: int,
                                                                      fast: bool) -> None:
    g = torch.Generator().manual_seed(8)
    n_users, n_items = 23, 30
    table = torch.randint(0, 6, (n_users, n_items), generator=g).float()  # ties
    pairs, seen_user, seen_item = _multi_positive_pairs(g, n_users, n_items)
    positive = pairs.label == 1
    expected = full_ranking_metrics(table, pairs.user[positive], pairs.item[positive],
                                    seen_user, seen_item, k=5)
    full = FullRanking(n_items, seen_user, seen_item, chunk_users=chunk_users)
    report = evaluate_report(RandomTable(table, fast), pairs, k=5, full=full, curve_max_k=8)
    assert {key: report.metrics[key] for key in expected} == pytest.approx(expected)
    assert report.metrics["n_users"] == n_users
    assert report.metrics["n_positives"] == int(positive.sum())
    assert len(report.hr_at_k) == 8 and report.hr_at_k[4] == pytest.approx(report.metrics["hr_5"])
    assert report.hr_at_k == sorted(report.hr_at_k) and report.hr_at_k[-1] == 1.0  # 5 negatives


def test_full_ranking_rejects_items_outside_the_catalogue() -> None:
    pairs = Pairs(torch.tensor([0, 0]), torch.tensor([2, 0]), torch.tensor([1.0, 0]))
    full = FullRanking(n_items=2, seen_user=torch.tensor([0]), seen_item=torch.tensor([1]))
    with pytest.raises(ValueError, match="outside 0..1"):
        evaluate(ItemScore([0.0, 1.0, 2.0]), pairs, k=1, full=full)


def test_a_model_with_buffers_only_is_scored() -> None:
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("count", torch.tensor([3.0, 1.0, 2.0]))

        def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
            return self.count[item_idx]

    pairs = Pairs(torch.tensor([0, 0, 0]), torch.tensor([2, 0, 1]), torch.tensor([1.0, 0, 0]))
    assert evaluate(Counts(), pairs, k=1)["hr_1"] == 0.0
    assert evaluate(Counts(), pairs, k=2)["hr_2"] == 1.0
