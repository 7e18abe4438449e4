"""What the torch stages share: the manifest entries they need, the champion's model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.lake import layout
from ncf_model import tracking

CHECKPOINT_ARTIFACT = "checkpoint"  # the model/ folder, logged to the training run
SERVED_ARTIFACT = "served"  # the served/ folder, logged to the served family's run


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
    """The champion's model folder: this run's lake served/, else downloaded from MLflow
    (served/ of the run that registered it; `checkpoint` for versions registered before
    the candidates protocol, which served the train task's model/)."""
    candidates = layout.read_manifest(paths).get("candidates", {})
    if candidates.get("served_run_id") == ref.run_id and paths.path(layout.SERVED).is_dir():
        return paths.path(layout.SERVED)
    artifact = SERVED_ARTIFACT if ref.tags.get("family") else CHECKPOINT_ARTIFACT
    return tracking.download_artifacts(ref.run_id, artifact, scratch)
