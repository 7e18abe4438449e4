"""Train a SASRec model on users' item sequences, choosing the best epoch on validation.

`train_sasrec(model, train_seqs, validate, cfg, device=..., generator=...)` is the whole
loop. `train_seqs` is (U, L) int64 tokens, one left-padded row per user
(`ncf_model.models.sasrec.build_histories` with `max_len + 1` columns); every position
whose target token is not padding is trained: input = seq[:, :-1], target = seq[:, 1:].

Losses (`SASRecTrainConfig.loss`):
  bce: the paper's loss, -log s(h_t . e_target) - log(1 - s(h_t . e_neg)) with one negative
       per position.
  sampled_softmax: cross-entropy of the target against `n_negatives` negatives shared by
       the whole batch (one (B, L, d) x (d, k) product instead of B * L * k gathered
       vectors; uniform sampling needs no log-q correction, it shifts every logit alike).
  softmax: cross-entropy of the target against every item, at the trained positions only
       (Klenitskiy & Vasilev, RecSys 2023: SASRec trained so beats BERT4Rec); no sampling,
       (positions x n_items) logits a batch, so for catalogues of up to some 10^4-10^5
       items. The user's other items are negatives too, as in that paper.
Negatives are drawn uniformly from all items on the device with the seeded `generator`,
and never from the user's own sequence (the paper's code does the same): a bce negative
that hits it is redrawn (up to MAX_REDRAWS rounds, so a user who has seen nearly every
item cannot stall the loop; what is left then stays), a shared softmax negative is masked
out of that user's softmax.

Adam; bf16 autocast and (with `cfg.compile`) torch.compile on CUDA only. After every epoch
the caller's `validate(model) -> {"hr_10": ..., ...}` scores the model (the pipeline ranks
its validation pairs with the model's stored histories); the best epoch on
`cfg.monitor` is kept (on the CPU) and training stops after `cfg.patience` epochs without
improvement. One log line per epoch; `on_epoch(epoch, metrics)` gets the same numbers; a
`PhaseState` saves each epoch's end and resumes from it, as `ncf_model.train.train` does.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ncf_model.config import SASRecTrainConfig
from ncf_model.data import Pairs
from ncf_model.evaluate import evaluate
from ncf_model.models.sasrec import PAD, SASRec
from ncf_model.resume import PhaseState, Progress
from ncf_model.train import OnEpoch, TrainResult, close_epoch, make_optimizer

log = logging.getLogger(__name__)

Validate = Callable[[nn.Module], dict[str, float]]

MAX_REDRAWS = 16  # a draw hits a user's sequence with p = |seq| / n_items: 16 rounds suffice


def pairs_validator(validation: Pairs, k: int) -> Validate:
    """A `validate` for `train_sasrec`: sampled HR@k, NDCG@k and AUC on `validation` pairs
    (`ncf_model.evaluate.evaluate`), scored with the model's stored histories."""
    def validate(model: nn.Module) -> dict[str, float]:
        scores = evaluate(model, validation, k)
        return {name: scores[name] for name in (f"hr_{k}", f"ndcg_{k}", "auc")}
    return validate


def sequence_keys(train_seqs: Tensor, n_items: int) -> Tensor:
    """Sorted int64 keys row * (n_items + 1) + token of every item in every sequence: what
    negatives must avoid, looked up with `torch.searchsorted`."""
    rows = torch.arange(train_seqs.shape[0], device=train_seqs.device)[:, None]  # (U, 1)
    keys = rows * (n_items + 1) + train_seqs  # (U, L)
    return torch.sort(keys[train_seqs != PAD]).values


def _in_sorted(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    """Bool tensor of `keys`' shape: whether each key is in `sorted_keys`."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[at] == keys


def sample_negatives(rows: Tensor, length: int, seen: Tensor, n_items: int,
                     generator: torch.Generator) -> Tensor:
    """(B, length) tokens in 1..n_items drawn uniformly for the sequences `rows` (B,), each
    redrawn while it is in its own sequence (`seen`, `sequence_keys`), MAX_REDRAWS rounds
    at most. Every round draws the full (B, length) block, so the generator advances the
    same way on any device."""
    shape = (rows.shape[0], length)
    negatives = torch.randint(1, n_items + 1, shape, generator=generator, device=rows.device)
    base = rows[:, None] * (n_items + 1)  # (B, 1)
    for _ in range(MAX_REDRAWS):
        hit = _in_sorted(seen, base + negatives)  # (B, length)
        if not bool(hit.any()):
            break
        fresh = torch.randint(1, n_items + 1, shape, generator=generator, device=rows.device)
        negatives = torch.where(hit, fresh, negatives)
    return negatives


def batch_loss(model: SASRec, seqs: Tensor, rows: Tensor, *, cfg: SASRecTrainConfig,
               seen: Tensor, generator: torch.Generator,
               hidden_states: Callable[[Tensor], Tensor] | None = None,
               autocast: bool = False) -> tuple[Tensor, Tensor]:
    """(mean loss over the batch's trained positions, their number as a 0-d tensor) of
    `seqs` (B, L + 1), the sequences of `rows` (B,); `seen` from `sequence_keys`.
    `hidden_states` replaces `model.hidden_states` (a compiled one)."""
    hidden_states = hidden_states or model.hidden_states
    inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L), (B, L)
    trained = targets != PAD  # (B, L)
    n_trained = trained.sum()
    device_type = seqs.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
        states = hidden_states(inputs)  # (B, L, d)
        if cfg.loss == "softmax":
            # (N, n_items) logits of the N trained positions; item_idx i is token i + 1.
            every = states[trained] @ model.item_embedding.weight[1:].T
        else:
            positive = model.item_logits(states, targets)  # (B, L)
    if cfg.loss == "softmax":
        total = F.cross_entropy(every.float(), targets[trained] - 1, reduction="sum")
        return total / n_trained.clamp(min=1), n_trained
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
        if cfg.loss == "bce":
            negatives = sample_negatives(rows, targets.shape[1], seen, model.n_items, generator)
            negative = model.item_logits(states, negatives)  # (B, L)
        else:
            shared = torch.randint(1, model.n_items + 1, (cfg.n_negatives,),
                                   generator=generator, device=seqs.device)  # (k,)
            negative = states @ model.item_embedding(shared).T  # (B, L, k)
    if cfg.loss == "bce":
        losses = (F.binary_cross_entropy_with_logits(
            positive.float(), torch.ones_like(positive, dtype=torch.float32), reduction="none")
            + F.binary_cross_entropy_with_logits(
            negative.float(), torch.zeros_like(negative, dtype=torch.float32),
            reduction="none"))  # (B, L)
    else:
        own = _in_sorted(seen, rows[:, None] * (model.n_items + 1) + shared)  # (B, k)
        negative = negative.float().masked_fill(own[:, None, :], float("-inf"))  # (B, L, k)
        logits = torch.cat([positive.float().unsqueeze(-1), negative], dim=-1)  # (B, L, 1+k)
        losses = -F.log_softmax(logits, dim=-1)[..., 0]  # (B, L): the target is class 0
    loss = (losses * trained).sum() / n_trained.clamp(min=1)
    return loss, n_trained


def _cpu_copy(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def train_sasrec(model: SASRec, train_seqs: Tensor, validate: Validate | None,
                 cfg: SASRecTrainConfig, *, device: torch.device, generator: torch.Generator,
                 on_epoch: OnEpoch | None = None, state: PhaseState | None = None,
                 name: str = "") -> TrainResult:
    """Train `model` in place and leave it holding the weights of the best validation epoch.

    `train_seqs` (U, L + 1) int64 tokens, L <= model.max_len, on the training device;
    `generator` (on that device too) draws the shuffles and the negatives. Reproducible on
    CPU given the model's initial weights, `generator`'s state and torch's global seed
    (dropout). With `state`, each epoch's end is saved there and a saved state is continued
    from; whether it is finished is decided by this `cfg` (a run saved after its last
    epoch continues when given more epochs). `validate` is called in eval mode without
    gradients; its keys reach the history prefixed with "val_". Without `validate` (a
    refit, whose sequences may hold the validation items) it trains exactly `cfg.epochs`
    epochs and keeps the last weights.
    """
    device = torch.device(device)
    if train_seqs.device.type != device.type or generator.device.type != device.type:
        raise ValueError(f"training on {device}, but train_seqs are on {train_seqs.device} "
                         f"and the generator on {generator.device}; put both on the device")
    if train_seqs.dim() != 2 or train_seqs.dtype != torch.int64:
        raise ValueError(f"train_seqs must be a (users, L + 1) int64 tensor, got "
                         f"{tuple(train_seqs.shape)} {train_seqs.dtype}")
    if not 2 <= train_seqs.shape[1] <= model.max_len + 1:
        raise ValueError(f"train_seqs have {train_seqs.shape[1]} columns: need 2 to max_len + 1"
                         f" = {model.max_len + 1} (input and target are the sequence shifted)")
    if train_seqs.numel() and (int(train_seqs.min()) < 0
                               or int(train_seqs.max()) > model.n_items):
        raise ValueError(f"train_seqs hold tokens outside 0..{model.n_items} (0 is padding, "
                         "item_idx i is token i + 1)")
    model.to(device)
    cuda = device.type == "cuda"
    optimizer = make_optimizer(model, "adam", lr=cfg.lr, weight_decay=cfg.weight_decay,
                               device=device)
    hidden_states: Callable[[Tensor], Tensor] = model.hidden_states
    if cfg.compile and cuda:
        hidden_states = torch.compile(model.hidden_states, dynamic=True)
    elif cfg.compile:
        log.info("compile is ignored on %s: torch.compile is used on CUDA only", device)
    # Sequences with a target: a user without items has nothing to train.
    active = (train_seqs[:, 1:] != PAD).any(dim=1).nonzero().flatten()  # (U',)
    if active.numel() == 0:
        raise ValueError("train_seqs hold no item to predict: every row is padding")
    seen = sequence_keys(train_seqs, model.n_items)
    prefix = f"{name}: " if name else ""

    restored = state.restore(model, optimizer, generator) if state is not None else None
    progress = restored or Progress(best_state=_cpu_copy(model))
    if restored is not None and progress.epoch > 0:
        progress.stopped = (progress.epoch - progress.best_epoch >= cfg.patience
                            or progress.epoch >= cfg.epochs)
    show_bar = sys.stderr.isatty()  # a bar for a terminal, never in an Airflow task log

    while not progress.stopped:
        epoch = progress.epoch + 1
        model.train()
        start = time.perf_counter()
        # Summed on the device: no wait for the GPU to report a loss (bce's redraw check
        # is the one sync per batch).
        loss_sum = torch.zeros((), device=device)
        n_positions = torch.zeros((), dtype=torch.int64, device=device)
        order = active[torch.randperm(active.numel(), generator=generator, device=device)]
        for rows in tqdm(order.split(cfg.batch_size), desc=f"{prefix}epoch {epoch}",
                         unit="batch", leave=False, disable=not show_bar):
            loss, n_trained = batch_loss(model, train_seqs[rows], rows, cfg=cfg, seen=seen,
                                         generator=generator, hidden_states=hidden_states,
                                         autocast=cuda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * n_trained
            n_positions += n_trained
        mean_loss = float(loss_sum) / max(int(n_positions), 1)  # waits for the device
        seconds = time.perf_counter() - start

        model.eval()
        with torch.no_grad():
            scores = validate(model) if validate is not None else {}
        if validate is not None and cfg.monitor not in scores:
            raise ValueError(f"validate() returned {sorted(scores)}, without the monitored "
                             f"{cfg.monitor!r} (SASRecTrainConfig.monitor)")
        metrics = {"loss": mean_loss, "sequences_per_s": active.numel() / seconds,
                   **{f"val_{key}": float(value) for key, value in scores.items()}}
        progress.history.append(metrics)
        progress.epoch = epoch
        # A refit keeps its last epoch: "best" is the one it was told to stop at.
        improved = validate is None or scores[cfg.monitor] > progress.best_hr
        if improved:
            progress.best_epoch = epoch
            progress.best_hr = float(scores.get(cfg.monitor, progress.best_hr))
            progress.best_state = _cpu_copy(model)
        log.info("%sepoch %d/%d loss %.4f %.0f sequences/s val %s%s", prefix, epoch,
                 cfg.epochs, mean_loss, metrics["sequences_per_s"],
                 " ".join(f"{key} {value:.4f}" for key, value in scores.items()),
                 " (best)" if improved else "")
        close_epoch(progress, metrics, patience=cfg.patience, epochs=cfg.epochs,
                    on_epoch=on_epoch, state=state, saved=(model, optimizer, generator),
                    prefix=prefix, monitor=cfg.monitor)

    model.load_state_dict(progress.best_state)
    return TrainResult(best_epoch=progress.best_epoch,
                       best_metrics=dict(progress.history[progress.best_epoch - 1]),
                       history=progress.history, best_state=progress.best_state)
