"""Forward evaluation's pure part (bench/backtest.py): HR@k and recall@k of top-k lists
against each user's new positives, and which users count."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

Lists = Mapping[str, Sequence[str]]  # user_id -> item_ids, best first
Future = Mapping[str, set[str]]  # user_id -> the items of its new positives


class BacktestError(RuntimeError):
    """A cut date cannot be evaluated (no served list yet, a window past the log's end)."""


# --- the metrics (pure) ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Score:
    users: int
    hr: float
    recall: float


def forward_score(lists: Lists, future: Future, users: Iterable[str], *, k: int) -> Score:
    """HR@k and recall@k of `lists` over `users`, each of which must have a list and at
    least one new positive (the caller chooses them: `evaluated_users`)."""
    hits = recall = 0.0
    n = 0
    for user in users:
        relevant = future[user]
        found = len(set(lists[user][:k]) & relevant)
        hits += found > 0
        recall += found / len(relevant)
        n += 1
    if n == 0:
        raise BacktestError("no user with a list has a new positive in the window")
    return Score(n, hits / n, recall / n)


def evaluated_users(served: Lists, future: Future, known: set[str]) -> tuple[list[str], int, int]:
    """(users scored, quiet: served but no new positive, unserved: new positives but no
    list), users in sorted order."""
    scored = sorted(u for u in served if future.get(u) and u in known)
    quiet = sum(1 for u in served if not future.get(u))
    unserved = sum(1 for u, items in future.items() if items and u not in served)
    return scored, quiet, unserved
