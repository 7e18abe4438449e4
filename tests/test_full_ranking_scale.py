"""Full ranking at scale: MLP's and NeuMF's all-items fast path (the first MLP layer split in
its user and item halves) equals the pairwise forward, and full-ranking evaluation ranks a
seeded sample of users past evaluate.full_ranking_max_users."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ncf_model.config import load_ncf_config
from ncf_model.data import FullRanking, Pairs
from ncf_model.evaluate import evaluate, sample_users
from ncf_model.metrics import full_ranking_metrics
from ncf_model.models import MLP, NeuMF
from ncf_model.models import ncf as ncf_models
from ncf_model.topk import recommend_top_k, score_items

N_USERS, N_ITEMS = 9, 13
REPO = Path(__file__).resolve().parents[1]


def _randomised(model: nn.Module) -> nn.Module:
    """Weights and batch-norm statistics away from their init, so that a wrong split shows."""
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _pairwise(model: nn.Module, users: Tensor) -> Tensor:
    items = torch.arange(N_ITEMS)
    return model(users.repeat_interleave(N_ITEMS), items.repeat(len(users))).view(
        len(users), N_ITEMS)


@pytest.mark.parametrize("kind", ["mlp", "neumf"])
@pytest.mark.parametrize("tower", [((8, 4, 2), 0.0, False), ((16, 8, 4, 2), 0.3, True),
                                   ((8,), 0.0, False)],
                         ids=["plain", "dropout-batchnorm", "no-hidden-layer"])
@pytest.mark.parametrize("budget", [ncf_models.ACTIVATION_BUDGET["cpu"], 20],
                         ids=["one-block", "blocks-of-a-user"])
def test_score_all_items_equals_forward_on_every_pair(
        kind: str, tower: tuple[tuple[int, ...], float, bool], budget: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    layers, dropout, batch_norm = tower
    monkeypatch.setitem(ncf_models.ACTIVATION_BUDGET, "cpu", budget)
    model = _randomised(
        MLP(N_USERS, N_ITEMS, layers, dropout=dropout, batch_norm=batch_norm) if kind == "mlp"
        else NeuMF(N_USERS, N_ITEMS, 4, layers, dropout=dropout, batch_norm=batch_norm))
    users = torch.tensor([8, 0, 3, 3, 5])
    with torch.no_grad():
        fast = model.score_all_items(users)
        slow = _pairwise(model, users)
    assert fast.shape == (5, N_ITEMS)
    assert slow.std() > 0.5  # logits spread over items: a dropped or swapped term would show
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast[2], fast[3])  # a repeated user scores the same
    # the top-k path goes through it and gives the pairwise ranking
    assert torch.allclose(score_items(model, users, N_ITEMS), slow, rtol=1e-5, atol=1e-5)


def test_neumf_top_k_uses_the_split_layer_and_matches_the_pairwise_ranking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _randomised(NeuMF(N_USERS, N_ITEMS, 4, (8, 4)))
    seen_user, seen_item = torch.tensor([0, 0, 4]), torch.tensor([1, 2, 12])
    calls = []
    split = NeuMF.score_all_items

    def spy(self: NeuMF, users: Tensor) -> Tensor:
        calls.append(len(users))
        return split(self, users)

    monkeypatch.setattr(NeuMF, "score_all_items", spy)
    items, scores = recommend_top_k(model, n_users=N_USERS, n_items=N_ITEMS,
                                    seen_user=seen_user, seen_item=seen_item, k=3,
                                    chunk_users=4, device=torch.device("cpu"))
    assert calls == [4, 4, 1]
    with torch.no_grad():
        expected = _pairwise(model, torch.arange(N_USERS))
    expected[seen_user, seen_item] = float("-inf")
    top = torch.topk(expected, 3, dim=1)
    assert torch.equal(items, top.indices)
    assert torch.allclose(scores, torch.sigmoid(top.values), atol=1e-6)
    assert not {(0, 1), (0, 2)} & {(0, int(i)) for i in items[0]}


class ItemTable(nn.Module):
    """score(u, i) = table[u, i]; all items at once."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.table[user_idx, item_idx]

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        return self.table[user_idx]


def test_sample_users_is_seeded_sorted_and_bounded() -> None:
    users = torch.arange(100) * 3
    assert sample_users(users, None, 0) is None
    assert sample_users(users, 100, 0) is None  # no more than the limit: every user
    first = sample_users(users, 10, seed=5)
    assert first is not None and first.numel() == 10
    assert torch.equal(first, first.sort().values) and set(first.tolist()) <= set(users.tolist())
    again = sample_users(users, 10, seed=5)
    other = sample_users(users, 10, seed=6)
    assert again is not None and other is not None
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_full_ranking_on_a_user_sample_is_the_metric_of_those_users() -> None:
    g = torch.Generator().manual_seed(1)
    n_users, n_items = 40, 25
    table = torch.randn(n_users, n_items, generator=g)
    user = torch.arange(n_users).repeat_interleave(2)
    item = torch.randint(0, n_items, (2 * n_users,), generator=g)
    label = torch.tensor([1.0, 0.0]).repeat(n_users)
    pairs = Pairs(user, item, label)
    seen_user, seen_item = torch.tensor([0, 5]), torch.tensor([3, 4])
    model = ItemTable(table)

    every = evaluate(model, pairs, k=5, full=FullRanking(n_items, seen_user, seen_item))
    assert "full_sampled_users" not in every  # under the limit: not sampled, not reported
    sampled = evaluate(model, pairs, k=5, full=FullRanking(
        n_items, seen_user, seen_item, chunk_users=7, max_users=12, seed=3))
    assert sampled["full_sampled_users"] == 12
    chosen = sample_users(torch.arange(n_users), 12, 3)
    assert chosen is not None
    keep = torch.isin(user, chosen) & (label == 1)
    expected = full_ranking_metrics(table, user[keep], item[keep], seen_user, seen_item, k=5)
    assert {key: sampled[key] for key in expected} == pytest.approx(expected)
    assert sampled["hr_5"] == every["hr_5"]  # sampled metrics still use every user
    assert {key: every[key] for key in expected} != pytest.approx(expected)  # not all users
    with pytest.raises(ValueError, match="max_users"):
        FullRanking(n_items, seen_user, seen_item, max_users=0)


def test_full_ranking_max_users_is_configured(tmp_path: Path) -> None:
    config = load_ncf_config(REPO / "configs" / "ml-100k.yaml")
    assert config.evaluate.full_ranking_max_users == 50_000
    text = (REPO / "configs" / "ml-100k.yaml").read_text().replace(
        "  chunk_users: 256", "  chunk_users: 256\n  full_ranking_max_users: null\n"
        "  full_ranking_seed: 4")
    path = tmp_path / "ml-100k.yaml"
    path.write_text(text)
    unlimited = load_ncf_config(path).evaluate
    assert (unlimited.full_ranking_max_users, unlimited.full_ranking_seed) == (None, 4)
    path.write_text(text.replace("full_ranking_max_users: null", "full_ranking_max_users: 0"))
    with pytest.raises(ValueError, match="full_ranking_max_users"):
        load_ncf_config(path)
