"""Failpoints: named places in the stages where a test stops a real process to SIGKILL it.

The kill tests (tests/test_scheduler.py) need a process killed at an exact moment: train
in the middle of an epoch, a lake folder fully written but not yet renamed into place,
publish between loading the table and swapping it in. Sleeping there and waiting for the
test's `kill -9` is the only way to hit those moments on any machine speed.

    NCF_FAILPOINTS_DIR  a folder; a point is armed while `<name>.armed` exists in it (the
                        test arms points between DAG runs of one running scheduler). Unset
                        in production: `reach` returns at once, having read one variable.

An armed point, when first reached, writes `<name>.pid` (its process id) and sleeps. Each
fires once: the marker is created exclusively, so the retry of the killed task, reaching
the same point, finds it and goes on. A point never killed raises after `timeout` seconds
instead of hanging the task.

Standard library only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV_DIR = "NCF_FAILPOINTS_DIR"

# The points the stages reach (names only; the test arms them).
LAKE_RENAME = "lake.rename.{name}"  # jobs.lake.layout.staged_dir, before the rename
TRAIN_MID_EPOCH = "train.mid_epoch"  # ncf_model.train.train: epoch 2, after its 1st batch
PUBLISH_BEFORE_SWAP = "publish.before_swap"  # jobs.serving.publish: loaded, not swapped


class FailpointTimeout(RuntimeError):
    """An armed failpoint waited `timeout` seconds and nobody killed the process."""


def _folder() -> Path | None:
    folder = os.environ.get(ENV_DIR)
    return Path(folder) if folder else None


def arm(folder: Path, name: str) -> Path:
    """Arm `name` for the processes whose NCF_FAILPOINTS_DIR is `folder`; its marker path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.armed").touch()
    return folder / f"{name}.pid"


def reach(name: str, *, timeout: float = 600.0, poll: float = 0.2) -> None:
    """At an armed point reached for the first time: write the marker and sleep until
    killed. Otherwise (not armed, or already fired): return at once."""
    folder = _folder()
    if folder is None or not (folder / f"{name}.armed").exists():
        return
    try:
        handle = os.open(folder / f"{name}.pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # fired before: this is the retry
    with os.fdopen(handle, "w") as out:
        out.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(poll)
    raise FailpointTimeout(f"failpoint {name} waited {timeout:.0f} s and was never killed")
