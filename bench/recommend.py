"""Full-ranking recommend at scale: top-10 of every item for every user, NeuMF's first MLP
layer split (the path ncf_model.topk takes) vs every (user, item) pair through forward.

    python bench/recommend.py --shape ml-20m                 # on a GPU (issue 18)
    python bench/recommend.py --shape tiny --device cpu      # a smoke run

The model is the one bench/train.py trains (NeuMF, 64 factors, MLP [256, 256, 128, 64];
weights seeded, untrained: the speed does not depend on them); each user has ~144 seen
items drawn at random, masked as recommend masks the splits' positives. Both paths go
through `ncf_model.topk.recommend_top_k` with the same chunks; the pairwise one is the
model wrapped so that it has no `score_all_items` (timed on --naive-users users, all by
default). Prints the seconds of each, users/s, and whether both chose the same items
(ties aside), and writes them as JSON with --out. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncf_model.config import ModelConfig  # noqa: E402
from ncf_model.models import build_model  # noqa: E402
from ncf_model.topk import recommend_top_k  # noqa: E402
from ncf_model.train import select_device  # noqa: E402

# (users, items, seen pairs per user)
SHAPES = {"ml-20m": (138_493, 26_744, 144), "ml-1m": (6_040, 3_706, 165),
          "tiny": (500, 300, 20)}


class Pairwise(nn.Module):
    """The model without its all-items path: every (user, item) pair through forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, user_idx: Tensor, item_idx: Tensor) -> Tensor:
        out: Tensor = self.model(user_idx, item_idx)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_top_k(model: nn.Module, n_users: int, n_items: int, seen: tuple[Tensor, Tensor], *,
                args: argparse.Namespace, device: torch.device) -> tuple[float, Tensor]:
    keep = seen[0] < n_users
    _sync(device)
    started = time.perf_counter()
    items, _scores = recommend_top_k(model, n_users=n_users, n_items=n_items,
                                     seen_user=seen[0][keep], seen_item=seen[1][keep],
                                     k=args.k, chunk_users=args.chunk_users, device=device)
    _sync(device)
    return time.perf_counter() - started, items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ml-20m")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--layers", default="256,256,128,64")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-users", type=int, default=1024)
    parser.add_argument("--naive-users", type=int, default=None,
                        help="users the pairwise path scores (default: all; 0: skip it)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    n_users, n_items, per_user = SHAPES[args.shape]
    device = select_device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(kind="neumf", factors=args.factors,
                      mlp_layers=tuple(int(n) for n in args.layers.split(",")))
    model = build_model(cfg, n_users, n_items).to(device).eval()
    rng = np.random.default_rng(0)
    seen = (torch.from_numpy(np.repeat(np.arange(n_users), per_user)),
            torch.from_numpy(rng.integers(0, n_items, n_users * per_user)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; NeuMF {args.factors} factors, MLP {list(cfg.mlp_layers)}; "
          f"{n_users:,} users x {n_items:,} items, top-{args.k}, chunks of "
          f"{args.chunk_users} users", flush=True)
    split, split_items = timed_top_k(model, n_users, n_items, seen, args=args, device=device)
    print(f"split first layer (score_all_items): {split:.2f} s, "
          f"{n_users / split:,.0f} users/s", flush=True)
    result = {"shape": args.shape, "device": name, "users": n_users, "items": n_items,
              "k": args.k, "chunk_users": args.chunk_users, "split_seconds": round(split, 3),
              "split_users_per_second": round(n_users / split, 1)}
    naive_users = n_users if args.naive_users is None else min(args.naive_users, n_users)
    if naive_users:
        naive, naive_items = timed_top_k(Pairwise(model), naive_users, n_items, seen,
                                         args=args, device=device)
        same = (naive_items == split_items[:naive_users]).float().mean().item()
        print(f"pairs through forward: {naive:.2f} s for {naive_users:,} users, "
              f"{naive_users / naive:,.0f} users/s; split / pairs speed-up "
              f"{(naive / naive_users) / (split / n_users):.1f}x; same items {same:.4f}",
              flush=True)
        result.update(naive_users=naive_users, naive_seconds=round(naive, 3),
                      naive_users_per_second=round(naive_users / naive, 1),
                      same_items=round(same, 6))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
