"""Score a model on evaluation pairs (validation/ or test/): sampled and full-ranking metrics.

Sampled (the NCF protocol, `ncf_model.metrics`): each positive ranked among its user's
sampled negatives -> hr_<k>, ndcg_<k>, auc (and HR@1..50 as the data of a plot).
Full ranking (when given `FullRanking`): each user's positives ranked among every item
the user has not seen -> full_hr_<k>, full_ndcg_<k>, full_recall_<k>, users scored
`chunk_users` at a time so memory stays bounded on any device. Past
`FullRanking.max_users` users, a seeded sample of that many is ranked (the same users for
every model given the same FullRanking) and `full_sampled_users` says how many.

Metric names are MLflow-safe (`hr_10`, not `HR@10`: MLflow rejects '@'). Logging them is
the caller's business (`ncf_model.tracking`).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from ncf_model.data import FullRanking, Pairs
from ncf_model.metrics import (
    FullRankingSums,
    auc_of_counts,
    count_negatives,
    full_ranking_positions,
    hit_rate,
    hit_rate_curve,
    ndcg,
)
from ncf_model.topk import score_items

CURVE_MAX_K = 50  # HR@1..HR@50 for the hr_at_k plot

log = logging.getLogger(__name__)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter, else of its first buffer, else the CPU."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def score_pairs(model: nn.Module, user: Tensor, item: Tensor, *,
                batch_size: int = 65536) -> Tensor:
    """(N,) float32 logits for the (user, item) pairs, on the model's device, in eval mode.

    Logits, not probabilities: ranking needs only the order, and float32 sigmoids of large
    logits round to 1.0 and would tie. No bf16 autocast for the same reason.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    device = model_device(model)
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


@dataclasses.dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # hr_<k>, ndcg_<k>, auc, n_users, n_positives [, full_*]
    hr_at_k: list[float]  # sampled HR@1 .. HR@CURVE_MAX_K


def sample_users(users: Tensor, max_users: int | None, seed: int) -> Tensor | None:
    """A seeded sample of `max_users` of `users` (sorted, unique), sorted; None when there
    are no more than that (every user is ranked). Drawn on the CPU: the same sample on any
    device."""
    if max_users is None or users.numel() <= max_users:
        return None
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(users.numel(), generator=generator)[:max_users]
    return users[pick.to(users.device)].sort().values


def evaluate_full_ranking(model: nn.Module, positives: Pairs, full: FullRanking,
                         k: int) -> dict[str, float]:
    """{"full_hr_<k>", "full_ndcg_<k>", "full_recall_<k>"}: each user of `positives` (label 1
    rows) ranking its positives among all items but its seen ones, chunk by chunk; with
    "full_sampled_users" when more users than `full.max_users` were sampled down."""
    device = model_device(model)
    user, item = positives.user.to(device).long(), positives.item.to(device).long()
    if user.numel() == 0:
        raise ValueError("no positives to rank")
    sample = sample_users(torch.unique(user), full.max_users, full.seed)
    if sample is not None:
        kept = torch.isin(user, sample)
        user, item = user[kept], item[kept]
    if int(item.max()) >= full.n_items or int(item.min()) < 0:
        raise ValueError(f"positives hold item_idx outside 0..{full.n_items - 1}")
    seen_user = full.seen_user.to(device).long()
    seen_item = full.seen_item.to(device).long()
    if seen_item.numel() and (int(seen_item.max()) >= full.n_items or int(seen_item.min()) < 0):
        raise ValueError(f"seen pairs hold item_idx outside 0..{full.n_items - 1}")
    order = torch.argsort(user, stable=True)
    user, item = user[order], item[order]
    seen_order = torch.argsort(seen_user, stable=True)
    seen_user, seen_item = seen_user[seen_order], seen_item[seen_order]
    users = torch.unique(user)  # (U,) sorted
    sums = FullRankingSums(k)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for chunk in users.split(full.chunk_users):
                first, last = int(chunk[0]), int(chunk[-1])
                scores = score_items(model, chunk, full.n_items)  # (C, n_items)
                pos_user, pos_item = _slice(user, item, first, last)
                s_user, s_item = _slice(seen_user, seen_item, first, last)
                s_row = torch.searchsorted(chunk, s_user)
                known = chunk[s_row.clamp(max=len(chunk) - 1)] == s_user  # a chunk user's
                pos_row = torch.searchsorted(chunk, pos_user)
                positions = full_ranking_positions(scores, pos_row, pos_item,
                                                   s_row[known], s_item[known])
                sums.add(positions, pos_row, len(chunk))
    finally:
        model.train(was_training)
    if sample is None:
        return sums.means()
    log.info("full ranking on a seeded sample of %d of %d users (evaluate."
             "full_ranking_max_users)", sample.numel(), torch.unique(positives.user).numel())
    return {**sums.means(), "full_sampled_users": float(sample.numel())}


def _slice(user: Tensor, item: Tensor, first: int, last: int) -> tuple[Tensor, Tensor]:
    """The rows of users first..last from (user, item) sorted by user."""
    lo, hi = torch.searchsorted(user, torch.tensor([first, last + 1],
                                                   device=user.device)).tolist()
    return user[lo:hi], item[lo:hi]


def evaluate_report(model: nn.Module, pairs: Pairs, k: int, *, full: FullRanking | None = None,
                    curve_max_k: int = CURVE_MAX_K) -> Evaluation:
    """Sampled metrics (and full-ranking ones when `full` is given) plus the HR@K curve."""
    score = score_pairs(model, pairs.user, pairs.item)
    label = pairs.label.to(score.device)
    user = pairs.user.to(score.device)
    counts = count_negatives(user, label, score)
    ranks = counts.n_at_or_above
    metrics = {
        f"hr_{k}": hit_rate(ranks, k),
        f"ndcg_{k}": ndcg(ranks, k),
        "auc": auc_of_counts(counts),
        "n_users": float(torch.unique(counts.user).numel()),
        "n_positives": float(ranks.numel()),
    }
    if full is not None:
        positive = pairs.label == 1
        metrics.update(evaluate_full_ranking(
            model, Pairs(pairs.user[positive], pairs.item[positive], pairs.label[positive]),
            full, k))
    return Evaluation(metrics, hit_rate_curve(ranks, curve_max_k))


def evaluate(model: nn.Module, pairs: Pairs, k: int, *,
             full: FullRanking | None = None) -> dict[str, float]:
    """{"hr_<k>", "ndcg_<k>", "auc", "n_users", "n_positives"} of `model` on `pairs`, and
    {"full_hr_<k>", "full_ndcg_<k>", "full_recall_<k>"} when `full` is given."""
    return evaluate_report(model, pairs, k, full=full).metrics


