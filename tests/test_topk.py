"""ncf_model.topk: top-K unseen items per user, chunked."""

from __future__ import annotations

import pytest
import torch

from ncf_model.models import MF, NeuMF
from ncf_model.topk import popularity_top_k, recommend_top_k

N_USERS, N_ITEMS, K = 9, 12, 4
CPU = torch.device("cpu")


@pytest.fixture
def model() -> NeuMF:
    torch.manual_seed(0)
    model = NeuMF(N_USERS, N_ITEMS, factors=4, mlp_layers=(8, 4))
    with torch.no_grad():  # wider embeddings than the init: well separated scores, no ties
        for embedding in (model.gmf.user_embedding, model.gmf.item_embedding,
                          model.mlp.user_embedding, model.mlp.item_embedding):
            embedding.weight.normal_(0.0, 1.0)
    return model


@pytest.fixture
def seen() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    user = torch.randint(N_USERS, (40,), generator=g)
    item = torch.randint(N_ITEMS, (40,), generator=g)
    return user, item


def _brute_force(model, seen_user, seen_item, k):
    items, scores = [], []
    with torch.no_grad():
        for u in range(N_USERS):
            logits = model(torch.full((N_ITEMS,), u), torch.arange(N_ITEMS))
            banned = set(seen_item[seen_user == u].tolist())
            ranked = [i for i in torch.argsort(logits, descending=True).tolist()
                      if i not in banned][:k]
            items.append(ranked)
            scores.append(torch.sigmoid(logits[ranked]).tolist())
    return torch.tensor(items), torch.tensor(scores)


def test_no_seen_item_is_recommended_and_brute_force_agrees(model, seen) -> None:
    items, scores = recommend_top_k(model, n_users=N_USERS, n_items=N_ITEMS, seen_user=seen[0],
                                    seen_item=seen[1], k=K, chunk_users=4, device=CPU)
    assert items.shape == scores.shape == (N_USERS, K)
    assert (items.dtype, scores.dtype) == (torch.int64, torch.float32)
    seen_pairs = set(zip(*(t.tolist() for t in seen), strict=True))
    assert not any((u, i) in seen_pairs for u in range(N_USERS) for i in items[u].tolist())
    assert all(len(set(row)) == K for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first

    expected_items, expected_scores = _brute_force(model, *seen, K)
    assert torch.equal(items, expected_items)
    assert torch.allclose(scores, expected_scores)


def test_a_model_with_score_all_items_is_ranked_through_it(
        seen, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    model = MF(N_USERS, N_ITEMS, factors=4)
    with torch.no_grad():  # well separated scores, biases included
        for parameter in model.parameters():
            parameter.normal_(0.0, 1.0)
    chunks: list[int] = []
    score_all_items = MF.score_all_items

    def spy(self: MF, users: torch.Tensor) -> torch.Tensor:
        chunks.append(len(users))
        return score_all_items(self, users)

    monkeypatch.setattr(MF, "score_all_items", spy)
    items, scores = recommend_top_k(model, n_users=N_USERS, n_items=N_ITEMS, seen_user=seen[0],
                                    seen_item=seen[1], k=K, chunk_users=4, device=CPU)
    assert chunks == [4, 4, 1]  # one (C, n_items) matrix per chunk, no pairwise calls
    expected_items, expected_scores = _brute_force(model, *seen, K)
    assert torch.equal(items, expected_items)
    assert torch.allclose(scores, expected_scores)


@pytest.mark.parametrize("chunk_users", [1, 2, 5, 100])
def test_chunk_size_does_not_change_the_result(model, seen, chunk_users) -> None:
    kwargs = dict(n_users=N_USERS, n_items=N_ITEMS, seen_user=seen[0], seen_item=seen[1], k=K,
                  device=CPU)
    reference = recommend_top_k(model, chunk_users=N_USERS, **kwargs)
    chunked = recommend_top_k(model, chunk_users=chunk_users, **kwargs)
    assert torch.equal(chunked[0], reference[0])
    assert torch.allclose(chunked[1], reference[1])


def test_a_user_with_too_few_unseen_items_is_named(model) -> None:
    seen_user = torch.full((N_ITEMS - 2,), 7)
    seen_item = torch.arange(N_ITEMS - 2)
    with pytest.raises(ValueError, match="user_idx 7 has 2 unseen item"):
        recommend_top_k(model, n_users=N_USERS, n_items=N_ITEMS, seen_user=seen_user,
                        seen_item=seen_item, k=3, chunk_users=4, device=CPU)
    items, _ = recommend_top_k(model, n_users=N_USERS, n_items=N_ITEMS, seen_user=seen_user,
                               seen_item=seen_item, k=2, chunk_users=4, device=CPU)
    assert sorted(items[7].tolist()) == [N_ITEMS - 2, N_ITEMS - 1]


def test_popularity_top_k_skips_seen_items_and_breaks_ties_by_index() -> None:
    counts = torch.tensor([1, 5, 5, 0, 3])  # items 1 and 2 tie at the top
    items, scores = popularity_top_k(counts, users=torch.tensor([0, 3]),
                                     seen_user=torch.tensor([0, 0, 1]),
                                     seen_item=torch.tensor([1, 4, 2]), k=3)
    # user 0 has seen items 1 and 4; user 3 has seen nothing (user 1's pair is not theirs).
    assert items.tolist() == [[2, 0, 3], [1, 2, 4]]
    assert scores[1].tolist() == pytest.approx([5 / 14, 5 / 14, 3 / 14])
    with pytest.raises(ValueError, match="k=6"):
        popularity_top_k(counts, users=torch.tensor([0]), seen_user=torch.tensor([0]),
                         seen_item=torch.tensor([0]), k=6)
