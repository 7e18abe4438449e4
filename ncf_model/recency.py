"""The time order of each user's positives, for the families that use it: SASRec reads
it as sequences, EASE^R as recency weights of the user's row of X.

A history is the lake's sequences/ (each user's training positives, oldest first, the
latest `prepare.sequence_length` of them), then each held-out split the protocol step
adds (validation, then test) after them in time. No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ncf_model.data import Pairs

# Appended items sort after every training position: the validation item, then test.
_APPENDED_ORDER = float(1 << 40)


def timeline(sequences: tuple[Tensor, Tensor, Tensor], positives: Mapping[str, Pairs],
             splits: tuple[str, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """(user, item, order float64): the training sequences (user, item, position), then
    each held-out split of `splits` appended after them (validation before test)."""
    user, item, position = sequences
    users, items, order = [user], [item], [position.double()]
    for rank, split in enumerate(name for name in splits if name != "train"):
        pairs = positives[split]
        users.append(pairs.user.long())
        items.append(pairs.item.long())
        order.append(torch.full((len(pairs),), _APPENDED_ORDER + rank, dtype=torch.float64))
    return torch.cat(users), torch.cat(items), torch.cat(order)


def history_ages(user_idx: Tensor, order: Tensor, n_users: int) -> Tensor:
    """(P,) int64: for each positive (`user_idx`, `order` its time: larger is later), how
    many of the same user's positives are strictly later. The latest is 0; equal times
    share an age (so an unordered group counts as one step)."""
    if user_idx.shape != order.shape or user_idx.dim() != 1:
        raise ValueError(f"user_idx {tuple(user_idx.shape)} and order {tuple(order.shape)} "
                         "must be 1-d and of the same length")
    by_time = torch.argsort(order, descending=True, stable=True)
    ranked = by_time[torch.argsort(user_idx[by_time], stable=True)]  # user, then latest first
    user, when = user_idx[ranked], order[ranked]
    position = torch.arange(user.numel(), device=user.device)
    starts = torch.ones_like(user, dtype=torch.bool)  # a new (user, time) group
    starts[1:] = (user[1:] != user[:-1]) | (when[1:] != when[:-1])
    group_start = torch.cummax(torch.where(starts, position, 0), 0).values
    counts = torch.bincount(user_idx, minlength=n_users)
    user_start = torch.cumsum(counts, 0) - counts
    ages = torch.empty_like(position)
    ages[ranked] = group_start - user_start[user]
    return ages


def recency_weights(ages: Tensor, half_life: float) -> Tensor:
    """0.5 ** (age / half_life), float32: the latest item weighs 1, one `half_life` items
    back 0.5 (recency-weighted EASE^R scoring; the fit itself stays on the binary X)."""
    if not (math.isfinite(half_life) and half_life > 0):
        raise ValueError(f"half_life={half_life}: must be > 0")
    return torch.pow(0.5, ages.to(torch.float64) / half_life).to(torch.float32)


def positive_ages(sequences: tuple[Tensor, Tensor, Tensor], positives: Mapping[str, Pairs],
                  splits: tuple[str, ...], pairs: Pairs, *, n_users: int,
                  n_items: int) -> Tensor:
    """(P,) int64: the age (`history_ages`) of each of `pairs` (the positives of `splits`)
    in its user's timeline. A train positive the capped sequence no longer holds counts as
    older than every item it holds."""
    users, items, order = timeline(sequences, positives, splits)
    known, where = torch.sort(users * n_items + items)
    key = pairs.user.long() * n_items + pairs.item.long()
    when = torch.full(key.shape, -1.0, dtype=torch.float64)
    if known.numel():
        at = torch.searchsorted(known, key).clamp(max=known.numel() - 1)
        found = known[at] == key
        when[found] = order[where[at[found]]]
    return history_ages(pairs.user.long(), when, n_users)
