"""Neural Collaborative Filtering (He et al., WWW 2017): GMF, MLP and NeuMF.

NeuMF is built from a GMF and an MLP module, so the paper's pre-training is two
`load_state_dict` calls (`NeuMF.from_pretrained`). No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ncf_model.models.common import Embedding, init_weights

# Full ranking (score_all_items): the most first-layer activations (users x items x width)
# an MLP tower holds at once, by device type; a chunk of users is cut in blocks. A GPU
# wants large blocks (2^26 floats = 256 MiB); on the CPU, fresh 256 MiB tensors per block
# spent more time in page faults than in the products, 16 MiB ones stay near the caches.
ACTIVATION_BUDGET = {"cuda": 1 << 26, "cpu": 1 << 22}


class GMF(nn.Module):
    """Generalised matrix factorisation: a linear head on the element-wise product."""

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = Embedding(n_users, factors)
        self.item_embedding = Embedding(n_items, factors)
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
        self.user_embedding = Embedding(n_users, layers[0] // 2)
        self.item_embedding = Embedding(n_items, layers[0] // 2)
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

    def project_all_items(self, user_idx: Tensor, weight: Tensor) -> Tensor:
        """(C, n_items): `features(u, i) @ weight` for each user of `user_idx` (C,) and
        every item, `weight` (layers[-1],). In eval mode, like `score_all_items`.

        The first layer is split in its user and item halves, W [u; i] + b = (W_u u + b) +
        W_i i: the item half is computed once per call for all items and broadcast over
        the users, so the first layer costs one addition per pair instead of a
        (layers[1] x layers[0]) product. Users go through the rest of the tower in blocks
        of at most ACTIVATION_BUDGET[device type] activations.
        """
        user = self.user_embedding(user_idx)  # (C, half)
        item = self.item_embedding.weight  # (n_items, half)
        half, n_items = user.shape[-1], item.shape[0]
        if not len(self.tower):  # no hidden layer: the features are [u; i] themselves
            return (user @ weight[:half])[:, None] + (item @ weight[half:])[None, :]
        first = self.tower[0]
        assert isinstance(first, nn.Linear)  # the tower starts with its first Linear
        user_half = user @ first.weight[:, :half].T + first.bias  # (C, layers[1])
        item_half = item @ first.weight[:, half:].T  # (n_items, layers[1])
        rest = self.tower[1:]
        budget = ACTIVATION_BUDGET.get(user.device.type, ACTIVATION_BUDGET["cpu"])
        step = max(1, budget // (n_items * first.out_features))
        blocks = []
        for block in user_half.split(step):  # (b, layers[1])
            hidden = (block[:, None, :] + item_half[None, :, :]).flatten(0, 1)  # (b * n, w)
            blocks.append((rest(hidden) @ weight).view(len(block), n_items))
        return torch.cat(blocks) if blocks else user_half.new_empty(0, n_items)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item, equal to `forward` on
        every pair, in eval mode (dropout off, batch norm on its running statistics):
        see `project_all_items`."""
        return self.project_all_items(user_idx, self.head.weight[0]) + self.head.bias


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

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item, equal to `forward` on
        every pair, in eval mode. The head is split over its two inputs: the GMF half folds
        into the user vectors (one matrix product, as `GMF.score_all_items`), the MLP half
        runs the tower with its first layer split (`MLP.project_all_items`)."""
        w_gmf, w_mlp = self.head.weight[0].split([self.gmf.n_features, self.mlp.n_features])
        weighted = self.gmf.user_embedding(user_idx) * w_gmf  # (C, factors)
        gmf = weighted @ self.gmf.item_embedding.weight.T  # (C, n_items)
        return gmf + self.mlp.project_all_items(user_idx, w_mlp) + self.head.bias

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
