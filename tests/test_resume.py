"""ncf_model.resume: a training killed mid-way and started again ends where an
uninterrupted one does, bit for bit on CPU (the train stage's own resume: test_cli.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ncf_model.config import ModelConfig, TrainConfig
from ncf_model.models import build_model
from ncf_model.resume import RUN_FILE, PhaseState, TrainingStates, fingerprint
from ncf_model.train import fit, train
from tests.test_train import CPU, N_ITEMS, N_USERS, group_features, planted


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(RuntimeError):
    """Stands for the kill: raised from on_epoch once the chosen epoch has been trained."""


def _kill_at(epoch: int, key: str = "loss"):
    def on_epoch(at: int, metrics: dict[str, float]) -> None:
        if at == epoch and key in metrics:
            raise Killed(f"killed in epoch {at}")
    return on_epoch


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def _without_speed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "samples_per_s"} for h in history]


CFG = TrainConfig(epochs=5, batch_size=64, lr=0.02, n_negatives=4, patience=5, k=5, seed=9)


@pytest.mark.parametrize("model_cfg", [
    ModelConfig(kind="neumf", factors=8, mlp_layers=(16, 8), dropout=0.3),
    ModelConfig(kind="hybrid", factors=8, mlp_layers=(16, 8), id_dropout=0.3,
                batch_norm=True)], ids=["neumf-dropout", "hybrid-id-dropout"])
def test_interrupted_training_resumes_to_the_uninterrupted_weights(
        tmp_path: Path, model_cfg: ModelConfig) -> None:
    data, validation = planted()
    features = group_features() if model_cfg.kind == "hybrid" else None

    def run(state: PhaseState | None, on_epoch=None):
        torch.manual_seed(CFG.seed)
        model = build_model(model_cfg, N_USERS, N_ITEMS, features)
        generator = torch.Generator().manual_seed(CFG.seed)
        result = train(model, data, validation, CFG, device=CPU, generator=generator,
                       on_epoch=on_epoch, state=state)
        return model, result

    reference, expected = run(None)
    state = PhaseState(tmp_path / "model.pt", fingerprint({"any": "run"}))
    with pytest.raises(Killed):
        run(state, _kill_at(2))
    assert torch.load(state.path, weights_only=True)["epoch"] == 1  # epoch 2 never saved
    epochs: list[int] = []
    model, result = run(state, lambda epoch, _metrics: epochs.append(epoch))

    assert epochs == [2, 3, 4, 5]  # epoch 1 is not trained again
    _assert_same_weights(model.state_dict(), reference.state_dict())
    assert _without_speed(result.history) == _without_speed(expected.history)
    assert result.best_epoch == expected.best_epoch
    _assert_same_weights(result.best_state, expected.best_state)

    # A finished state only hands back the best weights: no epoch runs again.
    again: list[int] = []
    model, result = run(state, lambda epoch, _metrics: again.append(epoch))
    assert again == [] and result.best_epoch == expected.best_epoch
    _assert_same_weights(model.state_dict(), reference.state_dict())


def test_pretraining_killed_in_the_mlp_phase_resumes_there(tmp_path: Path) -> None:
    data, validation = planted()
    model_cfg = ModelConfig(kind="neumf", factors=8, mlp_layers=(16, 8), pretrain=True)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.02, n_negatives=4, patience=3, k=5,
                      finetune_lr=0.05)
    expected = fit(model_cfg, cfg, data, validation, device=CPU)
    states = TrainingStates(tmp_path / "_train_state", fingerprint({"any": "run"}))
    with pytest.raises(Killed):
        fit(model_cfg, cfg, data, validation, device=CPU, states=states,
            on_epoch=_kill_at(2, "pretrain_mlp_loss"))
    assert sorted(p.name for p in states.folder.iterdir()) == ["gmf.pt", "mlp.pt"]
    seen: list[str] = []
    resumed = fit(model_cfg, cfg, data, validation, device=CPU, states=states,
                  on_epoch=lambda epoch, metrics: seen.append(f"{sorted(metrics)[0]}@{epoch}"))

    # GMF is done and not trained again; MLP continues at its epoch 2.
    assert seen == ["pretrain_mlp_loss@2", "pretrain_mlp_loss@3", "loss@1", "loss@2", "loss@3"]
    _assert_same_weights(resumed.model.state_dict(), expected.model.state_dict())
    _assert_same_weights(resumed.pretrained["gmf"].best_state,
                         expected.pretrained["gmf"].best_state)


def test_a_state_of_another_config_is_not_resumed(tmp_path: Path) -> None:
    data, validation = planted()
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="gmf", factors=4), N_USERS, N_ITEMS)
    cfg = TrainConfig(epochs=2, batch_size=64, patience=2, k=5)
    old = PhaseState(tmp_path / "model.pt", "old-fingerprint")
    train(model, data, validation, cfg, device=CPU, generator=torch.Generator(), state=old)
    epochs: list[int] = []
    new = PhaseState(tmp_path / "model.pt", "new-fingerprint")
    train(model, data, validation, cfg, device=CPU, generator=torch.Generator(), state=new,
          on_epoch=lambda epoch, _metrics: epochs.append(epoch))
    assert epochs == [1, 2]  # trained afresh, and the file now belongs to the new config
    assert torch.load(new.path, weights_only=True)["fingerprint"] == "new-fingerprint"


def test_a_state_of_another_model_layout_is_not_resumed(tmp_path: Path) -> None:
    # The same fingerprint but other tensors (the code changed between two attempts, e.g.
    # the hybrid's padded tag bags): trained afresh, the model untouched by the old file.
    data, validation = planted()
    cfg = TrainConfig(epochs=2, batch_size=64, patience=2, k=5)
    state = PhaseState(tmp_path / "model.pt", "same-fingerprint")
    torch.manual_seed(0)
    old = build_model(ModelConfig(kind="gmf", factors=4), N_USERS, N_ITEMS)
    train(old, data, validation, cfg, device=CPU, generator=torch.Generator(), state=state)
    torch.manual_seed(1)
    new = build_model(ModelConfig(kind="gmf", factors=8), N_USERS, N_ITEMS)
    before = {name: tensor.clone() for name, tensor in new.state_dict().items()}
    optimizer = torch.optim.Adam(new.parameters())
    assert state.restore(new, optimizer, torch.Generator()) is None
    _assert_same_weights(new.state_dict(), before)
    epochs: list[int] = []
    train(new, data, validation, cfg, device=CPU, generator=torch.Generator(), state=state,
          on_epoch=lambda epoch, _metrics: epochs.append(epoch))
    assert epochs == [1, 2]


def test_training_states_continue_the_recorded_run_only_for_the_same_fingerprint(
        tmp_path: Path) -> None:
    folder = tmp_path / "_train_state"
    assert TrainingStates(folder, "a").run_id() is None
    TrainingStates(folder, "a").begin("run-123")
    assert json.loads((folder / RUN_FILE).read_text()) == {"run_id": "run-123",
                                                           "fingerprint": "a"}
    assert TrainingStates(folder, "a").run_id() == "run-123"
    (folder / "model.pt").write_bytes(b"stale")
    assert TrainingStates(folder, "b").run_id() is None  # other config or data: removed
    assert not folder.exists()
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
