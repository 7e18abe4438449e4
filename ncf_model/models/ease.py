"""EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

A linear item-item model fitted in closed form on the binary user-item matrix X of the
training positives: with G = XᵀX + λI and P = G⁻¹, the weights are B = -P / diag(P)
(column j divided by P[j, j]) with diag(B) = 0, and a user's scores are X[u] @ B. With fewer
users than items, P comes from the users' side instead (Woodbury: λP = I - Xᵀ(λI + XXᵀ)⁻¹X),
an n_users³ factorisation and one n_items² matrix in memory instead of three. There is
no training loop: `fit_ease` returns B, `choose_l2` picks λ on validation, and `EASE`
holds B and each user's history, optionally weighted (ncf_model.recency: the latest items
count most), so that it scores pairs like every other model family
(`forward(user_idx, item_idx) -> (B,)` raw scores, `score_all_items` for full ranking) and
exports inside `PairScorer`.

B is dense, n_items² floats: `ease_limits.check_ease_memory` refuses a catalogue whose fit
would not fit the memory limit before any of it is allocated. No I/O here.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncf_model.models.ease_limits import uses_dual

log = logging.getLogger(__name__)
Fitted = TypeVar("Fitted")

# Steck reports λ = 500 as best for ML-20M (136k users); λ acts against XᵀX, whose entries
# grow with the number of users, so small datasets prefer the low end of the grid.
DEFAULT_L2_GRID: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

# Dense X columns built at a time while forming XᵀX: 2**24 floats (64 MiB in float32),
# so X itself (n_users x n_items) is never dense.
_BLOCK_ELEMENTS = 2**24


def _unique_pairs(row_idx: Tensor, col_idx: Tensor, n_rows: int,
                  n_cols: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) int64: the distinct pairs, sorted by row then column."""
    if row_idx.shape != col_idx.shape or row_idx.dim() != 1:
        raise ValueError(f"index tensors {tuple(row_idx.shape)} and {tuple(col_idx.shape)} "
                         "must be 1-d and of the same length")
    row_idx, col_idx = row_idx.to(torch.int64), col_idx.to(torch.int64)
    if row_idx.numel() and (int(row_idx.min()) < 0 or int(row_idx.max()) >= n_rows
                            or int(col_idx.min()) < 0 or int(col_idx.max()) >= n_cols):
        raise ValueError(f"pairs hold indices outside {n_rows} x {n_cols}")
    # A positive counts once however often it was logged: X is binary.
    key = torch.unique(row_idx * n_cols + col_idx)  # sorted
    return key // n_cols, key % n_cols


def _to_csr(matrix: Tensor) -> Tensor:
    """`matrix.to_sparse_csr()` without torch's "Sparse CSR tensor support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return matrix.to_sparse_csr()


def _gram(items: Tensor, users: Tensor, n_users: int, n_items: int, dtype: torch.dtype, *,
          sparse_blocks: bool | None = None) -> Tensor:
    """XᵀX (n_items, n_items) in `dtype` from the distinct pairs in item-major order, built
    _BLOCK_ELEMENTS entries of G at a time: X itself is never dense.

    On CUDA each block of item columns of X is made dense (n_users x c) and multiplied by the
    sparse Xᵀ: nnz x n_items multiply-adds in all, fast on the device. On the CPU that costs
    as much as the factorisation at ML-20M, so the block is sparse too (scipy's CSR x CSC):
    the work is then the sum over users of |history| x |history in the block|, about
    sum |history|² in all. Not torch's CSR x CSR: on the CPU it keeps ~1 GB it never frees
    per G at 10M pairs (pytorch#109445; measured 1.3 GiB a call), scipy is as fast and
    keeps nothing. `sparse_blocks` picks the way (default: sparse on the CPU).
    """
    device = items.device
    gram = torch.empty(n_items, n_items, device=device, dtype=dtype)
    if sparse_blocks is None:
        sparse_blocks = device.type == "cpu"
    if sparse_blocks:
        values = np.ones(items.numel(), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        x = scipy.sparse.csc_matrix((values, (users.cpu().numpy(), items.cpu().numpy())),
                                    shape=(n_users, n_items))  # X (n_users, n_items)
        xt = x.T.tocsr()  # Xᵀ (n_items, n_users)
        block = max(1, _BLOCK_ELEMENTS // n_items)
        for c0 in range(0, n_items, block):
            c1 = min(c0 + block, n_items)
            part = (xt @ x[:, c0:c1]).toarray()  # (n_items, c)
            gram[:, c0:c1] = torch.from_numpy(part).to(device)
        return gram
    xt = torch.sparse_coo_tensor(torch.stack([items, users]),
                                 torch.ones(items.numel(), device=device, dtype=dtype),
                                 (n_items, n_users), is_coalesced=True,
                                 check_invariants=False)  # Xᵀ: sorted, unique by construction
    block = max(1, _BLOCK_ELEMENTS // n_users)
    for c0 in range(0, n_items, block):
        c1 = min(c0 + block, n_items)
        lo, hi = (int(b) for b in torch.searchsorted(
            items, torch.tensor([c0, c1], device=device)))
        x_cols = torch.zeros(n_users, c1 - c0, device=device, dtype=dtype)  # (n_users, c)
        x_cols[users[lo:hi], items[lo:hi] - c0] = 1.0
        gram[:, c0:c1] = torch.sparse.mm(xt, x_cols)  # (n_items, c)
        del x_cols
    return gram


def _inverse_gram(rows: Tensor, cols: Tensor, n_cols: int, n_rows: int, *, l2: float,
                  dtype: torch.dtype, name: str) -> Tensor:
    """(AᵀA + λI)⁻¹ (n_rows, n_rows) for the binary A whose pairs are (`cols`, `rows`),
    sorted by `rows` (`_gram`): Cholesky, then its inverse. `name` says which system it is,
    for the error."""
    gram = _gram(rows, cols, n_cols, n_rows, dtype)
    gram.diagonal().add_(l2)
    factor, info = torch.linalg.cholesky_ex(gram)
    del gram
    if int(info) != 0:
        raise ValueError(f"{name} + λI is not positive definite in {dtype} (l2={l2}, "
                         f"order {n_rows}); raise l2 or fit in torch.float64")
    return torch.cholesky_inverse(factor)


def _solve_items(user_idx: Tensor, item_idx: Tensor, n_users: int, n_items: int, *,
                 l2: float, dtype: torch.dtype) -> Tensor:
    """P = (XᵀX + λI)⁻¹ (n_items, n_items): the items' system, Cholesky + inverse."""
    # Item-major order: the pairs of a block of item columns are one contiguous slice.
    items, users = _unique_pairs(item_idx, user_idx, n_items, n_users)
    return _inverse_gram(items, users, n_users, n_items, l2=l2, dtype=dtype, name="XᵀX")


def _solve_users(user_idx: Tensor, item_idx: Tensor, n_users: int, n_items: int, *,
                 l2: float, dtype: torch.dtype) -> Tensor:
    """λP = I - Xᵀ(λI + XXᵀ)⁻¹X (n_items, n_items) by Woodbury: with fewer users than items
    the factorised system is n_users², and Xᵀ(K X) is two sparse x dense products
    (nnz x (n_users + n_items) multiply-adds). B = -P / diag(P) does not see the factor λ."""
    users, items = _unique_pairs(user_idx, item_idx, n_users, n_items)  # user-major
    # K = (λI + XXᵀ)⁻¹ (n_users, n_users), symmetric
    inverse = _inverse_gram(users, items, n_items, n_users, l2=l2, dtype=dtype, name="XXᵀ")
    order = torch.argsort(items * n_users + users)  # item-major: Xᵀ's rows in order
    xt = _to_csr(torch.sparse_coo_tensor(
        torch.stack([items[order], users[order]]),
        torch.ones(items.numel(), device=items.device, dtype=dtype), (n_items, n_users),
        is_coalesced=True, check_invariants=False))  # Xᵀ (n_items, n_users)
    kx = torch.sparse.mm(xt, inverse).T.contiguous()  # (XᵀK)ᵀ = KX (n_users, n_items)
    del inverse
    scaled = torch.sparse.mm(xt, kx)  # XᵀKX (n_items, n_items)
    scaled.neg_().diagonal().add_(1.0)  # I - XᵀKX = λP
    return scaled


def fit_ease(user_idx: Tensor, item_idx: Tensor, n_users: int, n_items: int, *, l2: float,
             device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """B (n_items, n_items) float32 on `device`: EASE^R fitted on the positive pairs.

    P is solved on the items' side, or on the users' side when there are fewer users than
    items (`uses_dual`; the same B up to rounding, faster and a third of the memory).
    Computed in `dtype`: float64 gives a far more precise inverse when the system is
    ill-conditioned (small λ, popular items) at twice the memory. XᵀX holds integer counts,
    exact in float32 below 2**24 users whatever the order of summation, so G does not
    depend on how the sparse product is scheduled; refits give the same B.
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users={n_users}, n_items={n_items}: both must be >= 1")
    if not (math.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2={l2}: must be > 0 (it makes XᵀX + λI invertible)")
    started = time.perf_counter()
    device = torch.device(device)
    dual = uses_dual(n_users, n_items)
    solve = _solve_users if dual else _solve_items
    weights = solve(user_idx.to(device), item_idx.to(device), n_users, n_items, l2=l2,
                    dtype=dtype)
    # Column j of B is column j of P over -P[j, j]: the closed form of the constraint diag(B)=0.
    weights.div_(-weights.diagonal().clone())
    weights.fill_diagonal_(0.0)
    log.info("EASE fitted: %d users x %d items, %d pairs, l2=%g, %s side, %.1f s on %s",
             n_users, n_items, user_idx.numel(), l2, "users'" if dual else "items'",
             time.perf_counter() - started, device.type)
    # cholesky_inverse returns P column-major: row-major B makes each history item's row one
    # contiguous read (embedding_bag over a column-major B measured 100x slower on the CPU,
    # and the pair scorer's reshape would copy B on every call).
    return weights.to(torch.float32).contiguous()


def _rank(l2: float, score: float) -> tuple[float, float] | None:
    """Where λ stands in `choose_l2`'s order: by score, ties to the larger λ; NaN nowhere."""
    return None if math.isnan(score) else (score, l2)


def choose_l2(grid: Sequence[float],
              score: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """(best λ, {λ: validation score}) over `grid`, higher score better.

    Ties go to the larger λ: with equal validation evidence the more regularised B is the
    safer one to refit on train + validation, and its G is better conditioned. NaN scores
    never win.
    """
    if not grid:
        raise ValueError("choose_l2 needs a non-empty grid of l2 values")
    scores = {float(l2): float(score(float(l2))) for l2 in grid}
    ranked = [rank for l2, s in scores.items() if (rank := _rank(l2, s)) is not None]
    if not ranked:
        raise ValueError(f"every l2 in {list(scores)} scored NaN")
    best_score, best_l2 = max(ranked)
    log.info("EASE l2 chosen: %g (score %.4f) of %s", best_l2, best_score, scores)
    return best_l2, scores


def fit_best_l2(grid: Sequence[float], fit: Callable[[float], Fitted],
                score: Callable[[Fitted], float]) -> tuple[float, dict[float, float], Fitted]:
    """`choose_l2` over `fit(λ)` then `score(model)`, and the chosen λ's model. Only the best
    model so far is kept: each holds an n_items² B (at 13,372 items, 0.7 GB per λ)."""
    leader: list[tuple[tuple[float, float], Fitted]] = []

    def scored(l2: float) -> float:
        model = fit(l2)
        value = float(score(model))
        rank = _rank(l2, value)
        if rank is not None and (not leader or rank > leader[0][0]):
            leader[:] = [(rank, model)]
        return value

    best, scores = choose_l2(grid, scored)
    return best, scores, leader[0][1]


class EASE(nn.Module):
    """X[u] @ B as a pair scorer: B (`weights`) and each user's known items, CSR-like.

    User u's history is `history_items[history_offsets[u]:history_offsets[u + 1]]`. Scores
    are raw (PairScorer's sigmoid is monotonic: the ranking is X[u] @ B's). A user with no
    history scores 0 everywhere; the pipeline serves popularity to users unseen in training.
    `forward` gathers only the batch users' histories, with one data-dependent length
    (their total) that torch.export keeps symbolic: the exported PairScorer carries B and
    the histories as buffers.
    """

    weights: Tensor
    history_items: Tensor
    history_offsets: Tensor
    history_weights: Tensor

    def __init__(self, weights: Tensor, history_items: Tensor, history_offsets: Tensor,
                 history_weights: Tensor | None = None) -> None:
        super().__init__()
        if weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f"weights {tuple(weights.shape)} must be (n_items, n_items)")
        if history_offsets.dim() != 1 or history_offsets.numel() < 2:
            raise ValueError(f"history_offsets {tuple(history_offsets.shape)} must be "
                             "(n_users + 1,) with n_users >= 1")
        if int(history_offsets[-1]) != history_items.numel():
            raise ValueError(f"history_offsets end at {int(history_offsets[-1])}, "
                             f"history_items holds {history_items.numel()}")
        self.n_users, self.n_items = history_offsets.numel() - 1, weights.shape[0]
        # (n_items, n_items), shared, not copied when already row-major (see fit_ease)
        self.register_buffer("weights", weights.contiguous())
        self.register_buffer("history_items", history_items.to(weights.device, torch.int64))
        self.register_buffer("history_offsets", history_offsets.to(weights.device, torch.int64))
        if history_weights is None:
            history_weights = torch.ones(history_items.numel())
        if history_weights.shape != history_items.shape:
            raise ValueError(f"history_weights {tuple(history_weights.shape)} must match "
                             f"history_items {tuple(history_items.shape)}")
        # x_u[i]: 1 for the binary X, or a recency weight (recency_weights)
        self.register_buffer("history_weights",
                             history_weights.to(weights.device, torch.float32))

    @classmethod
    def from_pairs(cls, weights: Tensor, user_idx: Tensor, item_idx: Tensor,
                   n_users: int, values: Tensor | None = None) -> EASE:
        """EASE with B = `weights` and histories from the positive pairs (duplicates once,
        the first one's value kept); `values` (same length) weigh each pair's item in the
        user's row of X (default 1: the binary X B was fitted on)."""
        n_items = weights.shape[0]
        device = weights.device
        users, items = _unique_pairs(user_idx.to(device), item_idx.to(device), n_users,
                                     n_items)
        history_weights = None
        if values is not None:
            if values.shape != user_idx.shape:
                raise ValueError(f"values {tuple(values.shape)} must match the pairs "
                                 f"{tuple(user_idx.shape)}")
            key = user_idx.to(device, torch.int64) * n_items + item_idx.to(device, torch.int64)
            order = torch.argsort(key, stable=True)
            first = torch.ones_like(order, dtype=torch.bool)
            first[1:] = key[order][1:] != key[order][:-1]
            history_weights = values.to(device, torch.float32)[order][first]  # as (users, items)
        counts = torch.bincount(users, minlength=n_users)  # (n_users,)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (n_users + 1,)
        return cls(weights, items, offsets, history_weights)

    def with_history(self, user_idx: Tensor, item_idx: Tensor, n_users: int,
                     values: Tensor | None = None) -> EASE:
        """A new EASE sharing this one's B, with histories from other pairs (e.g. train +
        validation, to score the test period from the longer history)."""
        return EASE.from_pairs(self.weights, user_idx, item_idx, n_users, values)

    def _histories(self, user_idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(items (H,), x (H,), bag (H,), bag_start (C,)): the histories of `user_idx` (C,)
        end to end, each entry's weight in X, the position in `user_idx` each entry belongs
        to, and where each one's bag starts."""
        start = self.history_offsets[user_idx]  # (C,)
        lengths = self.history_offsets[user_idx + 1] - start  # (C,)
        bag_start = lengths.cumsum(0) - lengths  # (C,)
        # The one data-dependent size: kept a SymInt (no int()) so torch.export traces it.
        total = cast(int, lengths.sum().item())
        torch._check(total >= 0)
        bag = torch.repeat_interleave(torch.arange(user_idx.shape[0], device=user_idx.device),
                                      lengths, output_size=total)  # (H,)
        position = torch.arange(total, device=user_idx.device) - bag_start[bag] + start[bag]
        return self.history_items[position], self.history_weights[position], bag, bag_start

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        items, x, bag, bag_start = self._histories(user_idx)  # (H,), (H,), (H,), (B,)
        # B[h, i] for each history item h of each pair, read as row h * n_items + i of B
        # viewed (n_items², 1): one bag sum per pair, an empty bag sums to 0.
        flat = items * self.n_items + item_idx[bag]  # (H,)
        scores = F.embedding_bag(flat, self.weights.reshape(-1, 1), bag_start, mode="sum",
                                 per_sample_weights=x)
        return scores.squeeze(1)  # (B,)

    def score_all_items(self, user_idx: Tensor) -> Tensor:
        """(C, n_items) scores X[u] @ B of `user_idx` (C,): the weighted sum of B's history
        rows."""
        items, x, _bag, bag_start = self._histories(user_idx)
        return F.embedding_bag(items, self.weights, bag_start, mode="sum",
                               per_sample_weights=x)  # (C, n_items)
