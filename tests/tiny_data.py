"""A tiny MovieLens-100K-format dataset with planted structure, written by tests."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import yaml


def write_tiny_u_data(path: Path, *, n_users: int = 40, n_items: int = 60, seed: int = 7,
                      bad_lines: tuple[str, ...] = ()) -> list[tuple[str, str, int, int]]:
    """Users in 3 taste groups, each mostly rating its group's third of the items.

    Returns the good rows (user, item, rating, ts); `bad_lines` are appended as-is.
    """
    rng = random.Random(seed)
    rows: list[tuple[str, str, int, int]] = []
    group_size = n_items // 3
    for user in range(1, n_users + 1):
        group = user % 3
        liked = list(range(group * group_size + 1, (group + 1) * group_size + 1))
        others = [i for i in range(1, n_items + 1) if i not in liked]
        picks = rng.sample(liked, rng.randint(10, 16)) + rng.sample(others, 2)
        start = 880_000_000 + user * 1000
        for step, item in enumerate(picks):
            rows.append((str(user), str(item), rng.randint(1, 5), start + step * 60))
    rng.shuffle(rows)
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows] + list(bad_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return rows


def write_tiny_config(folder: Path, raw_file: Path, *, dataset: str = "tiny",
                      epochs: int = 3) -> Path:
    """configs/<dataset>.yaml for the tiny file (its real sha256, small model, fast train)."""
    config = {
        "dataset": dataset,
        "source": {"format": "movielens-100k", "path": "ml-100k/u.data",
                   "sha256": hashlib.sha256(raw_file.read_bytes()).hexdigest()},
        "ingest": {"min_value": 1, "max_value": 5},
        "prepare": {"n_eval_negatives": 20, "seed": 3},
        "model": {"kind": "neumf", "factors": 8, "mlp_layers": [16, 8]},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "patience": 5, "seed": 3},
        "evaluate": {"k": 10, "min_score": 0.0},
        "recommend": {"k": 10, "chunk_users": 16},
        "publish": {"table": "recommendations"},
        "candidates": {"families": ["ncf", "mf", "als", "ease", "sasrec", "popularity"]},
        "sasrec": {"max_len": 20, "hidden": 16, "n_blocks": 1, "epochs": epochs,
                   "batch_size": 16, "lr": 0.01},
        "mf": {"factors": 8, "epochs": epochs, "batch_size": 64, "lr": 0.01},
        "ease": {"l2_grid": [10.0, 100.0]},
        "als": {"rank": 4, "max_iter": 3},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
