"""ncf_model.models: shapes, NeuMF pre-training, the exported PairScorer."""

from __future__ import annotations

import pytest
import torch

from ncf_model.config import ModelConfig
from ncf_model.models import GMF, MLP, NeuMF, PairScorer, build_model

N_USERS, N_ITEMS = 7, 11


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(N_USERS, (5,), generator=g), torch.randint(N_ITEMS, (5,), generator=g))


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
def test_build_model_gives_one_logit_per_pair(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, factors=4, mlp_layers=(8, 4, 2)), N_USERS, N_ITEMS)
    logits = model(*batch)
    assert logits.shape == (5,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_features_and_init() -> None:
    torch.manual_seed(0)
    gmf, mlp = GMF(N_USERS, N_ITEMS, factors=6), MLP(N_USERS, N_ITEMS, (10, 8, 3), dropout=0.1)
    user, item = torch.tensor([0, 6]), torch.tensor([3, 10])
    assert gmf.features(user, item).shape == (2, 6)
    assert mlp.features(user, item).shape == (2, 3)
    assert mlp.user_embedding.weight.shape == (N_USERS, 5)  # mlp_layers[0] // 2
    assert gmf.user_embedding.weight.std().item() == pytest.approx(0.01, rel=0.5)
    assert gmf.head.bias.item() == 0.0
    assert sum(isinstance(m, torch.nn.Dropout) for m in mlp.tower) == 2


def test_from_pretrained_mixes_the_heads_by_alpha(batch) -> None:
    torch.manual_seed(1)
    gmf, mlp = GMF(N_USERS, N_ITEMS, 4), MLP(N_USERS, N_ITEMS, (8, 4))
    with torch.no_grad():  # give the heads non-trivial biases
        gmf.head.bias.fill_(0.3)
        mlp.head.bias.fill_(-0.7)
    neumf = NeuMF.from_pretrained(gmf, mlp, alpha=0.25)

    expected_weight = torch.cat([0.25 * gmf.head.weight, 0.75 * mlp.head.weight], dim=1)
    assert torch.equal(neumf.head.weight, expected_weight)
    assert neumf.head.bias.item() == pytest.approx(0.25 * 0.3 - 0.75 * 0.7)
    assert torch.equal(neumf.gmf.user_embedding.weight, gmf.user_embedding.weight)
    assert torch.equal(neumf.mlp.tower[0].weight, mlp.tower[0].weight)
    assert torch.allclose(neumf(*batch), 0.25 * gmf(*batch) + 0.75 * mlp(*batch))


def test_from_pretrained_rejects_mismatched_parts() -> None:
    with pytest.raises(ValueError, match="same data"):
        NeuMF.from_pretrained(GMF(N_USERS, N_ITEMS, 4), MLP(N_USERS + 1, N_ITEMS, (8, 4)))
    with pytest.raises(ValueError, match="alpha"):
        NeuMF.from_pretrained(GMF(N_USERS, N_ITEMS, 4), MLP(N_USERS, N_ITEMS, (8, 4)), alpha=2)


def test_pair_scorer_is_the_model_sigmoid(batch) -> None:
    torch.manual_seed(2)
    model = NeuMF(N_USERS, N_ITEMS, 4, (8, 4)).eval()
    probabilities = PairScorer(model)(torch.stack(batch, dim=1))
    assert probabilities.dtype == torch.float32
    assert torch.allclose(probabilities, torch.sigmoid(model(*batch)))


def test_pair_scorer_exports_with_a_dynamic_batch(batch) -> None:
    torch.manual_seed(3)
    scorer = PairScorer(NeuMF(N_USERS, N_ITEMS, 4, (8, 4), dropout=0.2).eval())
    example = torch.stack(batch, dim=1)  # (5, 2)
    exported = torch.export.export(scorer, (example,),
                                   dynamic_shapes={"pairs": {0: torch.export.Dim("batch")}})
    other = torch.tensor([[0, 0], [6, 10], [3, 4]])
    assert torch.allclose(exported.module()(other), scorer(other))
    assert exported.module()(example).shape == (5,)
