"""Train an NCF model on the device, choosing the best epoch on validation HR@K.

`train(model, data, validation, cfg, device=..., generator=...)` is the whole loop: Adam
(or SGD), the BCE or BPR loss (`ncf_model.losses`), fresh negatives each epoch, early
stopping on validation HR@K (never on test), best weights kept. It logs one line per
epoch, hands each epoch's metrics to `on_epoch` (where the caller logs them to MLflow)
and, given a `PhaseState`, saves its state after every epoch and resumes from it
(`ncf_model.resume`). `fit` builds the configured model and trains it, with the NCF
paper's pre-training for NeuMF: GMF, then MLP, then NeuMF from both, fine-tuned.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from jobs.lake import failpoints
from ncf_model.config import ModelConfig, TrainConfig
from ncf_model.data import Batches, Pairs, TrainingData
from ncf_model.evaluate import evaluate
from ncf_model.features import SideFeatures
from ncf_model.losses import batch_loss
from ncf_model.models import GMF, MLP, NeuMF, build_model
from ncf_model.resume import PhaseState, Progress, TrainingStates

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, float]], None]


def select_device(preferred: str | None = None) -> torch.device:
    """`preferred` if given (e.g. "cpu", "cuda:1"), else CUDA when there is one, else CPU."""
    if preferred is not None:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {preferred!r} asked for, but torch sees no CUDA device")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log.info("training device: %s", torch.cuda.get_device_name(device)
             if device.type == "cuda" else "cpu")
    return device


@dataclass
class TrainResult:
    best_epoch: int  # 1-based
    best_metrics: dict[str, float]  # that epoch's entry of `history`
    history: list[dict[str, float]]  # one per epoch run: loss, samples_per_s, val_hr_k, ...
    best_state: dict[str, Tensor] = field(repr=False)  # state dict of the best epoch, on CPU


def _cpu_copy(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def make_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    # fused: one kernel for the whole update, on CUDA and on the CPU too, where it is ~5x
    # faster than torch's default per-tensor loop (an ML-20M-sized MF: 40 -> 8 ms a step).
    fused = True if device.type in {"cuda", "cpu"} else None
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay,
                                fused=fused)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay,
                               fused=fused)
    raise ValueError(f"optimizer {name!r} is not one of adam, sgd")


def _batches(data: TrainingData, cfg: TrainConfig,
             generator: torch.Generator) -> Batches:
    if cfg.loss == "bpr":
        return data.pair_epoch(cfg.n_negatives, cfg.batch_size, generator)
    return data.epoch(cfg.n_negatives, cfg.batch_size, generator, cfg.negatives)


def close_epoch(progress: Progress, metrics: dict[str, float], *, patience: int, epochs: int,
                on_epoch: OnEpoch | None, state: PhaseState | None,
                saved: tuple[nn.Module, torch.optim.Optimizer, torch.Generator], prefix: str,
                monitor: str) -> None:
    """The end of an epoch whose metrics are in `progress` (every epoch loop's): the stop
    rule, the `on_epoch` hook, then the saved state."""
    epoch = progress.epoch
    patience_out = epoch - progress.best_epoch >= patience
    progress.stopped = patience_out or epoch >= epochs
    if on_epoch is not None:
        on_epoch(epoch, dict(metrics))
    # After on_epoch: a kill in between re-runs this epoch (and logs it again, with the
    # same numbers on CPU) rather than leaving it out of the MLflow run.
    if state is not None:
        state.save(progress, *saved)
    if patience_out:
        log.info("%searly stop: validation %s has not improved for %d epochs since "
                 "epoch %d", prefix, monitor, patience, progress.best_epoch)


def train(model: nn.Module, data: TrainingData, validation: Pairs | None, cfg: TrainConfig, *,
          device: torch.device, generator: torch.Generator, on_epoch: OnEpoch | None = None,
          state: PhaseState | None = None, name: str = "") -> TrainResult:
    """Train `model` in place and leave it holding the weights of the best validation epoch.

    Reproducible on CPU given the model's initial weights, `generator`'s state (it draws
    the negatives and the shuffles; it must live on `data`'s device) and, with dropout,
    torch's global seed. With `state`, each epoch's end is saved there, and a saved state
    is continued from (a finished one only restores the best weights). `name` prefixes the
    log lines (pre-training phases). Without `validation` (a refit, whose data may hold the
    validation positives) it trains exactly `cfg.epochs` epochs and keeps the last weights.
    """
    device = torch.device(device)
    if data.device.type != device.type or generator.device.type != device.type:
        raise ValueError(f"training on {device}, but the data is on {data.device} and the "
                         f"generator on {generator.device}; load both onto the training device")
    model.to(device)
    validation = validation.to(device) if validation is not None else None
    cuda = device.type == "cuda"
    optimizer = make_optimizer(model, cfg.optimizer, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, device=device)
    hr_key, ndcg_key = f"hr_{cfg.k}", f"ndcg_{cfg.k}"
    prefix = f"{name}: " if name else ""
    restored = state.restore(model, optimizer, generator) if state is not None else None
    progress = restored or Progress(best_state=_cpu_copy(model))
    # A bar over the batches for whoever watches a terminal; never in an Airflow task log.
    show_bar = sys.stderr.isatty()

    while not progress.stopped:
        epoch = progress.epoch + 1
        model.train()
        start = time.perf_counter()
        # Summed on the device so the loop never waits for the GPU to report a loss.
        loss_sum = torch.zeros((), device=device)
        n_samples = 0
        batches = _batches(data, cfg, generator)
        for step, batch in enumerate(tqdm(batches, desc=f"{prefix}epoch {epoch}",
                                          unit="batch", leave=False, disable=not show_bar)):
            if epoch == 2 and step == 1:  # mid-epoch, for the kill test (no-op unless armed)
                failpoints.reach(failpoints.TRAIN_MID_EPOCH)
            loss = batch_loss(model, batch, cfg.loss, device_type=device.type, autocast=cuda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * batch[0].shape[0]
            n_samples += batch[0].shape[0]
        mean_loss = float(loss_sum) / max(n_samples, 1)  # float() waits for the device
        seconds = time.perf_counter() - start

        metrics = {"loss": mean_loss, "samples_per_s": n_samples / seconds}
        if validation is not None:
            scores = evaluate(model, validation, cfg.k)
            metrics |= {f"val_{hr_key}": scores[hr_key], f"val_{ndcg_key}": scores[ndcg_key]}
        progress.history.append(metrics)
        progress.epoch = epoch
        # A refit keeps its last epoch: "best" is the one it was told to stop at.
        improved = validation is None or metrics[f"val_{hr_key}"] > progress.best_hr
        if improved:
            progress.best_epoch = epoch
            progress.best_hr = metrics.get(f"val_{hr_key}", progress.best_hr)
            progress.best_state = _cpu_copy(model)
        log.info("%sepoch %d/%d loss %.4f %.0f samples/s%s%s", prefix, epoch, cfg.epochs,
                 mean_loss, metrics["samples_per_s"], "" if validation is None else
                 f" val {hr_key} {metrics[f'val_{hr_key}']:.4f} {ndcg_key} "
                 f"{metrics[f'val_{ndcg_key}']:.4f}", " (best)" if improved and validation
                 is not None else "")
        close_epoch(progress, metrics, patience=cfg.patience, epochs=cfg.epochs,
                    on_epoch=on_epoch, state=state, saved=(model, optimizer, generator),
                    prefix=prefix, monitor=hr_key)

    model.load_state_dict(progress.best_state)
    return TrainResult(best_epoch=progress.best_epoch,
                       best_metrics=dict(progress.history[progress.best_epoch - 1]),
                       history=progress.history, best_state=progress.best_state)


@dataclass
class Fitted:
    model: nn.Module  # holding the best validation epoch's weights
    result: TrainResult  # of the model itself (with pre-training: of the fine-tuning)
    pretrained: dict[str, TrainResult]  # "gmf", "mlp" when model.pretrain, else empty

    def best_epochs(self) -> dict[str, int]:
        """The epochs validation chose, per phase: what `refit` trains for."""
        return {"model": self.result.best_epoch,
                **{phase: result.best_epoch for phase, result in self.pretrained.items()}}


def fit(model_cfg: ModelConfig, cfg: TrainConfig, data: TrainingData, validation: Pairs, *,
        device: torch.device, features: SideFeatures | None = None,
        on_epoch: OnEpoch | None = None, states: TrainingStates | None = None) -> Fitted:
    """Seed torch with `cfg.seed`, build `model_cfg`'s model and train it.

    With `model_cfg.pretrain` (NeuMF): GMF and MLP are trained first, each to its best
    validation epoch, NeuMF starts from them (`NeuMF.from_pretrained`, `pretrain_alpha`)
    and is fine-tuned with `cfg.finetune_optimizer` at `cfg.finetune_lr`. Their epochs
    reach `on_epoch` with metric names prefixed `pretrain_gmf_` / `pretrain_mlp_`.
    """
    torch.manual_seed(cfg.seed)  # initial weights (and dropout) are seeded too
    n_users, n_items = data.n_users, data.n_items

    def run(model: nn.Module, phase: str, phase_cfg: TrainConfig, metric_prefix: str,
            name: str) -> TrainResult:
        def report(epoch: int, metrics: dict[str, float]) -> None:
            if on_epoch is not None:
                on_epoch(epoch, {f"{metric_prefix}{k}": v for k, v in metrics.items()})

        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        return train(model, data, validation, phase_cfg, device=device, generator=generator,
                     on_epoch=report, state=states.phase(phase) if states else None,
                     name=name)

    if not model_cfg.pretrain:
        model = build_model(model_cfg, n_users, n_items, features)
        return Fitted(model, run(model, "model", cfg, "", ""), {})

    gmf = GMF(n_users, n_items, model_cfg.factors)
    gmf_result = run(gmf, "gmf", cfg, "pretrain_gmf_", "pretrain gmf")
    mlp = MLP(n_users, n_items, model_cfg.mlp_layers, dropout=model_cfg.dropout,
              batch_norm=model_cfg.batch_norm)
    mlp_result = run(mlp, "mlp", cfg, "pretrain_mlp_", "pretrain mlp")
    model = NeuMF.from_pretrained(gmf, mlp, alpha=model_cfg.pretrain_alpha)
    finetune = dataclasses.replace(cfg, optimizer=cfg.finetune_optimizer, lr=cfg.finetune_lr)
    result = run(model, "neumf", finetune, "", "")
    log.info("pre-training: GMF best epoch %d (val %s %.4f), MLP %d (%.4f); NeuMF %d (%.4f)",
             gmf_result.best_epoch, f"hr_{cfg.k}", gmf_result.best_metrics[f"val_hr_{cfg.k}"],
             mlp_result.best_epoch, mlp_result.best_metrics[f"val_hr_{cfg.k}"],
             result.best_epoch, result.best_metrics[f"val_hr_{cfg.k}"])
    return Fitted(model, result, {"gmf": gmf_result, "mlp": mlp_result})


def refit(model_cfg: ModelConfig, cfg: TrainConfig, data: TrainingData, *,
          epochs: Mapping[str, int], device: torch.device,
          features: SideFeatures | None = None) -> nn.Module:
    """Steps (b) and (c) of the candidates protocol: `model_cfg`'s model trained afresh on
    `data` for exactly the epochs (a) chose on validation, per phase ("model"; with
    pre-training also "gmf" and "mlp"), the last weights kept. No validation split: it may
    be part of `data`."""
    torch.manual_seed(cfg.seed)
    n_users, n_items = data.n_users, data.n_items

    def run(model: nn.Module, phase_cfg: TrainConfig, phase: str) -> None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        n_epochs = int(epochs[phase])
        train(model, data, None, dataclasses.replace(phase_cfg, epochs=n_epochs,
                                                     patience=n_epochs),
              device=device, generator=generator, name=f"refit {phase}")

    if not model_cfg.pretrain:
        model = build_model(model_cfg, n_users, n_items, features)
        run(model, cfg, "model")
        return model
    gmf = GMF(n_users, n_items, model_cfg.factors)
    run(gmf, cfg, "gmf")
    mlp = MLP(n_users, n_items, model_cfg.mlp_layers, dropout=model_cfg.dropout,
              batch_norm=model_cfg.batch_norm)
    run(mlp, cfg, "mlp")
    model = NeuMF.from_pretrained(gmf, mlp, alpha=model_cfg.pretrain_alpha)
    run(model, dataclasses.replace(cfg, optimizer=cfg.finetune_optimizer, lr=cfg.finetune_lr),
        "model")
    return model
