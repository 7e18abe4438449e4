"""ncf_model.evaluate: batched scoring and the metric dict on leave-one-out pairs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ncf_model.data import Pairs
from ncf_model.evaluate import evaluate, score_pairs


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
    assert set(metrics) == {"hr_2", "ndcg_2", "auc", "n_users"}
    assert metrics["hr_2"] == pytest.approx(2 / 3)
    assert metrics["ndcg_2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert metrics["auc"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics["n_users"] == 3.0


def test_a_constant_model_hits_nothing() -> None:
    pairs = Pairs(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), torch.tensor([1.0, 0, 0]))
    metrics = evaluate(ItemScore([0.5, 0.5, 0.5]), pairs, k=1)
    assert metrics == {"hr_1": 0.0, "ndcg_1": 0.0, "auc": 0.0, "n_users": 1.0}
