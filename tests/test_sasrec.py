"""ncf_model.models.sasrec and ncf_model.train_sasrec: causality, padding invariance, the
stored histories, pair/all-items parity, negatives, learning a sequential walk,
reproducibility, resume, and the exported PairScorer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ncf_model.config import SASRecTrainConfig
from ncf_model.data import Pairs
from ncf_model.evaluate import evaluate
from ncf_model.models.common import PairScorer
from ncf_model.models.sasrec import SASRec, build_histories, build_windows
from ncf_model.resume import PhaseState, fingerprint
from ncf_model.train_sasrec import (
    batch_loss,
    pairs_validator,
    sample_negatives,
    sequence_keys,
    train_sasrec,
)

N_USERS, N_ITEMS, MAX_LEN, K = 60, 40, 8, 10
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """Tiny tensors: OpenMP hand-offs between threads would dominate every step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def walks(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], Pairs]:
    """Each user walks item s, s+1, ... (mod N_ITEMS) for 4 to 10 steps from a random s; the
    validation positive is the next step, ranked among 29 items the user never saw (random
    HR@10 = 1/3). Rows come shuffled: `order` alone gives time order."""
    g = torch.Generator().manual_seed(seed)
    user, item, order, val_user, val_item, val_label = [], [], [], [], [], []
    for u in range(N_USERS):
        start = int(torch.randint(N_ITEMS, (1,), generator=g))
        length = int(torch.randint(4, 11, (1,), generator=g))
        items = [(start + t) % N_ITEMS for t in range(length)]
        user += [u] * length
        item += items
        order += [100 * t for t in range(length)]  # any increasing key
        positive = (start + length) % N_ITEMS
        unseen = [i for i in torch.randperm(N_ITEMS, generator=g).tolist()
                  if i not in items and i != positive]
        val_user += [u] * 30
        val_item += [positive, *unseen[:29]]
        val_label += [1.0] + [0.0] * 29
    shuffle = torch.randperm(len(user), generator=g)
    rows = (torch.tensor(user)[shuffle], torch.tensor(item)[shuffle],
            torch.tensor(order)[shuffle])
    return rows, Pairs(torch.tensor(val_user), torch.tensor(val_item), torch.tensor(val_label))


def model_for(seed: int, **options) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(N_USERS, N_ITEMS, **{"max_len": MAX_LEN, "hidden": 32, **options})


def random_tokens(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(1, N_ITEMS + 1, shape, generator=torch.Generator().manual_seed(seed))


# --- the model ----------------------------------------------------------------------------

def test_a_later_item_never_changes_an_earlier_state() -> None:
    model = model_for(1, n_blocks=2, n_heads=2).eval()
    seq = random_tokens((3, MAX_LEN), seed=1)
    seq[0, :3] = 0  # left padding in one row
    before = model.hidden_states(seq)  # (3, L, d)
    for t in range(3, MAX_LEN):
        changed = seq.clone()
        changed[:, t] = changed[:, t] % N_ITEMS + 1  # another item at position t
        after = model.hidden_states(changed)
        assert torch.equal(after[:, :t], before[:, :t]), t
        assert not torch.allclose(after[:, t], before[:, t]), t  # position t reads its item


def test_left_padding_does_not_change_the_last_state() -> None:
    model = model_for(2).eval()
    items = torch.tensor([5, 17, 3])
    states = [model.hidden_states(torch.cat([torch.zeros(pad, dtype=torch.int64), items])[None])
              for pad in (0, 1, MAX_LEN - 3)]  # lengths 3, 4 and max_len
    for state in states[1:]:
        assert torch.allclose(state[0, -1], states[0][0, -1], atol=1e-6)
    assert not torch.allclose(states[0][0, -1], model.hidden_states(items[None, 1:])[0, -1])


def test_build_histories_matches_a_python_reference() -> None:
    user = torch.tensor([2, 0, 2, 2, 0, 2, 2, 3])
    item = torch.tensor([7, 1, 4, 9, 3, 0, 5, 6])
    order = torch.tensor([3.0, 9.0, 1.0, 2.5, 2.0, 8.0, 4.0, 0.0])
    n_users, max_len = 5, 4
    expected = []
    for u in range(n_users):
        rows = sorted((float(o), int(i)) for v, i, o in zip(user, item, order, strict=True)
                      if int(v) == u)
        tokens = [i + 1 for _o, i in rows][-max_len:]
        expected.append([0] * (max_len - len(tokens)) + tokens)
    histories = build_histories(user, item, order, n_users, max_len)
    assert histories.tolist() == expected
    assert expected[2] == [10, 8, 6, 1]  # user 2: the oldest of its 5 items dropped
    assert expected[1] == expected[4] == [0, 0, 0, 0]  # no rows: all padding
    with pytest.raises(ValueError, match=r"user_idx outside 0\.\.2"):
        build_histories(user, item, order, 3, max_len)


@pytest.mark.parametrize("length", [2, 3, 4, 6])
def test_build_windows_trains_every_transition_of_the_whole_history_once(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    n_users = 6
    user = torch.randint(0, n_users - 1, (60,), generator=generator)  # the last user: none
    item = torch.randint(0, 30, (60,), generator=generator)
    order = torch.randperm(60, generator=generator).double()
    windows = build_windows(user, item, order, n_users, length)
    stride = length - 1
    expected, transitions = [], []
    for u in range(n_users):
        tokens = [int(i) + 1 for _o, i in sorted(
            (float(o), int(i)) for v, i, o in zip(user, item, order, strict=True)
            if int(v) == u)]
        # the targets a single left-padded row trains: (previous token or padding, token)
        transitions += [(([0] + tokens)[k], tokens[k]) for k in range(len(tokens))]
        n = len(tokens)
        for w in range((n - 1) // stride + 1 if n else 0):  # from the end, overlapping by one
            chunk = tokens[max(0, n - 1 - w * stride - stride):n - w * stride]
            expected.append([0] * (length - len(chunk)) + chunk)
    assert windows.tolist() == expected
    trained = [(int(a), int(b)) for row in windows for a, b in zip(row[:-1], row[1:],
                                                                    strict=True) if int(b)]
    assert sorted(trained) == sorted(transitions)  # each transition once, none lost
    # Each user's first window is its latest: the row build_histories gives it.
    counts = torch.bincount(user, minlength=n_users).tolist()
    n_windows = [(n - 1) // stride + 1 if n else 0 for n in counts]
    starts = [sum(n_windows[:u]) for u in range(n_users)]
    latest = build_histories(user, item, order, n_users, length)
    for u in range(n_users):
        if counts[u]:
            assert windows[starts[u]].tolist() == latest[u].tolist()
    with pytest.raises(ValueError, match="at least 2 columns"):
        build_windows(user, item, order, n_users, 1)


def test_forward_equals_score_all_items_and_an_empty_history_is_finite() -> None:
    model = model_for(3)
    model.train()  # a few steps so the LayerNorm biases are not 0
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model.hidden_states(random_tokens((4, MAX_LEN), seed=3)).square().mean().backward()
        optimizer.step()
    histories = torch.zeros(N_USERS, MAX_LEN, dtype=torch.int64)
    histories[:, -5:] = random_tokens((N_USERS, 5), seed=4)
    histories[7] = 0  # user 7 has no history
    model.set_histories(histories)
    model.eval()
    users = torch.tensor([0, 7, 13, 59])
    with torch.no_grad():
        all_items = model.score_all_items(users)  # (4, n_items)
        pairs = model(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(4))
    assert all_items.shape == (4, N_ITEMS)
    assert torch.allclose(pairs.view(4, N_ITEMS), all_items, atol=1e-5)
    assert bool(all_items.isfinite().all())
    assert float(all_items[1].std()) > 0  # the empty history still ranks (the LN bias)
    with pytest.raises(ValueError, match=r"must be \(n_users, max_len\) = \(60, 8\)"):
        model.set_histories(histories[:, 1:])


def test_pair_scorer_exports_with_a_dynamic_batch() -> None:
    model = model_for(4, n_heads=2)
    (user, item, order), _validation = walks()
    histories = build_histories(user, item, order, N_USERS, MAX_LEN)
    histories[11] = 0  # an empty history
    model.set_histories(histories)
    scorer = PairScorer(model.eval())
    example = torch.tensor([[0, 1], [11, 39], [59, 0], [3, 3], [11, 5]])
    exported = torch.export.export(scorer, (example,),
                                   dynamic_shapes={"pairs": {0: torch.export.Dim("batch")}})
    other = torch.tensor([[11, 2], [30, 20], [1, 1]])
    for pairs in (example, other):
        out = exported.module()(pairs)
        assert out.shape == (len(pairs),)
        assert torch.allclose(out, scorer(pairs), atol=1e-6)
        assert bool(out.isfinite().all())
    assert torch.equal(dict(exported.named_buffers())["model.histories"], histories)


# --- training -----------------------------------------------------------------------------

def test_negatives_avoid_the_users_sequence() -> None:
    seqs = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 0, 0]])
    seen = sequence_keys(seqs, n_items=10)
    rows = torch.tensor([0, 1, 2, 1])
    negatives = sample_negatives(rows, 400, seen, 10, torch.Generator().manual_seed(0))
    assert negatives.shape == (4, 400)
    for row, drawn in zip(rows.tolist(), negatives, strict=True):
        allowed = set(range(1, 11)) - set(seqs[row].tolist())
        assert set(drawn.tolist()) == allowed  # all of them, and nothing else


def _train(seed: int, cfg: SASRecTrainConfig, **kwargs):
    (user, item, order), validation = walks()
    model = model_for(seed)
    model.set_histories(build_histories(user, item, order, N_USERS, MAX_LEN))
    train_seqs = build_histories(user, item, order, N_USERS, MAX_LEN + 1)
    result = train_sasrec(model, train_seqs, pairs_validator(validation, K), cfg, device=CPU,
                          generator=torch.Generator().manual_seed(seed), **kwargs)
    return model, result, validation


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax", "softmax"])
def test_training_learns_the_walk_reproducibly(loss: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = SASRecTrainConfig(epochs=4, batch_size=16, lr=0.01, patience=4, loss=loss,
                            n_negatives=10)
    (user, item, order), validation = walks()
    untrained = model_for(5)
    untrained.set_histories(build_histories(user, item, order, N_USERS, MAX_LEN))
    assert evaluate(untrained, validation, K)[f"hr_{K}"] < 0.6  # random: 10 of 30

    with caplog.at_level(logging.INFO, logger="ncf_model.train_sasrec"):
        model, result, validation = _train(5, cfg)
    # Measured: HR@10 1.0 from epoch 2 with either loss.
    assert result.best_metrics[f"val_hr_{K}"] >= 0.9
    assert result.best_metrics[f"val_ndcg_{K}"] >= 0.6
    assert evaluate(model, validation, K)[f"hr_{K}"] == result.best_metrics[f"val_hr_{K}"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(lines) == len(result.history) == 4
    assert "sequences/s val hr_10" in lines[0]

    again, _result, _validation = _train(5, cfg)
    state, other = model.state_dict(), again.state_dict()
    assert state.keys() == other.keys()
    assert all(torch.equal(state[name], other[name]) for name in state)


def test_windows_of_short_length_still_learn_the_walk() -> None:
    """Windows of 3 items (2 inputs) cut every walk into several training rows: more rows
    than users, every step trained once, and the model learns the walk from them."""
    (user, item, order), validation = walks()
    windows = build_windows(user, item, order, N_USERS, 3)
    assert windows.shape[0] > N_USERS
    model = model_for(5, max_len=2)
    model.set_histories(build_histories(user, item, order, N_USERS, 2))
    cfg = SASRecTrainConfig(epochs=4, batch_size=16, lr=0.01, patience=4, loss="softmax")
    result = train_sasrec(model, windows, pairs_validator(validation, K), cfg, device=CPU,
                          generator=torch.Generator().manual_seed(5))
    assert result.best_metrics[f"val_hr_{K}"] >= 0.9


def test_full_softmax_is_the_cross_entropy_over_every_item_at_trained_positions() -> None:
    model = model_for(3).eval()  # no dropout: the same states twice
    seqs = torch.tensor([[0, 0, 4, 9, 2], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]])
    cfg = SASRecTrainConfig(loss="softmax")
    loss, n_trained = batch_loss(model, seqs, torch.arange(3), cfg=cfg,
                                 seen=sequence_keys(seqs, n_items=model.n_items),
                                 generator=torch.Generator().manual_seed(0))
    states = model.hidden_states(seqs[:, :-1])  # (3, 4, d)
    terms = []
    for row in range(3):
        for t in range(4):
            target = int(seqs[row, t + 1])
            if target == 0:  # padding is never a target
                continue
            logits = model.item_embedding.weight[1:] @ states[row, t]  # (n_items,)
            terms.append(-torch.log_softmax(logits, dim=0)[target - 1])
    assert int(n_trained) == len(terms) == 3 + 4 + 1  # a first item is predicted from nothing
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def _without_speed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "sequences_per_s"} for h in history]


def test_resumed_training_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    cfg = SASRecTrainConfig(epochs=4, batch_size=16, lr=0.01, patience=4)
    reference, expected = _train(6, cfg)[:2]

    state = PhaseState(tmp_path / "sasrec.pt", fingerprint({"any": "run"}))
    _train(6, SASRecTrainConfig(epochs=2, batch_size=16, lr=0.01, patience=4), state=state)
    assert torch.load(state.path, weights_only=True)["epoch"] == 2
    epochs: list[int] = []
    # A fresh model (other initial weights: the state replaces them) resumes to 4 epochs.
    model, result, _validation = _train(7, cfg, state=state,
                                        on_epoch=lambda epoch, _m: epochs.append(epoch))
    assert epochs == [3, 4]
    assert result.best_epoch == expected.best_epoch
    assert _without_speed(result.history) == _without_speed(expected.history)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
