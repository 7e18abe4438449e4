"""Train an NCF model on the device, choosing the best epoch on validation HR@K.

`train(model, data, validation, cfg, device=..., generator=...)` is the whole loop:
Adam, binary cross-entropy on logits, fresh negatives each epoch, early stopping on
validation HR@K (never on test), best weights kept. It logs one line per epoch and
hands each epoch's metrics to `on_epoch` (where the caller logs them to MLflow).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ncf_model.config import TrainConfig
from ncf_model.data import Pairs, TrainingData
from ncf_model.evaluate import evaluate

log = logging.getLogger(__name__)


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


def train(model: nn.Module, data: TrainingData, validation: Pairs, cfg: TrainConfig, *,
          device: torch.device, generator: torch.Generator,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train `model` in place and leave it holding the weights of the best validation epoch.

    Reproducible on CPU given the model's initial weights, `generator`'s state (it draws
    the negatives and the shuffles; it must live on `data`'s device) and, with dropout,
    torch's global seed.
    """
    device = torch.device(device)
    if data.device.type != device.type or generator.device.type != device.type:
        raise ValueError(f"training on {device}, but the data is on {data.device} and the "
                         f"generator on {generator.device}; load both onto the training device")
    model.to(device)
    validation = validation.to(device)
    cuda = device.type == "cuda"
    # fused: one kernel for the whole update on CUDA; None lets torch pick on the CPU.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=True if cuda else None)
    loss_fn = nn.BCEWithLogitsLoss()
    hr_key, ndcg_key = f"hr_{cfg.k}", f"ndcg_{cfg.k}"

    history: list[dict[str, float]] = []
    best_epoch, best_hr, best_state = 0, -1.0, _cpu_copy(model)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start = time.perf_counter()
        # Summed on the device so the loop never waits for the GPU to report a loss.
        loss_sum = torch.zeros((), device=device)
        n_samples = 0
        for user, item, label in data.epoch(cfg.n_negatives, cfg.batch_size, generator,
                                            cfg.negatives):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(user, item)  # (B,)
            loss = loss_fn(logits.float(), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * label.shape[0]
            n_samples += label.shape[0]
        mean_loss = float(loss_sum) / max(n_samples, 1)  # float() waits for the device
        seconds = time.perf_counter() - start

        scores = evaluate(model, validation, cfg.k)
        metrics = {"loss": mean_loss, "samples_per_s": n_samples / seconds,
                   f"val_{hr_key}": scores[hr_key], f"val_{ndcg_key}": scores[ndcg_key]}
        history.append(metrics)
        improved = scores[hr_key] > best_hr
        if improved:
            best_epoch, best_hr, best_state = epoch, scores[hr_key], _cpu_copy(model)
        log.info("epoch %d/%d loss %.4f %.0f samples/s val %s %.4f %s %.4f%s", epoch,
                 cfg.epochs, mean_loss, metrics["samples_per_s"], hr_key, scores[hr_key],
                 ndcg_key, scores[ndcg_key], " (best)" if improved else "")
        if on_epoch is not None:
            on_epoch(epoch, dict(metrics))
        if epoch - best_epoch >= cfg.patience:
            log.info("early stop: validation %s has not improved for %d epochs since epoch %d",
                     hr_key, cfg.patience, best_epoch)
            break

    model.load_state_dict(best_state)
    return TrainResult(best_epoch=best_epoch, best_metrics=dict(history[best_epoch - 1]),
                       history=history, best_state=best_state)
