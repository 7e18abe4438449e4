"""Shared fixtures: one local SparkSession for the session, the shared data folder, a
throw-away MLflow store."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Airflow: an isolated home per test session (its SQLite metadata DB lives there), set
# before anything imports airflow, whatever AIRFLOW_HOME the caller exported.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="ncf-test-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
# The JVM's C1-only mode halves start-up: right for tiny test data, wrong for benchmarks.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")

# Spark and the Airflow-launched subprocesses must find this venv's python and spark-submit.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
_venv_bin = str(Path(sys.executable).parent)
if _venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _venv_bin + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def spark() -> Iterator[pyspark.sql.SparkSession]:  # type: ignore[name-defined]  # noqa: F821
    from jobs.spark import get_spark

    session = get_spark(
        "ncf-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.ui.enabled": "false",
            # One JVM serves the whole session's Spark tests; Spark's 1g default heap left
            # no room to build a broadcast once earlier tests' caches had filled it.
            "spark.driver.memory": "2g",
            "spark.sql.session.timeZone": "UTC",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MovieLens / last.fm files ($NCF_SHARED_DATA, default ../shared/data)."""
    folder = Path(os.environ.get("NCF_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (folder / "ml-100k" / "u.data").is_file():
        pytest.skip(f"real-data test: {folder} has no ml-100k/u.data "
                    "(set NCF_SHARED_DATA to the shared data folder)")
    return folder


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh local SQLite MLflow store for one test (MLFLOW_TRACKING_URI points at it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
