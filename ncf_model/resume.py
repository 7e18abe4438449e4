"""Training that survives a kill: a state file per training phase, saved each epoch.

`<lake>/<dataset>/<logical_date>/_train_state/` holds `run.json` (the MLflow run id and
the fingerprint of the config and data it belongs to) and one `<phase>.pt` per training
phase ("model"; with pre-training "gmf", "mlp", "neumf"): model and optimiser state, the
batch generator's and torch's RNG states, the epochs done, their history and the best
epoch's weights. A retried train task finds the folder and continues where the killed
one stopped, in the same MLflow run; on CPU the result is the uninterrupted run's, bit
for bit. A folder written for another config or other data is discarded; the train stage
deletes it once the model is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Underscored like _manifest.json: not a dataset of the lake, skipped by its checksums.
TRAIN_STATE_DIR = "_train_state"
RUN_FILE = "run.json"


def fingerprint(payload: Mapping[str, Any]) -> str:
    """sha256 of `payload` as canonical JSON: what a saved state must have been made with."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Progress:
    """Where one training phase stands after `epoch` epochs."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_hr: float = -1.0
    best_state: dict[str, Tensor] = field(default_factory=dict, repr=False)  # on the CPU
    stopped: bool = False  # early-stopped or out of epochs: nothing left to run


def _atomic_save(payload: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # a reader sees the previous state or this one, never half
    finally:
        tmp.unlink(missing_ok=True)


def _same_layout(saved: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor]) -> bool:
    """Whether a saved state dict has exactly the current model's tensors, by name and shape
    (checked before loading: a failed load_state_dict leaves the model half overwritten)."""
    return saved.keys() == current.keys() and all(
        saved[name].shape == tensor.shape for name, tensor in current.items())


class PhaseState:
    """The state file of one training phase."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = Path(path), fingerprint

    def save(self, progress: Progress, model: nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> None:
        payload: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "epoch": progress.epoch, "history": progress.history,
            "best_epoch": progress.best_epoch, "best_hr": progress.best_hr,
            "best_state": progress.best_state, "stopped": progress.stopped,
            "model": {k: t.detach().cpu() for k, t in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if generator.device.type == "cuda":  # dropout and id dropout draw from CUDA's RNG
            payload["cuda_rng"] = torch.cuda.get_rng_state(generator.device)
        _atomic_save(payload, self.path)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator) -> Progress | None:
        """Load the saved state into `model`, `optimizer`, `generator` and torch's RNG; None
        (nothing touched) when there is no state file or it belongs to another run."""
        if not self.path.is_file():
            return None
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        if payload.get("fingerprint") != self.fingerprint:
            log.warning("%s was saved for another config or other data: not resumed",
                        self.path)
            return None
        if not _same_layout(payload["model"], model.state_dict()):
            log.warning("%s holds weights of another model layout (saved by another version "
                        "of the code?): not resumed", self.path)
            return None
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if "cuda_rng" in payload:
            torch.cuda.set_rng_state(payload["cuda_rng"], generator.device)
        log.info("resumed from %s after epoch %d (best epoch %d)", self.path, payload["epoch"],
                 payload["best_epoch"])
        return Progress(epoch=payload["epoch"], history=payload["history"],
                        best_epoch=payload["best_epoch"], best_hr=payload["best_hr"],
                        best_state=payload["best_state"], stopped=payload["stopped"])


class TrainingStates:
    """The `_train_state/` folder of one train task: its MLflow run and its phases."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def run_id(self) -> str | None:
        """The MLflow run of an interrupted attempt to continue, or None to start afresh
        (a folder left by another config or other data is removed)."""
        run_file = self.folder / RUN_FILE
        if not run_file.is_file():
            if self.folder.exists():
                self.clear()  # killed before its run was recorded: nothing to continue
            return None
        recorded = json.loads(run_file.read_text())
        if recorded.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to another config or other data (run %s): starting "
                        "afresh", self.folder, recorded.get("run_id"))
            self.clear()
            return None
        log.info("continuing the interrupted training of MLflow run %s from %s",
                 recorded["run_id"], self.folder)
        return str(recorded["run_id"])

    def begin(self, run_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{RUN_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"run_id": run_id, "fingerprint": self.fingerprint}) + "\n")
        os.replace(tmp, self.folder / RUN_FILE)

    def phase(self, name: str) -> PhaseState:
        return PhaseState(self.folder / f"{name}.pt", self.fingerprint)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
