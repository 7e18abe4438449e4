"""Constants of the pipeline's protocol that more than one side reads: exit codes, the
seeded random streams and the Spark session settings every job runs with.

Standard library only: the DAG files import it at parse time.
"""

from __future__ import annotations

# --- exit codes of the stage CLIs ---------------------------------------------------
# A stage that decides its task should be *skipped* (the champion gate refusing a model)
# exits with this; every runner in dags/ncf_runners.py maps it to Airflow's "skipped".
SKIP_EXIT_CODE = 99
# A config that does not load (unknown key, bad value): the reason is logged, no retry helps.
CONFIG_ERROR_EXIT_CODE = 2

# --- seeded random streams --------------------------------------------------------------
# Every random draw is xxhash64(seed, stream, ...) of its own stream id, so draws do not
# depend on partitioning and two draws never share numbers. One id per purpose, here only.
STREAM_TRAIN = 1  # training negatives (written only when prepare.n_negatives > 0)
STREAM_VALIDATION = 2  # validation negatives
STREAM_TEST = 3  # test negatives
STREAM_TIE_BREAK = 4  # the split's tie-break among same-second positives
STREAM_USER_SAMPLE = 5  # prepare.user_fraction's user sample
STREAM_STRATIFIED = 6  # the stratified split's per-user shuffle

# --- Spark ------------------------------------------------------------------------------
# Settings every Spark job runs with, whoever starts it (spark-submit from the DAG, or a
# plain `python jobs/<stage>.py`); timestamps in the lake are UTC instants.
SPARK_SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    # Progress bars garble the task logs that Airflow keeps.
    "spark.ui.showConsoleProgress": "false",
}
# Small-data defaults of spark-submit from the DAG ($NCF_SPARK_SHUFFLE_PARTITIONS,
# $NCF_SPARK_DRIVER_MEMORY override them; a cluster sets its own).
DEFAULT_SHUFFLE_PARTITIONS = "8"
DEFAULT_DRIVER_MEMORY = "4g"

# --- MLflow UI ----------------------------------------------------------------------------
# Each experiment's saved comparison (ncf_model.tracking.save_comparison_view): the MLflow
# UI opens the shared view stored in the experiment tag `mlflow.sharedViewState.<key>` for
# a URL carrying viewStateShareKey=<key>. MLflow 3.17 chooses between its GenAI and model
# training views from the URL's workflowType (else its own default, GenAI), not from the
# experiment's kind tag: the URL names it.
MLFLOW_COMPARISON_VIEW = "ncf-candidates"


def mlflow_comparison_url(ui: str, experiment_id: str) -> str:
    """Where a browser opens the saved comparison on the MLflow UI at `ui`."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?"
            f"viewStateShareKey={MLFLOW_COMPARISON_VIEW}&workflowType=machine_learning")
