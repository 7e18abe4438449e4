"""Top-K recommendations for every user: score all items, mask the seen ones, `torch.topk`.

Users are scored `chunk_users` at a time against every item, so memory is bounded by
chunk_users * n_items pairs whatever the number of users. An item the user has seen
(any pair in `seen_user`/`seen_item`: train, validation and test positives) is never
recommended.

`score_items` is the one place a chunk of users is scored against every item; a model
with a `score_all_items(user_idx) -> (C, n_items)` method (MF, GMF, MLP and NeuMF with their
first MLP layer split into user and item halves, Hybrid, EASE^R, SASRec and the baselines'
scorers) is asked for the matrix directly, any other with (user, item) pairs. Memory per
chunk: the (C, n_items) logits, and for MLP/NeuMF at most
`models.ncf.ACTIVATION_BUDGET` tower activations at once; `torch.topk` keeps k per user.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def score_items(model: nn.Module, users: Tensor, n_items: int) -> Tensor:
    """(C, n_items) float32 logits of `users` (C,) against every item, on `users`' device.

    Call in inference mode with the model in eval mode. Memory: C * n_items pairs (and
    whatever the model keeps per pair), so callers bound C.
    """
    score_all = getattr(model, "score_all_items", None)
    if callable(score_all):
        scores: Tensor = score_all(users)
        return scores.float().contiguous()  # a writable copy where it was an expanded view
    all_items = torch.arange(n_items, device=users.device)
    logits = model(users.repeat_interleave(n_items), all_items.repeat(len(users)))  # (C * n,)
    return logits.float().view(len(users), n_items)


def recommend_top_k(model: nn.Module, *, n_users: int, n_items: int, seen_user: Tensor,
                    seen_item: Tensor, k: int, chunk_users: int,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """(items, scores) on the CPU: (n_users, k) int64 item_idx, best first, and their
    (n_users, k) float32 probabilities. The model is moved to `device` and run in eval mode.
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users={n_users}, n_items={n_items}: both must be >= 1")
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k}: must be in [1, n_items={n_items}]")
    if chunk_users < 1:
        raise ValueError(f"chunk_users={chunk_users}: must be >= 1")
    if seen_user.shape != seen_item.shape:
        raise ValueError(f"seen_user {tuple(seen_user.shape)} and seen_item "
                         f"{tuple(seen_item.shape)} must have the same shape")
    seen_user = seen_user.to(device=device, dtype=torch.int64).flatten()
    seen_item = seen_item.to(device=device, dtype=torch.int64).flatten()
    if seen_user.numel() and (int(seen_user.min()) < 0 or int(seen_user.max()) >= n_users
                              or int(seen_item.min()) < 0 or int(seen_item.max()) >= n_items):
        raise ValueError(f"seen pairs hold indices outside {n_users} users x {n_items} items")
    # Sorted unique user * n_items + item: a chunk's seen pairs are one contiguous slice.
    seen = torch.unique(seen_user * n_items + seen_item)
    n_unseen = n_items - torch.bincount(seen // n_items, minlength=n_users)  # (n_users,)
    short = (n_unseen < k).nonzero().flatten()
    if short.numel():
        user = int(short[0])
        raise ValueError(f"user_idx {user} has {int(n_unseen[user])} unseen item(s), fewer than "
                         f"k={k} ({short.numel()} such user(s)); lower recommend.k")

    model.to(device)
    was_training = model.training
    model.eval()
    items, scores = [], []
    try:
        with torch.inference_mode():
            for start in range(0, n_users, chunk_users):
                end = min(start + chunk_users, n_users)
                users = torch.arange(start, end, device=device)  # (C,)
                logits = score_items(model, users, n_items)  # (C, n_items)
                lo, hi = torch.searchsorted(seen, torch.tensor([start * n_items, end * n_items],
                                                               device=device)).tolist()
                chunk_seen = seen[lo:hi]
                logits[chunk_seen // n_items - start, chunk_seen % n_items] = float("-inf")
                top_logits, top_items = torch.topk(logits, k, dim=1)  # (C, k)
                items.append(top_items.cpu())
                scores.append(torch.sigmoid(top_logits).cpu())
    finally:
        model.train(was_training)
    return torch.cat(items), torch.cat(scores)


def popularity_top_k(item_counts: Tensor, *, users: Tensor, seen_user: Tensor,
                     seen_item: Tensor, k: int, chunk_users: int = 1024) -> tuple[Tensor, Tensor]:
    """The cold-start fallback: for each of `users`, the k most popular items it has not seen.

    `item_counts` is (n_items,) training positives per item. Returns (len(users), k) item
    indices and their scores, the share of `item_counts`' total each item holds. Ties go to
    the lower index (torch.topk on a stable order: deterministic).
    """
    item_counts = item_counts.cpu()
    n_items = item_counts.numel()
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k}: must be in [1, n_items={n_items}]")
    share = item_counts.double() / max(float(item_counts.sum()), 1.0)  # (n_items,)
    # The rank of each item by popularity, equal counts by index (a stable sort): topk on
    # these keys is deterministic, where topk on tied shares is not.
    order = torch.argsort(item_counts, descending=True, stable=True)
    order_key = torch.empty(n_items, dtype=torch.float64)
    order_key[order] = -torch.arange(n_items, dtype=torch.float64)
    users = users.to(torch.int64).cpu()
    seen_user, seen_item = seen_user.to(torch.int64).cpu(), seen_item.to(torch.int64).cpu()
    n_rows = 1 + max(int(users.max()) if users.numel() else 0,
                     int(seen_user.max()) if seen_user.numel() else 0)
    items, scores = [], []
    for chunk in users.split(chunk_users):
        row_of = torch.full((n_rows,), -1, dtype=torch.int64)
        row_of[chunk] = torch.arange(len(chunk))
        rows = row_of[seen_user]  # (S,) the seen pair's row in this chunk, -1: another user
        hit = rows >= 0
        keys = order_key.repeat(len(chunk), 1)  # (C, n_items)
        keys[rows[hit], seen_item[hit]] = float("-inf")
        _top, top_items = torch.topk(keys, k, dim=1)  # (C, k)
        items.append(top_items)
        scores.append(share[top_items].float())
    if not items:
        return torch.empty(0, k, dtype=torch.int64), torch.empty(0, k)
    return torch.cat(items), torch.cat(scores)
