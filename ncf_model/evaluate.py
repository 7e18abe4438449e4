"""Score a model on leave-one-out pairs (validation/ or test/) and compute HR@K, NDCG@K, AUC.

Metric names are MLflow-safe (`hr_10`, not `HR@10`: MLflow rejects '@'). Logging them is
the caller's business (`ncf_model.tracking`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ncf_model.data import Pairs
from ncf_model.metrics import auc, hit_rate, ndcg, positive_ranks


def score_pairs(model: nn.Module, user: Tensor, item: Tensor, *,
                batch_size: int = 65536) -> Tensor:
    """(N,) float32 logits for the (user, item) pairs, on the model's device, in eval mode.

    Logits, not probabilities: ranking needs only the order, and float32 sigmoids of large
    logits round to 1.0 and would tie. No bf16 autocast for the same reason.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            scores = [model(u.to(device), i.to(device)).float()
                      for u, i in zip(user.split(batch_size), item.split(batch_size),
                                      strict=True)]
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.empty(0, device=device)


def evaluate(model: nn.Module, pairs: Pairs, k: int) -> dict[str, float]:
    """{"hr_<k>", "ndcg_<k>", "auc", "n_users"} of `model` on leave-one-out `pairs`."""
    score = score_pairs(model, pairs.user, pairs.item)
    label = pairs.label.to(score.device)
    user = pairs.user.to(score.device)
    ranks = positive_ranks(user, label, score)
    return {
        f"hr_{k}": hit_rate(ranks, k),
        f"ndcg_{k}": ndcg(ranks, k),
        "auc": auc(user, label, score),
        "n_users": float(ranks.numel()),
    }


@dataclasses.dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def champion_gate(value: float, champion_value: float | None, *, metric: str, floor: float,
                  tolerance: float) -> GateDecision:
    """Promote a new model when `metric` clears the absolute `floor` and is not worse than
    the current champion's on the same test split by more than `tolerance` (absolute).

    With no champion yet, only the floor applies.
    """
    if value < floor:
        return GateDecision(False, f"{metric}={value:.4f} is below the floor {floor:.4f}")
    if champion_value is None:
        return GateDecision(True, f"{metric}={value:.4f} clears the floor {floor:.4f}; "
                                  "there is no champion yet")
    if value < champion_value - tolerance:
        return GateDecision(False, f"{metric}={value:.4f} is worse than the champion's "
                                   f"{champion_value:.4f} by more than the tolerance "
                                   f"{tolerance:.4f}")
    return GateDecision(True, f"{metric}={value:.4f} vs the champion's {champion_value:.4f} "
                              f"(tolerance {tolerance:.4f}, floor {floor:.4f})")
