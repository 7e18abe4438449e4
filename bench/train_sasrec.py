"""SASRec training throughput: sequences/s and trained positions/s of one epoch of
`ncf_model.train_sasrec` on synthetic sequences of a dataset's shape, the paper's loss (bce,
one negative per position) beside the sampled softmax and the full softmax in the same run.

    python bench/train_sasrec.py [--shape ml-100k|ml-1m|ml-20m] [--max-batches N] \
        [--device cuda] [--compile]

Synthetic: each user's sequence length is drawn around the shape's mean (clipped to
max_len + 1), items Zipf-like. `--max-batches` times the first N batches only (a CPU run
at ML-20M shape would take an hour per epoch); the figures are per second either way.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncf_model.config import SASRecTrainConfig  # noqa: E402
from ncf_model.models.sasrec import PAD, SASRec  # noqa: E402
from ncf_model.train_sasrec import train_sasrec  # noqa: E402

# users, items, mean sequence length (training positives per user), max_len
SHAPES = {"ml-100k": (943, 1_682, 104, 100), "ml-1m": (6_040, 3_706, 163, 200),
          "ml-20m": (138_493, 26_744, 142, 200)}


def synthetic_sequences(n_users: int, n_items: int, mean_length: int, width: int,
                        seed: int = 0) -> torch.Tensor:
    """(n_users, width) left-padded int64 tokens (item i is token i + 1)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.geometric(1.0 / mean_length, n_users), 2, width)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    tokens = np.zeros((n_users, width), dtype=np.int64)
    for user, length in enumerate(lengths):
        tokens[user, width - length:] = rng.choice(n_items, size=length, p=popularity) + 1
    return torch.from_numpy(tokens)


def bench(seqs: torch.Tensor, n_items: int, max_len: int, *, loss: str,
          args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = SASRec(seqs.shape[0], n_items, max_len=max_len, hidden=64, n_blocks=2)
    if args.max_batches:  # only the first batches: a smaller epoch of the same batches
        seqs = seqs[:args.max_batches * args.batch_size]
    cfg = dataclasses.replace(SASRecTrainConfig(), epochs=1, patience=1, loss=loss,
                              batch_size=args.batch_size, compile=args.compile)
    generator = torch.Generator(device=device).manual_seed(0)
    seqs = seqs.to(device)
    started = time.perf_counter()
    result = train_sasrec(model, seqs, None, cfg, device=device, generator=generator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    positions = int((seqs[:, 1:] != PAD).sum())
    return {"sequences": float(seqs.shape[0]), "seconds": seconds,
            "sequences_per_s": seqs.shape[0] / seconds, "positions_per_s": positions / seconds,
            "loss": result.history[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ml-100k")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=0, help="0: the whole epoch")
    parser.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_users, n_items, mean_length, max_len = SHAPES[args.shape]
    seqs = synthetic_sequences(n_users, n_items, mean_length, max_len + 1)
    print(f"SASRec d=64, 2 blocks, max_len {max_len}, batch {args.batch_size}, "
          f"{args.shape} shape ({n_users:,} users, {n_items:,} items), {device}, "
          f"{torch.get_num_threads()} threads")
    print("| loss | sequences | seconds | sequences/s | positions/s |")
    print("|---|---|---|---|---|")
    # Untimed warm-up: the first optimizer step imports torch._dynamo (~3 s).
    warm = argparse.Namespace(**{**vars(args), "max_batches": 1})
    bench(seqs, n_items, max_len, loss="bce", args=warm, device=device)
    for loss in ("bce", "sampled_softmax", "softmax"):
        row = bench(seqs, n_items, max_len, loss=loss, args=args, device=device)
        print(f"| {loss} | {row['sequences']:,.0f} | {row['seconds']:.1f} | "
              f"{row['sequences_per_s']:,.0f} | {row['positions_per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
