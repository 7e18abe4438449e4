"""Neural Collaborative Filtering models (He et al., WWW 2017): GMF, MLP and NeuMF, plus
MF (a dot product with biases, Rendle et al., RecSys 2020) and Hybrid (NeuMF with side
features, for users and items never seen in training).

Every model maps a batch of (user_idx, item_idx) pairs to one logit per pair; the
sigmoid is applied by the loss and by `PairScorer`, the module that is exported for
serving. NeuMF is built from a GMF and an MLP module, so the paper's pre-training is two
`load_state_dict` calls (`NeuMF.from_pretrained`). No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ncf_model.config import ModelConfig
from ncf_model.features import SideFeatures, pad_bags

EMBEDDING_STD = 0.01  # the paper's N(0, 0.01) embedding initialisation


def _init_weights(module: nn.Module) -> None:
    """Initialise every embedding, linear and batch-norm layer below `module`."""
    for name, sub in module.named_modules():
        leaf = name.split(".")[-1]
        if isinstance(sub, nn.Embedding | nn.EmbeddingBag):
            if leaf.endswith("_bias"):
                nn.init.zeros_(sub.weight)  # MF's biases start at 0: the dot product decides
            else:
                nn.init.normal_(sub.weight, mean=0.0, std=EMBEDDING_STD)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()  # a missing feature adds nothing
        elif isinstance(sub, nn.Linear):
            if leaf == "head":
                # The output layer feeds a sigmoid, not a ReLU: Glorot keeps its logits near 0.
                nn.init.xavier_uniform_(sub.weight)
            else:
                nn.init.kaiming_uniform_(sub.weight, nonlinearity="relu")
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.BatchNorm1d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class MF(nn.Module):
    """Matrix factorisation: <p_u, q_i> + b_u + b_i + b. Rendle et al. (2020) show that a
    well-tuned dot product rivals NeuMF; this is the baseline to beat."""

    global_bias: nn.Parameter

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = nn.Embedding(n_users, factors)
        self.item_embedding = nn.Embedding(n_items, factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        _init_weights(self)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        dot = (self.user_embedding(user_idx) * self.item_embedding(item_idx)).sum(-1)  # (B,)
        bias = self.user_bias(user_idx).squeeze(-1) + self.item_bias(item_idx).squeeze(-1)  # (B,)
        return dot + bias + self.global_bias  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item: one matrix product."""
        dot = self.user_embedding(user_idx) @ self.item_embedding.weight.T  # (C, n_items)
        bias = self.user_bias(user_idx) + self.item_bias.weight.T  # (C, 1) + (1, n_items)
        return dot + bias + self.global_bias  # (C, n_items)


class GMF(nn.Module):
    """Generalised matrix factorisation: a linear head on the element-wise product."""

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = nn.Embedding(n_users, factors)
        self.item_embedding = nn.Embedding(n_items, factors)
        self.head = nn.Linear(factors, 1)
        _init_weights(self)

    @property
    def n_features(self) -> int:
        return self.factors

    def interact(self, user: Tensor, item: Tensor) -> Tensor:
        return user * item  # (B, factors)

    def features(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.interact(self.user_embedding(user_idx), self.item_embedding(item_idx))

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.head(self.features(user_idx, item_idx)).squeeze(-1)  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item: the head's weights
        fold into the user vectors, sum_f w_f u_f q_f = (u * w) @ Q^T, one matrix product."""
        weighted = self.user_embedding(user_idx) * self.head.weight  # (C, factors)
        return weighted @ self.item_embedding.weight.T + self.head.bias  # (C, n_items)


class MLP(nn.Module):
    """User and item embeddings of `layers[0] // 2` each, concatenated, then a ReLU tower
    (Linear, [BatchNorm1d], ReLU, [Dropout] per layer)."""

    def __init__(self, n_users: int, n_items: int, layers: Sequence[int], *,
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        if not layers or layers[0] % 2:
            raise ValueError(f"MLP layers {list(layers)}: need at least one size, the first even "
                             "(user and item embeddings are half of it each)")
        self.n_users, self.n_items = n_users, n_items
        self.layers, self.dropout, self.batch_norm = tuple(layers), dropout, batch_norm
        self.user_embedding = nn.Embedding(n_users, layers[0] // 2)
        self.item_embedding = nn.Embedding(n_items, layers[0] // 2)
        tower: list[nn.Module] = []
        for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
            tower.append(nn.Linear(n_in, n_out))
            if batch_norm:
                tower.append(nn.BatchNorm1d(n_out))
            tower.append(nn.ReLU())
            if dropout > 0:
                tower.append(nn.Dropout(dropout))
        self.tower = nn.Sequential(*tower)
        self.head = nn.Linear(layers[-1], 1)
        _init_weights(self)

    @property
    def n_features(self) -> int:
        return self.layers[-1]

    def interact(self, user: Tensor, item: Tensor) -> Tensor:
        return self.tower(torch.cat([user, item], dim=-1))  # (B, layers[0]) -> (B, layers[-1])

    def features(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.interact(self.user_embedding(user_idx), self.item_embedding(item_idx))

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.head(self.features(user_idx, item_idx)).squeeze(-1)  # (B,)


class NeuMF(nn.Module):
    """GMF and MLP side by side, their last hidden vectors concatenated into one head.

    `self.gmf.head` and `self.mlp.head` are not used by `forward`; they are kept so that a
    trained GMF's or MLP's state dict loads into `self.gmf` / `self.mlp` unchanged.
    """

    def __init__(self, n_users: int, n_items: int, factors: int, mlp_layers: Sequence[int], *,
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.gmf = GMF(n_users, n_items, factors)
        self.mlp = MLP(n_users, n_items, mlp_layers, dropout=dropout, batch_norm=batch_norm)
        self.head = nn.Linear(self.gmf.n_features + self.mlp.n_features, 1)
        _init_weights(self)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        x = torch.cat([self.gmf.features(user_idx, item_idx),  # (B, factors)
                       self.mlp.features(user_idx, item_idx)],  # (B, mlp_layers[-1])
                      dim=-1)
        return self.head(x).squeeze(-1)  # (B,)

    @classmethod
    def from_pretrained(cls, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> NeuMF:
        """NeuMF initialised from a trained GMF and MLP (the paper's pre-training).

        The head is concat(alpha * gmf.head, (1 - alpha) * mlp.head) and the bias the same
        mix, so the new model's logit is exactly alpha * gmf + (1 - alpha) * mlp.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: must be in [0, 1]")
        if (gmf.n_users, gmf.n_items) != (mlp.n_users, mlp.n_items):
            raise ValueError(f"GMF has {gmf.n_users} users x {gmf.n_items} items but MLP has "
                             f"{mlp.n_users} x {mlp.n_items}: pre-train both on the same data")
        model = cls(gmf.n_users, gmf.n_items, gmf.factors, mlp.layers, dropout=mlp.dropout,
                    batch_norm=mlp.batch_norm)
        model.gmf.load_state_dict(gmf.state_dict())
        model.mlp.load_state_dict(mlp.state_dict())
        with torch.no_grad():
            model.head.weight.copy_(torch.cat([alpha * gmf.head.weight,
                                               (1 - alpha) * mlp.head.weight], dim=1))
            model.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)
        return model.to(gmf.head.weight.device)


class Hybrid(nn.Module):
    """NeuMF whose user vectors add embedded user features (a sum over the fields) and whose
    item vectors add the mean of embedded tags (genres), in both the GMF and the MLP path.

    Id embeddings have one extra row, `n_users` (`n_items`): the out-of-vocabulary id. In
    training, each pair's id is swapped for it with probability `id_dropout`, so the model
    learns to score from features alone; `score` then serves ids it never saw. The feature
    tables of the training users and items are buffers: `forward(user_idx, item_idx)` needs
    nothing else, and an exported `PairScorer` carries them. Item tags are held as padded
    bags (`ncf_model.features.pad_bags`, padding code `tag_pad` = n_tags): a batch gathers
    its own items' rows, whatever the number of items.
    """

    user_codes: Tensor
    item_bags: Tensor

    def __init__(self, features: SideFeatures, factors: int, mlp_layers: Sequence[int], *,
                 dropout: float = 0.0, batch_norm: bool = False,
                 id_dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout={id_dropout}: must be in [0, 1)")
        self.n_users, self.n_items = features.n_users, features.n_items
        self.vocabulary, self.id_dropout = features.vocabulary, id_dropout
        self.gmf = GMF(self.n_users + 1, self.n_items + 1, factors)  # + the OOV row
        self.mlp = MLP(self.n_users + 1, self.n_items + 1, mlp_layers, dropout=dropout,
                       batch_norm=batch_norm)
        half = mlp_layers[0] // 2
        n_codes, self.tag_pad = features.vocabulary.n_user_codes, features.vocabulary.n_tags
        self.gmf_user_features = nn.Embedding(n_codes, factors, padding_idx=0)
        self.mlp_user_features = nn.Embedding(n_codes, half, padding_idx=0)
        # One more row than tags, the padding: a bag of padding alone is a zero vector.
        self.gmf_item_tags = nn.EmbeddingBag(self.tag_pad + 1, factors, mode="mean",
                                             padding_idx=self.tag_pad)
        self.mlp_item_tags = nn.EmbeddingBag(self.tag_pad + 1, half, mode="mean",
                                             padding_idx=self.tag_pad)
        self.head = nn.Linear(self.gmf.n_features + self.mlp.n_features, 1)
        self.register_buffer("user_codes", features.user_codes.clone())  # (n_users, fields)
        self.register_buffer("item_bags", self.bags(features))  # (n_items, max_tags)
        _init_weights(self)

    def bags(self, features: SideFeatures) -> Tensor:
        """(n_items, max_tags) `features`' item tags (this model's codes) padded with tag_pad."""
        return pad_bags(features.item_tags, features.item_offsets, self.tag_pad)

    def _drop(self, idx: Tensor, oov: int) -> Tensor:
        keep = torch.rand(idx.shape, device=idx.device) >= self.id_dropout  # (B,)
        return torch.where(keep, idx, torch.full_like(idx, oov))

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        user_row, item_row = user_idx, item_idx
        if self.training and self.id_dropout > 0:
            user_row, item_row = self._drop(user_idx, self.n_users), self._drop(item_idx,
                                                                                 self.n_items)
        return self.score(user_row, self.user_codes[user_idx], item_row,
                          self.item_bags[item_idx])

    def _users(self, user_row: Tensor, user_codes: Tensor) -> tuple[Tensor, Tensor]:
        gmf = self.gmf.user_embedding(user_row) + self.gmf_user_features(user_codes).sum(1)
        mlp = self.mlp.user_embedding(user_row) + self.mlp_user_features(user_codes).sum(1)
        return gmf, mlp  # (B, factors), (B, half)

    def _items(self, item_row: Tensor, item_bags: Tensor) -> tuple[Tensor, Tensor]:
        gmf = self.gmf.item_embedding(item_row) + self.gmf_item_tags(item_bags)
        mlp = self.mlp.item_embedding(item_row) + self.mlp_item_tags(item_bags)
        return gmf, mlp  # (B, factors), (B, half)

    def _logits(self, gmf_user: Tensor, mlp_user: Tensor, gmf_item: Tensor,
                mlp_item: Tensor) -> Tensor:
        x = torch.cat([self.gmf.interact(gmf_user, gmf_item),  # (B, factors)
                       self.mlp.interact(mlp_user, mlp_item)],  # (B, mlp_layers[-1])
                      dim=-1)
        return self.head(x).squeeze(-1)  # (B,)

    def score(self, user_row: Tensor, user_codes: Tensor, item_row: Tensor,
              item_bags: Tensor) -> Tensor:
        """(B,) logits from id rows (`n_users` / `n_items`: unknown) and features.

        `user_codes` (B, fields) are the users' feature codes, `item_bags` (B, width) the
        items' tag codes padded with `tag_pad` (rows of `bags(features)`).
        """
        return self._logits(*self._users(user_row, user_codes),
                            *self._items(item_row, item_bags))

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every training item, in eval mode
        (as `forward`): each item's vectors, its tag mean included, are made once per call."""
        n_users, n_items = len(user_idx), self.n_items
        items = torch.arange(n_items, device=user_idx.device)
        gmf_user, mlp_user = (u.repeat_interleave(n_items, dim=0)  # (C * n_items, d)
                              for u in self._users(user_idx, self.user_codes[user_idx]))
        gmf_item, mlp_item = (i.repeat(n_users, 1)  # (C * n_items, d)
                              for i in self._items(items, self.item_bags))
        return self._logits(gmf_user, mlp_user, gmf_item, mlp_item).view(n_users, n_items)


def build_model(cfg: ModelConfig, n_users: int, n_items: int,
                features: SideFeatures | None = None) -> nn.Module:
    """The model `cfg.kind` names, freshly initialised (seed torch beforehand to reproduce).

    kind "hybrid" needs `features` (ncf_model.features.load_side_features) of exactly
    `n_users` x `n_items`.
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users={n_users}, n_items={n_items}: both must be >= 1")
    if cfg.kind == "mf":
        return MF(n_users, n_items, cfg.factors)
    if cfg.kind == "gmf":
        return GMF(n_users, n_items, cfg.factors)
    if cfg.kind == "mlp":
        return MLP(n_users, n_items, cfg.mlp_layers, dropout=cfg.dropout,
                   batch_norm=cfg.batch_norm)
    if cfg.kind == "neumf":
        return NeuMF(n_users, n_items, cfg.factors, cfg.mlp_layers, dropout=cfg.dropout,
                     batch_norm=cfg.batch_norm)
    if cfg.kind == "hybrid":
        if features is None:
            raise ValueError("model kind 'hybrid' needs side features (user_features/ or "
                             "item_features/ of the lake, ncf_model.features.load_side_features)"
                             "; use kind neumf for a dataset without them")
        if (features.n_users, features.n_items) != (n_users, n_items):
            raise ValueError(f"side features cover {features.n_users} users x "
                             f"{features.n_items} items, the model {n_users} x {n_items}")
        return Hybrid(features, cfg.factors, cfg.mlp_layers, dropout=cfg.dropout,
                      batch_norm=cfg.batch_norm, id_dropout=cfg.id_dropout)
    raise ValueError(f"model kind {cfg.kind!r} is not one of mf, gmf, mlp, neumf, hybrid")


class PairScorer(nn.Module):
    """The served model: (B, 2) int64 [user_idx, item_idx] rows -> (B,) float32 probabilities.

    One tensor in, one tensor out and no data-dependent control flow, so that
    `torch.export.export` traces it. Put the wrapped model in eval mode before exporting.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pairs: Tensor) -> Tensor:
        logits = self.model(pairs[:, 0], pairs[:, 1])  # (B,)
        return torch.sigmoid(logits.float())  # (B,)
