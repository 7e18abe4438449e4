"""ncf_model.train: learning a planted structure (BCE and BPR, every kind), NeuMF
pre-training, the hybrid model on unseen users, reproducibility, early stopping."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pyarrow as pa
import pytest
import torch

from jobs.lake import layout
from ncf_model import train as train_module
from ncf_model.config import ModelConfig, TrainConfig
from ncf_model.data import Pairs, TrainingData
from ncf_model.evaluate import evaluate
from ncf_model.features import SideFeatures, build_vocabulary, encode
from ncf_model.models import Hybrid, NeuMF, build_model
from ncf_model.train import fit, select_device, train

N_USERS, N_ITEMS, N_GROUPS, BLOCK = 30, 40, 3, 13
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """Tiny tensors: with two threads OpenMP hand-offs dominate each step, and stall for
    seconds when other jobs share the cores. The results are the same either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(seed: int = 0) -> tuple[TrainingData, Pairs]:
    """Users in 3 groups, each group likes its own block of 13 items. Each user has 8 train
    positives and 1 validation positive in the block, ranked among 19 never-touched items."""
    g = torch.Generator().manual_seed(seed)
    train_user, train_item, val_user, val_item, val_label = [], [], [], [], []
    for user in range(N_USERS):
        block = (user % N_GROUPS) * BLOCK + torch.randperm(BLOCK, generator=g)
        liked = block[:9].tolist()
        train_user += [user] * 8
        train_item += liked[:8]
        untouched = [i for i in torch.randperm(N_ITEMS, generator=g).tolist() if i not in liked]
        val_user += [user] * 20
        val_item += [liked[8], *untouched[:19]]
        val_label += [1.0] + [0.0] * 19
    train_pairs = Pairs(torch.tensor(train_user), torch.tensor(train_item),
                        torch.ones(len(train_user)))
    validation = Pairs(torch.tensor(val_user), torch.tensor(val_item), torch.tensor(val_label))
    return TrainingData(train_pairs, n_users=N_USERS, n_items=N_ITEMS), validation


def _fit(cfg: TrainConfig, kind: str = "neumf", **kwargs):
    data, validation = planted()
    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(kind=kind, factors=8, mlp_layers=(16, 8)), N_USERS, N_ITEMS)
    generator = torch.Generator().manual_seed(cfg.seed)
    result = train(model, data, validation, cfg, device=CPU, generator=generator, **kwargs)
    return model, result, validation


def test_training_learns_the_planted_groups(caplog: pytest.LogCaptureFixture) -> None:
    cfg = TrainConfig(epochs=15, batch_size=64, lr=0.02, n_negatives=4, patience=15, k=5)
    with caplog.at_level(logging.INFO, logger="ncf_model.train"):
        model, result, validation = _fit(cfg)

    untrained = build_model(ModelConfig(factors=8, mlp_layers=(16, 8)), N_USERS, N_ITEMS)
    assert evaluate(untrained, validation, k=5)["hr_5"] < 0.5  # random: 5 of 20 -> 0.25
    assert result.best_metrics["val_hr_5"] >= 0.9
    assert evaluate(model, validation, k=5)["hr_5"] == result.best_metrics["val_hr_5"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_epoch == 1 + max(range(len(result.history)),
                                        key=lambda e: (result.history[e]["val_hr_5"], -e))
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(epoch_lines) == len(result.history) == 15
    assert "samples/s" in epoch_lines[0] and "hr_5" in epoch_lines[0]


def test_same_seed_gives_identical_weights() -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.01, patience=3, k=5, seed=3)
    first, result_a, _ = _fit(cfg)
    second, result_b, _ = _fit(cfg)
    assert result_a.best_state.keys() == first.state_dict().keys()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert [h["loss"] for h in result_a.history] == [h["loss"] for h in result_b.history]


def test_early_stopping_respects_patience_and_restores_the_best_epoch() -> None:
    # k=50 > 20 candidates: validation HR is 1.0 from epoch 1 on and never strictly improves.
    seen: list[tuple[int, dict[str, float]]] = []
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.01, patience=3, k=50)
    model, result, _ = _fit(cfg, kind="gmf", on_epoch=lambda e, m: seen.append((e, m)))

    assert result.best_epoch == 1
    assert len(result.history) == 1 + cfg.patience
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) == {"loss", "samples_per_s", "val_hr_50", "val_ndcg_50"}
    assert seen[0][1]["val_hr_50"] == 1.0 and seen[0][1]["samples_per_s"] > 0
    assert result.best_metrics == result.history[0]
    for name, tensor in model.state_dict().items():  # trained on, then rolled back to epoch 1
        assert torch.equal(tensor, result.best_state[name]), name


def test_select_device_falls_back_to_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert select_device("cpu") == CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_with_bf16_autocast() -> None:
    data, validation = planted()
    device = torch.device("cuda")
    data = TrainingData(Pairs(data.user, data.item, torch.ones(data.n_positives)).to(device),
                        n_users=N_USERS, n_items=N_ITEMS)
    torch.manual_seed(0)
    model = build_model(ModelConfig(factors=8, mlp_layers=(16, 8)), N_USERS, N_ITEMS)
    cfg = TrainConfig(epochs=15, batch_size=64, lr=0.02, patience=15, k=5)
    result = train(model, data, validation, cfg, device=device,
                   generator=torch.Generator(device=device).manual_seed(0))
    assert result.best_metrics["val_hr_5"] >= 0.9
    assert all(t.device.type == "cpu" for t in result.best_state.values())


def group_features() -> SideFeatures:
    """The planted groups as side features: each user's occupation names its group, each
    item's one tag names its block."""
    user_ids = [f"u{u}" for u in range(N_USERS)]
    item_ids = [f"i{i}" for i in range(N_ITEMS)]
    users = pa.Table.from_pylist(
        [{layout.USER_ID: u, layout.OCCUPATION: f"group{n % N_GROUPS}"}
         for n, u in enumerate(user_ids)],
        schema=layout.arrow_schema(layout.USER_FEATURES_SCHEMA))
    items = pa.Table.from_pylist(
        [{layout.ITEM_ID: i, layout.GENRES: [f"block{min(n // BLOCK, N_GROUPS - 1)}"]}
         for n, i in enumerate(item_ids)],
        schema=layout.arrow_schema(layout.ITEM_FEATURES_SCHEMA))
    return encode(build_vocabulary(user_ids, item_ids, users, items), user_ids, item_ids,
                  users, items)


@pytest.mark.parametrize("kind", ["mf", "gmf", "hybrid"])
def test_bpr_training_learns_the_planted_groups(kind: str) -> None:
    data, validation = planted()
    cfg = TrainConfig(epochs=12, batch_size=64, lr=0.02, loss="bpr", n_negatives=4,
                      patience=12, k=5)
    torch.manual_seed(0)
    model_cfg = ModelConfig(kind=kind, factors=8, mlp_layers=(16, 8))
    features = group_features() if kind == "hybrid" else None
    before = evaluate(build_model(model_cfg, N_USERS, N_ITEMS, features), validation, k=5)
    fitted = fit(model_cfg, cfg, data, validation, device=CPU, features=features)
    assert before["hr_5"] < 0.5
    assert fitted.result.best_metrics["val_hr_5"] >= 0.9
    assert fitted.result.history[-1]["loss"] < fitted.result.history[0]["loss"]
    assert evaluate(fitted.model, validation, k=5)["hr_5"] == fitted.result.best_metrics["val_hr_5"]


def test_pretraining_runs_gmf_then_mlp_then_fine_tunes_neumf(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, float]] = []
    make_optimizer = train_module.make_optimizer

    def spy(model, name, *, lr, weight_decay, device):
        made.append((name, lr))
        return make_optimizer(model, name, lr=lr, weight_decay=weight_decay, device=device)

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    data, validation = planted()
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.02, n_negatives=4, patience=6, k=5,
                      finetune_optimizer="sgd", finetune_lr=0.05)
    seen: list[tuple[int, dict[str, float]]] = []
    fitted = fit(ModelConfig(kind="neumf", factors=8, mlp_layers=(16, 8), pretrain=True), cfg,
                 data, validation, device=CPU, on_epoch=lambda e, m: seen.append((e, m)))

    assert made == [("adam", 0.02), ("adam", 0.02), ("sgd", 0.05)]
    assert isinstance(fitted.model, NeuMF) and set(fitted.pretrained) == {"gmf", "mlp"}
    for result in (*fitted.pretrained.values(), fitted.result):
        assert result.best_epoch == 1 + max(range(len(result.history)),
                                            key=lambda e: (result.history[e]["val_hr_5"], -e))
    assert [sorted(m)[0] for _, m in seen[:6]] == ["pretrain_gmf_loss"] * 6
    assert [sorted(m)[0] for _, m in seen[6:12]] == ["pretrain_mlp_loss"] * 6
    assert [sorted(m)[0] for _, m in seen[12:]] == ["loss"] * len(fitted.result.history)
    assert fitted.pretrained["gmf"].best_metrics["val_hr_5"] >= 0.9
    # Fine-tuning starts from the pre-trained parts, so it is good from its first epoch.
    assert fitted.result.history[0]["val_hr_5"] >= 0.9
    assert fitted.result.best_metrics["val_hr_5"] >= 0.9


def test_hybrid_scores_users_it_never_saw_by_their_features() -> None:
    data, validation = planted()
    features = group_features()
    cfg = TrainConfig(epochs=15, batch_size=64, lr=0.02, n_negatives=4, patience=15, k=5)
    fitted = fit(ModelConfig(kind="hybrid", factors=8, mlp_layers=(16, 8), id_dropout=0.3),
                 cfg, data, validation, device=CPU, features=features)
    model = fitted.model.eval()
    assert isinstance(model, Hybrid)
    assert fitted.result.best_metrics["val_hr_5"] >= 0.9
    items = torch.arange(N_ITEMS)
    oov_user, oov_item = torch.full((N_ITEMS,), N_USERS), torch.full((N_ITEMS,), N_ITEMS)
    for group in range(N_GROUPS):
        codes = features.user_codes[group].expand(N_ITEMS, -1)  # user `group` is in it
        with torch.no_grad():
            scores = model.score(oov_user, codes, items, model.item_bags)
            # The item unseen too: its block's tag alone still puts it with its group.
            unseen_items = model.score(oov_user, codes, oov_item, model.bags(features))
        block = set(range(group * BLOCK, (group + 1) * BLOCK))
        top = set(torch.topk(scores, 10).indices.tolist())
        assert len(top & block) >= 8, (group, sorted(top))
        top_unseen = set(torch.topk(unseen_items, 10).indices.tolist())
        assert len(top_unseen & block) >= 8, (group, sorted(top_unseen))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, patience=1, k=5)
    _fit(cfg, kind="gmf")
    assert "batch" not in capsys.readouterr().err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _fit(cfg, kind="gmf")
    assert "epoch 1" in terminal.getvalue() and "batch" in terminal.getvalue()
