"""Matrix factorisation with biases (Rendle et al., RecSys 2020): the dot product to beat."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ncf_model.models.common import Embedding, init_weights


class MF(nn.Module):
    """Matrix factorisation: <p_u, q_i> + b_u + b_i + b. Rendle et al. (2020) show that a
    well-tuned dot product rivals NeuMF; this is the baseline to beat."""

    global_bias: nn.Parameter

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = Embedding(n_users, factors)
        self.item_embedding = Embedding(n_items, factors)
        self.user_bias = Embedding(n_users, 1)
        self.item_bias = Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        init_weights(self)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        dot = (self.user_embedding(user_idx) * self.item_embedding(item_idx)).sum(-1)  # (B,)
        bias = self.user_bias(user_idx).squeeze(-1) + self.item_bias(item_idx).squeeze(-1)  # (B,)
        return dot + bias + self.global_bias  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item: one matrix product."""
        dot = self.user_embedding(user_idx) @ self.item_embedding.weight.T  # (C, n_items)
        bias = self.user_bias(user_idx) + self.item_bias.weight.T  # (C, 1) + (1, n_items)
        return dot + bias + self.global_bias  # (C, n_items)
