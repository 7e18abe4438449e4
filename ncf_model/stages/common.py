"""What the torch stages share: the manifest entries they need, the champion's model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.lake import layout
from ncf_model import tracking

CHECKPOINT_ARTIFACT = "checkpoint"  # the model/ folder, logged to the training run


class StageError(RuntimeError):
    """A stage cannot run on what the lake holds; the message says which stage to run first."""


def manifest_entry(paths: layout.LakePaths, stage: str, needed_by: str) -> dict[str, Any]:
    """The manifest entry `stage` wrote for this run; a StageError naming it when missing."""
    entry = layout.read_manifest(paths).get(stage)
    if not entry:
        raise StageError(f"{paths.manifest}: no '{stage}' entry; run the {stage} task for "
                         f"{paths.logical_date} before {needed_by}")
    return dict(entry)


def serving_folder(ref: tracking.ModelVersionRef, paths: layout.LakePaths,
                    scratch: Path) -> Path:
    """The champion's model folder: this run's lake model/, else downloaded from MLflow."""
    trained = layout.read_manifest(paths).get("train", {})
    if trained.get("run_id") == ref.run_id and paths.path(layout.MODEL).is_dir():
        return paths.path(layout.MODEL)
    return tracking.download_artifacts(ref.run_id, CHECKPOINT_ARTIFACT, scratch)
