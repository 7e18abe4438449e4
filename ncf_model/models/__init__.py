"""Neural Collaborative Filtering models (He et al., WWW 2017): GMF, MLP and NeuMF, plus
MF (a dot product with biases, Rendle et al., RecSys 2020) and Hybrid (NeuMF with side
features, for users and items never seen in training).

Every model maps a batch of (user_idx, item_idx) pairs to one logit per pair; the
sigmoid is applied by the loss and by `PairScorer`, the module that is exported for
serving. NeuMF is built from a GMF and an MLP module, so the paper's pre-training is two
`load_state_dict` calls (`NeuMF.from_pretrained`). No I/O here.
"""

from __future__ import annotations

from torch import nn

from ncf_model.config import ModelConfig
from ncf_model.features import SideFeatures
from ncf_model.models.common import EMBEDDING_STD, PairScorer
from ncf_model.models.hybrid import Hybrid
from ncf_model.models.mf import MF
from ncf_model.models.ncf import GMF, MLP, NeuMF

__all__ = ["EMBEDDING_STD", "GMF", "MF", "MLP", "Hybrid", "NeuMF", "PairScorer", "build_model"]


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
