"""ncf_model.losses: BCE and BPR values on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ncf_model.losses import batch_loss, bce_loss, bpr_loss


class Table(nn.Module):
    """A 'model' whose logit for (u, i) is a fixed table entry."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        return self.logits[user, item]


def test_bpr_loss_by_hand() -> None:
    # differences 1 and 0: (log(1 + e^-1) + log 2) / 2
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    loss = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.503204, abs=1e-6)
    # A positive far above its negative costs ~nothing; far below, ~the gap.
    assert bpr_loss(torch.tensor([30.0]), torch.tensor([0.0])).item() == pytest.approx(0, abs=1e-9)
    assert bpr_loss(torch.tensor([0.0]), torch.tensor([30.0])).item() == pytest.approx(30.0)


def test_batch_loss_scores_positive_and_negative_of_each_triple() -> None:
    model = Table([[2.0, 1.0, -1.0],
                   [0.0, 0.5, 3.0]])
    user, positive, negative = torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([2, 1])
    loss = batch_loss(model, (user, positive, negative), "bpr", device_type="cpu",
                      autocast=False)
    # user 0: 2 - (-1) = 3; user 1: 3 - 0.5 = 2.5
    expected = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-2.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bce_batch_loss_by_hand() -> None:
    model = Table([[2.0, -1.0]])
    batch = (torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1.0, 0.0]))
    loss = batch_loss(model, batch, "bce", device_type="cpu", autocast=False)
    # label 1 at logit 2: -log sigmoid(2); label 0 at logit -1: -log(1 - sigmoid(-1))
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert bce_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="'hinge' is not one of bce, bpr"):
        batch_loss(model, batch, "hinge", device_type="cpu", autocast=False)
