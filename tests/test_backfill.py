"""Several nights in a row: the per-night summary (jobs/ops/days.py), the backfill client
(jobs/ops/backfill.py) against a loopback server speaking Airflow's API, and three
consecutive logical dates of the DAG on a tiny replayed log (one `dag.test()` each)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.lake import layout
from jobs.ops import backfill, days, stack, trigger
from tests.tiny_data import write_tiny_config, write_tiny_u_data

DATES = ["2026-11-21", "2026-11-22", "2026-11-23"]


def _manifest(rows: int, previous: int, *, promoted: bool, published: bool) -> dict[str, Any]:
    at = "2026-11-22T01:0{}:00+00:00".format
    manifest: dict[str, Any] = {
        "ingest": {"rows": rows, "previous_rows": previous, "incremental": previous > 0},
        "prepare": {"written_at": at(0)},
        "candidates": {"served_family": "mf", "written_at": at(1),
                       "families": {"mf": {"test": {"test_hr_10": 0.6512}}}},
        "evaluate": {"promoted": promoted, "model_version": "3",
                     "champion_version": "3" if promoted else "2",
                     "reason": "ok" if promoted else "below the floor", "written_at": at(2)},
    }
    if published:
        manifest["publish"] = {"rows": 9430, "model_version": "3", "written_at": at(3)}
    return manifest


def test_a_night_in_one_line() -> None:
    day = days.summarize(_manifest(1200, 1000, promoted=True, published=True), "2026-11-22")
    assert (day.events, day.new_events, day.incremental, day.family, day.test_hr) == (
        1200, 200, True, "mf", 0.6512)
    assert (day.gate, day.published_rows) == ("promoted v3", 9430)
    assert day.line().split()[:9] == ["2026-11-22", "1,200", "+200", "incremental", "mf",
                                      "0.6512", "promoted", "v3", "9,430"]
    refused = days.summarize(_manifest(1200, 0, promoted=False, published=False), "2026-11-22")
    assert (refused.new_events, refused.incremental, refused.gate) == (1200, False, "kept v2")
    assert refused.published_rows is None
    assert refused.line().split()[5:] == ["0.6512", "kept", "v2", "-", "v3", "refused:",
                                          "below", "the", "floor"]
    # A publish entry older than the gate's is an earlier run's: nothing published tonight.
    stale = _manifest(1200, 1000, promoted=False, published=True)
    stale["publish"]["written_at"] = "2026-11-21T00:00:00+00:00"
    assert days.summarize(stale, "2026-11-22").published_rows is None
    assert days.summarize({}, "2026-11-22").line().split() == ["2026-11-22", *["-"] * 7]


class _FakeAirflow(BaseHTTPRequestHandler):
    """The routes the backfill calls; 11-21 has a run already, 11-22 succeeds, 11-23 fails."""

    calls: list[tuple[str, str, Any]] = []
    runs = {"2026-11-21": ("manual__x", "success"), "2026-11-22": ("backfill__22", "success"),
            "2026-11-23": ("backfill__23", "failed")}

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def do_POST(self) -> None:  # noqa: N802 (http.server's names)
        body = self._body()
        self.calls.append(("POST", self.path, body))
        if self.path == "/auth/token":
            self._reply({"access_token": "tok"})
        elif self.path.endswith("/dry_run"):
            self._reply({"backfills": [{"logical_date": f"{day}T00:00:00Z"}
                                       for day in ("2026-11-23", "2026-11-22")]})
        else:
            self._reply({"id": 7})

    def do_PATCH(self) -> None:  # noqa: N802
        self.calls.append(("PATCH", self.path, self._body()))
        self._reply({})

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, None))
        by_id = {run_id: state for run_id, state in self.runs.values()}
        if "/dagRuns?" in self.path:
            self._reply({"dag_runs": [{"dag_run_id": run_id, "state": state,
                                       "logical_date": f"{day}T00:00:00Z"}
                                      for day, (run_id, state) in self.runs.items()]})
        elif self.path.endswith("/taskInstances"):
            run_id = self.path.split("/")[-2]
            self._reply({"task_instances": [{"task_id": "publish", "state": by_id[run_id]}]})
        elif "/dagRuns/" in self.path:
            self._reply({"state": by_id[self.path.rsplit("/", 1)[-1]]})
        else:
            self._reply({"is_paused": True})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_airflow(tmp_path: Path) -> Iterator[stack.Settings]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = stack.Settings(airflow_home=tmp_path / "airflow", airflow_port=server.server_address[1],
                       mlflow_port=5099, parallelism=2, tracking_uri="sqlite:///x.db",
                       bin_dir=tmp_path)
    s.airflow_home.mkdir()
    (s.airflow_home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": "s3cret"}))
    _FakeAirflow.calls = []
    try:
        yield s
    finally:
        server.shutdown()


def test_backfill_runs_the_dates_in_order_and_fails_with_a_failed_one(
        fake_airflow: stack.Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trigger, "POLL_S", 0.01)
    monkeypatch.setattr(trigger, "UNPAUSE_SETTLE_S", 0.0)
    monkeypatch.setattr(trigger, "PAUSE_SETTLE_S", 0.0)
    monkeypatch.setattr(backfill, "settings_from_env", lambda: fake_airflow)
    config = tmp_path / "tiny.yaml"
    config.write_text("dataset: tiny\n")
    night = layout.LakePaths(tmp_path / "lake", "tiny", "2026-11-22")
    night.base.mkdir(parents=True)
    night.manifest.write_text(json.dumps(_manifest(1200, 1000, promoted=True, published=True)))
    code = backfill.main(["--config", str(config), "--from", DATES[0], "--to", DATES[2],
                          "--lake-root", str(tmp_path / "lake")])
    assert code == 1  # 11-23 failed
    created = [body for method, path, body in _FakeAirflow.calls
               if method == "POST" and path == "/api/v2/backfills"]
    assert created == [{"dag_id": "ncf_tiny", "from_date": "2026-11-21T00:00:00+00:00",
                        "to_date": "2026-11-23T00:00:00+00:00", "run_backwards": False,
                        "reprocess_behavior": "none", "max_active_runs": 1}]
    assert [body["is_paused"] for method, _p, body in _FakeAirflow.calls
            if method == "PATCH"] == [False, True]
    out = capsys.readouterr().out
    assert "2026-11-21: left out: it has a run already (success)" in out
    assert out.index("== 2026-11-22") < out.index("== 2026-11-23")
    assert days.summarize(_manifest(1200, 1000, promoted=True, published=True),
                          "2026-11-22").line() in out
    assert "2026-11-23: run failed" in out


# Not "tiny": test_dag.py counts the asset events of ncf_tiny in the same Airflow DB.
DATASET = "nightly"


def _spread_u_data(raw_file: Path) -> list[tuple[str, str, int, int]]:
    """The tiny u.data, each user's ratings spread over 8 days (UTC), oldest first."""
    rows = sorted(write_tiny_u_data(raw_file), key=lambda row: (int(row[0]), row[3]))
    by_user: dict[str, list[tuple[str, str, int, int]]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    day0 = 879_984_000  # 1997-11-20 00:00 UTC
    spread = [(user, item, rating,
               day0 + (step * 8 // len(rated)) * 86_400 + int(user) * 600 + step)
              for user, rated in by_user.items()
              for step, (_u, item, rating, _ts) in enumerate(rated)]
    raw_file.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in spread))
    return spread


def _serving(db_file: Path) -> tuple[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db_file) as conn:
        (served,) = conn.execute("SELECT logical_date FROM recommendation_runs WHERE "
                                 "dataset = 'nightly' AND status = 'serving'").fetchone()
        rows = conn.execute("SELECT user_id, rank, item_id, model_version FROM recommendations "
                            "WHERE dataset = 'nightly' ORDER BY user_id, rank").fetchall()
    return served, rows


@pytest.mark.slow
@pytest.mark.spark
def test_three_nights_on_a_replayed_log(spark: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import replay
    from jobs.serving import publish

    raw_dir, events_root, lake = tmp_path / "raw", tmp_path / "events", tmp_path / "lake"
    raw_file = raw_dir / "ml-100k" / "u.data"
    _spread_u_data(raw_file)
    write_tiny_config(tmp_path / "replay", raw_file, dataset=DATASET)
    assert replay.main(["--config", str(tmp_path / "replay" / f"{DATASET}.yaml"), "--raw-dir",
                        str(raw_dir), "--events-root", str(events_root),
                        "--last-day", DATES[-1]]) == 0
    config = write_tiny_config(tmp_path / "configs", raw_file, dataset=DATASET, epochs=2)
    settings = yaml.safe_load(config.read_text())
    settings["source"] = {"format": "events", "events": {
        "location": str(events_root / DATASET), "file_type": "csv", "partitioning": "daily",
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "value": "value"},
        "ts_unit": "seconds", "integer_ids": True, "combine": "max"}}
    settings["evaluate"] |= {"tolerance": 1.0}  # nights 1 and 2: always promoted
    # test_dag.py runs every family; here the cheap ones (no ALS job, no SASRec training).
    settings["candidates"]["families"] = ["ncf", "mf", "ease", "popularity"]
    config.write_text(yaml.safe_dump(settings))
    db_file = tmp_path / "reco.db"
    for key, value in {
        "NCF_LAKE_ROOT": str(lake), "NCF_DB_URL": f"sqlite:///{db_file}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "NCF_SPARK_SHUFFLE_PARTITIONS": "2", "NCF_SPARK_DRIVER_MEMORY": "1g",
        "NCF_CONFIG_DIR": str(tmp_path / "configs"), "NCF_TORCH_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)

    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    initdb()
    dags = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags")).dags
    dag = dags[f"ncf_{DATASET}"]
    served: list[str] = []
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for night, day in enumerate(DATES):
        if night == 2:  # the gate refuses night 3's model; the champion serves its data
            settings["evaluate"] |= {"min_score": 0.999, "on_refusal": "serve_champion"}
            config.write_text(yaml.safe_dump(settings))
        run = dag.test(logical_date=datetime.fromisoformat(f"{day}T00:00:00+00:00"))
        assert run.state == "success", [(t.task_id, t.state) for t in run.get_task_instances()]
        serving, tables[day] = _serving(db_file)
        served.append(serving)

    summary = days.days(lake, DATASET)
    manifests = [layout.read_manifest(layout.LakePaths(lake, DATASET, day)) for day in DATES]
    ingests = [m["ingest"] for m in manifests]
    # Each night sees more events; the 2nd and 3rd add their one new day to the night before.
    assert ingests[0]["rows"] < ingests[1]["rows"] < ingests[2]["rows"]
    assert [(i["incremental"], i["previous"], i["partitions_read"][-1:]) for i in ingests] == [
        (False, None, [DATES[0]]), (True, DATES[0], [DATES[1]]), (True, DATES[1], [DATES[2]])]
    assert [d.events for d in summary] == [i["rows"] for i in ingests]
    assert [d.new_events for d in summary][1:] == [
        ingests[1]["rows"] - ingests[0]["rows"], ingests[2]["rows"] - ingests[1]["rows"]]
    # The gate: promoted, promoted, refused (v3) with v2 kept; each night published.
    assert [(d.promoted, d.version, d.champion) for d in summary] == [
        (True, "1", "1"), (True, "2", "2"), (False, "3", "2")]
    assert served == DATES
    assert [{row[3] for row in tables[day]} for day in DATES] == [{"1"}, {"2"}, {"2"}]
    assert [d.published_rows for d in summary] == [len(tables[day]) for day in DATES]
    assert all(d.test_hr is not None and 0.0 <= d.test_hr <= 1.0 for d in summary)

    # The history holds the three nights; a rollback to the first serves its set again.
    url = f"sqlite:///{db_file}"
    capsys.readouterr()
    assert publish.main(["runs", "--config", str(config), "--db-url", url]) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [
        [DATES[2], "serving"], [DATES[1], "retired"], [DATES[0], "retired"]]
    assert publish.main(["rollback", "--config", str(config), "--to-date", DATES[0],
                         "--db-url", url]) == 0
    assert _serving(db_file) == (DATES[0], tables[DATES[0]])
    assert days.main(["--config", str(config), "--lake-root", str(lake)]) == 0
    printed = capsys.readouterr().out
    assert "kept v2" in printed and all(day in printed for day in DATES)

    # Forward evaluation of what nights 1 and 2 served, over the next two days of the log
    # (night 3's window would pass the log's last day: left out).
    from mlflow.tracking import MlflowClient

    from bench import backtest
    from jobs.lake.config import load_data_config

    opts = backtest.Options(config=config, lake_root=lake, location=str(events_root / DATASET),
                            horizon_days=2)
    rows = backtest.backtest(spark, load_data_config(config), DATES, opts)
    assert [(r["cut"], r["served_from"], r["model_version"]) for r in rows] == [
        (DATES[0], DATES[0], "1"), (DATES[1], DATES[1], "2")]
    assert all(r["users"] > 0 and 0.0 <= r["served_hr"] <= 1.0 for r in rows), rows
    (logged,) = MlflowClient().get_metric_history(rows[0]["run_id"], "forward_hr_10_2d")
    assert logged.value == pytest.approx(rows[0]["served_hr"])
