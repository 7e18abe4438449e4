"""ncf_model.recency and the recency-weighted EASE^R: ages against a pandas reference, the
weights, held-out items appended after the training sequence, weighted scores against a
dense reference, and the half-life chosen on validation with lambda."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from ncf_model import checkpoint
from ncf_model.config import EaseConfig
from ncf_model.data import Pairs
from ncf_model.evaluate import evaluate
from ncf_model.families import Ease, ProtocolData, from_recipe
from ncf_model.models.common import PairScorer
from ncf_model.models.ease import EASE, fit_ease
from ncf_model.recency import history_ages, positive_ages, recency_weights

K = 5
N_USERS, N_ITEMS, N_NEG = 60, 30, 8


def test_history_ages_match_a_pandas_reference() -> None:
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 7, (200,), generator=g)
    order = torch.randint(0, 15, (200,), generator=g).double()  # many ties
    ages = history_ages(users, order, n_users=9)  # users 7 and 8 have nothing
    frame = pd.DataFrame({"user": users.numpy(), "order": order.numpy()})
    # strictly later positives of the same user: rank among the user's, latest first, ties
    # at their lowest rank
    expected = frame.groupby("user")["order"].rank(method="min", ascending=False) - 1
    assert ages.tolist() == expected.astype(int).tolist()


def test_recency_weights_halve_every_half_life() -> None:
    weights = recency_weights(torch.tensor([0, 1, 2, 10]), 2.0)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([1.0, 2 ** -0.5, 0.5, 2 ** -5])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="half_life"):
            recency_weights(torch.tensor([0]), bad)


def _pairs(rows: list[tuple[int, int, int]]) -> Pairs:
    user, item, label = zip(*rows, strict=True)
    return Pairs(torch.tensor(user), torch.tensor(item), torch.tensor(label, dtype=torch.float32))


def test_positive_ages_append_held_out_items_and_age_what_the_cap_dropped() -> None:
    # User 0's train positives 5, 6, 7, 8 in that order; the lake kept the latest two.
    sequences = (torch.tensor([0, 0]), torch.tensor([7, 8]), torch.tensor([0, 1]))
    positives = {"train": _pairs([(0, 5, 1), (0, 6, 1), (0, 7, 1), (0, 8, 1)]),
                 "validation": _pairs([(0, 9, 1)]), "test": _pairs([(0, 4, 1)])}
    splits = ("train", "validation", "test")
    union = _pairs([(0, i, 1) for i in (5, 6, 7, 8, 9, 4)])
    ages = positive_ages(sequences, positives, splits, union, n_users=1, n_items=10)
    # test (4) is the latest, then validation (9), then 8, 7; 5 and 6 are older than all kept
    assert ages.tolist() == [4, 4, 3, 2, 1, 0]
    train_only = positive_ages(sequences, positives, ("train",), positives["train"],
                               n_users=1, n_items=10)
    assert train_only.tolist() == [2, 2, 1, 0]


def test_weighted_scores_are_the_weighted_row_times_b_and_export() -> None:
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, 8, (40,), generator=g)
    items = torch.randint(0, 6, (40,), generator=g)
    values = torch.rand(40, generator=g)
    weights = fit_ease(users, items, 9, 6, l2=1.0, device="cpu")  # user 8: no history
    model = EASE.from_pairs(weights, users, items, 9, values).eval()
    x = torch.zeros(9, 6)
    for user, item, value in zip(users.tolist(), items.tolist(), values.tolist(), strict=True):
        if x[user, item] == 0:  # a duplicate pair keeps its first value
            x[user, item] = value
    full = model.score_all_items(torch.arange(9))
    assert torch.allclose(full, x @ weights, atol=1e-6)
    grid_users, grid_items = torch.arange(9).repeat_interleave(6), torch.arange(6).repeat(9)
    assert torch.allclose(model(grid_users, grid_items), full[grid_users, grid_items],
                          atol=1e-6)
    binary = EASE.from_pairs(weights, users, items, 9)
    assert torch.equal(binary.history_weights, torch.ones_like(binary.history_weights))
    scorer = PairScorer(model).eval()
    example = torch.tensor([[0, 1], [3, 2], [8, 4], [5, 5]])
    program = torch.export.export(scorer, (example,), dynamic_shapes={
        "pairs": {0: torch.export.Dim("batch")}}).module()
    other = torch.tensor([[6, 0], [1, 3], [4, 5]])
    assert torch.allclose(program(other), scorer(other))
    with pytest.raises(ValueError, match="values"):
        EASE.from_pairs(weights, users, items, 9, values[:3])
    # the served checkpoint keeps the weights; one from before them loads as binary
    state = model.state_dict()
    rebuilt = checkpoint._FROM_STATE["ease"](state)
    assert torch.equal(rebuilt.score_all_items(torch.arange(9)), full)
    older = checkpoint._FROM_STATE["ease"](
        {name: value for name, value in state.items() if name != "history_weights"})
    assert torch.allclose(older.score_all_items(torch.arange(9)),
                          binary.score_all_items(torch.arange(9)))


def _chains() -> tuple[ProtocolData, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each user walks the items in a circle from a random start (i, i+1, i+2, ...): the next
    item follows the latest, so the latest items of a history say the most."""
    rows: dict[str, list[tuple[int, int, int]]] = {"train": [], "validation": [], "test": []}
    seq_user, seq_item, seq_pos = [], [], []
    for user in range(N_USERS):
        rng = random.Random(user)
        start, length = rng.randrange(N_ITEMS), rng.randint(8, 14)
        walk = [(start + step) % N_ITEMS for step in range(length)]
        for position, item in enumerate(walk[:-2]):
            rows["train"].append((user, item, 1))
            seq_user.append(user)
            seq_item.append(item)
            seq_pos.append(position)
        others = [i for i in range(N_ITEMS) if i not in walk]
        for name, positive in (("validation", walk[-2]), ("test", walk[-1])):
            rows[name] += [(user, positive, 1)] + [(user, i, 0)
                                                   for i in rng.sample(others, N_NEG)]
    pairs = {name: _pairs(r) for name, r in rows.items()}
    positives = {name: Pairs(p.user[p.label == 1], p.item[p.label == 1],
                             p.label[p.label == 1]) for name, p in pairs.items()}
    data = ProtocolData(positives=positives, validation=pairs["validation"],
                        test=pairs["test"], n_users=N_USERS, n_items=N_ITEMS, k=K,
                        device=torch.device("cpu"), full_ranking=False)
    return data, (torch.tensor(seq_user), torch.tensor(seq_item), torch.tensor(seq_pos))


def test_the_half_life_is_chosen_with_lambda_on_validation_and_refits_with_it() -> None:
    data, sequences = _chains()
    cfg = EaseConfig(l2_grid=(1.0, 10.0), half_life_grid=(1.0, 3.0))
    metric = f"ndcg_{K}"
    selected = Ease(cfg, metric, sequences).select(data)
    half_life = selected.settings["half_life"]
    assert half_life in (1.0, 3.0)  # recency beats the binary X on a walk
    l2 = selected.settings["l2"]
    weighted = selected.metrics[f"val_{metric}_l2_{l2:g}_half_life_{half_life:g}"]
    assert selected.metrics[f"val_{metric}_l2_{l2:g}"] == weighted
    binary = Ease(cfg, metric, None).select(data)  # no time order: binary X only
    assert binary.settings["half_life"] is None
    assert weighted > binary.metrics[f"val_{metric}_l2_{binary.settings['l2']:g}"]
    assert evaluate(selected.scorer, data.validation, K)[metric] == pytest.approx(weighted)

    # (b): the validation item is each user's latest (weight 1), the latest train item
    # one step older.
    refit = Ease(cfg, metric, sequences).refit(data, ("train", "validation"), selected.settings)
    assert isinstance(refit, EASE)
    for user in (0, 1):
        begin, end = refit.history_offsets[user], refit.history_offsets[user + 1]
        held = dict(zip(refit.history_items[begin:end].tolist(),
                        refit.history_weights[begin:end].tolist(), strict=True))
        validation_item = int(data.positives["validation"].item[user])
        latest_train = int(sequences[1][sequences[0] == user][-1])
        assert held[validation_item] == 1.0
        assert held[latest_train] == pytest.approx(0.5 ** (1 / half_life))
    with pytest.raises(ValueError, match="sequences/"):
        Ease(cfg, metric, None).refit(data, ("train",), selected.settings)


def test_a_recency_recipe_needs_the_time_order() -> None:
    _data, sequences = _chains()
    recipe = {"family": "ease", "settings": {"l2": 10.0, "half_life": 3.0}}
    assert from_recipe(recipe, ease=EaseConfig(), metric="ndcg_5") is None
    rebuilt = from_recipe(recipe, ease=EaseConfig(), metric="ndcg_5", sequences=sequences)
    assert isinstance(rebuilt, Ease) and rebuilt.sequences is sequences
    older = {"family": "ease", "settings": {"l2": 10.0}}  # from before recency
    assert isinstance(from_recipe(older, ease=EaseConfig(), metric="ndcg_5"), Ease)
