"""The DAG, tested twice: a DagBag import test and a `dag.test()` run end to end."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.tiny_data import write_tiny_config, write_tiny_u_data

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
STAGES = ["ingest", "validate_interactions", "prepare", "validate_splits", "train",
          "candidates", "evaluate", "recommend", "validate_recommendations", "publish", "als"]


def _dagbag(config_dir: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("NCF_CONFIG_DIR", str(config_dir))
    return DagBag(dag_folder=str(DAGS))  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES


def test_dagbag_imports_one_dag_per_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a connection was looked up at DAG parse time")

    monkeypatch.setattr(BaseHook, "get_connection", refuse)
    bag = _dagbag(REPO / "configs", monkeypatch)
    assert bag.import_errors == {}
    configs = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert sorted(bag.dag_ids) == sorted([*(f"ncf_{name}" for name in configs),
                                          "ncf_downstream_example"])
    dag = bag.dags["ncf_ml-100k"]
    assert dag is not None
    assert sorted(t.task_id for t in dag.tasks) == sorted(STAGES)
    for upstream, downstream in zip(STAGES[:9], STAGES[1:10], strict=True):  # the main chain
        assert dag.get_task(upstream).downstream_task_ids == (
            {downstream, "als"} if upstream == "validate_splits" else {downstream}), upstream
    # ALS runs beside NCF's training; the candidates wait for both.
    assert dag.get_task("als").downstream_task_ids == {"candidates"}
    assert dag.get_task("candidates").upstream_task_ids == {"train", "als"}
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.doc_md and "ingest" in dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
    assert {t.task_type for t in dag.tasks} == {"SparkSubmitOperator", "BashOperator",
                                                "_PythonDecoratedOperator"}
    assert dag.get_task("evaluate").skip_on_exit_code == [99]  # type: ignore[attr-defined]
    # publish emits the table's asset; the example consumer is scheduled on it.
    (outlet,) = dag.get_task("publish").outlets
    assert outlet.uri == "ncf://recommendations/ml-100k"
    consumer = bag.dags["ncf_downstream_example"]
    condition = consumer.timetable.asset_condition  # type: ignore[attr-defined]
    assert "ncf://recommendations/ml-100k" in {asset.uri for asset in condition.objects}
    # prepare cuts events at the run's data interval end: a backfill sees what was known.
    prepare_args = dag.get_task("prepare").application_args  # type: ignore[attr-defined]
    assert prepare_args[-2:] == ["--as-of", "{{ data_interval_end | ts }}"]
    # ... and that is prepare's own default for the logical date (a run by hand cuts the
    # same): Airflow 3's @daily is a CronTriggerTimetable, its interval ends at the date.
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.trigger import CronTriggerTimetable
    from pendulum import datetime as pendulum_datetime

    from jobs.prepare import default_as_of

    timetable = coerce_to_core_timetable(dag.timetable)  # as dag.test() and the scheduler
    assert isinstance(timetable, CronTriggerTimetable)
    interval = timetable.infer_manual_data_interval(run_after=pendulum_datetime(2026, 11, 23))
    assert interval.end == default_as_of("2026-11-23")
    check_topk = dag.get_task("validate_recommendations")
    assert check_topk.bash_command.endswith("--stage recommendations")  # type: ignore[attr-defined]
    ingest = dag.get_task("ingest")
    assert ingest.application.endswith("jobs/ingest.py")  # type: ignore[attr-defined]
    assert Path(ingest.application).is_file()  # type: ignore[attr-defined]


def test_dag_file_has_no_heavy_top_level_imports() -> None:
    source = (DAGS / "ncf_pipeline.py").read_text()
    top_level = [line for line in source.splitlines()
                 if line.startswith(("import ", "from "))]
    for heavy in ("torch", "pandas", "pyspark", "mlflow", "great_expectations"):
        assert not any(heavy in line for line in top_level), heavy


@pytest.mark.slow
@pytest.mark.spark
def test_dag_runs_end_to_end_on_tiny_data(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    raw_dir = tmp_path / "raw"
    raw_file = raw_dir / "ml-100k" / "u.data"
    rows = write_tiny_u_data(raw_file, bad_lines=("1\t2\tthree\t880000000", "garbage"))
    config_dir = tmp_path / "configs"
    write_tiny_config(config_dir, raw_file, epochs=3)
    db_file = tmp_path / "reco.db"
    env = {
        "NCF_RAW_DIR": str(raw_dir),
        "NCF_LAKE_ROOT": str(tmp_path / "lake"),
        "NCF_CACHE_DIR": str(tmp_path / "cache"),
        "NCF_DB_URL": f"sqlite:///{db_file}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "NCF_SPARK_SHUFFLE_PARTITIONS": "2",
        "NCF_SPARK_DRIVER_MEMORY": "1g",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    from airflow.utils.db import initdb

    initdb()
    bag = _dagbag(config_dir, monkeypatch)
    assert bag.import_errors == {}
    dag = bag.dags["ncf_tiny"]
    run = dag.test(logical_date=datetime(2026, 11, 23, tzinfo=UTC))
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    # The table: K rows per user, ranks 1..K, never an item the user has seen.
    seen: dict[str, set[str]] = {}
    for user, item, _rating, _ts in rows:
        seen.setdefault(user, set()).add(item)
    with sqlite3.connect(db_file) as conn:
        table = conn.execute("SELECT user_id, rank, item_id, score, model_version, run_id "
                             "FROM recommendations WHERE dataset = 'tiny'").fetchall()
    assert len(table) == 10 * len(seen)
    by_user: dict[str, list[tuple[int, str]]] = {}
    for user, rank, item, _score, _version, _run in table:
        by_user.setdefault(user, []).append((rank, item))
    assert set(by_user) == set(seen)
    for user, recs in by_user.items():
        assert sorted(rank for rank, _ in recs) == list(range(1, 11))
        assert not {item for _, item in recs} & seen[user], user
    run_ids = {row[5] for row in table}
    assert len(run_ids) == 1

    # MLflow: the served family's run (test metrics, the registered version), NCF's run
    # (params, per-epoch metrics), one child run per family under the DAG run's parent.
    import json

    from mlflow.tracking import MlflowClient

    manifest = json.loads((tmp_path / "lake" / "tiny" / "2026-11-23" / "_manifest.json")
                          .read_text())
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    mlflow_run = client.get_run(run_ids.pop())
    assert mlflow_run.info.run_id == manifest["candidates"]["served_run_id"]
    assert {"test_hr_10", "test_ndcg_10", "test_auc", "val_ndcg_10"} <= set(
        mlflow_run.data.metrics)
    assert 0.0 <= mlflow_run.data.metrics["test_hr_10"] <= 1.0
    ncf_run = client.get_run(manifest["train"]["run_id"])
    assert ncf_run.data.params["model.kind"] == "neumf"
    assert len(client.get_metric_history(ncf_run.info.run_id, "loss")) >= 1
    versions = client.search_model_versions("name = 'ncf-tiny'")
    assert len(versions) == 1 and versions[0].tags["family"] == manifest["evaluate"]["family"]
    parent = manifest["candidates"]["parent_run_id"]
    children = client.search_runs([mlflow_run.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["ncf.family"] for r in children) == [
        "als", "ease", "mf", "ncf", "popularity", "sasrec"]
    assert all(record["skipped"] is None for record in manifest["candidates"]["families"]
               .values()), manifest["candidates"]["families"]
    for child in children:
        assert 0.0 <= child.data.metrics["test_hr_10"] <= 1.0
    assert client.get_run(parent).data.tags["ncf.served_family"] == manifest["evaluate"][
        "family"]

    # The lake: rejects kept with a reason, a manifest entry per stage.
    assert manifest["ingest"]["rejected"] == 2
    assert manifest["ingest"]["kept"] == len(rows)
    for stage in ("ingest", "prepare", "train", "candidates", "evaluate", "recommend",
                  "validate_recommendations", "publish", "als"):
        assert stage in manifest, stage
    # prepare got the run's data interval end as its as-of time (rendered by Airflow).
    as_of = datetime.fromisoformat(manifest["prepare"]["as_of"])
    assert as_of == run.data_interval_end, (as_of, run.data_interval_end)
    assert manifest["validate_recommendations"]["success"] is True

    # The publish task emitted the table's asset event, with the counts for consumers.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.uri == "ncf://recommendations/tiny").all())
        assert [(e.extra["rows"], e.extra["model_version"], e.extra["logical_date"])
                for e in events] == [(10 * len(seen), "1", "2026-11-23")]
    consumer = bag.dags["ncf_downstream_example"]
    consumer_run = consumer.test(logical_date=datetime(2026, 11, 23, 6, tzinfo=UTC))
    assert consumer_run.state == "success"

    # The champion gate in the DAG: a refused model (under a floor it cannot clear) skips
    # evaluate, and recommend and publish with it; the table keeps the champion's rows.
    config = config_dir / "tiny.yaml"
    weak = yaml.safe_load(config.read_text())
    weak["evaluate"]["min_score"] = 0.999
    weak["candidates"]["families"] = ["popularity"]  # another model: a new version
    config.write_text(yaml.safe_dump(weak))
    retrain = dag.partial_subset(task_ids=["candidates"], include_downstream=True,
                                 include_upstream=False)
    rerun = retrain.test(logical_date=datetime(2026, 11, 23, tzinfo=UTC))
    states = {ti.task_id: ti.state for ti in rerun.get_task_instances()}
    assert {task: states[task] for task in STAGES[5:10]} == {
        "candidates": "success", "evaluate": "skipped", "recommend": "skipped",
        "validate_recommendations": "skipped", "publish": "skipped"}, states
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT user_id, rank, item_id, score, model_version, run_id "
                            "FROM recommendations WHERE dataset = 'tiny'").fetchall() == table
    assert str(client.get_model_version_by_alias("ncf-tiny", "champion").version) == "1"
    assert "below the floor" in client.get_model_version("ncf-tiny", "2").tags["ncf.gate"]
