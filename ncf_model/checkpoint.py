"""The trained model in the lake: `model/` holds `state_dict.pt` and `model.json`.

`model.json` carries the ModelConfig and the index sizes, so evaluate and recommend
rebuild exactly the trained architecture without the training config at hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.layout import staged_dir
from ncf_model.config import ModelConfig
from ncf_model.models import build_model

STATE_FILE = "state_dict.pt"
META_FILE = "model.json"


class CheckpointError(FileNotFoundError):
    """The lake has no usable model folder; the message names the path."""


def save_model(model: nn.Module, cfg: ModelConfig, *, n_users: int, n_items: int,
               folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the model atomically: a reader sees the previous model folder or this one."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    meta = {"model": dataclasses.asdict(cfg), "n_users": n_users, "n_items": n_items,
            **(extra or {})}
    with staged_dir(folder) as tmp:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_model(folder: Path,
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture from model.json and load the weights; eval mode."""
    folder = Path(folder)
    meta_path, state_path = folder / META_FILE, folder / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise CheckpointError(f"{folder}: no trained model ({META_FILE} and {STATE_FILE}); "
                              "run the train task for this logical date first")
    meta = json.loads(meta_path.read_text())
    raw = dict(meta["model"])
    raw["mlp_layers"] = tuple(raw["mlp_layers"])
    cfg = ModelConfig(**raw)
    model = build_model(cfg, int(meta["n_users"]), int(meta["n_items"]))
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta
