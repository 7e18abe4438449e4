"""What every model family shares: weight initialisation and the exported serving wrapper."""

from __future__ import annotations

import torch
from torch import Tensor, nn

EMBEDDING_STD = 0.01  # the paper's N(0, 0.01) embedding initialisation


def init_weights(module: nn.Module) -> None:
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
