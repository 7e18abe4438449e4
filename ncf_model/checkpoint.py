"""The trained model in the lake: `model/` holds `state_dict.pt`, `model.json` and the id
vocabulary (`users.parquet`, `items.parquet`: raw id -> index the model was trained with).

`model.json` carries the model's family, the ModelConfig of the neural ones and the index
sizes (and a hybrid model's feature vocabulary), so evaluate and recommend rebuild exactly
the trained model without the training config at hand. The buffer-only families (EASE^R,
ALS factors, popularity) are rebuilt from their tensors alone. The id vocabulary lets a
later day's data (whose dense indices may differ) be scored with this model: the folder is
also logged to MLflow, so the registry's champion is self-contained.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jobs.lake import layout
from jobs.lake.layout import staged_dir
from ncf_model.config import ModelConfig
from ncf_model.features import FeatureVocabulary, SideFeatures, pad_bags
from ncf_model.models import Hybrid, build_model
from ncf_model.models.baselines import FactorScorer, PopularityScorer
from ncf_model.models.ease import EASE
from ncf_model.models.sasrec import SASRec

STATE_FILE = "state_dict.pt"
META_FILE = "model.json"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"


class CheckpointError(FileNotFoundError):
    """The lake has no usable model folder; the message names the path."""


MODEL_CONFIG_FAMILIES = ("ncf", "mf")  # rebuilt from a ModelConfig (build_model)
# The families whose model is its tensors: rebuilt from the state dict, no config needed.
_FROM_STATE: dict[str, Any] = {
    "ease": lambda state: EASE(state["weights"], state["history_items"],
                               state["history_offsets"],
                               state.get("history_weights")),  # absent: binary (older)
    "als": lambda state: FactorScorer(state["user_factors"], state["item_factors"]),
    "popularity": lambda state: PopularityScorer(state["item_count"]),
}


def save_model(model: nn.Module, cfg: ModelConfig | None, *, n_users: int, n_items: int,
               folder: Path, vocabulary: tuple[Path, Path], family: str = "ncf",
               extra: dict[str, Any] | None = None) -> None:
    """Write the model atomically: a reader sees the previous model folder or this one.

    `vocabulary` is the (users/, items/) lake folders of the data the model was trained on.
    `cfg` is the ModelConfig of a neural family (ncf, mf), None for the others.
    """
    if (cfg is not None) != (family in MODEL_CONFIG_FAMILIES):
        raise ValueError(f"family {family!r}: a ModelConfig is needed exactly for the "
                         f"families built from one ({MODEL_CONFIG_FAMILIES})")
    if isinstance(model, SASRec):  # its architecture, to rebuild it
        extra = {**(extra or {}), "sasrec": {"max_len": model.max_len, "hidden": model.hidden,
                                             "n_blocks": model.n_blocks,
                                             "n_heads": model.n_heads,
                                             "dropout": model.dropout}}
    import pyarrow.parquet as pq

    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    meta = {"family": family, "model": dataclasses.asdict(cfg) if cfg else None,
            "n_users": n_users, "n_items": n_items, **(extra or {})}
    if isinstance(model, Hybrid):  # today's features are encoded with it at serving time
        meta["features"] = model.vocabulary.to_json()
    users_dir, items_dir = vocabulary
    users = layout.read_lake_table(users_dir, layout.USERS_SCHEMA).sort_by(layout.USER_IDX)
    items = layout.read_lake_table(items_dir, layout.ITEMS_SCHEMA).sort_by(layout.ITEM_IDX)
    if (users.num_rows, items.num_rows) != (n_users, n_items):
        raise CheckpointError(f"{users_dir} / {items_dir} hold {users.num_rows} users and "
                              f"{items.num_rows} items, the model {n_users} x {n_items}")
    with staged_dir(folder) as tmp:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        pq.write_table(users, tmp / USERS_FILE)
        pq.write_table(items, tmp / ITEMS_FILE)


def load_vocabulary(folder: Path) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of a model folder, each in index order (position = index)."""
    import pyarrow.parquet as pq

    paths = (Path(folder) / USERS_FILE, Path(folder) / ITEMS_FILE)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder}: no id vocabulary ({', '.join(missing)}); the model "
                              "predates it: retrain to serve it on another day's data")
    users = pq.read_table(paths[0]).sort_by(layout.USER_IDX)
    items = pq.read_table(paths[1]).sort_by(layout.ITEM_IDX)
    return (users.column(layout.USER_ID).to_pylist(), items.column(layout.ITEM_ID).to_pylist())


def upgrade_hybrid_state(state: dict[str, Tensor], n_tags: int) -> dict[str, Tensor]:
    """A hybrid state dict in today's layout; one saved before the padded bags (flat
    `item_tags` + `item_offsets`, tag tables without a padding row) is converted, so that
    an earlier run's champion still loads."""
    if "item_bags" in state or "item_offsets" not in state:
        return state
    state = dict(state)
    state["item_bags"] = pad_bags(state.pop("item_tags"), state.pop("item_offsets"), n_tags)
    for name in ("gmf_item_tags.weight", "mlp_item_tags.weight"):
        weight = state[name][:n_tags]  # (n_tags, d): with no tag, its one row was unused
        state[name] = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])  # + padding
    return state


def load_model(folder: Path,
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture from model.json and load the weights; eval mode."""
    folder = Path(folder)
    meta_path, state_path = folder / META_FILE, folder / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise CheckpointError(f"{folder}: no trained model ({META_FILE} and {STATE_FILE}); "
                              "run the train task for this logical date first")
    meta = json.loads(meta_path.read_text())
    family = str(meta.get("family", "ncf"))  # folders written before families: NCF kinds
    if family in _FROM_STATE:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        return _FROM_STATE[family](state).to(device).eval(), meta
    if family == "sasrec":
        sasrec = SASRec(int(meta["n_users"]), int(meta["n_items"]), **meta["sasrec"])
        sasrec.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
        return sasrec.to(device).eval(), meta
    raw = dict(meta["model"])
    raw["mlp_layers"] = tuple(raw["mlp_layers"])
    cfg = ModelConfig(**raw)
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    features = None
    if cfg.kind == "hybrid":
        if "features" not in meta:
            raise CheckpointError(f"{meta_path}: a hybrid model without its feature "
                                  "vocabulary ('features'); retrain it")
        vocabulary = FeatureVocabulary.from_json(meta["features"])
        state = upgrade_hybrid_state(state, vocabulary.n_tags)
        # The feature tables are buffers of the state dict: shaped here, filled by it.
        features = SideFeatures.placeholder(vocabulary, n_users=n_users, n_items=n_items,
                                            bag_width=int(state["item_bags"].shape[1]))
    model = build_model(cfg, n_users, n_items, features)
    model.load_state_dict(state)
    return model.to(device).eval(), meta
