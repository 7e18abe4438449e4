"""Production mode, for real: `make up`'s stack (scheduler, dag-processor, api-server with
the LocalExecutor, an MLflow server) on a throw-away Airflow home and tiny data.

One stack serves the module (bringing it up costs a minute):
* run A, uninterrupted, triggered through the REST API;
* run B of the next date, the same data, during which three tasks are killed with SIGKILL
  at a failpoint each (jobs/lake/failpoints.py): `prepare` with a lake folder written but
  not renamed into place, `train` in the middle of its second epoch, `publish` between
  loading the table and swapping it in. The scheduler retries each; B must end equal to A;
* both UIs in headless Chromium (Debian's packages, tests/browser.py) over those runs.

Slow: about 8 minutes, ~5 GB.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from jobs.lake import failpoints, layout
from jobs.ops import stack, trigger
from tests import browser
from tests.tiny_data import write_tiny_config, write_tiny_u_data

pytestmark = [pytest.mark.slow, pytest.mark.spark]
DAG = "ncf_tiny"
RUN_A, RUN_B = "2026-11-22", "2026-11-23"
PREPARED = (layout.USERS, layout.ITEMS, layout.TRAIN, layout.VALIDATION, layout.TEST)
KILL_PREPARE = failpoints.LAKE_RENAME.format(name=layout.TRAIN)
KILLS = (KILL_PREPARE, failpoints.TRAIN_MID_EPOCH, failpoints.PUBLISH_BEFORE_SWAP)
TASKS = ("ingest", "validate_interactions", "prepare", "validate_splits", "train", "als",
         "candidates", "evaluate", "recommend", "validate_recommendations", "publish")


@dataclass
class Production:
    root: Path
    settings: stack.Settings
    api: trigger.Api
    db_file: Path
    run_ids: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    seen_at_kill: dict[str, Any] = field(default_factory=dict)  # what a reader saw then
    rows: list[tuple[int, ...]] = field(default_factory=list)

    def lake(self, date: str) -> Path:
        return self.root / "lake" / "tiny" / date


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    root = tmp_path_factory.mktemp("production")
    raw_file = root / "raw" / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file)
    write_tiny_config(root / "configs", raw_file, epochs=3)
    env = {
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "NCF_CONFIG_DIR": str(root / "configs"),
        # Manual runs only: unpaused, an @daily DAG would also run today's interval first.
        "NCF_SCHEDULE": "none",
        "NCF_RETRY_DELAY_S": "2",
        "NCF_FAILPOINTS_DIR": str(root / "failpoints"),
        "NCF_RAW_DIR": str(root / "raw"),
        "NCF_LAKE_ROOT": str(root / "lake"),
        "NCF_CACHE_DIR": str(root / "cache"),
        "NCF_DB_URL": f"sqlite:///{root / 'reco.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[1]"}',
        "NCF_SPARK_SHUFFLE_PARTITIONS": "2",
        "NCF_SPARK_DRIVER_MEMORY": "1g",
        "NCF_AIRFLOW_PORT": str(_free_port()),
        "NCF_MLFLOW_PORT": str(_free_port()),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    (root / "mlflow").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        s = stack.settings_from_env()
        try:
            summary = stack.up(s, schedule=False)
            assert "login     admin / " in summary  # the generated password, shown once
            assert "login" not in stack.up(s, schedule=False)  # already up: nothing restarted
            assert set(stack.running(s)) == set(stack.commands(s))
            # The servers and the dag-processor yield the cores; the scheduler, whose
            # workers fork the tasks, does not.
            assert {name: os.getpriority(os.PRIO_PROCESS, pid)
                    for name, pid in stack.running(s).items()} == {
                name: stack.BACKGROUND_NICE.get(name, 0) for name in stack.commands(s)}
            api = _login_when_parsed(s)
            api.call("PATCH", f"/dags/{DAG}", {"is_paused": False})
            prod = Production(root=root, settings=s, api=api, db_file=root / "reco.db",
                              rows=rows)
            _run(prod, RUN_A)
            _run(prod, RUN_B, during=lambda: _kill_each(prod))
            yield prod
        finally:
            stopped = stack.down(s)
            logs = {p.name: p.read_text()[-2000:] for p in s.folder.glob("*.log")}
        assert sorted(stopped) == sorted(stack.commands(s)), logs
        assert stack.running(s) == {}


def _run(prod: Production, date: str, during: Callable[[], None] | None = None) -> None:
    run_id = trigger.trigger(prod.api, DAG, date)
    prod.run_ids[date] = run_id
    if during is not None:
        during()
    state = trigger.follow(prod.api, DAG, run_id, timeout=900)
    prod.tasks[date] = {t["task_id"]: t for t in prod.api.call(
        "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]}
    assert state == "success", {k: t["state"] for k, t in prod.tasks[date].items()}


def _kill_each(prod: Production) -> None:
    """Arm the three failpoints, and SIGKILL each process that stops at one, in DAG order,
    noting first what a reader of the lake or the table sees at that moment."""
    folder = prod.root / "failpoints"
    markers = {name: failpoints.arm(folder, name) for name in KILLS}
    for name in KILLS:
        pid = _wait_for_pid(markers[name], prod)
        if name == KILL_PREPARE:
            base = prod.lake(RUN_B)
            prod.seen_at_kill[name] = {
                "visible": sorted(p.name for p in base.iterdir()),
                "staged_files": sorted(f.name for f in base.glob(".tmp-train-*/*")),
                "manifest_stages": sorted(layout.read_manifest(layout.LakePaths(
                    prod.root / "lake", "tiny", RUN_B))),
            }
        elif name == failpoints.PUBLISH_BEFORE_SWAP:
            prod.seen_at_kill[name] = _serving(prod.db_file)
        os.kill(pid, signal.SIGKILL)


def _wait_for_pid(marker: Path, prod: Production, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = marker.read_text().strip() if marker.exists() else ""
        if text:
            return int(text)
        time.sleep(0.5)
    raise AssertionError(f"no process reached {marker.stem} in {timeout:.0f} s; "
                         f"logs in {prod.settings.airflow_home / 'logs'}")


def _serving(db_file: Path) -> dict[str, Any]:
    """What a reader of the table sees: the serving run's date, its rows and their MLflow
    run ids; and how many rows each date has loaded in the history table."""
    with sqlite3.connect(db_file) as conn:
        serving = conn.execute("SELECT logical_date FROM recommendation_runs WHERE dataset = "
                               "'tiny' AND status = 'serving'").fetchall()
        rows, run_ids = conn.execute("SELECT COUNT(*), GROUP_CONCAT(DISTINCT run_id) FROM "
                                     "recommendations WHERE dataset = 'tiny'").fetchone()
        loaded = dict(conn.execute("SELECT logical_date, COUNT(*) FROM recommendation_history "
                                   "WHERE dataset = 'tiny' GROUP BY logical_date").fetchall())
    return {"serving": [d for (d,) in serving], "rows": rows, "run_ids": run_ids,
            "loaded": loaded}


def _login_when_parsed(s: stack.Settings) -> trigger.Api:
    """The API once the dag-processor has parsed ncf_tiny (bounded wait)."""
    api = trigger.Api.login(s)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            api.call("GET", f"/dags/{DAG}")
            return api
        except trigger.TriggerError:
            time.sleep(3)
    raise AssertionError(f"{DAG} was never parsed; logs in {s.folder}")


def _tries(prod: Production, date: str) -> dict[str, int]:
    return {task: int(ti["try_number"]) for task, ti in prod.tasks[date].items()}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- run A: the scheduler, tasks in parallel ---------------------------------------------


def test_the_scheduler_runs_the_dag_with_als_beside_train(production: Production) -> None:
    tasks = production.tasks[RUN_A]

    def span(task: str) -> tuple[datetime, datetime]:
        return (datetime.fromisoformat(tasks[task]["start_date"]),
                datetime.fromisoformat(tasks[task]["end_date"]))

    assert set(tasks) == set(TASKS)
    assert all(t["state"] == "success" for t in tasks.values()), tasks
    assert set(_tries(production, RUN_A).values()) == {1}
    # LocalExecutor with two slots: ALS (Spark) ran while NCF trained.
    (train_start, train_end), (als_start, als_end) = span("train"), span("als")
    assert als_start < train_end and train_start < als_end, (span("train"), span("als"))
    n_rows = 10 * len({user for user, *_ in production.rows})
    table = _serving(production.db_file)
    assert table["serving"] == [RUN_B] and table["rows"] == n_rows  # B has replaced A
    assert table["loaded"] == {RUN_A: n_rows, RUN_B: n_rows}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("ncf-tiny")
    runs = client.search_runs([experiment.experiment_id])
    families = {r.data.tags.get("ncf.family") for r in runs
                if r.data.tags.get("ncf.logical_date") == RUN_A}
    assert {"ncf", "mf", "als", "ease", "popularity"} <= families


# --- run B: three kills, three retries, the same result ----------------------------------


def test_prepare_killed_mid_write_shows_no_partial_folder_and_retries_to_the_same_bytes(
        production: Production) -> None:
    seen = production.seen_at_kill[KILL_PREPARE]
    # At the kill, train/ was fully written in its staging folder but not renamed: a
    # reader saw no train/ at all, and prepare had not recorded itself in the manifest.
    assert layout.TRAIN not in seen["visible"], seen
    assert any(name.endswith(".parquet") for name in seen["staged_files"]), seen
    assert "prepare" not in seen["manifest_stages"], seen
    assert _tries(production, RUN_B)["prepare"] == 2
    lake_a, lake_b = production.lake(RUN_A), production.lake(RUN_B)
    assert not [p.name for p in lake_b.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    for name in PREPARED:
        assert _digests(lake_b / name) == _digests(lake_a / name), name


def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_model(
        production: Production) -> None:
    import torch

    assert _tries(production, RUN_B)["train"] == 2
    manifest = {date: layout.read_manifest(layout.LakePaths(production.root / "lake", "tiny",
                                                            date))["train"]
                for date in (RUN_A, RUN_B)}
    assert manifest[RUN_B]["resumed"] is True and manifest[RUN_A]["resumed"] is False

    def quality(entry: dict[str, Any]) -> dict[str, Any]:
        return {"best_epoch": entry["best_epoch"], "epochs_run": entry["epochs_run"],
                **{k: v for k, v in entry["best_metrics"].items() if k.startswith("val_")
                   or k == "loss"}}

    assert quality(manifest[RUN_B]) == quality(manifest[RUN_A])
    states = {date: torch.load(production.lake(date) / layout.MODEL / "state_dict.pt",
                               weights_only=True) for date in (RUN_A, RUN_B)}
    assert states[RUN_A].keys() == states[RUN_B].keys()
    for key, tensor in states[RUN_A].items():
        assert torch.equal(tensor, states[RUN_B][key]), key


def test_publish_killed_between_load_and_swap_keeps_readers_on_the_old_set(
        production: Production) -> None:
    n_rows = 10 * len({user for user, *_ in production.rows})
    seen = production.seen_at_kill[failpoints.PUBLISH_BEFORE_SWAP]
    after = _serving(production.db_file)
    # Killed with B's rows loaded into history but not swapped in: readers saw A's set.
    assert seen["loaded"] == {RUN_A: n_rows, RUN_B: n_rows}, seen
    assert seen["serving"] == [RUN_A] and seen["rows"] == n_rows, seen
    assert _tries(production, RUN_B)["publish"] == 2
    assert after["serving"] == [RUN_B] and after["rows"] == n_rows, after
    killed = {"prepare", "train", "publish"}
    assert {t for t, n in _tries(production, RUN_B).items() if n > 1} == killed


# --- both UIs in a real browser -----------------------------------------------------------


def test_both_uis_in_headless_chromium(production: Production,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    out = Path(os.environ.get("NCF_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screens"))
    s = production.settings
    password = stack.admin_password(s)
    assert password
    with browser.chrome(width=1900, height=900) as driver:
        browser.airflow_login(driver, s.airflow_url, "admin", password)
        run_id = production.run_ids[RUN_B]
        driver.get(f"{s.airflow_url}/dags/{DAG}/runs/{run_id}")
        text = browser.wait_for(driver, lambda t: "Task Instances" in t and
                                all(task in t for task in TASKS), what="the Airflow run")
        browser.screenshot(driver, out / "airflow-grid.png")
        lines = [line.strip() for line in text.splitlines()]
        # The grid names each task first; the task instance list below it names each task
        # again, followed by its state.
        last = {task: len(lines) - 1 - lines[::-1].index(task) for task in TASKS}
        states = {task: lines[row + 1] if row + 1 < len(lines) else ""
                  for task, row in last.items()}
        assert states == dict.fromkeys(TASKS, "Success"), states

        experiment = trigger.comparison_link(s, "tiny")
        assert experiment is not None
        driver.get(experiment)
        families = ("ncf", "mf", "als", "ease", "popularity")
        browser.wait_for(driver, lambda t: "test_hr_10/ncf" in t and "Runs" in t,
                         what="MLflow's saved comparison")
        browser.close_mlflow_assistant(driver)
        text = browser.wait_for(driver, lambda t: f"test_hr_10/{families[-1]}" in t,
                                what="MLflow's saved comparison, every family's column")
        browser.screenshot(driver, out / "mlflow-comparison.png")
    assert "Model training" in text and "Token Usage" not in text  # not the GenAI overview
    for family in families:
        assert f"test_hr_10/{family}" in text, family
    # Both DAG runs are rows, each with every family's test HR@10 as a number.
    rows = [line for line in text.splitlines() if line.startswith("tiny-2026-11-2")]
    assert sorted(rows) == [f"tiny-{RUN_A}", f"tiny-{RUN_B}"], rows
    numbers = [line for line in text.splitlines() if _is_number(line)]
    assert len(numbers) >= 2 * len(families), text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
