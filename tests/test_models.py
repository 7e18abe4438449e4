"""ncf_model.models: shapes, MF's biases, batch norm, NeuMF pre-training, the hybrid model's
out-of-vocabulary scoring, the exported PairScorer of every kind."""

from __future__ import annotations

import pytest
import torch

from ncf_model.config import ModelConfig
from ncf_model.features import FeatureVocabulary, SideFeatures
from ncf_model.models import GMF, MF, MLP, Hybrid, NeuMF, PairScorer, build_model

N_USERS, N_ITEMS = 7, 11
KINDS = ("mf", "gmf", "mlp", "neumf", "hybrid")


def side_features() -> SideFeatures:
    """Users: gender F/M alternating, occupation a/b/c cycling; items: tags x, y, both or none."""
    vocabulary = FeatureVocabulary(((), ("F", "M"), ("a", "b", "c"), ()), ("x", "y"))
    # codes: 0 missing, 1-2 gender, 3-5 occupation
    user_codes = torch.tensor([[0, 1 + u % 2, 3 + u % 3, 0] for u in range(N_USERS)])
    bags = [[0], [1], [0, 1], []] * 3
    bags = bags[:N_ITEMS]
    item_tags = torch.tensor([t for bag in bags for t in bag])
    item_offsets = torch.tensor([0, *torch.tensor([len(b) for b in bags]).cumsum(0)[:-1]])
    return SideFeatures(vocabulary, user_codes, item_tags, item_offsets)


def _build(kind: str, **options: object) -> torch.nn.Module:
    cfg = ModelConfig(kind=kind, factors=4, mlp_layers=(8, 4, 2), **options)  # type: ignore[arg-type]
    return build_model(cfg, N_USERS, N_ITEMS, side_features() if kind == "hybrid" else None)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(N_USERS, (5,), generator=g), torch.randint(N_ITEMS, (5,), generator=g))


@pytest.mark.parametrize("kind", KINDS)
def test_build_model_gives_one_logit_per_pair(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = _build(kind)
    logits = model(*batch)
    assert logits.shape == (5,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert type(model).__name__.lower() == kind


def test_mf_is_a_dot_product_plus_user_item_and_global_bias() -> None:
    model = MF(N_USERS, N_ITEMS, factors=2)
    assert model.user_bias.weight.abs().sum() == 0 and model.global_bias.item() == 0
    assert model.user_embedding.weight.std().item() == pytest.approx(0.01, rel=0.5)
    with torch.no_grad():
        model.user_embedding.weight[3] = torch.tensor([1.0, 2.0])
        model.item_embedding.weight[5] = torch.tensor([0.5, -1.0])
        model.user_bias.weight[3] = 0.25
        model.item_bias.weight[5] = -0.125
        model.global_bias.fill_(2.0)
    # 1 * 0.5 + 2 * -1 + 0.25 - 0.125 + 2 = 0.625
    assert model(torch.tensor([3]), torch.tensor([5])).tolist() == [0.625]
    with torch.no_grad():
        model.user_embedding.weight.zero_()
    # Without factors only the biases are left: b_u + b_i + b.
    assert model(torch.tensor([3, 0]), torch.tensor([5, 5])).tolist() == [2.125, 1.875]


@pytest.mark.parametrize("kind", ["mlp", "neumf", "hybrid"])
def test_batch_norm_follows_each_tower_layer_only_when_asked(kind: str, batch) -> None:
    torch.manual_seed(4)
    plain, normed = _build(kind), _build(kind, batch_norm=True)
    norms = [m for m in normed.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert not [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [4, 2]  # after Linear(8, 4) and Linear(4, 2)
    assert all(m.weight.eq(1).all() and m.bias.eq(0).all() for m in norms)
    normed.train()
    normed(*batch)  # a training step's forward moves the running statistics
    assert norms[0].num_batches_tracked.item() == 1
    assert not torch.equal(norms[0].running_mean, torch.zeros(4))
    normed.eval()
    assert torch.equal(normed(*batch), normed(*batch))  # eval: running stats, deterministic


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


@pytest.mark.parametrize(("kind", "options"), [
    ("mf", {}), ("gmf", {}), ("mlp", {"batch_norm": True}), ("neumf", {"dropout": 0.2}),
    ("neumf", {"batch_norm": True}), ("hybrid", {"batch_norm": True, "id_dropout": 0.5})])
def test_pair_scorer_exports_with_a_dynamic_batch(kind: str, options: dict, batch) -> None:
    torch.manual_seed(3)
    model = _build(kind, **options)
    model.train()
    model(*batch)  # non-trivial batch-norm statistics
    scorer = PairScorer(model.eval())
    example = torch.stack(batch, dim=1)  # (5, 2)
    exported = torch.export.export(scorer, (example,),
                                   dynamic_shapes={"pairs": {0: torch.export.Dim("batch")}})
    other = torch.tensor([[0, 0], [6, 10], [3, 4]])
    assert torch.allclose(exported.module()(other), scorer(other))
    assert exported.module()(example).shape == (5,)
    if kind == "hybrid":  # the feature tables travel inside the exported program
        buffers = dict(exported.named_buffers())
        assert torch.equal(buffers["model.user_codes"], side_features().user_codes)


def test_from_pretrained_keeps_batch_norm_statistics(batch) -> None:
    torch.manual_seed(5)
    gmf = GMF(N_USERS, N_ITEMS, 4)
    mlp = MLP(N_USERS, N_ITEMS, (8, 4), batch_norm=True)
    mlp(*batch)  # training mode: running statistics move away from (0, 1)
    gmf.eval(), mlp.eval()
    neumf = NeuMF.from_pretrained(gmf, mlp).eval()
    assert torch.equal(neumf.mlp.tower[1].running_mean, mlp.tower[1].running_mean)
    assert torch.allclose(neumf(*batch), 0.5 * gmf(*batch) + 0.5 * mlp(*batch))


def test_hybrid_without_side_features_is_an_error() -> None:
    with pytest.raises(ValueError, match="'hybrid' needs side features"):
        build_model(ModelConfig(kind="hybrid"), N_USERS, N_ITEMS)
    with pytest.raises(ValueError, match="cover 7 users x 11 items, the model 8 x 11"):
        build_model(ModelConfig(kind="hybrid"), N_USERS + 1, N_ITEMS, side_features())


def _oov_scores(model: Hybrid, user_codes: torch.Tensor, item_tags: torch.Tensor,
                item_offsets: torch.Tensor) -> torch.Tensor:
    """An unseen user (features `user_codes`) against items 0..N-1 of the given bags,
    each item unseen too: both ids take the out-of-vocabulary row."""
    n = item_offsets.shape[0]
    return model.score(torch.full((n,), N_USERS), user_codes.expand(n, -1),
                       torch.full((n,), N_ITEMS), torch.arange(n),
                       item_tags=item_tags, item_offsets=item_offsets)


def test_hybrid_scores_unseen_users_and_items_from_their_features() -> None:
    torch.manual_seed(6)
    features = side_features()
    model = _build("hybrid").eval()
    assert isinstance(model, Hybrid)
    assert model.gmf.user_embedding.weight.shape == (N_USERS + 1, 4)  # + the OOV row
    assert model.gmf_user_features.weight[0].abs().sum() == 0  # "missing" adds nothing
    bags, offsets = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 2])  # x, y, (x,y), -
    woman_a = _oov_scores(model, torch.tensor([[0, 1, 3, 0]]), bags, offsets)
    man_b = _oov_scores(model, torch.tensor([[0, 2, 4, 0]]), bags, offsets)
    unknown = _oov_scores(model, torch.tensor([[0, 0, 0, 0]]), bags, offsets)
    assert torch.isfinite(torch.cat([woman_a, man_b, unknown])).all()
    # Different user features, different scores for the same items; and the item's tags
    # change the score for the same user.
    assert not torch.allclose(woman_a, man_b) and not torch.allclose(woman_a, unknown)
    assert len(set(woman_a.tolist())) == 4
    # A known user scored through `score` with its own features is `forward`.
    user, item = torch.tensor([2, 5]), torch.tensor([3, 10])
    direct = model.score(user, features.user_codes[user], item, item,
                         item_tags=features.item_tags, item_offsets=features.item_offsets)
    assert torch.allclose(direct, model(user, item))


def test_hybrid_id_dropout_swaps_ids_for_the_oov_row_in_training_only(batch) -> None:
    torch.manual_seed(7)
    model = _build("hybrid", id_dropout=0.5)
    assert isinstance(model, Hybrid)
    idx = torch.zeros(10_000, dtype=torch.long)
    dropped = model._drop(idx, N_USERS)
    assert set(dropped.unique().tolist()) == {0, N_USERS}
    assert (dropped == N_USERS).float().mean().item() == pytest.approx(0.5, abs=0.02)
    model.eval()
    assert torch.equal(model(*batch), model(*batch))
    model.train()
    assert not torch.equal(model(*batch), model(*batch))  # other ids dropped each call
