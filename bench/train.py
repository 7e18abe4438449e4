"""Training and scoring throughput: our on-device epoch vs the tutorial per-sample DataLoader.

    python bench/train.py --shape ml-100k                    # CPU figures (this machine)
    python bench/train.py --shape ml-20m --compile           # on a GPU (issue 4's target)
    python bench/train.py --shape ml-20m --epochs 1 --baseline-samples 2000000 --device cuda

Both loops train the same NeuMF (64 factors, MLP [256, 256, 128, 64] by default) with
the same optimiser and loss on the same seeded synthetic data in MovieLens shape
(Zipf-like item popularity; ml-20m: 138,493 users x 26,744 items, ~19.7M training
positives, i.e. ~99M samples per epoch with 4 negatives each). Only the data path differs:
  ours      ncf_model.data.TrainingData.epoch: tensors on the device, one seeded randint,
            exact exclusion of positives by searchsorted, randperm + split; bf16 autocast
            and fused Adam on CUDA, optionally torch.compile;
  baseline  a torch Dataset whose __getitem__ draws one sample's negative in Python
            (rejection against a per-user set) fed through a DataLoader, capped at
            --baseline-samples.
Then the scoring paths of evaluate and recommend: 1 + 99 candidates for every user, and a
full ranking of every item for every user with top-10 (ncf_model.topk, chunked).
Prints samples/s, epoch time and the ratio (same process, same machine: compare the
ratio; absolute figures depend on the machine and its load). Never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncf_model.config import ModelConfig  # noqa: E402
from ncf_model.data import Pairs, TrainingData  # noqa: E402
from ncf_model.models import build_model  # noqa: E402
from ncf_model.topk import recommend_top_k  # noqa: E402
from ncf_model.train import make_optimizer, select_device  # noqa: E402

# (users, items, training positives): ML-100K and ML-20M less one test and one validation
# positive per user.
SHAPES = {"ml-100k": (943, 1682, 100_000 - 2 * 943),
          "ml-20m": (138_493, 26_744, 20_000_263 - 2 * 138_493)}
N_NEGATIVES = 4


def synthetic_positives(n_users: int, n_items: int, n_positives: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, items drawn Zipf-like (popularity ~ 1/rank)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < n_positives:  # popular pairs repeat: draw until enough distinct ones
        need = int((n_positives - len(keys)) * 1.3) + 1000
        users = rng.integers(0, n_users, size=need, dtype=np.int64)
        items = rng.choice(n_items, size=need, p=weights).astype(np.int64)
        keys = np.unique(np.concatenate([keys, users * n_items + items]))
    keys = rng.permutation(keys)[:n_positives]
    return keys // n_items, keys % n_items


class PerSampleDataset(Dataset[tuple[int, int, float]]):
    """The tutorial way: one (user, item, label) per __getitem__, negatives drawn in Python."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, n_negatives: int,
                 seed: int) -> None:
        self.users, self.items = users.tolist(), items.tolist()
        self.n_items, self.per = n_items, n_negatives + 1
        self.seen: dict[int, set[int]] = {}
        for user, item in zip(self.users, self.items, strict=True):
            self.seen.setdefault(user, set()).add(item)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.users) * self.per

    def __getitem__(self, index: int) -> tuple[int, int, float]:
        row, slot = divmod(index, self.per)
        user = self.users[row]
        if slot == 0:
            return user, self.items[row], 1.0
        item = self.rng.randrange(self.n_items)
        while item in self.seen[user]:
            item = self.rng.randrange(self.n_items)
        return user, item, 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="neumf", factors=args.factors, mlp_layers=args.layers)
    return build_model(cfg, args.n_users, args.n_items).to(device)


def _optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return make_optimizer(model, "adam", lr=1e-3, weight_decay=0.0, device=device)


def _step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
             compile_model: bool):  # noqa: ANN202 (a callable)
    forward = torch.compile(model) if compile_model else model
    cuda = device.type == "cuda"

    def step(user: torch.Tensor, item: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = forward(user, item)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def bench_ours(users: np.ndarray, items: np.ndarray, args: argparse.Namespace,
               device: torch.device) -> tuple[float, float]:
    """(samples/s, seconds per epoch) of the last of `args.epochs` epochs (the first pays
    for torch.compile and the allocator's warm-up when more than one is run)."""
    model = _model(args, device)
    step = _step_fn(model, _optimizer(model, device), device, args.compile)
    data = TrainingData(Pairs(torch.from_numpy(users).to(device),
                              torch.from_numpy(items).to(device),
                              torch.ones(len(users), device=device)),
                        n_users=args.n_users, n_items=args.n_items)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    seconds, n = 0.0, 0
    for epoch in range(args.epochs):
        _sync(device)
        start, n = time.perf_counter(), 0
        loss = torch.zeros((), device=device)
        for user, item, label in data.epoch(N_NEGATIVES, args.batch_size, generator,
                                            "resample"):
            loss += step(user, item, label)
            n += label.shape[0]
        _sync(device)
        seconds = time.perf_counter() - start
        print(f"  ours epoch {epoch + 1}: {n:,} samples in {seconds:.2f} s "
              f"({n / seconds:,.0f} samples/s), summed loss {float(loss):.1f}", flush=True)
    return n / seconds, seconds


def bench_baseline(users: np.ndarray, items: np.ndarray, args: argparse.Namespace,
                   device: torch.device) -> float:
    model = _model(args, device)
    step = _step_fn(model, _optimizer(model, device), device, compile_model=False)
    loader = DataLoader(PerSampleDataset(users, items, args.n_items, N_NEGATIVES, seed=0),
                        batch_size=args.baseline_batch_size, shuffle=True,
                        num_workers=args.baseline_workers,
                        generator=torch.Generator().manual_seed(0))
    _sync(device)
    start, n = time.perf_counter(), 0
    for user, item, label in loader:
        step(user.to(device), item.to(device), label.float().to(device))
        n += label.shape[0]
        if n >= args.baseline_samples:
            break
    _sync(device)
    return n / (time.perf_counter() - start)


def bench_scoring(users: np.ndarray, items: np.ndarray, args: argparse.Namespace,
                  device: torch.device) -> tuple[float, float]:
    """(seconds to score 1 + 99 candidates for every user, seconds for a full ranking of
    every item for every user with top-10, training positives masked)."""
    model = _model(args, device).eval()
    rng = np.random.default_rng(1)
    candidates = torch.from_numpy(rng.integers(0, args.n_items, (args.n_users, 100))).to(device)
    user = torch.arange(args.n_users, device=device).repeat_interleave(100)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for u, i in zip(user.split(1 << 20), candidates.flatten().split(1 << 20), strict=True):
            model(u, i)
    _sync(device)
    sampled = time.perf_counter() - start
    start = time.perf_counter()
    recommend_top_k(model, n_users=args.n_users, n_items=args.n_items,
                    seen_user=torch.from_numpy(users), seen_item=torch.from_numpy(items), k=10,
                    chunk_users=args.chunk_users, device=device)
    _sync(device)
    return sampled, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ml-100k")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--layers", default="256,256,128,64",
                        help="MLP sizes, comma-separated (the first is user + item embedding)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 2^20 on CUDA, 1024 on the CPU")
    parser.add_argument("--epochs", type=int, default=2, help="timed: the last one")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--baseline-samples", type=int, default=200_000)
    parser.add_argument("--baseline-batch-size", type=int, default=512)
    parser.add_argument("--baseline-workers", type=int, default=0,
                        help="DataLoader workers (0: in-process, the fair choice on 2 cores)")
    parser.add_argument("--chunk-users", type=int, default=1024)
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    args.layers = tuple(int(size) for size in args.layers.split(","))
    args.n_users, args.n_items, n_positives = SHAPES[args.shape]
    device = select_device(args.device)
    if args.batch_size is None:
        args.batch_size = 1 << 20 if device.type == "cuda" else 1024

    started = time.perf_counter()
    users, items = synthetic_positives(args.n_users, args.n_items, n_positives, seed=0)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"data: {args.shape} shape, {args.n_users:,} users x {args.n_items:,} items, "
          f"{len(users):,} positives, {N_NEGATIVES} negatives each "
          f"(made in {time.perf_counter() - started:.1f} s); NeuMF {args.factors} factors, "
          f"MLP {list(args.layers)}, batch {args.batch_size:,}"
          f"{', torch.compile' if args.compile else ''}", flush=True)
    ours, epoch_seconds = bench_ours(users, items, args, device)
    baseline = bench_baseline(users, items, args, device)
    print(f"ours (on-device epoch)        {ours:14,.0f} samples/s, epoch {epoch_seconds:.2f} s")
    per_epoch = len(users) * (N_NEGATIVES + 1) / baseline
    print(f"baseline (per-sample loader)  {baseline:14,.0f} samples/s, epoch ~{per_epoch:,.0f} s "
          f"(batch {args.baseline_batch_size}, {args.baseline_workers} workers, "
          f"{args.baseline_samples:,} samples timed)")
    print(f"ratio ours / baseline         {ours / baseline:14.1f}x")
    if not args.skip_scoring:
        sampled, full = bench_scoring(users, items, args, device)
        print(f"score 1 + 99 candidates, all {args.n_users:,} users: {sampled:.2f} s")
        print(f"full ranking of {args.n_items:,} items, top-10, all users: {full:.2f} s "
              f"(chunks of {args.chunk_users} users)")


if __name__ == "__main__":
    main()
