"""ncf_model.models: shapes, MF's biases, batch norm, NeuMF pre-training, the hybrid model's
out-of-vocabulary scoring and padded tag bags, the all-items fast path, the exported
PairScorer of every kind."""

from __future__ import annotations

import pytest
import torch

from ncf_model.checkpoint import upgrade_hybrid_state
from ncf_model.config import ModelConfig
from ncf_model.features import FeatureVocabulary, SideFeatures
from ncf_model.models import GMF, MF, MLP, Hybrid, NeuMF, PairScorer, build_model
from ncf_model.models.common import Embedding

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


def _oov_scores(model: Hybrid, user_codes: torch.Tensor,
                item_bags: torch.Tensor) -> torch.Tensor:
    """An unseen user (features `user_codes`) against items of the given padded bags, each
    item unseen too: both ids take the out-of-vocabulary row."""
    n = item_bags.shape[0]
    return model.score(torch.full((n,), N_USERS), user_codes.expand(n, -1),
                       torch.full((n,), N_ITEMS), item_bags)


def test_hybrid_scores_unseen_users_and_items_from_their_features() -> None:
    torch.manual_seed(6)
    features = side_features()
    model = _build("hybrid").eval()
    assert isinstance(model, Hybrid)
    assert model.gmf.user_embedding.weight.shape == (N_USERS + 1, 4)  # + the OOV row
    assert model.gmf_user_features.weight[0].abs().sum() == 0  # "missing" adds nothing
    bags = torch.tensor([[0, 2], [1, 2], [0, 1], [2, 2]])  # x, y, (x, y), none; 2 = padding
    assert model.tag_pad == 2
    woman_a = _oov_scores(model, torch.tensor([[0, 1, 3, 0]]), bags)
    man_b = _oov_scores(model, torch.tensor([[0, 2, 4, 0]]), bags)
    unknown = _oov_scores(model, torch.tensor([[0, 0, 0, 0]]), bags)
    assert torch.isfinite(torch.cat([woman_a, man_b, unknown])).all()
    # Different user features, different scores for the same items; and the item's tags
    # change the score for the same user.
    assert not torch.allclose(woman_a, man_b) and not torch.allclose(woman_a, unknown)
    assert len(set(woman_a.tolist())) == 4
    # A known user scored through `score` with its own features is `forward`.
    user, item = torch.tensor([2, 5]), torch.tensor([3, 10])
    direct = model.score(user, features.user_codes[user], item, model.bags(features)[item])
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


def _reference_hybrid_logits(model: Hybrid, features: SideFeatures, user: torch.Tensor,
                             item: torch.Tensor) -> torch.Tensor:
    """The hybrid's logits the slow way: a loop over pairs, each item's tag vector the mean
    of its tags' embedding rows (zero without tags), the user's the sum of its codes'."""
    ends = [*features.item_offsets.tolist()[1:], features.item_tags.numel()]
    logits = []
    for u, i in zip(user.tolist(), item.tolist(), strict=True):
        tags = features.item_tags[features.item_offsets[i]:ends[i]]
        codes = features.user_codes[u]
        vectors = []
        for ids, user_features, tag_table in (
                (model.gmf, model.gmf_user_features, model.gmf_item_tags),
                (model.mlp, model.mlp_user_features, model.mlp_item_tags)):
            tag_mean = (tag_table.weight[tags].mean(0) if len(tags)
                        else torch.zeros(tag_table.weight.shape[1]))
            vectors.append((ids.user_embedding.weight[u] + user_features.weight[codes].sum(0),
                            ids.item_embedding.weight[i] + tag_mean))
        (gmf_user, gmf_item), (mlp_user, mlp_item) = vectors
        x = torch.cat([gmf_user * gmf_item, model.mlp.tower(torch.cat([mlp_user, mlp_item]))])
        logits.append(model.head(x).squeeze(-1))
    return torch.stack(logits)


def test_hybrid_scores_equal_a_per_item_mean_of_tag_embeddings() -> None:
    # Items: tags (2, 0, 1), (), (1,), (0, 0), (); users: some codes missing (0).
    vocabulary = FeatureVocabulary(((), ("F", "M"), ("a", "b"), ()), ("x", "y", "z"))
    features = SideFeatures(vocabulary, torch.tensor([[0, 1, 3, 0], [0, 0, 0, 0],
                                                      [0, 2, 4, 0]]),
                            torch.tensor([2, 0, 1, 1, 0, 0]), torch.tensor([0, 3, 3, 4, 6]))
    torch.manual_seed(8)
    model = Hybrid(features, factors=4, mlp_layers=(8, 4), id_dropout=0.2).eval()
    with torch.no_grad():  # wider than the init: differences well above rounding
        for table in (model.gmf_item_tags, model.mlp_item_tags):
            table.weight[:-1].normal_(0.0, 1.0)
    assert model.item_bags.tolist() == [[2, 0, 1], [3, 3, 3], [1, 3, 3], [0, 0, 3], [3, 3, 3]]
    assert model.gmf_item_tags.weight[3].abs().sum() == 0  # the padding row
    user = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    item = torch.tensor([0, 1, 2, 3, 4, 0, 3])
    with torch.no_grad():
        expected = _reference_hybrid_logits(model, features, user, item)
        assert torch.allclose(model(user, item), expected, atol=1e-6)
        # An item without tags: its bag of padding alone adds a zero vector.
        empty = model.gmf_item_tags(torch.tensor([[3, 3, 3]]))
        assert torch.equal(empty, torch.zeros(1, 4))


@pytest.mark.parametrize("kind", ["mf", "gmf", "hybrid"])
def test_score_all_items_is_the_pairwise_forward(kind: str) -> None:
    torch.manual_seed(9)
    model = _build(kind).eval()
    with torch.no_grad():  # non-zero biases: MF's start at 0
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.normal_(0.0, 1.0)
        users = torch.tensor([6, 0, 3])
        matrix = model.score_all_items(users)
        pairwise = model(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(3))
    assert matrix.shape == (3, N_ITEMS)
    assert torch.allclose(matrix, pairwise.view(3, N_ITEMS), atol=1e-6)


def test_a_hybrid_state_saved_with_flat_bags_loads_into_padded_bags() -> None:
    torch.manual_seed(10)
    features = side_features()
    model = _build("hybrid").eval()
    # The layout before the padded bags: flat tags and offsets, no padding row.
    legacy = {name: tensor for name, tensor in model.state_dict().items()
              if name != "item_bags"}
    legacy |= {"item_tags": features.item_tags, "item_offsets": features.item_offsets,
               "gmf_item_tags.weight": model.gmf_item_tags.weight[:-1],
               "mlp_item_tags.weight": model.mlp_item_tags.weight[:-1]}
    placeholder = SideFeatures.placeholder(features.vocabulary, n_users=N_USERS,
                                           n_items=N_ITEMS, bag_width=2)
    loaded = Hybrid(placeholder, factors=4, mlp_layers=(8, 4, 2)).eval()
    loaded.load_state_dict(upgrade_hybrid_state(legacy, features.vocabulary.n_tags))
    user, item = torch.arange(N_USERS).repeat(2)[:N_ITEMS], torch.arange(N_ITEMS)
    assert torch.equal(loaded.item_bags, model.item_bags)
    assert torch.allclose(loaded(user, item), model(user, item))


@pytest.mark.parametrize("shape", [(50,), (10, 5)])
def test_the_cpu_training_lookup_matches_nn_embedding(shape: tuple[int, ...]) -> None:
    # The models' Embedding takes a faster backward (zeros + index_add_) when training on
    # the CPU: the same rows forward, the same gradient (repeated indices summed).
    torch.manual_seed(0)
    ours = Embedding(7, 4)
    theirs = torch.nn.Embedding(7, 4)
    theirs.load_state_dict(ours.state_dict())
    index = torch.randint(7, shape)
    upstream = torch.randn(*shape, 4)
    out = ours(index)
    (out * upstream).sum().backward()
    (theirs(index) * upstream).sum().backward()
    assert torch.equal(out, theirs(index))
    assert ours.weight.grad is not None and theirs.weight.grad is not None
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    assert out.grad_fn is not None and "GatherRows" in type(out.grad_fn).__name__
    ours.eval()  # eval mode (and CUDA, and no grad) is nn.Embedding's own forward
    assert "GatherRows" not in type(ours(index).grad_fn).__name__
    assert isinstance(MF(3, 7, 4).user_embedding, Embedding)
