"""Imported by every Airflow process `make up` starts: Airflow imports `airflow_local_settings`
at start-up, and jobs.ops.stack puts this folder on their PYTHONPATH (`make run` does not).

It imports what each task of the NCF DAGs would otherwise import again. The LocalExecutor
forks its workers from the scheduler and each task from a worker, so a task starts with
these modules loaded and spends its time on the task rather than on imports: with the
Spark provider (and the Kubernetes client it pulls in when that provider is installed),
the standard operators and the task runner, that was ~2 s of CPU per task, eleven tasks
per run, on a machine whose cores the tasks themselves need.
"""

from __future__ import annotations

import airflow.providers.apache.spark.operators.spark_submit  # noqa: F401
import airflow.providers.standard.operators.bash  # noqa: F401
import airflow.sdk.execution_time.task_runner  # noqa: F401
import yaml  # noqa: F401
