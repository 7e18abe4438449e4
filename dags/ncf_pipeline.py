"""
### NCF nightly pipeline — one DAG per dataset config

`ncf_<dataset>` for every `configs/<dataset>.yaml` (or `$NCF_CONFIG_DIR`):

    ingest ─▶ validate_interactions ─▶ prepare ─▶ validate_splits ─┬▶ train ─┬▶ candidates
                                                                   └▶ als ───┘
          ─▶ evaluate ─▶ recommend ─▶ validate_recommendations ─▶ publish

* **ingest**, **prepare**, **als**: PySpark jobs (`jobs/<stage>.py`) through
  `SparkSubmitOperator` on the `spark_default` connection (`local[*]` on a laptop, a
  cluster master at scale).
* **prepare** uses only the events before the run's `data_interval_end` (`--as-of`), so a
  backfill of an old date rebuilds what was known then (config `prepare.as_of_cutoff`).
* **validate_***: Great Expectations suites; a broken expectation fails the task and the
  report lands in `lake/<dataset>/<date>/reports/`. `validate_recommendations` checks
  topk/ (k rows per user, ranks, scores, no item the user already has) before publish.
* **train**: the flagship NCF (`model`/`train` sections), epochs chosen on validation; it
  opens the DAG run's parent run in MLflow and logs its own child run.
* **candidates**: every family of `candidates.families` (NCF, MF, Spark ALS, EASE^R,
  popularity) fitted on train with settings chosen on validation, refitted on train +
  validation for the reported test metrics; the best on the validation `select_metric`
  is refitted on every positive and written to `served/`. One MLflow child run per
  family; the parent run holds the comparison table and plot. Test never chooses.
* **evaluate** registers the served model and is the champion gate (validation scores
  only: today's winner against the champion's family refitted today). When it refuses, it
  exits 99: the task is *skipped*, recommend and publish are skipped with it, and the table
  keeps its set.
* **recommend**: the champion's top-k unseen items per user (popularity for users it does
  not know); **publish**: bulk load, then an atomic swap of the dataset's rows in the SQL
  table `recommendations` (connection `ncf_recommendations`, else `$NCF_DB_URL`); it emits
  the asset `ncf://recommendations/<dataset>` that downstream DAGs are scheduled on.

Every task reads and writes only `lake/<dataset>/<logical date>/`, so any task can be
cleared and re-run alone, and a re-run of the same date rewrites the same outputs.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task
from ncf_common import recommendations_asset, recommendations_db_url
from ncf_runners import model_task, python_task, spark_task, stage_args

from jobs.lake.loader import read_yaml

REPO = Path(__file__).resolve().parents[1]
# prepare's --as-of: the end of the run's data interval, so a backfill sees what was known.
AS_OF = "{{ data_interval_end | ts }}"
CONFIG_DIR = Path(os.environ.get("NCF_CONFIG_DIR", REPO / "configs"))
# A cron expression or preset; "none": runs only when triggered (a test, a manual deployment).
SCHEDULE = None if os.environ.get("NCF_SCHEDULE", "@daily").lower() == "none" else \
    os.environ.get("NCF_SCHEDULE", "@daily")

DEFAULT_ARGS = {
    "owner": "ncf",
    "retries": 2,
    # A killed or failed task is retried after this (doubling each time); tests shorten it.
    "retry_delay": timedelta(seconds=float(os.environ.get("NCF_RETRY_DELAY_S", "120"))),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=4),
}


def _publish_task(config: Path, dataset: str) -> Any:
    asset = recommendations_asset(dataset)

    @task(task_id="publish", outlets=[asset])
    def publish(ds: str | None = None, outlet_events: Any = None) -> dict[str, object]:
        """Load topk/ into the table and swap it in; the asset event carries the counts."""
        from jobs.serving.publish import publish_task

        return publish_task(config, str(ds), recommendations_db_url(), outlet_events[asset])

    return publish()


def build_dag(config: Path) -> DAG:
    dataset = read_yaml(config)["dataset"]
    with DAG(
        dag_id=f"ncf_{dataset}",
        description=f"NCF recommendations for {dataset}: Spark prep, torch training, SQL table",
        doc_md=__doc__,
        schedule=SCHEDULE,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["ncf", dataset],
    ) as dag:
        ingest = spark_task("ingest", config, dataset)
        validate_interactions = python_task("validate_interactions", "jobs.quality.validate",
                                            [*stage_args(config), "--stage", "interactions"])
        prepare = spark_task("prepare", config, dataset, extra_args=["--as-of", AS_OF])
        validate_splits = python_task("validate_splits", "jobs.quality.validate",
                                      [*stage_args(config), "--stage", "splits"])
        train = model_task("train", ["train", *stage_args(config)], beside=1)  # beside als
        als = spark_task("als", config, dataset)
        candidates = model_task("candidates", ["candidates", *stage_args(config)])
        evaluate = model_task("evaluate", ["evaluate", *stage_args(config)])
        recommend = model_task("recommend", ["recommend", *stage_args(config)])
        validate_recommendations = python_task(
            "validate_recommendations", "jobs.quality.validate",
            [*stage_args(config), "--stage", "recommendations"])
        publish = _publish_task(config, dataset)

        ingest >> validate_interactions >> prepare >> validate_splits >> [train, als]
        [train, als] >> candidates >> evaluate >> recommend >> validate_recommendations
        validate_recommendations >> publish
    return dag


for _config in sorted(CONFIG_DIR.glob("*.yaml")):
    _dag = build_dag(_config)
    globals()[_dag.dag_id] = _dag
