"""Training throughput: our on-device epoch loop vs the tutorial per-sample DataLoader.

    python bench/train.py [--users 943 --items 1682 --positives 99000 --batch-size 256]

Both loops train the same NeuMF with the same optimiser and loss on the same synthetic,
ML-100K-shaped data (seeded, Zipf-like item popularity) for one epoch with 4 negatives
per positive. Only the data path differs:
  ours      ncf_model.data.TrainingData.epoch: tensors on the device, one seeded randint,
            exact exclusion of positives by searchsorted, randperm + split;
  baseline  a torch Dataset whose __getitem__ draws one sample's negative in Python
            (rejection against a per-user set) fed through a DataLoader.
The baseline is capped at --baseline-samples to bound the run. Prints samples/s of each
and their ratio (same process, same machine, so the ratio is what to compare; absolute
figures depend on the machine). Never asserts on time.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ncf_model.config import ModelConfig
from ncf_model.data import Pairs, TrainingData
from ncf_model.models import build_model
from ncf_model.train import select_device


def synthetic_positives(n_users: int, n_items: int, n_positives: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, items drawn Zipf-like (popularity ~ 1/rank)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    users = rng.integers(0, n_users, size=n_positives * 2)
    items = rng.choice(n_items, size=n_positives * 2, p=weights)
    keys = np.unique(users.astype(np.int64) * n_items + items)[:n_positives]
    rng.shuffle(keys)
    return (keys // n_items).astype(np.int64), (keys % n_items).astype(np.int64)


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


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, user: torch.Tensor,
          item: torch.Tensor, label: torch.Tensor) -> None:
    loss = nn.functional.binary_cross_entropy_with_logits(model(user, item), label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_ours(users: np.ndarray, items: np.ndarray, args: argparse.Namespace,
               device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(), args.users, args.items).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    user_t = torch.from_numpy(users).to(device)
    data = TrainingData(Pairs(user_t, torch.from_numpy(items).to(device),
                              torch.ones(len(users), device=device)),
                        n_users=args.users, n_items=args.items)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    _sync(device)
    start, n = time.perf_counter(), 0
    for user, item, label in data.epoch(4, args.batch_size, generator, "resample"):
        _step(model, optimizer, user, item, label)
        n += label.shape[0]
    _sync(device)
    return n / (time.perf_counter() - start)


def bench_baseline(users: np.ndarray, items: np.ndarray, args: argparse.Namespace,
                   device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(), args.users, args.items).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PerSampleDataset(users, items, args.items, 4, seed=0),
                        batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    _sync(device)
    start, n = time.perf_counter(), 0
    for user, item, label in loader:
        _step(model, optimizer, user.to(device), item.to(device), label.float().to(device))
        n += label.shape[0]
        if n >= args.baseline_samples:
            break
    _sync(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--positives", type=int, default=99_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--baseline-samples", type=int, default=200_000)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = select_device(args.device)
    users, items = synthetic_positives(args.users, args.items, args.positives, seed=0)
    ours = bench_ours(users, items, args, device)
    baseline = bench_baseline(users, items, args, device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"data: {args.users} users x {args.items} items, {len(users)} positives, "
          f"4 negatives each, batch {args.batch_size}")
    print(f"ours (on-device epoch)      {ours:12,.0f} samples/s")
    print(f"baseline (per-sample loader){baseline:12,.0f} samples/s")
    print(f"ratio ours / baseline       {ours / baseline:12.2f}x")


if __name__ == "__main__":
    main()
