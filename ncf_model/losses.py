"""Training losses on a batch: pointwise BCE (the NCF paper) or pairwise BPR (Rendle et al.,
UAI 2009).

bce: batches of (user, item, label); binary cross-entropy on the logits.
bpr: batches of (user, positive, negative); -log sigmoid(s(u, i+) - s(u, i-)), mean. Both
     items are scored in one forward pass (one batch-norm batch, one kernel launch each).
The forward runs under bf16 autocast on CUDA; the loss itself in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bce_loss(logits: Tensor, label: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), label.float())


def bpr_loss(positive: Tensor, negative: Tensor) -> Tensor:
    """Mean of -log sigmoid(positive - negative) over the (positive, negative) logit pairs."""
    return -F.logsigmoid(positive.float() - negative.float()).mean()


def batch_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor], loss: str, *,
               device_type: str, autocast: bool) -> Tensor:
    """The mean `loss` ("bce" or "bpr") of `model` on one batch of `TrainingData.epoch`
    (bce) or `TrainingData.pair_epoch` (bpr)."""
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
        if loss == "bpr":
            user, positive, negative = batch
            logits = model(torch.cat([user, user]), torch.cat([positive, negative]))  # (2B,)
        elif loss == "bce":
            user, item, _label = batch
            logits = model(user, item)  # (B,)
        else:
            raise ValueError(f"loss {loss!r} is not one of bce, bpr")
    if loss == "bpr":
        positive_logits, negative_logits = logits.chunk(2)  # (B,), (B,)
        return bpr_loss(positive_logits, negative_logits)
    return bce_loss(logits, batch[2])
