"""
### NCF nightly pipeline — one DAG per dataset config

`ncf_<dataset>` for every `configs/<dataset>.yaml` (or `$NCF_CONFIG_DIR`):

    ingest ─▶ validate_interactions ─▶ prepare ─▶ validate_splits ─▶ train ─▶ evaluate
          ─▶ recommend ─▶ publish

* **ingest**, **prepare**: PySpark jobs (`jobs/<stage>.py`) through `SparkSubmitOperator`
  on the `spark_default` connection (`local[*]` on a laptop, a cluster master at scale).
* **validate_***: Great Expectations suites; a broken expectation fails the task and the
  report lands in `lake/<dataset>/<date>/reports/`.
* **train**, **evaluate**, **recommend**: `ncf_model` (PyTorch, CUDA when present) in a
  subprocess; metrics and the model go to MLflow, the model is registered.
* **publish**: atomic swap of the dataset's rows in the SQL table `recommendations`.

Every task reads and writes only `lake/<dataset>/<logical date>/`, so any task can be
cleared and re-run alone, and a re-run of the same date rewrites the same outputs.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from jobs.config import read_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(os.environ.get("NCF_CONFIG_DIR", REPO / "configs"))
PYTHON = os.environ.get("NCF_PYTHON", sys.executable)

DEFAULT_ARGS = {
    "owner": "ncf",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=4),
}
# Small-data defaults; a cluster deployment overrides them in the spark_default connection
# or spark-defaults.conf.
SPARK_CONF = {
    "spark.sql.shuffle.partitions": os.environ.get("NCF_SPARK_SHUFFLE_PARTITIONS", "8"),
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
}


def _stage_args(config: Path) -> list[str]:
    return ["--config", str(config), "--logical-date", "{{ ds }}"]


def _spark_job(stage: str, config: Path, dataset: str) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=stage,
        application=str(REPO / "jobs" / f"{stage}.py"),
        application_args=_stage_args(config),
        conn_id="spark_default",
        conf=SPARK_CONF,
        name=f"ncf-{stage}-{dataset}",
        driver_memory=os.environ.get("NCF_SPARK_DRIVER_MEMORY", "4g"),
    )


def _python_job(task_id: str, module: str, config: Path, *extra: str) -> BashOperator:
    """`python -m <module>` in a subprocess: torch/GX stay out of the Airflow worker.

    The last line the module prints becomes the task's XCom (a run id, a version).
    """
    command = " ".join(shlex.quote(part) for part in
                       [PYTHON, "-m", *module.split(), *_stage_args(config), *extra])
    # The logical date is Jinja: keep it unquoted so it renders ({{ ds }} has no spaces).
    command = command.replace(shlex.quote("{{ ds }}"), "{{ ds }}")
    return BashOperator(task_id=task_id, bash_command=command, cwd=str(REPO),
                        env={"PYTHONUNBUFFERED": "1"}, append_env=True)


def build_dag(config: Path) -> DAG:
    dataset = read_yaml(config)["dataset"]
    with DAG(
        dag_id=f"ncf_{dataset}",
        description=f"NCF recommendations for {dataset}: Spark prep, torch training, SQL table",
        doc_md=__doc__,
        schedule="@daily",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["ncf", dataset],
    ) as dag:
        ingest = _spark_job("ingest", config, dataset)
        validate_interactions = _python_job("validate_interactions", "jobs.validate", config,
                                            "--stage", "interactions")
        prepare = _spark_job("prepare", config, dataset)
        validate_splits = _python_job("validate_splits", "jobs.validate", config,
                                      "--stage", "splits")
        train = _python_job("train", "ncf_model train", config)
        evaluate = _python_job("evaluate", "ncf_model evaluate", config)
        recommend = _python_job("recommend", "ncf_model recommend", config)
        publish = _python_job("publish", "jobs.publish", config)

        (ingest >> validate_interactions >> prepare >> validate_splits >> train >> evaluate
         >> recommend >> publish)
    return dag


for _config in sorted(CONFIG_DIR.glob("*.yaml")):
    _dag = build_dag(_config)
    globals()[_dag.dag_id] = _dag
