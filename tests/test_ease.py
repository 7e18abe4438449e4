"""ncf_model.models.ease: the closed form against a plain numpy reference, duplicates and
determinism, pair scores against full-ranking scores, swapping histories, the memory
guard, the choice of λ and the exported PairScorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf_model.models import ease as ease_module
from ncf_model.models.common import PairScorer
from ncf_model.models.ease import DEFAULT_L2_GRID, EASE, choose_l2, fit_best_l2, fit_ease
from ncf_model.models.ease_limits import (
    PROBE_ITEMS,
    EaseMemoryError,
    EaseTimeError,
    check_ease_memory,
    check_ease_time,
    estimate_ease_bytes,
    probe_seconds,
    uses_dual,
)

N_USERS, N_ITEMS = 8, 6
EMPTY_USER = 7  # no positives: scores 0 everywhere


@pytest.fixture
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """(user_idx, item_idx): each user but the last holds 2-4 distinct items."""
    g = torch.Generator().manual_seed(0)
    users, items = [], []
    for user in range(N_USERS - 1):
        chosen = torch.randperm(N_ITEMS, generator=g)[: 2 + user % 3]
        users += [user] * len(chosen)
        items += chosen.tolist()
    return torch.tensor(users), torch.tensor(items)


def reference_ease(users: np.ndarray, items: np.ndarray, l2: float) -> np.ndarray:
    """Steck (2019), written out: dense binary X, G = XᵀX + λI, P = G⁻¹, B = -P / diag(P)."""
    x = np.zeros((N_USERS, N_ITEMS))
    x[users, items] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(N_ITEMS))
    b = -p / np.diag(p)[None, :]  # column j over P[j, j]
    np.fill_diagonal(b, 0.0)
    return b


def test_fit_ease_matches_the_numpy_reference(pairs) -> None:
    for l2 in (0.5, 5.0):
        weights = fit_ease(*pairs, N_USERS, N_ITEMS, l2=l2, device="cpu")
        expected = reference_ease(pairs[0].numpy(), pairs[1].numpy(), l2)
        assert weights.dtype == torch.float32 and weights.shape == (N_ITEMS, N_ITEMS)
        assert np.abs(weights.numpy() - expected).max() < 1e-4
        assert np.abs(expected).max() > 0.05  # not trivially near zero


def _dense_reference(x: np.ndarray, l2: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize(("n_users", "n_items"), [(12, 40), (40, 12)])
def test_either_side_of_the_solve_matches_the_numpy_reference(n_users, n_items) -> None:
    """Fewer users than items solves (λI + XXᵀ) by Woodbury, more solves XᵀX + λI: both give
    Steck's B, with a user holding nothing, an item nobody holds and duplicated pairs."""
    assert uses_dual(n_users, n_items) == (n_users < n_items)
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, n_users - 1, (150,), generator=g)  # the last user: no history
    items = torch.randint(1, n_items, (150,), generator=g)  # item 0: nobody's
    x = np.zeros((n_users, n_items))
    x[users.numpy(), items.numpy()] = 1.0
    for l2 in (0.5, 20.0):
        weights = fit_ease(torch.cat([users, users[:9]]), torch.cat([items, items[:9]]),
                           n_users, n_items, l2=l2, device="cpu")
        expected = _dense_reference(x, l2)
        assert weights.dtype == torch.float32 and weights.is_contiguous()
        assert np.abs(weights.numpy() - expected).max() < 1e-5
        assert np.abs(expected).max() > 0.05
        assert torch.equal(weights.diagonal(), torch.zeros(n_items))
        assert torch.equal(weights[0], torch.zeros(n_items))  # an item nobody holds
        assert torch.equal(fit_ease(users, items, n_users, n_items, l2=l2, device="cpu"),
                           weights)  # duplicates count once; refits repeat exactly


def test_the_users_side_estimates_one_item_matrix_and_the_users_order() -> None:
    n_users, n_items = 1_892, 17_632  # lastfm-2k
    dual = estimate_ease_bytes(n_items, n_users=n_users)
    assert dual == (n_items**2 + n_users * n_items + 3 * n_users**2) * 4
    assert estimate_ease_bytes(n_items) == 3 * n_items**2 * 4 > 2.5 * dual
    assert estimate_ease_bytes(100, n_users=500) == estimate_ease_bytes(100)  # items' side
    with pytest.raises(EaseMemoryError, match=r"n_items² \+ n_users x n_items"):
        check_ease_memory(n_items, 1_000_000_000, n_users=n_users)
    probed: list[int] = []

    def probe(device, size: int) -> float:
        probed.append(size)
        return 0.5

    assert check_ease_time(n_items, 8, 3600.0, device="cpu", n_users=PROBE_ITEMS,
                           probe=probe) == 0.0 and probed == []  # order n_users: small
    estimate = check_ease_time(n_items, 8, 3600.0, device="cpu", n_users=2 * PROBE_ITEMS,
                               probe=probe)
    assert estimate == 8 * 0.5 * 2**3 and probed == [PROBE_ITEMS]


def test_diagonal_is_zero_duplicates_count_once_and_fits_repeat(pairs) -> None:
    weights = fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu")
    assert torch.equal(weights.diagonal(), torch.zeros(N_ITEMS))
    users, items = pairs
    doubled = fit_ease(torch.cat([users, users[:5]]), torch.cat([items, items[:5]]),
                       N_USERS, N_ITEMS, l2=1.0, device="cpu")
    assert torch.equal(doubled, weights)
    assert torch.equal(fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu"), weights)


def test_gram_is_the_same_built_from_sparse_or_dense_blocks(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    n_users, n_items = 300, 70
    users = torch.randint(0, n_users, (2_000,), generator=g)
    items = torch.randint(0, n_items, (2_000,), generator=g)
    items, users = ease_module._unique_pairs(items, users, n_items, n_users)
    x = torch.zeros(n_users, n_items)
    x[users, items] = 1.0
    expected = x.T @ x
    monkeypatch.setattr(ease_module, "_BLOCK_ELEMENTS", 1_000)  # several column blocks
    for sparse_blocks in (True, False):
        gram = ease_module._gram(items, users, n_users, n_items, torch.float32,
                                 sparse_blocks=sparse_blocks)
        assert torch.equal(gram, expected), sparse_blocks


def test_fit_ease_returns_b_row_major(pairs) -> None:
    """cholesky_inverse hands P back column-major; scoring reads B's rows."""
    assert fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu").is_contiguous()


def test_fit_ease_rejects_a_non_positive_l2(pairs) -> None:
    with pytest.raises(ValueError, match="l2=0"):
        fit_ease(*pairs, N_USERS, N_ITEMS, l2=0.0, device="cpu")


def test_forward_is_score_all_items_at_the_pairs(pairs) -> None:
    weights = fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu")
    users, items = pairs
    model = EASE.from_pairs(weights, torch.cat([users, users]), torch.cat([items, items]),
                            N_USERS)
    assert model.history_items.numel() == users.numel()  # duplicates held once
    all_users = torch.arange(N_USERS)
    full = model.score_all_items(all_users)  # (n_users, n_items)
    x = torch.zeros(N_USERS, N_ITEMS)
    x[users, items] = 1.0
    assert torch.allclose(full, x @ weights, atol=1e-6)
    assert torch.equal(full[EMPTY_USER], torch.zeros(N_ITEMS))
    grid_users = all_users.repeat_interleave(N_ITEMS)
    grid_items = torch.arange(N_ITEMS).repeat(N_USERS)
    scores = model(grid_users, grid_items)  # (n_users * n_items,)
    assert torch.allclose(scores, full[grid_users, grid_items], atol=1e-6)
    assert torch.equal(model(torch.tensor([EMPTY_USER]), torch.tensor([3])), torch.zeros(1))


def test_with_history_shares_b_and_adds_the_new_items_row(pairs) -> None:
    weights = fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu")
    users, items = pairs
    model = EASE.from_pairs(weights, users, items, N_USERS)
    user = 0
    new_item = next(i for i in range(N_ITEMS) if i not in items[users == user].tolist())
    longer = model.with_history(torch.cat([users, torch.tensor([user])]),
                                torch.cat([items, torch.tensor([new_item])]), N_USERS)
    assert longer.weights is model.weights
    before = model.score_all_items(torch.arange(N_USERS))
    after = longer.score_all_items(torch.arange(N_USERS))
    assert torch.allclose(after[user] - before[user], weights[new_item], atol=1e-6)
    assert torch.equal(after[1:], before[1:])


def test_memory_guard_refuses_ml20m_on_a_small_limit() -> None:
    assert 26_744**2 * 4 >= 2.86e9  # B alone
    assert estimate_ease_bytes(26_744) >= 2.86e9
    assert estimate_ease_bytes(26_744, dtype_bytes=8) == 2 * estimate_ease_bytes(26_744)
    with pytest.raises(EaseMemoryError) as refused:
        check_ease_memory(26_744, 4_000_000_000, limit_key="ease.max_memory_gb")
    message = str(refused.value)
    assert "26,744" in message and "8.6 GB" in message and "4.0 GB" in message
    assert "ease.max_memory_gb" in message and "\n" not in message
    assert check_ease_memory(1_000, 4_000_000_000) == estimate_ease_bytes(1_000)


def test_time_guard_scales_the_probe_by_n_cubed_and_refuses_over_the_limit() -> None:
    probed: list[int] = []

    def probe(device, n_items: int) -> float:  # a device where the probe takes 0.5 s
        probed.append(n_items)
        return 0.5

    n_items = 4 * PROBE_ITEMS
    estimate = check_ease_time(n_items, 8, 3600.0, device="cpu", probe=probe)
    assert estimate == 8 * 0.5 * 4 ** 3 and probed == [PROBE_ITEMS]  # 256 s
    with pytest.raises(EaseTimeError) as refused:
        check_ease_time(n_items, 8, 255.0, device="cpu", limit_key="ease.max_minutes",
                        probe=probe)
    message = str(refused.value)
    assert "ease.max_minutes" in message and f"n_items={n_items:,}" in message
    assert "8 fits" in message and "\n" not in message
    # Small item sets are never probed: their fits take seconds.
    assert check_ease_time(PROBE_ITEMS, 8, 1e-9, device="cpu", probe=probe) == 0.0
    assert probed == [PROBE_ITEMS, PROBE_ITEMS]


def test_the_probe_times_a_real_factorisation() -> None:
    seconds = probe_seconds("cpu", 64)
    assert 0.0 < seconds < 5.0


def test_choose_l2_picks_the_best_and_breaks_ties_to_the_larger() -> None:
    scores = {50.0: 0.30, 100.0: 0.41, 200.0: 0.38}
    assert choose_l2((50, 100, 200), scores.__getitem__) == (100.0, scores)
    tied = {50.0: 0.40, 100.0: 0.40, 200.0: 0.35, 500.0: float("nan")}
    best, seen = choose_l2((500, 100, 50, 200), tied.__getitem__)
    assert best == 100.0 and seen.keys() == tied.keys()
    assert 500.0 in DEFAULT_L2_GRID
    with pytest.raises(ValueError, match="non-empty"):
        choose_l2((), lambda l2: 0.0)


def test_fit_best_l2_returns_the_chosen_model_and_holds_one_at_a_time() -> None:
    scores = {50.0: 0.30, 100.0: 0.35, 200.0: 0.35, 500.0: float("nan")}
    alive: set[float] = set()

    class Model:
        def __init__(self, l2: float) -> None:
            assert len(alive) <= 1  # earlier losers are gone before the next fit
            self.l2 = l2
            alive.add(l2)

        def __del__(self) -> None:
            alive.discard(self.l2)

    best, seen, model = fit_best_l2(list(scores), Model, lambda m: scores[m.l2])
    assert best == 200.0 and model.l2 == 200.0  # the tie goes to the larger λ; NaN never wins
    assert best == choose_l2(list(scores), scores.__getitem__)[0]
    assert seen.keys() == scores.keys()


def test_pair_scorer_exports_with_a_dynamic_batch(pairs) -> None:
    weights = fit_ease(*pairs, N_USERS, N_ITEMS, l2=1.0, device="cpu")
    scorer = PairScorer(EASE.from_pairs(weights, *pairs, N_USERS)).eval()
    example = torch.tensor([[0, 1], [3, 2], [EMPTY_USER, 4], [5, 5], [2, 0]])
    exported = torch.export.export(scorer, (example,),
                                   dynamic_shapes={"pairs": {0: torch.export.Dim("batch")}})
    program = exported.module()
    assert torch.allclose(program(example), scorer(example))
    other = torch.tensor([[6, 0], [1, 3], [4, 5]])
    assert torch.allclose(program(other), scorer(other))
    assert torch.equal(program(torch.tensor([[EMPTY_USER, 2]])), torch.tensor([0.5]))
    buffers = dict(exported.named_buffers())  # B travels inside the exported program
    assert torch.equal(buffers["model.weights"], weights)
