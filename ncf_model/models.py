"""Neural Collaborative Filtering models (He et al., WWW 2017): GMF, MLP and NeuMF.

Every model maps a batch of (user_idx, item_idx) pairs to one logit per pair; the
sigmoid is applied by the loss (BCEWithLogitsLoss) and by `PairScorer`, the module
that is exported for serving. NeuMF is built from a GMF and an MLP module, so the
paper's pre-training is two `load_state_dict` calls (`NeuMF.from_pretrained`).
No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ncf_model.config import ModelConfig

EMBEDDING_STD = 0.01  # the paper's N(0, 0.01) embedding initialisation


def _init_weights(module: nn.Module) -> None:
    """Initialise every embedding and linear layer below `module` (the paper's scheme)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=EMBEDDING_STD)
        elif isinstance(sub, nn.Linear):
            if name.split(".")[-1] == "head":
                # The output layer feeds a sigmoid, not a ReLU: Glorot keeps its logits near 0.
                nn.init.xavier_uniform_(sub.weight)
            else:
                nn.init.kaiming_uniform_(sub.weight, nonlinearity="relu")
            nn.init.zeros_(sub.bias)


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

    def features(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.user_embedding(user_idx) * self.item_embedding(item_idx)  # (B, factors)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.head(self.features(user_idx, item_idx)).squeeze(-1)  # (B,)


class MLP(nn.Module):
    """User and item embeddings of `layers[0] // 2` each, concatenated, then a ReLU tower."""

    def __init__(self, n_users: int, n_items: int, layers: Sequence[int],
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not layers or layers[0] % 2:
            raise ValueError(f"MLP layers {list(layers)}: need at least one size, the first even "
                             "(user and item embeddings are half of it each)")
        self.n_users, self.n_items = n_users, n_items
        self.layers, self.dropout = tuple(layers), dropout
        self.user_embedding = nn.Embedding(n_users, layers[0] // 2)
        self.item_embedding = nn.Embedding(n_items, layers[0] // 2)
        tower: list[nn.Module] = []
        for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
            tower += [nn.Linear(n_in, n_out), nn.ReLU()]
            if dropout > 0:
                tower.append(nn.Dropout(dropout))
        self.tower = nn.Sequential(*tower)
        self.head = nn.Linear(layers[-1], 1)
        _init_weights(self)

    @property
    def n_features(self) -> int:
        return self.layers[-1]

    def features(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        x = torch.cat([self.user_embedding(user_idx), self.item_embedding(item_idx)],
                      dim=-1)  # (B, layers[0])
        return self.tower(x)  # (B, layers[-1])

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        return self.head(self.features(user_idx, item_idx)).squeeze(-1)  # (B,)


class NeuMF(nn.Module):
    """GMF and MLP side by side, their last hidden vectors concatenated into one head.

    `self.gmf.head` and `self.mlp.head` are not used by `forward`; they are kept so that a
    trained GMF's or MLP's state dict loads into `self.gmf` / `self.mlp` unchanged.
    """

    def __init__(self, n_users: int, n_items: int, factors: int, mlp_layers: Sequence[int],
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.gmf = GMF(n_users, n_items, factors)
        self.mlp = MLP(n_users, n_items, mlp_layers, dropout)
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
        model = cls(gmf.n_users, gmf.n_items, gmf.factors, mlp.layers, mlp.dropout)
        model.gmf.load_state_dict(gmf.state_dict())
        model.mlp.load_state_dict(mlp.state_dict())
        with torch.no_grad():
            model.head.weight.copy_(torch.cat([alpha * gmf.head.weight,
                                               (1 - alpha) * mlp.head.weight], dim=1))
            model.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)
        return model.to(gmf.head.weight.device)


def build_model(cfg: ModelConfig, n_users: int, n_items: int) -> nn.Module:
    """The model `cfg.kind` names, freshly initialised (seed torch beforehand to reproduce)."""
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users={n_users}, n_items={n_items}: both must be >= 1")
    if cfg.kind == "gmf":
        return GMF(n_users, n_items, cfg.factors)
    if cfg.kind == "mlp":
        return MLP(n_users, n_items, cfg.mlp_layers, cfg.dropout)
    if cfg.kind == "neumf":
        return NeuMF(n_users, n_items, cfg.factors, cfg.mlp_layers, cfg.dropout)
    raise ValueError(f"model kind {cfg.kind!r} is not one of gmf, mlp, neumf")


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
