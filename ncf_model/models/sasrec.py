"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A user is the sequence of the items they interacted with, in time order. A stack of causal
self-attention blocks reads it, and the hidden state at the last position, dotted with an
item's embedding (the input embedding, shared), scores that item as the next one. No I/O.

Tokens: item_idx i is token i + 1 in every sequence, token 0 is padding. Sequences are
left-padded, so the last position always holds the most recent item, and a sequence
shorter than `max_len` reads exactly as if it were left-padded to `max_len`.

Serving: the model keeps each user's most recent `max_len` items (the `histories` buffer,
`build_histories` + `set_histories`), so `forward(user_idx, item_idx) -> logits` and
`score_all_items(user_idx)` have the signatures of the pair models, and the pipeline's
evaluation, top-K and the exported `PairScorer` work unchanged (the histories travel
inside the exported program).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD = 0  # the padding token; item_idx i is token i + 1


def _from_end(user_idx: Tensor, item_idx: Tensor, order: Tensor,
              n_users: int, max_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(user, item, from_end, count) of the rows sorted by (user, order): from_end 0 is a
    user's most recent row, count (n_users,) each user's rows; the arguments checked."""
    if not user_idx.shape == item_idx.shape == order.shape or user_idx.dim() != 1:
        raise ValueError(f"user_idx, item_idx and order must be 1-d and of equal length, got "
                         f"{tuple(user_idx.shape)}, {tuple(item_idx.shape)}, "
                         f"{tuple(order.shape)}")
    if n_users < 1 or max_len < 1:
        raise ValueError(f"n_users={n_users}, max_len={max_len}: both must be >= 1")
    user, item = user_idx.long(), item_idx.long()
    if user.numel() and (int(user.min()) < 0 or int(user.max()) >= n_users):
        raise ValueError(f"user_idx outside 0..{n_users - 1} (n_users={n_users})")
    if item.numel() and int(item.min()) < 0:
        raise ValueError("item_idx holds negative values; item_idx must be >= 0")
    # Sort by (user, order): by order first, then stably by user.
    by_time = torch.argsort(order, stable=True)
    rows = by_time[torch.argsort(user[by_time], stable=True)]  # (N,)
    user, item = user[rows], item[rows]
    count = torch.bincount(user, minlength=n_users)  # (n_users,)
    start = torch.cumsum(count, 0) - count  # (n_users,) each user's first sorted row
    rank = torch.arange(len(user), device=user.device) - start[user]  # (N,) 0 = oldest
    return user, item, count[user] - 1 - rank, count


def build_histories(user_idx: Tensor, item_idx: Tensor, order: Tensor, n_users: int,
                    max_len: int) -> Tensor:
    """(n_users, max_len) int64 tokens: each user's last `max_len` items in time order,
    left-padded with 0; a user without rows is all padding.

    `order` ranks a user's rows in time (any integer or float key: rows sorted by (user,
    order) are in time order; equal keys keep their row order). With `max_len + 1` columns
    the result is the training sequences of `ncf_model.train_sasrec` (input = all but the
    last column, target = all but the first).
    """
    user, item, from_end, _ = _from_end(user_idx, item_idx, order, n_users, max_len)
    histories = torch.zeros((n_users, max_len), dtype=torch.int64, device=user_idx.device)
    kept = from_end < max_len
    histories[user[kept], max_len - 1 - from_end[kept]] = item[kept] + 1
    return histories


def build_windows(user_idx: Tensor, item_idx: Tensor, order: Tensor, n_users: int,
                  length: int) -> Tensor:
    """(W, length) int64 training sequences that cover each user's whole history: the
    latest `length` items (as `build_histories`), then the `length` items that end where
    that one starts, and so on back to the oldest (left-padded), windows overlapping by one
    item so that every transition is trained exactly once (the first item of a window is
    only an input). Users without rows have no window; rows are ordered by user, latest
    window first. `length` >= 2: a window is input = all but its last column, target = all
    but its first."""
    if length < 2:
        raise ValueError(f"length={length}: a training window needs at least 2 columns")
    user, item, from_end, count = _from_end(user_idx, item_idx, order, n_users, length)
    stride = length - 1
    windows = torch.where(count > 0, (count - 1).clamp(min=0) // stride + 1, 0)  # (n_users,)
    first = torch.cumsum(windows, 0) - windows  # (n_users,) each user's first window
    out = torch.zeros((int(windows.sum()), length), dtype=torch.int64, device=user_idx.device)
    window, offset = from_end // stride, from_end % stride
    out[first[user] + window, stride - offset] = item + 1
    # The oldest item of each window but the last is also the input that opens the next.
    opens = (offset == 0) & (window > 0)
    out[first[user[opens]] + window[opens] - 1, 0] = item[opens] + 1
    return out


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which a position sees itself and the earlier non-padding
    positions only."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden={hidden} is not divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        """`x` (B, L, d), `attend` (B, 1, L, L) bool, True where a query may see a key."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).split(hidden, dim=-1)  # 3 x (B, L, d)
        heads = (batch, length, self.n_heads, hidden // self.n_heads)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d / H)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))  # (B, L, d)


class Block(nn.Module):
    """One SASRec block, pre-LayerNorm as in the paper (g(x) = x + Dropout(g(LN(x)))): causal
    self-attention, then the point-wise feed-forward net ReLU(x W1 + b1) W2 + b2."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden)
        self.attention = CausalSelfAttention(hidden, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attend: Tensor, valid: Tensor) -> Tensor:
        """`x` (B, L, d), `attend` (B, 1, L, L), `valid` (B, L, 1) float: 0 at padding."""
        x = x + self.dropout(self.attention(self.attention_norm(x), attend))  # (B, L, d)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))  # (B, L, d)
        return x * valid  # padding stays 0 from block to block


class SASRec(nn.Module):
    """SASRec over `n_items` items, for `n_users` users whose histories it keeps for serving.

    `hidden_states(seq)` is the model proper (training reads it at every position);
    `forward(user_idx, item_idx)` scores pairs from the users' stored histories.
    At padding positions the blocks hold 0, and the final LayerNorm turns that 0 into its
    bias: training on the position before a sequence's first item (input padding, target
    the first item) makes that bias score how likely an item is to start a sequence, which
    is what a user with an empty history gets — finite scores, never NaN.
    """

    histories: Tensor

    def __init__(self, n_users: int, n_items: int, *, max_len: int = 50, hidden: int = 64,
                 n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1 or max_len < 1 or hidden < 1 or n_blocks < 1:
            raise ValueError(f"n_users={n_users}, n_items={n_items}, max_len={max_len}, "
                             f"hidden={hidden}, n_blocks={n_blocks}: all must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be in [0, 1)")
        self.n_users, self.n_items, self.max_len = n_users, n_items, max_len
        self.hidden, self.n_blocks, self.n_heads, self.dropout = (hidden, n_blocks, n_heads,
                                                                   dropout)
        self.item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=PAD)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, n_heads, dropout) for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(hidden)
        # Persistent: a saved or exported model serves with the histories it was given.
        self.register_buffer("histories", torch.zeros((n_users, max_len), dtype=torch.int64))
        self._init_weights()

    def _init_weights(self) -> None:
        # Item vectors N(0, 1/d): scaled by sqrt(d) at the input (as in the paper's code)
        # they enter the blocks at unit scale, and at the output their dot product with a
        # LayerNormed state starts at unit scale, where the common N(0, 0.01) would start
        # every logit near 0 and the shared embedding would learn slowly.
        std = self.hidden ** -0.5
        nn.init.normal_(self.item_embedding.weight, std=std)
        nn.init.normal_(self.position_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def set_histories(self, histories: Tensor) -> None:
        """Store each user's last `max_len` tokens (`build_histories`), on the model's device."""
        if tuple(histories.shape) != (self.n_users, self.max_len):
            raise ValueError(f"histories {tuple(histories.shape)}: must be (n_users, max_len) = "
                             f"({self.n_users}, {self.max_len}); build them with "
                             "build_histories(..., n_users, max_len)")
        if histories.numel() and (int(histories.min()) < 0
                                  or int(histories.max()) > self.n_items):
            raise ValueError(f"histories hold tokens outside 0..{self.n_items} (0 is padding, "
                             "item_idx i is token i + 1)")
        self.histories.copy_(histories)

    def hidden_states(self, seq: Tensor) -> Tensor:
        """(B, L, d) states of left-padded token sequences `seq` (B, L), L <= max_len: the
        state at t has read tokens 0..t and predicts token t + 1."""
        length = seq.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequences of length {length} exceed max_len={self.max_len}")
        # Positions of a sequence left-padded to max_len: the most recent item is always at
        # max_len - 1, so the amount of padding (and L) never changes a state.
        positions = torch.arange(self.max_len - length, self.max_len, device=seq.device)  # (L,)
        valid = seq != PAD  # (B, L)
        causal = torch.ones((length, length), dtype=torch.bool, device=seq.device).tril()
        itself = torch.eye(length, dtype=torch.bool, device=seq.device)
        # A padding query has no valid key; seeing itself keeps its softmax finite (an
        # all-masked row is NaN, and NaN * 0 stays NaN). Its output is zeroed anyway.
        attend = ((causal & valid[:, None, :]) | itself)[:, None]  # (B, 1, L, L)
        valid_f = valid.unsqueeze(-1).to(self.item_embedding.weight.dtype)  # (B, L, 1)
        x = self.item_embedding(seq) * math.sqrt(self.hidden)  # (B, L, d)
        x = self.embedding_dropout(x + self.position_embedding(positions)) * valid_f
        for block in self.blocks:
            x = block(x, attend, valid_f)  # (B, L, d)
        return self.final_norm(x)  # (B, L, d)

    def user_states(self, user_idx: Tensor) -> Tensor:
        """(B, d) last hidden state of each user's stored history."""
        return self.hidden_states(self.histories[user_idx])[:, -1]  # (B, d)

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        """(B,) logits <h_last(user), E[item + 1]>.

        Evaluation scores each user against ~100 candidates: each distinct user's sequence
        is read once (100x less work and memory than one sequence per pair). torch.export
        and torch.compile cannot trace `torch.unique`'s data-dependent size, so they take
        the one-sequence-per-pair path, which gives the same logits.
        """
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            state = self.user_states(user_idx)  # (B, d)
        else:
            users, inverse = torch.unique(user_idx, return_inverse=True)  # (U,), (B,)
            state = self.user_states(users)[inverse]  # (B, d)
        return (state * self.item_embedding(item_idx + 1)).sum(-1)  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) logits of `user_idx` (C,) against every item: one matrix product."""
        return self.user_states(user_idx) @ self.item_embedding.weight[1:].T  # (C, n_items)

    def item_logits(self, states: Tensor, tokens: Tensor) -> Tensor:
        """Logits of `tokens` (..., ) against `states` (..., d) of the same leading shape."""
        return (states * self.item_embedding(tokens)).sum(-1)
