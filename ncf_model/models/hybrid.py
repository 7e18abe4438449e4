"""Hybrid: NeuMF with user and item side features, for users and items unseen in training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ncf_model.features import SideFeatures, pad_bags
from ncf_model.models.common import init_weights
from ncf_model.models.ncf import GMF, MLP


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
        init_weights(self)

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
