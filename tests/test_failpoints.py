"""Failpoints (the kill tests' hooks) and what a killed writer leaves in the lake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.lake import failpoints, layout

REPO = Path(__file__).resolve().parents[1]


def test_an_unarmed_point_returns_at_once(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV_DIR, raising=False)
    failpoints.reach("anything", timeout=0.01)  # production: no folder, nothing happens
    monkeypatch.setenv(failpoints.ENV_DIR, str(tmp_path))
    failpoints.reach("not.armed", timeout=0.01)
    assert list(tmp_path.iterdir()) == []


def test_an_armed_point_waits_to_be_killed_once(tmp_path: Path) -> None:
    marker = failpoints.arm(tmp_path, "demo.point")
    env = {**os.environ, failpoints.ENV_DIR: str(tmp_path), "PYTHONPATH": str(REPO)}
    code = "from jobs.lake import failpoints; failpoints.reach('demo.point'); print('passed')"
    first = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    assert int(marker.read_text()) == first.pid
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    # The retry reaches the same point and goes on.
    retry = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    assert retry.stdout.strip() == "passed"


def test_a_point_never_killed_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failpoints.arm(tmp_path, "stuck")
    monkeypatch.setenv(failpoints.ENV_DIR, str(tmp_path))
    with pytest.raises(failpoints.FailpointTimeout, match="stuck waited"):
        failpoints.reach("stuck", timeout=0.3, poll=0.05)


def test_a_killed_writers_staging_folder_is_cleared_by_the_next_write(tmp_path: Path) -> None:
    final = tmp_path / "train"
    final.mkdir()
    (final / "part-0.parquet").write_text("old")
    stale = tmp_path / ".tmp-train-deadbeef0000"  # what SIGKILL left mid-write
    stale.mkdir()
    (stale / "part-0.parquet").write_text("half")
    with layout.staged_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "part-0.parquet").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    assert (final / "part-0.parquet").read_text() == "new"


def test_a_writer_killed_between_the_renames_gets_the_old_folder_back(tmp_path: Path) -> None:
    final = tmp_path / "train"
    old = tmp_path / ".old-train-deadbeef0000"  # moved aside; the new one never moved in
    old.mkdir()
    (old / "part-0.parquet").write_text("old")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), layout.staged_dir(final):
        raise Boom  # the retry fails too: the previous version must still be there
    assert (final / "part-0.parquet").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
