"""jobs.ops: the local production stack's settings and process handling, and the REST
trigger against a loopback server speaking Airflow's API (no Airflow started here)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from jobs.ops import stack, trigger


def _settings(tmp_path: Path, port: int = 8793) -> stack.Settings:
    return stack.Settings(airflow_home=tmp_path / "airflow", airflow_port=port,
                          mlflow_port=5099, parallelism=2,
                          tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          bin_dir=tmp_path / "bin")


def test_the_api_port_and_the_execution_api_url_are_set_together(tmp_path: Path) -> None:
    env = stack.airflow_env(_settings(tmp_path, port=8793), schedule=False, environ={})
    assert env["AIRFLOW__API__PORT"] == "8793"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8793/execution/"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) >= 2
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["NCF_TORCH_POOL"] == stack.TORCH_POOL
    # The MLflow server's GenAI job runner, unused here, stays off (it polls all night).
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # No stack-wide torch budget: the DAG sets each torch task's, as under `make run`.
    assert "NCF_TORCH_THREADS" not in env
    scheduled = stack.airflow_env(_settings(tmp_path), schedule=True, environ={})
    assert scheduled["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    # Every component listens on loopback only.
    for name, argv in stack.commands(_settings(tmp_path)).items():
        if "--host" in argv:
            assert argv[argv.index("--host") + 1] == "127.0.0.1", name


def test_every_airflow_process_preloads_what_the_tasks_import(tmp_path: Path) -> None:
    # Airflow imports airflow_local_settings at start-up: the scheduler imports the task
    # modules once, and the LocalExecutor's forked workers and tasks inherit them.
    env = stack.airflow_env(_settings(tmp_path), schedule=False,
                            environ={"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(":") == [str(stack.PRELOAD_DIR), "/elsewhere"]
    assert (stack.PRELOAD_DIR / "airflow_local_settings.py").is_file()
    assert stack.airflow_env(_settings(tmp_path), schedule=False,
                             environ={})["PYTHONPATH"] == str(stack.PRELOAD_DIR)
    probe = ("import sys, airflow_local_settings; "
             "print('airflow.providers.apache.spark.operators.spark_submit' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], env={**env, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("schedule", [False, True])
def test_up_sets_every_project_dag_paused_or_not_before_the_scheduler_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: bool) -> None:
    # A DAG an earlier `up --schedule` (or the UI) unpaused would otherwise run today's
    # interval as soon as the scheduler starts; one `make run` registered paused would
    # never be scheduled. The CLI calls and the start order, without starting Airflow.
    s = _settings(tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(stack, "_run", lambda argv, env, what: calls.append(list(argv)))
    monkeypatch.setattr(stack, "_wait_healthy", lambda *args, **kwargs: None)

    class Started:
        def __init__(self, argv: list[str], **kwargs: object) -> None:
            calls.append(list(argv))
            self.pid = 999_999

    monkeypatch.setattr(stack.subprocess, "Popen", Started)
    stack.up(s, schedule=schedule)
    airflow = str(s.bin_dir / "airflow")
    action = "unpause" if schedule else "pause"
    assert [airflow, "dags", action, "--treat-dag-id-as-regex", "^ncf_", "--yes"] in calls
    started = [argv for argv in calls if "scheduler" in argv]
    assert calls.index([airflow, "dags", action, "--treat-dag-id-as-regex", "^ncf_",
                        "--yes"]) < calls.index(started[0])
    # The servers and the dag-processor start under nice; the scheduler does not.
    assert started[0][0] == airflow
    assert {argv[argv.index("-n") + 1] for argv in calls if argv[0] == "nice"} == {"10"}
    assert sum(argv[0] == "nice" for argv in calls) == len(stack.BACKGROUND_NICE)


def test_down_stops_exactly_the_processes_up_started(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    s.folder.mkdir(parents=True)
    started = {}
    for name in ("scheduler", "mlflow"):
        process = subprocess.Popen(["sleep", "60"], start_new_session=True)
        (s.folder / f"{name}.pid").write_text(f"{process.pid}\n")
        started[name] = process
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert stack.running(s) == {name: p.pid for name, p in started.items()}
        assert sorted(stack.down(s, timeout=10)) == ["mlflow", "scheduler"]
        for process in started.values():
            assert process.wait(timeout=10) != 0  # terminated by a signal
        assert bystander.poll() is None  # not ours: untouched
        assert stack.running(s) == {} and not list(s.folder.glob("*.pid"))
        assert stack.down(s) == []
    finally:
        bystander.kill()
        bystander.wait()


def test_the_admin_password_comes_from_airflows_generated_file(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert stack.admin_password(s) is None
    s.airflow_home.mkdir(parents=True)
    (s.airflow_home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": "s3cret"}))
    assert stack.admin_password(s) == "s3cret"


class _FakeAirflow(BaseHTTPRequestHandler):
    """Airflow's token endpoint and the few API v2 routes the trigger calls; the run's
    tasks move one state per poll."""

    script: list[dict[str, str]] = []
    current: dict[str, str] = {}
    calls: list[tuple[str, str, Any]] = []
    paused = True
    runs: list[dict[str, str]] = []  # the runs that exist for the date asked

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_POST(self) -> None:  # noqa: N802 (http.server's names)
        body = self._body()
        self.calls.append(("POST", self.path, body))
        if self.path == "/auth/token":
            if body.get("password") != "s3cret":
                self._reply(401, {"detail": "bad credentials"})
                return
            self._reply(201, {"access_token": "tok"})
        elif self.path.endswith("/clear"):
            self._reply(200, {"task_instances": []})
        else:
            assert self.headers["Authorization"] == "Bearer tok"
            self._reply(200, {"dag_run_id": body["dag_run_id"]})

    def do_PATCH(self) -> None:  # noqa: N802
        body = self._body()
        self.calls.append(("PATCH", self.path, body))
        if "/dagRuns/" in self.path:  # a run's state: it is finished for the next query
            for run in self.runs:
                if self.path.endswith(quote(run["dag_run_id"])):
                    run["state"] = body["state"]
            self._reply(200, body)
            return
        type(self).paused = bool(body["is_paused"])
        self._reply(200, {"is_paused": self.paused})


    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, None))
        if self.path.endswith("/taskInstances"):
            step = self.script[0] if len(self.script) == 1 else self.script.pop(0)
            type(self).current = step
            self._reply(200, {"task_instances": [
                {"task_id": task, "state": state} for task, state in step.items()
                if task != "_run"]})
        elif "/dagRuns?" in self.path:
            self._reply(200, {"dag_runs": self.runs, "total_entries": len(self.runs)})
        elif "/dagRuns/" in self.path:
            self._reply(200, {"state": self.current.get("_run", "running")})
        else:
            self._reply(200, {"is_paused": self.paused})

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def fake_airflow(tmp_path: Path) -> Iterator[stack.Settings]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s = _settings(tmp_path, port=server.server_address[1])
    s.airflow_home.mkdir(parents=True)
    (s.airflow_home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": "s3cret"}))
    _FakeAirflow.calls, _FakeAirflow.paused, _FakeAirflow.runs = [], True, []
    try:
        yield s
    finally:
        server.shutdown()


def test_trigger_follows_the_run_printing_each_change(fake_airflow: stack.Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trigger, "POLL_S", 0.01)
    _FakeAirflow.script = [{"train": "queued"}, {"train": "running"},
                           {"train": "success", "publish": "running"},
                           {"train": "success", "publish": "success", "_run": "success"}]
    api = trigger.Api.login(fake_airflow)
    run_id = trigger.trigger(api, "ncf_tiny", "2026-11-23")
    assert run_id.startswith("manual__2026-11-23T00:00:00+00:00")
    posted = [body for method, path, body in _FakeAirflow.calls
              if method == "POST" and path == "/api/v2/dags/ncf_tiny/dagRuns"]
    assert posted[0]["logical_date"] == "2026-11-23T00:00:00+00:00"
    out = io.StringIO()
    assert trigger.follow(api, "ncf_tiny", run_id, out=out) == "success"
    lines = [line.split()[2:] for line in out.getvalue().splitlines()]
    assert lines == [["train", "queued"], ["train", "running"], ["train", "success"],
                     ["publish", "running"], ["publish", "success"],
                     ["run", run_id + ":", "success"]]


def test_a_date_that_already_has_a_run_is_refused_or_run_again(
        fake_airflow: stack.Settings) -> None:
    # Airflow keeps one run per logical date, and `make run` (dags test) makes one too.
    _FakeAirflow.runs = [{"dag_run_id": "manual__2026-11-23T00:00:00+00:00",
                          "state": "success", "logical_date": "2026-11-23T00:00:00Z"}]
    api = trigger.Api.login(fake_airflow)
    with pytest.raises(trigger.TriggerError, match="already has a run for 2026-11-23 "
                       r"\(manual__2026-11-23T00:00:00\+00:00, success.*RERUN=1"):
        trigger.trigger(api, "ncf_tiny", "2026-11-23")
    assert trigger.trigger(api, "ncf_tiny", "2026-11-23", rerun=True) == \
        "manual__2026-11-23T00:00:00+00:00"
    posts = [(path, body) for method, path, body in _FakeAirflow.calls if method == "POST"]
    assert posts[-1] == ("/api/v2/dags/ncf_tiny/dagRuns/manual__2026-11-23T00%3A00%3A00%2B00"
                         "%3A00/clear", {"dry_run": False})
    assert not any(path == "/api/v2/dags/ncf_tiny/dagRuns" for path, _ in posts)
    lookup = [path for method, path, _ in _FakeAirflow.calls
              if method == "GET" and "/dagRuns?" in path]
    assert "logical_date_gte=2026-11-23T00%3A00%3A00%2B00%3A00" in lookup[0]


def test_the_scheduled_run_an_unpause_queues_is_dropped(fake_airflow: stack.Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Unpausing an @daily DAG queues today's interval at once; with max_active_runs 1 it
    # would run before the date asked for (measured: the asked run waited behind it).
    monkeypatch.setattr(trigger, "UNPAUSE_SETTLE_S", 0.0)
    monkeypatch.setattr(trigger, "PAUSE_SETTLE_S", 0.0)
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    _FakeAirflow.runs = [
        {"dag_run_id": "scheduled__2026-12-05T00:00:00+00:00", "state": "running",
         "queued_at": later.replace("+00:00", "Z"), "run_type": "scheduled"},
        # Left queued by an earlier unpause: a paused DAG's scheduled work stays stopped.
        {"dag_run_id": "scheduled__2026-12-04T00:00:00+00:00", "state": "queued",
         "queued_at": "2026-12-04T00:00:05Z", "run_type": "scheduled"},
        {"dag_run_id": "backfill__2026-11-30T00:00:00+00:00", "state": "queued",
         "queued_at": later.replace("+00:00", "Z"), "run_type": "backfill"},  # asked for
        {"dag_run_id": "scheduled__2026-12-03T00:00:00+00:00", "state": "success",
         "queued_at": "2026-12-03T00:00:05Z", "run_type": "scheduled"}]  # finished
    api = trigger.Api.login(fake_airflow)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with trigger.unpaused(api, "ncf_tiny") as was_paused:
        assert was_paused
    runs = "/api/v2/dags/ncf_tiny/dagRuns/scheduled__2026-12-0{}T00%3A00%3A00%2B00%3A00"
    stop = {"state": "failed", "note": trigger.UNASKED_NOTE}
    changes = [(method, path, body) for method, path, body in _FakeAirflow.calls
               if method in ("PATCH", "DELETE")]
    # Failed with a note, not deleted: a deleted interval is queued again once the DAG is
    # parsed anew, and would start at the next unpause.
    assert changes == [("PATCH", "/api/v2/dags/ncf_tiny", {"is_paused": False}),
                       ("PATCH", runs.format(5), stop), ("PATCH", runs.format(4), stop),
                       ("PATCH", "/api/v2/dags/ncf_tiny", {"is_paused": True})]
    assert "stopped scheduled__2026-12-05" in out.getvalue()


def test_trigger_main_unpauses_for_the_run_then_pauses_again_and_fails_with_the_run(
        fake_airflow: stack.Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trigger, "POLL_S", 0.01)
    monkeypatch.setattr(trigger, "settings_from_env", lambda: fake_airflow)
    monkeypatch.setattr(trigger, "UNPAUSE_SETTLE_S", 0.0)
    monkeypatch.setattr(trigger, "PAUSE_SETTLE_S", 0.0)
    _FakeAirflow.script = [{"train": "failed", "_run": "failed"}]
    assert trigger.main(["--dataset", "tiny", "--date", "2026-11-23"]) == 1
    patches = [body["is_paused"] for method, _path, body in _FakeAirflow.calls
               if method == "PATCH"]
    assert patches == [False, True]
    assert "train" in capsys.readouterr().out


def test_trigger_names_the_problem_when_it_cannot_log_in(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path, port=1)  # nothing listens there, and no password yet
    monkeypatch.setattr(trigger, "settings_from_env", lambda: s)
    assert trigger.main(["--dataset", "tiny"]) == 2
    assert "make up" in capsys.readouterr().err
