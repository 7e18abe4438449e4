"""Neural Collaborative Filtering (He et al., WWW 2017): GMF, MLP and NeuMF.

NeuMF is built from a GMF and an MLP module, so the paper's pre-training is two
`load_state_dict` calls (`NeuMF.from_pretrained`). No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ncf_model.models.common import init_weights


class GMF(nn.Module):
    """Generalised matrix factorisation: a linear head on the element-wise product."""

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = nn.Embedding(n_users, factors)
        self.item_embedding = nn.Embedding(n_items, factors)
        self.head = nn.Linear(factors, 1)
        init_weights(self)

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
        init_weights(self)

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
        init_weights(self)

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
