"""Production mode, for real: `make up`'s stack (scheduler, dag-processor, api-server with
the LocalExecutor, an MLflow server) on a throw-away Airflow home, one DAG run on tiny data
triggered through the REST API, then `make down`. Slow (a few minutes, ~5 GB)."""

from __future__ import annotations

import os
import socket
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from jobs.ops import stack, trigger
from tests.tiny_data import write_tiny_config, write_tiny_u_data

pytestmark = [pytest.mark.slow, pytest.mark.spark]
DATE = "2026-11-23"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_scheduler_runs_the_dag_with_als_beside_train(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw_file = tmp_path / "raw" / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file)
    config_dir = tmp_path / "configs"
    write_tiny_config(config_dir, raw_file, epochs=2)
    db_file = tmp_path / "reco.db"
    env = {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "NCF_CONFIG_DIR": str(config_dir),
        # Manual runs only: unpaused, an @daily DAG would also run today's interval first.
        "NCF_SCHEDULE": "none",
        "NCF_RAW_DIR": str(tmp_path / "raw"),
        "NCF_LAKE_ROOT": str(tmp_path / "lake"),
        "NCF_CACHE_DIR": str(tmp_path / "cache"),
        "NCF_DB_URL": f"sqlite:///{db_file}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[1]"}',
        "NCF_SPARK_SHUFFLE_PARTITIONS": "2",
        "NCF_SPARK_DRIVER_MEMORY": "1g",
        "NCF_AIRFLOW_PORT": str(_free_port()),
        "NCF_MLFLOW_PORT": str(_free_port()),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "mlflow").mkdir()
    s = stack.settings_from_env()
    try:
        summary = stack.up(s, schedule=False)
        assert "login     admin / " in summary  # the generated password, shown once
        assert "login" not in stack.up(s, schedule=False)  # already up: nothing restarted
        assert set(stack.running(s)) == set(stack.commands(s))
        api = _login_when_parsed(s)
        api.call("PATCH", "/dags/ncf_tiny", {"is_paused": False})
        run_id = trigger.trigger(api, "ncf_tiny", DATE)
        state = trigger.follow(api, "ncf_tiny", run_id, timeout=900)
        tasks = {t["task_id"]: t for t in api.call(
            "GET", f"/dags/ncf_tiny/dagRuns/{run_id}/taskInstances")["task_instances"]}
        assert state == "success", {k: t["state"] for k, t in tasks.items()}
    finally:
        stopped = stack.down(s)
        logs = {p.name: p.read_text()[-2000:] for p in s.folder.glob("*.log")}
    assert sorted(stopped) == sorted(stack.commands(s)), logs
    assert stack.running(s) == {}

    def span(task: str) -> tuple[datetime, datetime]:
        return (datetime.fromisoformat(tasks[task]["start_date"]),
                datetime.fromisoformat(tasks[task]["end_date"]))

    # LocalExecutor with two slots: ALS (Spark) ran while NCF trained.
    (train_start, train_end), (als_start, als_end) = span("train"), span("als")
    assert als_start < train_end and train_start < als_end, (span("train"), span("als"))
    assert all(t["state"] == "success" for t in tasks.values()), tasks
    with sqlite3.connect(db_file) as conn:
        count = conn.execute("SELECT COUNT(*) FROM recommendations WHERE dataset = 'tiny'"
                             ).fetchone()[0]
    assert count == 10 * len({user for user, *_ in rows})
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("ncf-tiny")
    families = {r.data.tags.get("ncf.family") for r in client.search_runs(
        [experiment.experiment_id])}
    assert {"ncf", "mf", "als", "ease", "popularity"} <= families


def _login_when_parsed(s: stack.Settings) -> trigger.Api:
    """The API once the dag-processor has parsed ncf_tiny (bounded wait)."""
    import time

    api = trigger.Api.login(s)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            api.call("GET", "/dags/ncf_tiny")
            return api
        except trigger.TriggerError:
            time.sleep(3)
    raise AssertionError(f"ncf_tiny was never parsed; logs in {s.folder}")
