"""ncf_model.metrics: sampled ranks with ties against the positive, HR@K, NDCG@K, AUC (one or
several positives per user), and full-ranking HR@K, NDCG@K, recall@K."""

from __future__ import annotations

import math

import pytest
import torch

from ncf_model.metrics import (
    FullRankingSums,
    _count_at_or_above,
    auc,
    full_ranking_metrics,
    full_ranking_positions,
    hit_rate,
    hit_rate_curve,
    ndcg,
    positive_ranks,
)


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


@pytest.mark.parametrize("labels, message", [([0.0, 0.0, 0.0], "no positive"),
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


def test_hit_rate_curve_is_hr_at_every_k() -> None:
    ranks = torch.tensor([0, 2, 2, 7, 60])
    curve = hit_rate_curve(ranks, 10)
    assert len(curve) == 10
    assert curve == pytest.approx([hit_rate(ranks, k) for k in range(1, 11)])
    assert curve[:4] == pytest.approx([0.2, 0.2, 0.6, 0.6])


# --- several positives per user ---------------------------------------------------------

def _user_rows(user: int, positives: list[float], negatives: list[float]):
    n = len(positives) + len(negatives)
    return (torch.full((n,), user), torch.tensor([1.0] * len(positives) + [0.0] * len(negatives)),
            torch.tensor([*positives, *negatives]))


def test_each_positive_is_ranked_against_its_users_negatives_only() -> None:
    # user 3: positives 0.9, 0.5, 0.1 against negatives 0.6, 0.5, 0.2 -> ranks 0, 2, 3
    # (the other positives never count); user 1: one positive 0.4 against 0.3 -> rank 0.
    user, label, score = _stack(_user_rows(3, [0.9, 0.5, 0.1], [0.6, 0.5, 0.2]),
                                _user_rows(1, [0.4], [0.3]))
    shuffle = torch.randperm(len(user), generator=torch.Generator().manual_seed(1))
    ranks = positive_ranks(user, label, score)
    assert ranks.tolist() == [0, 0, 2, 3]  # user 1 first, then user 3's in row order
    assert sorted(positive_ranks(user[shuffle], label[shuffle], score[shuffle]).tolist()) == \
        [0, 0, 2, 3]
    # Averaged over the 4 positives.
    assert hit_rate(ranks, 1) == pytest.approx(2 / 4)
    assert ndcg(ranks, 3) == pytest.approx((1 + 1 + 1 / math.log2(4) + 0) / 4)
    # AUC per positive: 3/3, 1/3 (0.5 ties 0.5: not below), 0/3; user 1: 1/1.
    assert auc(user, label, score) == pytest.approx((1 + 1 / 3 + 0 + 1) / 4)


def test_one_positive_per_user_gives_the_leave_one_out_values() -> None:
    """The multi-positive code path is the leave-one-out one: same ranks as the loop."""
    g = torch.Generator().manual_seed(5)
    user = torch.arange(30).repeat_interleave(12)
    label = torch.zeros(len(user))
    label[::12] = 1.0
    score = torch.randn(len(user), generator=g)
    ranks = positive_ranks(user, label, score)
    assert len(ranks) == 30
    hr, gain, area = _reference(user, label, score, k=4)
    assert (hit_rate(ranks, 4), ndcg(ranks, 4), auc(user, label, score)) == pytest.approx(
        (hr, gain, area))


def _reference_multi(user, label, score, k):
    """The slow loop over positives: each against its user's negatives, ties against it."""
    hits, gains, aucs = [], [], []
    rows = list(zip(user.tolist(), label.tolist(), score.tolist(), strict=True))
    for u, lab, s in rows:
        if lab != 1:
            continue
        negs = [t for v, m, t in rows if v == u and m == 0]
        rank = sum(t >= s for t in negs)
        hits.append(rank < k)
        gains.append(1 / math.log2(rank + 2) if rank < k else 0.0)
        aucs.append(sum(t < s for t in negs) / len(negs))
    return sum(hits) / len(hits), sum(gains) / len(gains), sum(aucs) / len(aucs)


def test_parity_with_a_python_loop_with_several_positives_per_user() -> None:
    g = torch.Generator().manual_seed(2)
    groups = []
    for u in range(40):
        n_pos = int(torch.randint(1, 6, (1,), generator=g))
        groups.append(_user_rows(u * 3, torch.randint(0, 6, (n_pos,), generator=g).tolist(),
                                 torch.randint(0, 6, (9,), generator=g).tolist()))
    user, label, score = _stack(*groups)
    shuffle = torch.randperm(len(user), generator=g)
    user, label, score = user[shuffle], label[shuffle], score[shuffle].float()
    ranks = positive_ranks(user, label, score)
    hr, gain, area = _reference_multi(user, label, score, k=3)
    assert len(ranks) == int(label.sum())
    assert hit_rate(ranks, 3) == pytest.approx(hr)
    assert ndcg(ranks, 3) == pytest.approx(gain)
    assert auc(user, label, score) == pytest.approx(area)
    assert 0.0 < hr < 1.0


# --- full ranking -------------------------------------------------------------------------

def _idx(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def test_full_ranking_perfect_and_worst() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0]])
    # Row 0: positives 0, 1 on top; row 1: positive 0 last; item 4 of row 1 seen.
    positions = full_ranking_positions(scores, _idx(0, 0, 1), _idx(0, 1, 0), _idx(1), _idx(4))
    assert positions.tolist() == [0, 1, 3]
    perfect = full_ranking_metrics(scores[:1], _idx(0, 0), _idx(0, 1), _idx(), _idx(), k=2)
    assert perfect == {"full_hr_2": 1.0, "full_ndcg_2": pytest.approx(1.0),
                       "full_recall_2": 1.0}
    worst = full_ranking_metrics(scores[1:], _idx(0), _idx(0), _idx(0), _idx(4), k=3)
    assert worst == {"full_hr_3": 0.0, "full_ndcg_3": 0.0, "full_recall_3": 0.0}


def test_full_ranking_ties_count_against_the_positives() -> None:
    scores = torch.zeros(1, 100)
    positions = full_ranking_positions(scores, _idx(0, 0), _idx(3, 50), _idx(0), _idx(7))
    # 97 other candidates tie with both positives and go first; then the two positives.
    assert sorted(positions.tolist()) == [97, 98]
    metrics = full_ranking_metrics(scores, _idx(0, 0), _idx(3, 50), _idx(0), _idx(7), k=10)
    assert metrics == {"full_hr_10": 0.0, "full_ndcg_10": 0.0, "full_recall_10": 0.0}


def test_full_ranking_hand_computed_value() -> None:
    # Row 0: items scored 3, 2, 1, 0, 5; item 4 seen (masked). Positives items 1 and 3:
    # ranked list 0, 1, 2, 3 -> positions 1 and 3.  Row 1: one positive, item 2, scored 0.7
    # among 0.9 (item 0), 0.7 (item 1: a tie, goes first) and 0.1 -> position 2.
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, 5.0],
                           [0.9, 0.7, 0.7, 0.1, 0.2]])
    row, item = _idx(0, 0, 1), _idx(1, 3, 2)
    assert full_ranking_positions(scores, row, item, _idx(0), _idx(4)).tolist() == [1, 3, 2]
    metrics = full_ranking_metrics(scores, row, item, _idx(0), _idx(4), k=3)
    ideal_2 = 1 + 1 / math.log2(3)
    assert metrics["full_hr_3"] == pytest.approx((1 + 1) / 2)
    assert metrics["full_recall_3"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["full_ndcg_3"] == pytest.approx(((1 / math.log2(3)) / ideal_2
                                                    + (1 / math.log2(4)) / 1) / 2)


def test_full_ranking_minus_infinity_scores_and_rows_without_positives() -> None:
    scores = torch.tensor([[float("-inf"), 1.0, float("-inf"), 0.0],
                           [1.0, 2.0, 3.0, 4.0]])
    # Row 0's positive scores -inf: behind every candidate (3 items, one seen: 2 others).
    positions = full_ranking_positions(scores, _idx(0), _idx(0), _idx(0), _idx(1))
    assert positions.tolist() == [2]
    sums = FullRankingSums(k=3)
    sums.add(positions, _idx(0), n_rows=2)  # row 1 has no positive: not evaluated
    assert sums.n_users == 1
    assert sums.means() == {"full_hr_3": 1.0, "full_ndcg_3": pytest.approx(0.5),
                            "full_recall_3": 1.0}


def _full_reference(scores, row, item, seen, k):
    """The slow loop: per user, sort its candidates (negatives first on ties), walk the list."""
    seen = set(zip(seen[0].tolist(), seen[1].tolist(), strict=True))
    positives: dict[int, set[int]] = {}
    for r, i in zip(row.tolist(), item.tolist(), strict=True):
        positives.setdefault(r, set()).add(i)
    hr = nd = rec = 0.0
    for r, pos in positives.items():
        candidates = [i for i in range(scores.shape[1]) if (r, i) not in seen or i in pos]
        ranked = sorted(candidates, key=lambda i: (-scores[r, i].item(), i in pos))
        top = ranked[:k]
        hits = [n for n, i in enumerate(top) if i in pos]
        hr += bool(hits)
        rec += len(hits) / len(pos)
        ideal = sum(1 / math.log2(n + 2) for n in range(min(k, len(pos))))
        nd += sum(1 / math.log2(n + 2) for n in hits) / ideal
    n = len(positives)
    return {f"full_hr_{k}": hr / n, f"full_ndcg_{k}": nd / n, f"full_recall_{k}": rec / n}


def test_full_ranking_parity_with_a_python_loop_on_random_data() -> None:
    g = torch.Generator().manual_seed(4)
    n_rows, n_items = 25, 40
    scores = torch.randint(0, 10, (n_rows, n_items), generator=g).float()  # plenty of ties
    pairs = torch.randperm(n_rows * n_items, generator=g)
    positive, seen = pairs[:60], pairs[60:300]
    row, item = positive // n_items, positive % n_items
    seen_row, seen_item = seen // n_items, seen % n_items
    for k in (1, 5, 10):
        expected = _full_reference(scores, row, item, (seen_row, seen_item), k)
        got = full_ranking_metrics(scores, row, item, seen_row, seen_item, k=k)
        assert got == pytest.approx(expected)
    assert 0.0 < got["full_recall_10"] < got["full_hr_10"] < 1.0


@pytest.mark.parametrize("width", [0, 1, 3, 8, 9, 12])
def test_counting_and_sorting_give_the_same_at_or_above_counts(width: int) -> None:
    # Both sides of _COUNT_MAX_POSITIVES (a pass per threshold, or a sort and a binary
    # search), against a brute-force count, with ties and -inf in the rows.
    generator = torch.Generator().manual_seed(width)
    scores = torch.randint(0, 6, (7, 40), generator=generator).float()
    scores[scores == 0] = float("-inf")
    thresholds = torch.randint(0, 6, (7, width), generator=generator).float()
    thresholds[thresholds == 0] = float("-inf")
    expected = (scores[:, None, :] >= thresholds[:, :, None]).sum(dim=2)
    assert torch.equal(_count_at_or_above(scores, thresholds), expected)
